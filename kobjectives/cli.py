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

The run folder (--out) receives vocab.txt, recipe.json, checkpoints/, logs/
(TensorBoard), loss_curve.png, model.keras, saved_model/ and metrics.json.
"""


def _train_parser(subparsers):
    from kobjectives.backbones import BACKBONES
    from kobjectives.distribute import STRATEGIES

    parser = subparsers.add_parser(
        "train",
        help="train, evaluate and export a model with an objective",
        description="Train a model with a recipe's objective, evaluate it on held-out "
        "data and export it. Flags override the recipe's values.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", help="a bundled recipe name (see `kobjectives recipes`) or a .toml file")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", nargs="+", metavar="PATH",
                        help="text files or globs (default: the embedded corpus)")
    source.add_argument("--tfds", metavar="NAME",
                        help="a tfds dataset already prepared in --data-dir (never downloaded)")
    parser.add_argument("--data-dir", metavar="DIR", help="the local tfds data directory")
    parser.add_argument("--format", choices=("lines", "paragraphs"),
                        help="--data files: one document per line, or blank-line separated")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), metavar="NAME",
                        help=f"backbone built from config: {', '.join(sorted(BACKBONES))}")
    parser.add_argument("--steps", type=int, metavar="N", help="training steps")
    parser.add_argument("--batch-size", type=int, metavar="N", help="global batch size")
    parser.add_argument("--sequence-length", type=int, metavar="N", help="tokens per sequence")
    parser.add_argument("--seed", type=int, metavar="S", help="seed of data order, masks and weights")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="tf.distribute strategy (default: auto)")
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/NAME-TIMESTAMP)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any recipe value, e.g. --set masking.strategy=span (repeatable)")
    parser.add_argument("--supervised", action="store_true",
                        help="simcse: supervised SimCSE on NLI triples given with --data TRIPLES.tsv")
    parser.add_argument("--sts-dev", metavar="FILE",
                        help="simcse: evaluate on this STS-B file (e.g. sts-dev.csv) against two baselines")
    parser.set_defaults(command=_train)


def _train(args):
    from kobjectives import recipe as recipe_lib
    from kobjectives.runs import runner_module

    recipe = recipe_lib.load_recipe(args.recipe)
    objective = recipe.get("objective")
    runner = runner_module(objective)
    overrides = {
        "model.backbone": args.backbone,
        "model.sequence_length": args.sequence_length,
        "training.steps": args.steps,
        "training.batch_size": args.batch_size,
        "training.seed": args.seed,
        "data.format": args.format,
    }
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects SECTION.KEY=VALUE; received {item!r}.")
        overrides[key.strip()] = value.strip()
    recipe = recipe_lib.override(recipe, overrides)
    if args.data_dir and not args.tfds:
        raise ValueError("--data-dir is the tfds data directory: use it with --tfds NAME.")
    name = pathlib.Path(args.recipe).stem
    out = args.out or f"runs/{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    extra = {k: v for k, v in (("supervised", args.supervised), ("sts_dev", args.sts_dev)) if v}
    if extra and objective != "simcse":
        raise ValueError(
            f"--supervised and --sts-dev apply to the simcse recipes (simcse, contrastive_aug), "
            f"not to objective {objective!r}."
        )
    runner.train(
        recipe, out, data=args.data, tfds=args.tfds, data_dir=args.data_dir,
        strategy=args.strategy, **extra,
    )


def _recipes_parser(subparsers):
    parser = subparsers.add_parser(
        "recipes", help="list the bundled recipes and backbones",
        description="List the bundled recipes and the backbones they can use.",
    )
    parser.set_defaults(command=_recipes)


def _recipes(args):
    from kobjectives import recipe as recipe_lib
    from kobjectives.backbones import BACKBONES

    print("recipes:  ", ", ".join(recipe_lib.available_recipes()))
    print("backbones:", ", ".join(sorted(BACKBONES)))


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kobjectives", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    _train_parser(subparsers)
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


def main(argv=None):
    _import_tensorflow_quietly()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "command"):
        parser.print_help()
        return 2
    try:
        args.command(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"kobjectives: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
