"""The `kobjectives` command."""

import argparse
import datetime
import pathlib
import sys

DESCRIPTION = """\
kobjectives: training objectives for language models (Keras 3 / TensorFlow).

Train a small model with an objective on your text (or, by default, on the
embedded corpus of Python standard-library docstrings), evaluate it on a
held-out split, and export it as a SavedModel.
"""

TRAIN_EPILOG = """\
examples:
  kobjectives train mlm                                # embedded corpus, defaults
  kobjectives train mlm --steps 200 --out runs/quick
  kobjectives train mlm --data 'corpus/*.txt' --format paragraphs
  kobjectives train mlm --tfds wikipedia/20230601.en --data-dir ~/tensorflow_datasets
  kobjectives train mlm --set masking.strategy=whole_word --set training.learning_rate=5e-4
  kobjectives train mlm --config runs/tune-mlm/best_recipe.toml   # a tuned recipe
  kobjectives train mlm --init runs/earlier-mlm        # start from a run folder's backbone
  kobjectives train sft --data chats.jsonl             # sft, seq2seq_sft, reward, dpo: JSON Lines
  kobjectives train mine.toml                          # a recipe file (recipe = "mlm" ...)

Every flag is a recipe key (--data is data.files, --init is model.init, ...);
`kobjectives recipes NAME` prints every key of a recipe with its default and
meaning. The whole recipe is validated before any data is read.

The run folder (--out) receives vocab.txt, recipe.json, checkpoints/, logs/
(TensorBoard), history.csv (one row per round), loss_curve.png, model.keras,
preset/ (the trained backbone and tokenizer, a keras-hub preset), saved_model/
and metrics.json, plus backup/ while training: rerunning the same command with
the same --out resumes an interrupted run from its last completed round, and
leaves a finished one (metrics.json) as it is, saying so (exit code 0); another
recipe there is an error. --no-resume trains from the start in that folder.
Without --out each run gets a new timestamped folder.
Precedence: the named recipe < --config FILE < the flags and --set.
"""

TUNE_EPILOG = """\
examples:
  kobjectives tune mlm --tuner random --max-trials 8 --steps 300 --out runs/tune-mlm
  kobjectives tune mlm --tuner bayesian --max-trials 12 --set training.epochs=3
  kobjectives tune mlm --tuner hyperband --max-trials 10 --set training.epochs=4
  kobjectives tune cpc --max-trials 4 --strategy mirrored

Every trial trains the recipe (with the trial's hyperparameters) for --steps
steps and is scored by its best validation loss (val_loss) over the rounds
(training.epochs). The tuning folder (--out) receives trials.csv, trials.md,
trials.json (best first), best_recipe.toml, best_hyperparameters.json,
tuning.json, logs/ (TensorBoard) and tuner/ (KerasTuner state). Then:
  kobjectives train mlm --config runs/tune-mlm/best_recipe.toml --steps 1500
"""

EXPORT_EPILOG = """\
examples:
  kobjectives export runs/mlm                     # rewrites runs/mlm/saved_model/
  kobjectives export runs/mlm --out serving/mlm   # writes serving/mlm/saved_model/

Reads RUN_DIR/recipe.json, RUN_DIR/model.keras and RUN_DIR/preset/ (what
`kobjectives train` leaves) and writes the objective's inference SavedModel
(raw strings in where a tokenizer is attached, any batch size). Load it with
only tensorflow and tensorflow_text:
  import tensorflow as tf, tensorflow_text
  model = tf.saved_model.load("serving/mlm/saved_model")
  model.signatures["serving_default"](text=tf.constant(["a [MASK] of text"]))
"""


def _recipe_options(parser):
    """The options `train` and `tune` share: the recipe, its data and overrides."""
    from kobjectives.backbones import BACKBONES
    from kobjectives.distribute import STRATEGIES

    parser.add_argument("recipe", help="a registered recipe name (see `kobjectives recipes`) "
                        "or a .toml recipe file")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", nargs="+", metavar="PATH",
                        help="data.files: text files or globs (default: the embedded corpus)")
    source.add_argument("--tfds", metavar="NAME",
                        help="data.tfds: a tfds dataset already prepared in --data-dir (never "
                        "downloaded)")
    parser.add_argument("--data-dir", metavar="DIR", help="data.data_dir: the local tfds directory")
    parser.add_argument("--format", choices=("lines", "paragraphs"),
                        help="data.format: one document per line, or blank-line separated")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), metavar="NAME",
                        help=f"model.backbone, built from config: {', '.join(sorted(BACKBONES))}")
    parser.add_argument("--init", metavar="RUN_OR_PRESET",
                        help="model.init: start from a run folder's backbone and tokenizer, a "
                        "keras-hub preset directory, or a preset name")
    parser.add_argument("--steps", metavar="N", help="training.steps")
    parser.add_argument("--batch-size", metavar="N", help="training.batch_size (global)")
    parser.add_argument("--sequence-length", metavar="N", help="model.sequence_length")
    parser.add_argument("--seed", metavar="S", help="training.seed")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="tf.distribute strategy (default: auto)")
    parser.add_argument("--out", metavar="DIR",
                        help="run / tuning folder (default: runs/NAME-TIMESTAMP)")
    parser.add_argument("--config", metavar="FILE",
                        help="a recipe .toml whose values override the named recipe's "
                        "(e.g. a tune run's best_recipe.toml)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any recipe value, e.g. --set masking.strategy=span "
                        "(repeatable)")


def _train_parser(subparsers):
    parser = subparsers.add_parser(
        "train",
        help="train, evaluate and export a model with an objective",
        description="Train a model with a recipe's objective, evaluate it on held-out "
        "data and export it. Flags override the recipe's values.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _recipe_options(parser)
    parser.add_argument("--no-resume", action="store_true",
                        help="delete the run folder's backup/, history.csv and metrics.json "
                        "first: train from the start instead of resuming an interrupted run "
                        "or leaving a finished one as it is")
    parser.set_defaults(command=_train)


def _load_recipe(args):
    """The recipe of `train` / `tune`: the named recipe, then `--config`,
    then the flags and `--set` (later wins); validated."""
    from kobjectives.recipe import RecipeError
    from kobjectives.runs import load_recipe

    overrides = {
        "data.files": args.data,
        "data.tfds": args.tfds,
        "data.data_dir": args.data_dir,
        "data.format": args.format,
        "model.backbone": args.backbone,
        "model.init": args.init,
        "model.sequence_length": args.sequence_length,
        "training.steps": args.steps,
        "training.batch_size": args.batch_size,
        "training.seed": args.seed,
    }
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise RecipeError(f"--set expects SECTION.KEY=VALUE; received {item!r}.")
        overrides[key.strip()] = value.strip()
    return load_recipe(args.recipe, config=args.config, overrides=overrides)


def _out_dir(args, prefix=""):
    name = pathlib.Path(args.recipe).stem
    out = pathlib.Path(args.out or f"runs/{prefix}{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder (new, or an earlier run's to resume).")
    return out


def _train(args):
    from kobjectives.runs import run_class
    from kobjectives.runs.callbacks import clear_backup

    recipe = _load_recipe(args)
    out = _out_dir(args)
    run = run_class(recipe.name)(recipe, out, strategy=args.strategy)
    if args.strategy in ("auto", "multiworker", "tpu"):
        # Multi-worker and TPU strategies must exist before TensorFlow runs any
        # op (collective ops are configured at start-up); create it first.
        from kobjectives.distribute import resolve_strategy

        resolve_strategy(args.strategy)
    if args.no_resume:
        clear_backup(out)
    run.train()


def _tune_parser(subparsers):
    from kobjectives.tuning.search import TUNERS

    parser = subparsers.add_parser(
        "tune",
        help="search a recipe's hyperparameters with KerasTuner",
        description="Search the objective's hyperparameters (its Run class's "
        "search_space: learning rate, warm-up, weight decay, mask rate, temperature, "
        "...) with KerasTuner against the validation loss; print and save the "
        "trials table and the best recipe. Flags override the recipe's values for "
        "every trial.",
        epilog=TUNE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _recipe_options(parser)
    parser.add_argument("--tuner", choices=TUNERS, default="random",
                        help="KerasTuner algorithm (default: random)")
    parser.add_argument("--max-trials", type=int, default=5, metavar="N",
                        help="number of trials (default: 5)")
    parser.set_defaults(command=_tune)


def _tune(args):
    from kobjectives.tuning import tune

    tune(_load_recipe(args), _out_dir(args, "tune-"), tuner=args.tuner,
         max_trials=args.max_trials, strategy=args.strategy)


def _export_parser(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="export a training run's inference SavedModel",
        description="Rebuild a run's objective from RUN_DIR/model.keras, its recipe and "
        "vocabulary, and write its inference SavedModel.",
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `kobjectives train`")
    parser.add_argument("--out", metavar="DIR",
                        help="export folder: receives saved_model/ (default: RUN_DIR, "
                        "whose saved_model/ is replaced)")
    parser.set_defaults(command=_export)


def _export(args):
    from kobjectives.runs import export_run_dir

    export_run_dir(args.run_dir, args.out)


def _recipes_parser(subparsers):
    parser = subparsers.add_parser(
        "recipes", help="list the recipes and backbones, or print one recipe",
        description="List the registered recipes and the backbones they can use; with "
        "NAME, print that recipe as TOML, every key with its default and meaning (a "
        "template for `kobjectives train FILE.toml`).",
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="a recipe to print")
    parser.set_defaults(command=_recipes)


def _recipes(args):
    from kobjectives.backbones import BACKBONES
    from kobjectives.runs import available_runs
    from kobjectives.runs import run_class

    if args.name:
        print(run_class(args.name).recipe_class().to_toml(), end="")
        return
    for name in available_runs():
        cls = run_class(name)
        doc = (cls.recipe_class.__doc__ or "").strip().splitlines()
        print(f"{name:<16} {doc[0] if doc else ''}")
    print("backbones:", ", ".join(sorted(BACKBONES)))


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kobjectives", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    _train_parser(subparsers)
    _tune_parser(subparsers)
    _export_parser(subparsers)
    _recipes_parser(subparsers)
    return parser


def _version():
    from kobjectives import __version__

    return f"kobjectives {__version__}"


def _import_tensorflow_quietly():
    """Imports the TensorFlow stack with stderr closed at the fd level.

    TensorFlow 2.21 prints start-up lines (oneDNN, CUDA stubs) through absl
    before its logging is initialized, which no environment variable
    silences. Python exceptions from the import are unaffected.
    """
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras_hub  # noqa: F401
        import tensorflow  # noqa: F401
        import tensorflow_text  # noqa: F401

        import kobjectives  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def _split_logical_cpus():
    """`KOBJECTIVES_LOGICAL_CPUS=N` splits the CPU into N logical devices
    before TensorFlow starts, so `--strategy mirrored` runs N replicas on a
    CPU-only machine (for trying data-parallel runs without accelerators)."""
    import os

    import tensorflow as tf

    count = int(os.environ.get("KOBJECTIVES_LOGICAL_CPUS", "0") or 0)
    if count > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def main(argv=None):
    _import_tensorflow_quietly()
    _split_logical_cpus()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "command"):
        parser.print_help()
        return 2
    try:
        args.command(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        print(f"kobjectives: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
