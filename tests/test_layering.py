"""Imports point down the layers of `DESIGN.md` only: read from the source
(every `import kobjectives...` and `from kobjectives... import`, at any depth
of a module, function bodies included)."""

import ast
import pathlib

import kobjectives

# What each part of the package may import (besides itself).
BELOW = {
    "recipe": set(),
    "compat": set(),
    "backbones": {"compat"},  # enable_lora walks the layers
    "ops": set(),
    "distribute": {"compat"},
    "layers": {"ops"},
    "losses": {"ops"},
    "metrics": {"ops"},
    "data": {"ops", "layers"},
    "objectives": {"ops", "layers", "losses", "metrics", "compat", "backbones"},
    "export": {"compat", "backbones"},
}
BELOW["runs"] = set(BELOW) | {"objectives", "export", "data", "distribute"}
BELOW["tuning"] = BELOW["runs"] | {"runs"}
BELOW["cli"] = BELOW["tuning"] | {"tuning"}

ROOT = pathlib.Path(kobjectives.__file__).parent


def _part(path):
    relative = path.relative_to(ROOT)
    return relative.parts[0].removesuffix(".py")


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            if node.module == "kobjectives":
                names = [f"kobjectives.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "kobjectives" and len(parts) > 1 and not parts[1].startswith("__"):
                yield node.lineno, parts[1]


def test_imports_point_down_the_layers():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        part = _part(path)
        if part == "__init__":
            continue  # the package's own namespace
        assert part in BELOW, f"{path}: a part of the package the layering does not know"
        for line, target in _imports(path):
            if target != part and target not in BELOW[part]:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({part}) imports {target}")
    assert upward == []
