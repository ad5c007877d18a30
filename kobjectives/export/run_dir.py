"""Export and reload a training run's folder (`kobjectives export RUN_DIR`).

`kobjectives train` leaves in its run folder `recipe.json`, `model.keras`
(the training objective with its optimizer state) and the trained vocabulary
(`vocab.txt`, or `spm.model`). `load_run` rebuilds the objective and the
tokenizer from those files; `export_run_dir` writes the objective's inference
SavedModel from them, so an export can be redone (or moved elsewhere) without
retraining, and loads with only `tensorflow` and `tensorflow_text`.
"""

import dataclasses
import json
import pathlib

RECIPE_FILE = "recipe.json"
MODEL_FILE = "model.keras"

# Objectives whose run module has no `export` hook but whose run exports
# with `default_export` (keyword arguments of the exporter). Any other
# objective needs the hook (see `export_run_dir`).
DEFAULT_EXPORTS = {
    "mlm": {},
    "xlnet": {},
    # CPC serves text tokenized exactly as in training: "[SEP]" written in
    # the text is not the separator.
    "cpc": {"special_tokens_in_strings": False},
}


@dataclasses.dataclass
class Run:
    """A training run reloaded from its folder.

    Attributes:
        run_dir: `pathlib.Path` of the run folder.
        recipe: the run's recipe dict (`recipe.json`).
        objective: the recipe's objective name (e.g. `"mlm"`).
        model: the training objective loaded from `model.keras`, compiled,
            with its optimizer state (`model.fit` continues the run).
        vocabulary_kind: `"wordpiece"` or `"sentencepiece"`.
        vocabulary: the WordPiece `list[str]` or the SentencePiece proto.
        tokenizer: the run's keras-hub tokenizer (`BertTokenizer` for
            WordPiece, as in training).
        sequence_length: the run's `model.sequence_length`.
    """

    run_dir: pathlib.Path
    recipe: dict
    objective: str
    model: object
    vocabulary_kind: str
    vocabulary: object
    tokenizer: object
    sequence_length: int

    def __getitem__(self, key):
        # A run is also usable where a run module's `export` expects `prepared`.
        if key not in self.__dataclass_fields__:
            raise KeyError(
                f"{key!r}: a run reloaded from its folder provides only "
                f"{', '.join(self.__dataclass_fields__)}; an `export` hook must rebuild "
                "anything else from these and the recipe."
            )
        return getattr(self, key)

    def get(self, key, default=None):
        return getattr(self, key, default)


def _check_run_dir(run_dir):
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"Run folder not found: {run_dir}. Give a folder written by "
            "`kobjectives train NAME --out DIR`."
        )
    for name in (RECIPE_FILE, MODEL_FILE):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"{run_dir} has no {name}: it is not a finished `kobjectives train` run "
                "folder (train writes recipe.json first and model.keras at the end)."
            )
    return run_dir


def load_run(run_dir, compile=True):
    """Reloads a run folder: recipe, training objective and tokenizer.

    Args:
        run_dir: a folder written by `kobjectives train`.
        compile: restore the compiled state (loss, metrics, optimizer and
            its state), so `model.fit` continues training where the run
            stopped (the next step's loss is the one the run would have had).

    Returns:
        A `Run`.

    Raises:
        FileNotFoundError: the folder, `recipe.json`, `model.keras` or the
            vocabulary is missing.

    Example:

    ```python
    run = kobjectives.export.load_run("runs/mlm")
    run.model.fit(dataset, epochs=1, steps_per_epoch=100)  # continue training
    ```
    """
    import keras
    import keras_hub

    import kobjectives.layers  # noqa: F401  (registers the serializables)
    import kobjectives.losses  # noqa: F401
    import kobjectives.metrics  # noqa: F401
    import kobjectives.objectives  # noqa: F401
    from kobjectives import data as data_lib

    run_dir = _check_run_dir(run_dir)
    recipe = json.loads((run_dir / RECIPE_FILE).read_text())
    try:
        kind, vocabulary = data_lib.load_vocabulary(str(run_dir))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{run_dir} has no vocab.txt or spm.model: the run's tokenizer cannot be "
            "rebuilt. Export from Python with kobjectives.export.export_saved_model "
            "and the tokenizer of training."
        ) from None
    lowercase = recipe.get("tokenizer", {}).get("lowercase", True)
    if kind == "wordpiece":
        tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=lowercase)
    else:
        tokenizer = data_lib.build_tokenizer(kind, vocabulary)
    model = keras.saving.load_model(run_dir / MODEL_FILE, compile=compile)
    return Run(
        run_dir=run_dir, recipe=recipe, objective=recipe.get("objective"), model=model,
        vocabulary_kind=kind, vocabulary=vocabulary, tokenizer=tokenizer,
        sequence_length=int(recipe["model"]["sequence_length"]),
    )


def default_export(model, run, out_dir, **export_kwargs):
    """The export of a run without its own `export` hook: an objective with
    `embed` and no masked-LM `head` (a sentence encoder) through
    `export_embedding_model`, any other through `export_saved_model`
    (`export_outputs` or encoder + head), raw strings in through keras-hub's
    `BertTextClassifierPreprocessor` over the run's WordPiece tokenizer.
    Computes in float32 whatever the training policy."""
    import keras
    import keras_hub

    from kobjectives.export.embedding import export_embedding_model
    from kobjectives.export.saved_model import export_saved_model

    if run.vocabulary_kind != "wordpiece":
        raise ValueError(
            f"Objective {run.objective!r} was trained with a {run.vocabulary_kind} "
            "tokenizer; its run module must define `export(model, run, out_dir)` to "
            "serve it (the default export serves WordPiece runs)."
        )
    keras.mixed_precision.set_global_policy("float32")
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer=run.tokenizer, sequence_length=run.sequence_length
    )
    if hasattr(model, "embed") and getattr(model, "head", None) is None \
            and not hasattr(model, "export_outputs"):
        return export_embedding_model(
            model, out_dir, preprocessor=preprocessor, overwrite=True, **export_kwargs
        )
    return export_saved_model(
        model, out_dir, preprocessor=preprocessor, overwrite=True, **export_kwargs
    )


def export_run_dir(run_dir, out_dir=None, log=print):
    """Writes the inference SavedModel of a training run's folder.

    Rebuilds the objective from `RUN_DIR/model.keras`, `recipe.json` and the
    saved vocabulary, then exports it into `OUT/saved_model/` exactly as the
    training run did: through the run module's `export(model, out_dir,
    prepared, recipe)` where it defines one (`prepared` is the reloaded
    `Run`: tokenizer, vocabulary, sequence length), else, for the objectives
    in `DEFAULT_EXPORTS`, through `default_export` (encoder plus the
    objective's inference heads, or `export_outputs`; raw-string
    `serving_default`, token-id `serve_token_ids`; every batch size).

    Args:
        run_dir: a folder written by `kobjectives train`.
        out_dir: the export folder, which receives `saved_model/`; defaults
            to `RUN_DIR` (its `saved_model/` is replaced).
        log: a print-like function.

    Returns:
        The path of the written `saved_model/`, as a string.

    Raises:
        FileNotFoundError: not a finished run folder.
        ValueError: an unknown objective, or one whose run module has no
            `export` hook and no default export.

    Example:

    ```python
    path = kobjectives.export.export_run_dir("runs/mlm", "serving/mlm")
    # In a process with only TensorFlow:
    #   import tensorflow as tf, tensorflow_text
    #   model = tf.saved_model.load(path)   # serving/mlm/saved_model
    #   model.signatures["serving_default"](text=tf.constant(["a [MASK] b"]))
    ```
    """
    from kobjectives.runs import runner_module

    run_dir = _check_run_dir(run_dir)
    recipe = json.loads((run_dir / RECIPE_FILE).read_text())
    objective = recipe.get("objective")
    runner = runner_module(objective)  # fails early on an unknown objective
    hook = getattr(runner, "export", None)
    if not callable(hook) and objective not in DEFAULT_EXPORTS:
        raise ValueError(
            f"Run module {runner.__name__} defines no export(model, out_dir, prepared, "
            f"recipe), so `kobjectives export` cannot rebuild the serving signature of "
            f"objective {objective!r}; its training run already wrote "
            f"{run_dir / 'saved_model'}."
        )
    run = load_run(run_dir, compile=False)
    out_dir = pathlib.Path(out_dir) if out_dir else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if callable(hook):
        hook(run.model, out_dir, run, run.recipe)
    else:
        default_export(run.model, run, out_dir / "saved_model", **DEFAULT_EXPORTS[objective])
    path = out_dir / "saved_model"
    log(f"exported {objective} ({type(run.model).__name__}) from {run_dir} to {path}")
    return str(path)
