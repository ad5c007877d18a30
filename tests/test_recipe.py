"""Typed recipes (`kobjectives.recipe`): one coercion path, validation that
names every bad key, TOML round trips, and every registered recipe's
defaults."""

import dataclasses

import numpy as np
import pytest

from kobjectives import recipe as recipe_lib
from kobjectives.recipe import DataConfig
from kobjectives.recipe import MaskingConfig
from kobjectives.recipe import ModelConfig
from kobjectives.recipe import Recipe
from kobjectives.recipe import RecipeError
from kobjectives.recipe import TokenizerConfig
from kobjectives.recipe import TrainingConfig
from kobjectives.recipe import coerce
from kobjectives.recipe import option
from kobjectives.recipe import section
from kobjectives.runs import available_runs
from kobjectives.runs import load_recipe
from kobjectives.runs import run_class


@dataclasses.dataclass(frozen=True)
class DemoRecipe(Recipe):
    """A recipe of the common sections, with its own defaults."""

    name = "demo"
    data: DataConfig = section(DataConfig)
    tokenizer: TokenizerConfig = section(TokenizerConfig)
    model: ModelConfig = section(ModelConfig, sequence_length=32)
    masking: MaskingConfig = section(MaskingConfig)
    training: TrainingConfig = section(TrainingConfig, steps=10, epochs=2)


# -- coercion ------------------------------------------------------------------


@pytest.mark.parametrize("value, kind, expected", [
    ("12", int, 12),
    (" 12 ", int, 12),
    ("1e3", int, 1000),
    (1000.0, int, 1000),
    (np.int64(5), int, 5),
    (np.float64(2.0), int, 2),
    ("5e-4", float, 5e-4),
    (1, float, 1.0),
    (np.float32(0.5), float, 0.5),
    ("true", bool, True),
    (" False ", bool, False),
    (np.bool_(True), bool, True),
    ("a.txt, b.txt", tuple, ("a.txt", "b.txt")),
    (["a.txt", "b.txt"], tuple, ("a.txt", "b.txt")),
    ("", tuple, ()),
    ("span", str, "span"),
])
def test_coerce_reads_strings_numbers_and_numpy_scalars(value, kind, expected):
    result = coerce(value, kind, "section.key")
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("value, kind, match", [
    ("1.5", int, r"section.key = '1.5': expects an integer"),
    (1.5, int, r"section.key = 1.5: expects an integer, not a fraction"),
    (np.float32(2.5), int, "not a fraction"),
    ("many", int, r"section.key = 'many': expects an integer"),
    (True, int, "expects an integer"),  # a bool is never a number
    (False, float, "expects a number"),
    ("yes", bool, r"expects a boolean \(true or false\)"),
    (1, bool, "expects a boolean"),
    (3, str, "expects a string"),
    ([1, 2], tuple, "expects a list of strings"),
])
def test_coerce_refuses_values_of_the_wrong_type_naming_the_key(value, kind, match):
    with pytest.raises(RecipeError, match=match):
        coerce(value, kind, "section.key")


def test_replace_coerces_to_each_keys_type_and_leaves_the_original():
    base = DemoRecipe()
    changed = base.replace({
        "training.steps": "12", "training.learning_rate": "5e-4",
        "training.jit_compile": "false", "masking.strategy": "span",
        "data.files": "a.txt,b.txt", "model.backbone": None,  # None: keep
    })
    assert changed.training.steps == 12
    assert changed.training.learning_rate == 5e-4
    assert changed.training.jit_compile is False
    assert changed.masking.strategy == "span"
    assert changed.data.files == ("a.txt", "b.txt")
    assert changed.model.backbone == base.model.backbone
    assert base == DemoRecipe()  # frozen: replace makes a copy
    assert changed.get("training.steps") == 12
    with pytest.raises(RecipeError, match=r"training.steps = '1.5': expects an integer"):
        base.replace({"training.steps": "1.5"})


# -- validation ----------------------------------------------------------------


@pytest.mark.parametrize("key, value, message", [
    ("training.learning_rate", -1, r"training.learning_rate = -1.0: must be in \(0, 1\]"),
    ("training.weight_decay", -0.1, r"training.weight_decay = -0.1: must be in \[0, 1\)"),
    ("training.warmup_steps", -1, r"training.warmup_steps = -1: must be in \[0, inf\)"),
    ("training.steps", 0, r"training.steps = 0: must be in \[1, inf\)"),
    ("training.epochs", 0, r"training.epochs = 0: must be in \[1, inf\)"),
    ("training.learning_rate", "nan", "training.learning_rate = nan: must be a finite number"),
    ("tokenizer.kind", "bpe", "tokenizer.kind = 'bpe': must be one of 'wordpiece'"),
    ("model.sequence_length", 100000,
     r"model.sequence_length = 100000: must be in \[2, 16384\]"),
    ("masking.strategy", "words",
     "masking.strategy = 'words': must be one of 'token', 'whole_word', 'span'"),
    ("training.dtype_policy", "float16", "training.dtype_policy = 'float16': must be one of"),
])
def test_range_and_choice_errors_name_the_key_the_value_and_what_is_allowed(key, value, message):
    recipe = DemoRecipe().replace({key: value})
    with pytest.raises(RecipeError, match=message) as error:
        recipe.validate()
    assert "kobjectives recipes demo" in str(error.value)  # where every key is described


def test_every_problem_is_reported_at_once():
    recipe = DemoRecipe().replace({
        "training.learning_rate": -1, "training.weight_decay": -0.1,
        "tokenizer.kind": "bpe", "masking.mask_selection_rate": 1.5,
    })
    problems = recipe.problems()
    assert [line.split(" = ")[0] for line in problems] == [
        "tokenizer.kind", "masking.mask_selection_rate", "training.learning_rate",
        "training.weight_decay"]
    with pytest.raises(RecipeError) as error:
        recipe.validate()
    assert all(line in str(error.value) for line in problems)


def test_checks_across_keys_and_sections():
    recipe = DemoRecipe()
    assert recipe.validate() is recipe
    assert recipe.replace({"masking.mask_token_rate": 0.9,
                           "masking.random_token_rate": 0.2}).problems() == [
        "masking.random_token_rate = 0.2: mask_token_rate + random_token_rate = 1.1 "
        "must be <= 1"]
    assert recipe.replace({"masking.mask_selection_length": 40}).problems() == [
        "masking.mask_selection_length = 40: at most model.sequence_length = 32"]
    both = recipe.replace({"data.files": __file__, "data.tfds": "imdb_reviews"}).problems()
    assert both == ["data.files and data.tfds: give one text source, not both"]
    assert recipe.replace({"model.lora_rank": 4}).problems() == [
        "model.lora_rank = 4: LoRA adapts a trained backbone; set model.init (a run folder "
        "or preset), or model.lora_rank = 0"]
    assert recipe.replace({"model.lora_layers": "query_projector"}).problems() == [
        "model.lora_layers = ['query_projector']: names the layers LoRA adapts; set "
        "model.lora_rank > 0 too"]
    assert recipe.replace({"model.lora_alpha": 16}).problems() == [
        "model.lora_alpha = 16.0: scales LoRA adapters; set model.lora_rank > 0 too"]
    assert "model.lora_alpha" in recipe.replace({"model.lora_alpha": -1}).problems()[0]
    lora = recipe.replace({"model.init": "run", "model.lora_rank": 2,
                           "model.lora_layers": "query,value"})
    assert lora.problems() == [] and lora.model.lora_layers == ("query", "value")


def test_attention_memory_bounds_the_sequence_length(monkeypatch):
    """One head's float32 scores (4 * batch * length^2 bytes) may take a
    quarter of the machine's memory: a problem of this machine, which a run
    checks (`machine_problems`), not of the recipe (`problems`)."""
    monkeypatch.setattr(recipe_lib, "machine_memory", lambda: 2 ** 30)
    recipe = DemoRecipe()

    def machine_problems(values):
        return list(recipe.replace(values).machine_problems())

    assert machine_problems({"model.sequence_length": 1024}) == []  # 128 MiB
    problems = machine_problems({"model.sequence_length": 4096})  # 2 GiB
    assert len(problems) == 1
    assert problems[0].startswith("model.sequence_length = 4096: with training.batch_size = 32")
    assert "2.0 GiB" in problems[0] and "Shorten the sequences or the batch" in problems[0]
    assert "a quarter of this machine's 1 GiB" in problems[0]
    assert recipe.replace({"model.sequence_length": 4096}).problems() == []
    assert machine_problems({"model.sequence_length": 4096, "training.batch_size": 2}) == []
    monkeypatch.setattr(recipe_lib, "machine_memory", lambda: None)  # unknown: no bound
    assert machine_problems({"model.sequence_length": 16384}) == []


def test_option_refuses_a_malformed_interval():
    with pytest.raises(ValueError, match="Bad interval '0..1'"):
        option(0.5, "a share", within="0..1")


# -- reading and writing -------------------------------------------------------


def test_from_dict_and_apply_refuse_unknown_sections_and_keys_listing_the_valid_ones():
    recipe = DemoRecipe.from_dict({"training": {"steps": 3}, "masking": {"strategy": "span"}})
    assert recipe.training.steps == 3 and recipe.masking.strategy == "span"
    assert recipe.apply({"recipe": "demo", "training": {"epochs": 3}}).training.epochs == 3
    with pytest.raises(RecipeError, match=(
            r"Unknown recipe key 'trainin.steps': 'demo' has the sections data, tokenizer, "
            r"model, masking, training. Valid keys: data.files, .*training.steps")):
        DemoRecipe.from_dict({"trainin": {"steps": 3}})
    with pytest.raises(RecipeError, match=(
            r"Unknown recipe key 'training.stpes'. Valid keys of \[training\]: "
            r"training.steps, training.epochs")):
        recipe.apply({"training": {"stpes": 3}})
    with pytest.raises(RecipeError, match="'training' must be a \\[section\\] table"):
        recipe.apply({"training": 3})
    with pytest.raises(RecipeError, match="mine.toml is a 'cpc' recipe, not 'demo'"):
        recipe.apply({"recipe": "cpc"}, source="mine.toml")


def test_to_dict_is_plain_data():
    table = DemoRecipe().replace({"data.files": [__file__]}).to_dict()
    assert table["recipe"] == "demo"
    assert table["data"]["files"] == [__file__]
    assert table["training"]["steps"] == 10
    assert DemoRecipe.from_dict(table) == DemoRecipe().replace({"data.files": [__file__]})


@pytest.mark.parametrize("name", available_runs())
def test_registered_recipe_defaults_validate(name):
    cls = run_class(name)
    recipe = cls.recipe_class()
    assert recipe.name == name
    assert recipe.validate() is recipe
    assert load_recipe(name) == recipe
    assert cls().recipe == recipe  # and the run's own checks (backbone kind) pass


@pytest.mark.parametrize("name", available_runs())
def test_to_toml_round_trips_through_load_recipe(tmp_path, name):
    recipe = run_class(name).recipe_class()
    # A string needing TOML escapes, in a key the recipe accepts any text in
    # (the runs of data.dataset refuse data.tfds).
    text_key = "data.shared_dir" if "data.shared_dir" in recipe.keys() else "data.tfds"
    recipe = recipe.replace({
        "training.learning_rate": 0.000123456789, "training.steps": 77,
        "training.jit_compile": False, text_key: 'odd "name" \\ with quotes',
    })
    for comments in (True, False):
        path = tmp_path / f"{name}-{comments}.toml"
        path.write_text(recipe.to_toml(comments=comments))
        assert load_recipe(str(path)) == recipe
    assert "# AdamW's peak learning rate" in recipe.to_toml()


def test_recipe_files_and_their_errors(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('recipe = "mlm"\n[training]\nsteps = 3\n')
    assert load_recipe(str(path)).training.steps == 3
    assert load_recipe(str(path), overrides={"training.steps": "4"}).training.steps == 4
    with pytest.raises(FileNotFoundError, match="Recipe file not found"):
        load_recipe(str(tmp_path / "missing.toml"))
    nameless = tmp_path / "nameless.toml"
    nameless.write_text("[training]\nsteps = 3\n")
    with pytest.raises(RecipeError, match="names no recipe: add `recipe = \"NAME\"`"):
        load_recipe(str(nameless))
    broken = tmp_path / "broken.toml"
    broken.write_text('recipe = "mlm"\n[training\n')
    with pytest.raises(RecipeError, match="broken.toml is not valid TOML: .*line 2"):
        load_recipe(str(broken))
    with pytest.raises(ValueError, match="Valid recipes: .*mlm"):
        load_recipe("nope")
