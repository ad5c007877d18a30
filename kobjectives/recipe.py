"""Typed recipes: the configuration of a training run, validated before any work.

A recipe is a frozen dataclass with one dataclass per section (`data`,
`tokenizer`, `model`, `training`, and the objective's own, e.g. `masking`).
Each field declares its type, its default, a one-line description and the
values it allows (`within="(0, 1]"` or `choices=(...)`); sections and
recipes add the checks that involve several keys. Defaults live in one place:
the sections give generic ones and each registered run's recipe class states
its own (`kobjectives.runs`), so `kobjectives train mlm` needs no file.

Every value reaches a recipe through one coercion path, `Recipe.replace`:
TOML files (`load_recipe`, `--config`), `--set SECTION.KEY=VALUE` strings,
and the tuner's trial values. `validate()` then checks the whole recipe and
raises one `RecipeError` that names every bad key, its value and what is
allowed, before a document is read or a tokenizer trained.

Example:

>>> from kobjectives.recipe import DataConfig
>>> DataConfig().validation_fraction
0.05
>>> DataConfig(validation_fraction=1.5).problems("data")[0]
'data.validation_fraction = 1.5: must be in (0, 1)'
"""

import glob
import dataclasses
import math
import os
import pathlib
import tomllib
import typing


class RecipeError(ValueError):
    """A recipe key is unknown, or its value has the wrong type or is out of range."""


# ---------------------------------------------------------------------------
# Fields: type, default, description, allowed values.
# ---------------------------------------------------------------------------


def option(default, doc, *, within=None, choices=None):
    """A recipe field.

    Args:
        default: the default value (immutable: use a tuple for lists).
        doc: one line saying what the key does (printed by `kobjectives
            recipes NAME` and in errors).
        within: for numbers, the allowed interval as a string such as
            `"(0, 1]"`, `"[0, inf)"`; `inf` bounds are open.
        choices: the allowed values.
    """
    if within is not None:
        _parse_interval(within)  # fail at definition time on a typo
    return dataclasses.field(
        default=default, metadata={"doc": doc, "within": within, "choices": choices}
    )


def section(cls, **values):
    """A recipe's section field: an instance of `cls` with this recipe's defaults."""
    return dataclasses.field(default_factory=lambda: cls(**values))


def _parse_interval(text):
    low_open = text.startswith("(")
    high_open = text.endswith(")")
    if not (text[0] in "([" and text[-1] in ")]" and "," in text):
        raise ValueError(f"Bad interval {text!r}: write e.g. '(0, 1]' or '[1, inf)'.")
    low, high = (float(part) for part in text[1:-1].split(","))
    return low, high, low_open or math.isinf(low), high_open or math.isinf(high)


def _in_interval(value, text):
    low, high, low_open, high_open = _parse_interval(text)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    return above and below


def _type_name(kind):
    if kind is bool:
        return "a boolean (true or false)"
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if kind is str:
        return "a string"
    return "a list of strings"


def coerce(value, kind, key):
    """Converts `value` (from TOML, a `--set` string, or a tuner) to `kind`.

    The one coercion path of recipe values. A string is parsed (`"5e-4"`,
    `"true"`, `"a.txt,b.txt"` for a list); an integral float is an int
    (`1000.0`), any other float given for an int is an error, never
    truncated; a bool is never a number.

    Args:
        value: the value given.
        kind: `bool`, `int`, `float`, `str` or `tuple` (of str).
        key: the dotted recipe key, for the error.

    Raises:
        RecipeError: the value cannot be read as `kind`.
    """
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars (the tuner's values)
    bad = RecipeError(f"{key} = {value!r}: expects {_type_name(kind)}.")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise bad
    if kind in (int, float):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                value = float(value) if kind is float else _parse_int(value)
            except ValueError:
                raise bad from None
        if not isinstance(value, (int, float)):
            raise bad
        if kind is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise RecipeError(f"{key} = {value!r}: expects an integer, not a fraction.")
                value = int(value)
            return value
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise bad
        return value
    # A list of strings.
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise bad


def _parse_int(text):
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        number = float(text)
        if not number.is_integer():
            raise
        return int(number)


def _field_kind(field):
    kind = field.type
    if isinstance(kind, str):  # postponed annotations
        kind = {"bool": bool, "int": int, "float": float, "str": str}.get(kind, tuple)
    if typing.get_origin(kind) in (tuple, list):
        return tuple
    return kind


# ---------------------------------------------------------------------------
# Sections.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Section:
    """Base of a recipe section: typed fields plus cross-field `check`s.

    The section's name in a recipe is the recipe's field name; `problems`
    is given it as `name` to write full keys.
    """

    def problems(self, name=None):
        """Every problem of this section's values, as `key = value: why` lines."""
        name = name or self.section_name()
        found = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            key = f"{name}.{field.name}"
            within, choices = field.metadata.get("within"), field.metadata.get("choices")
            if isinstance(value, float) and not math.isfinite(value):
                if not (within and math.isinf(value) and _in_interval(value, within)):
                    found.append(f"{key} = {value}: must be a finite number")
                    continue
            if within is not None and not _in_interval(value, within):
                found.append(f"{key} = {value!r}: must be in {within}")
            if choices is not None and value not in choices:
                listed = ", ".join(repr(c) for c in choices)
                found.append(f"{key} = {value!r}: must be one of {listed}")
        if not found:
            found.extend(f"{name}.{line}" for line in self.check())
        return found

    def check(self):
        """Cross-field checks of this section; yields `key = value: why` lines
        with keys relative to the section (e.g. `"steps = 0: ..."`)."""
        return ()

    def file_checks(self):
        """Checks of the files and folders the section names, as `check`'s
        lines. They read the file system, so `Recipe.validate` does not run
        them: a run does, before reading any data (`Recipe.machine_problems`
        in `Run.check`), and a finished run folder reloads without them (its
        data may have moved)."""
        return ()

    @classmethod
    def section_name(cls):
        return getattr(cls, "name", cls.__name__.lower())

    @classmethod
    def describe(cls):
        """`{field: doc}` of the section."""
        return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """Where the text comes from and how it is split."""

    files: tuple[str, ...] = option(
        (), "text files or globs to train on (empty: the embedded corpus, or data.tfds)")
    tfds: str = option("", "a tfds dataset already prepared in data.data_dir (never downloaded)")
    data_dir: str = option("", "the local tfds data directory (with data.tfds)")
    format: str = option(
        "lines", "data.files: one document per line, or blank-line separated paragraphs",
        choices=("lines", "paragraphs"))
    max_documents: int = option(0, "keep the first N documents (0 = all)", within="[0, inf)")
    validation_fraction: float = option(
        0.05, "held-out share; a stable hash of each document decides", within="(0, 1)")
    split_seed: int = option(
        -1, "seeds the train/validation split and the data drawn at random (-1: "
        "training.seed); fix it to compare training seeds on the same examples",
        within="[-1, 2147483647]")

    def check(self):
        if self.files and self.tfds:
            yield "files and data.tfds: give one text source, not both"
        if self.data_dir and not self.tfds:
            yield f"data_dir = {self.data_dir!r}: the tfds data directory needs data.tfds"

    def file_checks(self):
        for pattern in self.files:
            if not glob.glob(os.path.expanduser(pattern)):
                yield f"files: {pattern!r} matches no file"


@dataclasses.dataclass(frozen=True)
class TokenizerConfig(Section):
    """The WordPiece vocabulary trained on the training split
    (not used when `model.init` brings a tokenizer)."""

    kind: str = option("wordpiece", "the vocabulary's kind", choices=("wordpiece",))
    vocabulary_size: int = option(
        4096, "an upper bound: the learner keeps pieces seen often enough", within="[16, 1000000]")
    lowercase: bool = option(True, "fold case before tokenizing")
    max_training_documents: int = option(
        0, "train the vocabulary on this many training documents (0 = all)", within="[0, inf)")


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    """The backbone, built from config or started from `init`."""

    backbone: str = option("bert_tiny", "a backbone built from config (`kobjectives recipes` lists them)")
    init: str = option(
        "", "start from a trained backbone and its tokenizer: a run folder, a keras-hub "
        "preset directory, or a preset name keras-hub can resolve (empty: from scratch)")
    sequence_length: int = option(64, "tokens per sequence, special tokens included",
                                  within="[2, 16384]")
    dropout: float = option(0.1, "the backbone's dropout rate", within="[0, 1)")
    lora_rank: int = option(
        0, "0: train every weight; N > 0: train rank-N LoRA adapters instead, the "
        "backbone frozen (keras-hub's `Backbone.enable_lora`; needs model.init)",
        within="[0, inf)")
    lora_layers: tuple[str, ...] = option(
        (), "the layers LoRA adapts (empty: keras-hub's default_lora_layer_names(), the "
        "attention query and value projections)")
    lora_alpha: float = option(
        0.0, "PEFT's lora_alpha: the adapters' product is scaled by lora_alpha / lora_rank "
        "(0: the rank, scale 1, keras-hub's default)", within="[0, inf)")

    def check(self):
        if self.lora_rank and not self.init:
            yield (f"lora_rank = {self.lora_rank}: LoRA adapts a trained backbone; set "
                   "model.init (a run folder or preset), or model.lora_rank = 0")
        if self.lora_layers and not self.lora_rank:
            yield (f"lora_layers = {list(self.lora_layers)}: names the layers LoRA adapts; "
                   "set model.lora_rank > 0 too")
        if self.lora_alpha and not self.lora_rank:
            yield (f"lora_alpha = {self.lora_alpha}: scales LoRA adapters; set "
                   "model.lora_rank > 0 too")


@dataclasses.dataclass(frozen=True)
class MaskingConfig(Section):
    """The masked-LM masks (`kobjectives.layers.MaskedLMMasker`)."""

    strategy: str = option("token", "what is masked together",
                           choices=("token", "whole_word", "span"))
    mask_selection_rate: float = option(0.15, "share of the tokens to predict", within="(0, 1]")
    mask_selection_length: int = option(12, "prediction slots per sequence", within="[1, inf)")
    mask_token_rate: float = option(0.8, "of the selected tokens: share replaced by [MASK]",
                                    within="[0, 1]")
    random_token_rate: float = option(0.1, "of the selected tokens: share replaced by a "
                                      "random token (the rest kept)", within="[0, 1]")

    def check(self):
        if self.mask_token_rate + self.random_token_rate > 1.0:
            yield (f"random_token_rate = {self.random_token_rate}: mask_token_rate + "
                   f"random_token_rate = {self.mask_token_rate + self.random_token_rate} "
                   "must be <= 1")


DTYPE_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass(frozen=True)
class TrainingConfig(Section):
    """The optimizer, the schedule and the rounds."""

    steps: int = option(1000, "optimizer steps", within="[1, inf)")
    epochs: int = option(
        5, "evaluation / checkpoint rounds the steps are split into: ceil(steps / epochs) "
        "steps each, the last round shorter where they do not divide (at most steps rounds)",
        within="[1, inf)")
    batch_size: int = option(32, "global batch size (split over replicas)", within="[1, inf)")
    learning_rate: float = option(1e-3, "AdamW's peak learning rate", within="(0, 1]")
    warmup_steps: int = option(
        100, "linear warm-up steps (at most steps - 1), then cosine decay to 0", within="[0, inf)")
    weight_decay: float = option(0.01, "AdamW's decoupled weight decay", within="[0, 1)")
    dtype_policy: str = option("float32", "the Keras dtype policy (losses stay float32)",
                               choices=DTYPE_POLICIES)
    jit_compile: bool = option(True, "XLA-compile the training step")
    seed: int = option(0, "seeds the data order, the random draws and the initialization",
                       within="[0, 2147483647]")
    validation_batches: int = option(
        20, "held-out batches evaluated each round (with fixed random draws)", within="[1, inf)")
    saved_model: bool = option(
        True, "write the serving SavedModel (saved_model/) at the end; false skips it "
        "(`kobjectives export RUN_DIR` writes it later)")


# ---------------------------------------------------------------------------
# Recipes.
# ---------------------------------------------------------------------------


# Of the machine's memory, what one layer's attention scores may take before
# a recipe is refused (the rest holds the model, the optimizer and the data).
_ATTENTION_MEMORY_SHARE = 0.25


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Base of the recipes: a frozen dataclass of `Section`s.

    Subclasses (one per registered run, in `kobjectives.runs`) declare their
    sections with this recipe's defaults, e.g.
    `training: TrainingConfig = section(TrainingConfig, steps=1500)`, and
    may add cross-section checks in `check`.
    """

    name: typing.ClassVar[str] = ""

    # -- reading and writing -------------------------------------------------

    @classmethod
    def from_dict(cls, values, source="the recipe"):
        """This recipe's defaults with the nested `values` applied (see `apply`)."""
        return cls().apply(values, source)

    def apply(self, values, source="the recipe"):
        """A copy with the nested `values` (a TOML or JSON table:
        `{"training": {"steps": 10}}`) applied; a top-level `recipe` key, if
        present, must be this recipe's name.

        Raises:
            RecipeError: another recipe's table, an unknown section or key, or a
                value of the wrong type.
        """
        values = dict(values)
        named = values.pop("recipe", self.name)
        if named != self.name:
            raise RecipeError(
                f"{source} is a {named!r} recipe, not {self.name!r}: use it with "
                f"`kobjectives train {named}` (or `kobjectives train FILE`).")
        flat = {}
        for name, table in values.items():
            if not isinstance(table, dict):
                raise RecipeError(
                    f"{source}: {name!r} must be a [section] table. Sections of {self.name!r}: "
                    f"{', '.join(self.section_names())}.")
            flat.update({f"{name}.{key}": value for key, value in table.items()})
        return self.replace(flat)

    def to_dict(self):
        """`{"recipe": name, section: {key: value}}`, plain Python values
        (lists for tuples): what `recipe.json` holds."""
        out = {"recipe": self.name}
        for name in self.section_names():
            table = dataclasses.asdict(getattr(self, name))
            out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in table.items()}
        return out

    def to_toml(self, comments=True):
        """The recipe as a TOML document (every key, with its description)."""
        lines = [f'recipe = "{self.name}"']
        for name in self.section_names():
            value = getattr(self, name)
            lines.append("")
            doc = (type(value).__doc__ or "").strip().splitlines()
            lines.append(f"[{name}]" + (f"  # {doc[0]}" if comments and doc else ""))
            docs = value.describe()
            for key, item in dataclasses.asdict(value).items():
                text = f"{key} = {_toml_value(item)}"
                if comments and docs.get(key):
                    text = f"{text:<34} # {docs[key]}"
                lines.append(text)
        return "\n".join(lines) + "\n"

    # -- keys ------------------------------------------------------------------

    @classmethod
    def section_names(cls):
        return [f.name for f in dataclasses.fields(cls)]

    def keys(self):
        """Every dotted key, e.g. `"training.steps"`."""
        return [f"{name}.{f.name}" for name in self.section_names()
                for f in dataclasses.fields(getattr(self, name))]

    def get(self, key):
        """The value of a dotted key."""
        name, _, field = key.partition(".")
        return getattr(self._section(name, key), self._field(name, field, key).name)

    def _section(self, name, key):
        if name not in self.section_names():
            raise RecipeError(
                f"Unknown recipe key {key!r}: {self.name!r} has the sections "
                f"{', '.join(self.section_names())}. Valid keys: {', '.join(self.keys())}.")
        return getattr(self, name)

    def _field(self, name, field, key):
        for candidate in dataclasses.fields(getattr(self, name)):
            if candidate.name == field:
                return candidate
        valid = [k for k in self.keys() if k.startswith(name + ".")]
        raise RecipeError(f"Unknown recipe key {key!r}. Valid keys of [{name}]: {', '.join(valid)}.")

    def replace(self, assignments):
        """A copy with `{"section.key": value}` applied, each value coerced
        to the key's type (`coerce`); `None` values are skipped.

        Raises:
            RecipeError: an unknown key or a value of the wrong type.
        """
        changes = {}
        for key, value in assignments.items():
            if value is None:
                continue
            name, _, field_name = key.partition(".")
            self._section(name, key)
            field = self._field(name, field_name, key)
            changes.setdefault(name, {})[field.name] = coerce(value, _field_kind(field), key)
        updated = {name: dataclasses.replace(getattr(self, name), **values)
                   for name, values in changes.items()}
        return dataclasses.replace(self, **updated)

    # -- validation ----------------------------------------------------------

    def problems(self):
        """Every problem: per field (type, range, choices), per section, and
        across sections (`check`), as lines naming the key."""
        found = []
        for name in self.section_names():
            found.extend(getattr(self, name).problems(name))
        if not found:
            found.extend(self.check())
        return found

    def machine_problems(self):
        """What this machine lacks to run the recipe: every section's
        `file_checks`, and the memory of the attention scores, as lines naming
        the full key. `Run.check` yields them; a finished run folder reloads
        without them (its data may have moved, the machine may be smaller)."""
        for name in self.section_names():
            yield from (f"{name}.{line}" for line in getattr(self, name).file_checks())
        model, training = getattr(self, "model", None), getattr(self, "training", None)
        if model is not None and training is not None:
            yield from _attention_memory_problems(model.sequence_length, training.batch_size)

    def check(self):
        """Cross-section checks; yields full `key = value: why` lines."""
        model, masking = getattr(self, "model", None), getattr(self, "masking", None)
        if masking is not None and model is not None and \
                masking.mask_selection_length > model.sequence_length:
            yield (f"masking.mask_selection_length = {masking.mask_selection_length}: "
                   f"at most model.sequence_length = {model.sequence_length}")

    def validate(self):
        """Returns the recipe, or raises one `RecipeError` listing every problem."""
        found = self.problems()
        if found:
            raise RecipeError(
                f"Invalid {self.name!r} recipe:\n  " + "\n  ".join(found)
                + "\n(`kobjectives recipes " + self.name + "` prints every key with its "
                "default and meaning.)")
        return self


def machine_memory():
    """This machine's physical memory in bytes (None where unknown): the
    bound of `model.sequence_length` x `training.batch_size` (one attention
    head's float32 scores may take a quarter of it)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _attention_memory_problems(sequence_length, batch_size):
    """A sequence length whose attention scores alone would not fit in memory."""
    memory = machine_memory()
    if not memory:
        return
    scores = 4 * batch_size * sequence_length ** 2  # one head, one layer, float32
    if scores > _ATTENTION_MEMORY_SHARE * memory:
        yield (f"model.sequence_length = {sequence_length}: with training.batch_size = "
               f"{batch_size} one attention head's float32 scores take "
               f"{scores / 2 ** 30:.1f} GiB, more than a quarter of this machine's "
               f"{memory / 2 ** 30:.0f} GiB. Shorten the sequences or the batch.")


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    return str(value)


def read_toml(path):
    """The table of a recipe `.toml` file.

    Raises:
        FileNotFoundError: no such file.
        RecipeError: not valid TOML (the message names the file and the line).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe file not found: {path}")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"{path} is not valid TOML: {error}") from None
