import pytest

from kobjectives import recipe as recipe_lib


def test_bundled_recipe_loads_with_every_section():
    recipe = recipe_lib.load_recipe("mlm")
    assert recipe["objective"] == "mlm"
    for section in ("data", "tokenizer", "model", "masking", "training"):
        assert isinstance(recipe[section], dict)
    assert "mlm" in recipe_lib.available_recipes()


def test_unknown_recipe_lists_valid_ones():
    with pytest.raises(ValueError, match="Valid recipes: .*mlm"):
        recipe_lib.load_recipe("nope")


def test_override_coerces_types_and_rejects_unknown_keys():
    recipe = recipe_lib.load_recipe("mlm")
    changed = recipe_lib.override(recipe, {
        "training.steps": "12", "training.learning_rate": "5e-4",
        "training.jit_compile": "false", "masking.strategy": "span",
        "model.backbone": None,
    })
    assert changed["training"]["steps"] == 12
    assert changed["training"]["learning_rate"] == 5e-4
    assert changed["training"]["jit_compile"] is False
    assert changed["masking"]["strategy"] == "span"
    assert changed["model"]["backbone"] == recipe["model"]["backbone"]
    assert recipe_lib.load_recipe("mlm") == recipe
    with pytest.raises(ValueError, match="Valid keys: .*training.steps"):
        recipe_lib.override(recipe, {"training.stpes": "3"})
    with pytest.raises(ValueError, match="expects a int"):
        recipe_lib.override(recipe, {"training.steps": "many"})


def test_recipe_file_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('objective = "mlm"\n[training]\nsteps = 3\n')
    assert recipe_lib.load_recipe(str(path))["training"]["steps"] == 3
    with pytest.raises(FileNotFoundError):
        recipe_lib.load_recipe(str(tmp_path / "missing.toml"))
