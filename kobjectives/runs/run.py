"""`Run`: one training run of a recipe, with named hooks and the driver
written once."""

import dataclasses
import json
import math
import os
import pathlib
import time
import typing

import keras
import numpy as np

from kobjectives import backbones
from kobjectives import data as data_lib
from kobjectives.recipe import Recipe
from kobjectives.recipe import RecipeError

# The optimizer's hyperparameters: every recipe's `[training]` has them.
DEFAULT_SEARCH_SPACE = {
    "training.learning_rate": ("float", 1e-4, 3e-3, "log"),
    "training.warmup_steps": ("int", 0, 300),
    "training.weight_decay": ("float", 1e-3, 0.1, "log"),
}

RECIPE_FILE = "recipe.json"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
"""Written last: a run folder holding it (and no `backup/`) holds a finished run."""


@dataclasses.dataclass
class FittedRun:
    """What `Run.fit` leaves for evaluation.

    Attributes:
        model: the trained objective.
        history: per-round logs `{key: [value per round]}` across resumes.
        evaluation: `model.evaluate` on the validation data (a dict).
        validation: the validation dataset the run used.
        steps: the optimizer steps of the whole run.
    """

    model: keras.Model
    history: dict
    evaluation: dict
    validation: object
    steps: int


class Run:
    """One training run of a recipe: the hooks an objective fills in and the
    driver every objective shares.

    A subclass is registered under its recipe's name (`kobjectives.runs.register`)
    and sets `name`, `recipe_class` (a `kobjectives.recipe.Recipe` whose
    defaults are that recipe's), `title` and `backbone_kind`. It implements
    `make_dataset` and `build_objective`, and may override any other hook:

    - data and tokenizer: `load_documents`, `split_documents`,
      `train_tokenizer` (skipped when `model.init` brings a tokenizer),
      `prepare` (all of it);
    - `make_dataset(split, batch_size, input_context=None)`;
    - model: `build_backbone`, `build_objective`, `optimizer`;
    - `evaluate(fitted)`: the objective's metrics and baselines;
    - `export(model, out_dir)`: the SavedModel (`serving_preprocessor`,
      `export_options`, `text_generator`);
    - `fit(model, train, validation, callbacks)`: the loop itself (a
      reinforcement-learning run owns it: rollouts between updates).

    `train()` is the driver: a folder holding a finished run of the recipe
    left as it is (`finished`), recipe.json, seeding, `prepare`, the
    strategy and dtype policy, resume (the data stream continues where the
    backup stopped), the datasets, the objective in the strategy's scope,
    the loop (exactly `training.steps` steps) with checkpoints,
    TensorBoard, backup and a stop on a non-finite loss,
    `loss_curve.png`, evaluation, `model.keras`, the keras-hub preset
    (`preset/`, what `--init` starts from), the SavedModel (unless
    `training.saved_model = false`) and `metrics.json`.

    Args:
        recipe: a `recipe_class` instance, or a nested dict of values over
            its defaults; validated here, before any work.
        out_dir: the run folder.
        strategy: a name of `kobjectives.distribute.STRATEGIES` or a
            `tf.distribute.Strategy`.
        log: a print-like function.
        reloading: a finished run folder is being reloaded (`load_run`):
            `check` (the data files and `model.init` still exist) is skipped.

    Raises:
        RecipeError: the recipe is invalid (every bad key named).

    Example:

    ```python
    from kobjectives.runs import run_class

    run = run_class("mlm")({"training": {"steps": 100}}, out_dir="runs/quick")
    metrics = run.train()
    ```
    """

    name: typing.ClassVar[str] = ""
    recipe_class: typing.ClassVar[type] = Recipe
    title: typing.ClassVar[str] = ""
    backbone_kind: typing.ClassVar[str] = "encoder"
    search_space: typing.ClassVar[dict] = DEFAULT_SEARCH_SPACE
    # Keyword arguments of `kobjectives.export.export_saved_model`.
    export_options: typing.ClassVar[dict] = {}
    # Data hyperparameters change the validation data too; with True every
    # tuning trial is scored on the base recipe's validation data.
    tuning_fixed_validation: typing.ClassVar[bool] = True

    def __init__(self, recipe=None, out_dir=None, strategy="auto", log=print, reloading=False):
        if recipe is None:
            recipe = self.recipe_class()
        elif isinstance(recipe, dict):
            recipe = self.recipe_class.from_dict(recipe)
        if not isinstance(recipe, self.recipe_class):
            raise TypeError(
                f"The {self.name!r} run takes a {self.recipe_class.__name__}; received "
                f"{type(recipe).__name__}.")
        self.recipe = recipe.validate()
        problems = [] if reloading else list(self.check())
        if problems:
            raise RecipeError(f"Invalid {self.name!r} recipe:\n  " + "\n  ".join(problems))
        self.out_dir = pathlib.Path(out_dir) if out_dir is not None else None
        self.strategy_name = strategy
        self.strategy = None
        self.log = log
        self.tokenizer = None
        self.train_documents = None
        self.validation_documents = None

    # -- checks ------------------------------------------------------------------

    def check(self):
        """Checks that need the code or the file system (backbone kinds, the
        init preset, the data files); yields problem lines naming the key.
        Runs before any data is read; skipped when a finished run folder is
        reloaded."""
        yield from self.recipe.machine_problems()
        model = self.recipe.model
        if model.init:
            try:
                backbones.check_init(model.init, self.backbone_kind, model.sequence_length)
            except FileNotFoundError as error:
                # No preset there (a missing path, a name keras-hub does not know): the
                # message names the path and the fix; nothing more to check about it.
                yield f"model.init = {model.init!r}: {error}"
                return
            except ValueError as error:
                # check_init names the key it is about (model.init or model.sequence_length).
                message = str(error)
                yield message if message.startswith("model.") else \
                    f"model.init = {model.init!r}: {message}"
            if model.lora_rank:
                try:
                    backbones.check_lora_layers(model.init, list(model.lora_layers) or None)
                except (ValueError, FileNotFoundError) as error:
                    yield f"model.lora_layers = {list(model.lora_layers)}: {error}"
        else:
            try:
                backbones.check_backbone(model.backbone, kind=self.backbone_kind)
            except ValueError as error:
                yield f"model.backbone = {model.backbone!r}: {error}"

    # -- data and tokenizer ------------------------------------------------------

    def prepare(self):
        """Loads and splits the documents and gets the tokenizer: the init's
        (`model.init`), else one trained on the training documents."""
        out_dir = self._out_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
        self.train_documents, self.validation_documents = self.split_documents(
            self.load_documents())
        counts = self.document_counts()
        self.log(f"data: {counts['train'] + counts['validation']} documents ({counts['train']} "
                 f"train, {counts['validation']} validation)")
        if self.recipe.model.init:
            self.tokenizer = backbones.load_tokenizer(self.recipe.model.init)
            self.log(f"tokenizer: from {self.recipe.model.init} "
                     f"({self.tokenizer.vocabulary_size()} tokens)")
        else:
            started = time.time()
            self.tokenizer = self.train_tokenizer(self.train_documents)
            self.log(f"tokenizer: WordPiece, {self.tokenizer.vocabulary_size()} pieces "
                     f"({time.time() - started:.0f} s)")
        data_lib.save_vocabulary(self.vocabulary, out_dir)

    def load_documents(self):
        """The documents of `[data]`: files, tfds, or the embedded corpus."""
        data = self.recipe.data
        return data_lib.load_texts(
            data=list(data.files) or None, tfds=data.tfds or None, data_dir=data.data_dir or None,
            format=data.format, max_documents=data.max_documents or None,
        )

    def split_seed(self):
        """The seed of the train/validation split: `data.split_seed`, or
        `training.seed` where that is -1 (the default)."""
        seed = self.recipe.data.split_seed
        return self.recipe.training.seed if seed < 0 else seed

    def split_documents(self, documents):
        """`(train, validation)`: a stable hash of each document decides."""
        return data_lib.train_validation_split(
            documents, self.recipe.data.validation_fraction, seed=self.split_seed())

    def train_tokenizer(self, documents):
        """A WordPiece vocabulary trained on `documents`, as a keras-hub
        `BertTokenizer`."""
        import keras_hub

        config = self.recipe.tokenizer
        vocabulary = data_lib.train_wordpiece(
            documents, config.vocabulary_size, lowercase=config.lowercase,
            max_training_documents=config.max_training_documents or None,
        )
        return keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=config.lowercase)

    @property
    def vocabulary(self):
        """The tokenizer's vocabulary (a list of str)."""
        return self.tokenizer.get_vocabulary()

    def documents(self, split, input_context=None):
        """The documents of `split`, this input pipeline's shard of them under
        a `tf.distribute.InputContext` with several pipelines.

        Raises:
            ValueError: `split` is not `"train"` or `"validation"`.
        """
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation'. Received: {split!r}.")
        documents = self.train_documents if split == "train" else self.validation_documents
        if input_context is not None and input_context.num_input_pipelines > 1:
            documents = documents[input_context.input_pipeline_id::input_context.num_input_pipelines]
        return documents

    def document_counts(self):
        """`{"train": n, "validation": m}` for metrics.json."""
        return {"train": len(self.train_documents), "validation": len(self.validation_documents)}

    def make_dataset(self, split, batch_size, input_context=None):
        """The `tf.data.Dataset` of `split`: `"train"` shuffled and repeated,
        `"validation"` finite and fixed (its random draws cached), with a
        known cardinality; batches of `batch_size` (per replica under an
        `input_context`, whose shard of the data it reads), static shapes."""
        raise NotImplementedError

    def finite_validation(self, dataset, count, batch_size):
        """Fills a cached validation dataset once and tells Keras its length.

        Raises:
            ValueError: the validation split is smaller than one batch.
        """
        import tensorflow as tf

        batches = sum(1 for _ in dataset)
        if batches == 0:
            raise self.small_validation(count, batch_size)
        return dataset.apply(tf.data.experimental.assert_cardinality(batches))

    def check_validation_size(self, count, batch_size):
        """Raises `small_validation` before a validation pipeline is built
        from `count` examples when they cannot fill one batch."""
        if count < batch_size:
            raise self.small_validation(count, batch_size)

    def small_validation(self, count, batch_size):
        """The error of a validation split smaller than one batch, naming the
        recipe keys that fix it (`count` examples: more than a batch when
        packing put them into fewer rows)."""
        fraction = getattr(self.recipe.data, "validation_fraction", None)
        share = "" if fraction is None else f", data.validation_fraction = {fraction}"
        if count >= batch_size:  # enough examples, packed into fewer rows
            share += f", packed into fewer than {batch_size} rows"
        return ValueError(
            f"The validation split ({count} examples{share}) is smaller than one batch of "
            f"training.batch_size = {batch_size} (per replica). Raise "
            "data.validation_fraction, lower training.batch_size, or give more data.")

    def datasets(self, strategy, skip_batches=0):
        """`(train, validation)` for `model.fit` under `strategy`: with several
        replicas or workers through `kobjectives.distribute.distribute_datasets`
        (one `make_dataset` per input pipeline, a per-replica batch size);
        the training stream starts after `skip_batches` batches (a resume).

        Raises:
            ValueError: the global batch is not divisible by the replicas.
        """
        from kobjectives.distribute import distribute_datasets

        batch_size = self.recipe.training.batch_size

        def train(size, context=None):
            dataset = self.make_dataset("train", size, input_context=context)
            return dataset.skip(skip_batches) if skip_batches else dataset

        def validation(size, context=None):
            return self.make_dataset("validation", size, input_context=context)

        return (
            distribute_datasets(strategy, train, batch_size),
            distribute_datasets(strategy, validation, batch_size, finite=True),
        )

    # -- model -------------------------------------------------------------------

    def build_backbone(self, sequence_length=None, **overrides):
        """The recipe's backbone: loaded from `model.init`, or built from the
        config `model.backbone` for the tokenizer's vocabulary and
        `sequence_length` tokens (default `model.sequence_length`).

        An init whose vocabulary lacks tokens of this run's tokenizer (the
        chat markers SFT appends) has its token embedding grown
        (`backbones.grow_token_embedding`). With `model.lora_rank`, the
        backbone trains LoRA adapters of that rank (scaled by
        `model.lora_alpha / model.lora_rank`) on `model.lora_layers` instead
        of its weights (`backbones.enable_lora`);
        a grown token embedding stays trainable too, so the new tokens'
        rows learn (PEFT's `modules_to_save`)."""
        model = self.recipe.model
        if not model.init:
            return backbones.build_backbone(
                model.backbone, self.tokenizer.vocabulary_size(),
                sequence_length or model.sequence_length, dropout=model.dropout, **overrides)
        if overrides:
            raise RecipeError(
                f"model.init = {model.init!r}: this backbone's sizes come from the preset; "
                f"{sorted(overrides)} cannot change them.")
        backbone = backbones.load_backbone(model.init, dropout=model.dropout)
        size = self.tokenizer.vocabulary_size()
        grown = getattr(backbone, "vocabulary_size", size) < size
        if grown:
            backbone = backbones.grow_token_embedding(backbone, size)
        if model.lora_rank:
            backbones.enable_lora(backbone, model.lora_rank, list(model.lora_layers) or None,
                                  alpha=model.lora_alpha or None)
            if grown:
                backbone.get_layer("token_embedding").trainable = True
        return backbone

    def build_objective(self):
        """The objective, uncompiled (called in the strategy's scope)."""
        raise NotImplementedError

    def rounds(self):
        """`(epochs, steps_per_epoch)`: `training.steps` split into evaluation
        rounds of `ceil(steps / epochs)` steps, `training.epochs` of them (at
        most `steps`; fewer only where the last would be empty, e.g. 5 steps
        in 4 rounds are 2, 2, 1). Where they do not divide the steps, the
        last round is shorter: `fit` stops it after exactly `training.steps`
        (`kobjectives.runs.callbacks.StopAfterSteps`), so 200 steps in 3
        rounds are 67, 67 and 66."""
        training = self.recipe.training
        steps_per_epoch = -(-training.steps // max(1, min(training.epochs, training.steps)))
        return -(-training.steps // steps_per_epoch), steps_per_epoch

    def optimizer(self, steps=None, learning_rate=None, warmup_steps=None, weight_decay=None):
        """AdamW with linear warm-up and cosine decay to 0, clipnorm 1.0: over
        `training.steps` with `[training]`'s rates, unless given (a
        second training phase, such as a baseline's, gives its own)."""
        training = self.recipe.training
        if steps is None:
            steps = training.steps
        warmup_steps = training.warmup_steps if warmup_steps is None else warmup_steps
        warmup = min(warmup_steps, max(steps - 1, 0))
        return keras.optimizers.AdamW(
            learning_rate=keras.optimizers.schedules.CosineDecay(
                initial_learning_rate=0.0, decay_steps=max(steps - warmup, 1),
                warmup_target=training.learning_rate if learning_rate is None else learning_rate,
                warmup_steps=warmup),
            weight_decay=training.weight_decay if weight_decay is None else weight_decay,
            clipnorm=1.0,
        )

    def jit_compile(self, strategy=None):
        """`training.jit_compile`, off for a multi-replica CPU strategy (XLA
        cannot compile a step whose replicas are logical CPU devices)."""
        import tensorflow as tf

        strategy = strategy or self.strategy or tf.distribute.get_strategy()
        if self.recipe.training.jit_compile and strategy.num_replicas_in_sync > 1 \
                and not tf.config.list_logical_devices("GPU"):
            return False
        return self.recipe.training.jit_compile

    def build_model(self):
        """The compiled objective: `build_objective`, AdamW (`optimizer`) and
        `jit_compile`. Call it in the strategy's scope."""
        model = self.build_objective()
        model.compile(optimizer=self.optimizer(), jit_compile=self.jit_compile())
        return model

    def objective_label(self, model):
        """How `describe` names the objective: its class name."""
        return type(model).__name__

    def describe(self, model):
        """One line naming the objective (`objective_label`) and its size
        (with LoRA, the trained share, naming a grown token embedding that
        trains whole beside the adapters), for the log."""
        lora = self.recipe.model.lora_rank
        trained = ""
        if lora:
            sizes = {w.path: int(np.prod(w.shape)) for w in model.trainable_weights}
            alpha = self.recipe.model.lora_alpha
            trained = f", {sum(sizes.values()):,} trained: LoRA rank {lora}" + (
                f", alpha {alpha:g}" if alpha else "")
            embedding = sum(n for path, n in sizes.items()
                            if "token_embedding" in path and "lora" not in path)
            if embedding:
                trained += f", and the grown token embedding ({embedding:,})"
        return (f"{self.objective_label(model)} over "
                f"{self.recipe.model.init or self.recipe.model.backbone} "
                f"({model.count_params():,} parameters{trained})")

    # -- the driver --------------------------------------------------------------

    def _out_dir(self):
        if self.out_dir is None:
            raise ValueError("This run has no out_dir: give the run folder.")
        return self.out_dir

    def resolve_strategy(self):
        """Sets the dtype policy and returns the `tf.distribute.Strategy`."""
        import tensorflow as tf

        from kobjectives.distribute import resolve_strategy

        keras.mixed_precision.set_global_policy(self.recipe.training.dtype_policy)
        strategy = self.strategy_name
        if not isinstance(strategy, tf.distribute.Strategy):
            strategy = resolve_strategy(strategy)
        if isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
            raise ValueError(
                "strategy='parameter_server': Keras 3's model.fit cannot drive a "
                "ParameterServerStrategy. Use --strategy multiworker (synchronous, same "
                "TF_CONFIG without 'ps' jobs).")
        if self.recipe.training.jit_compile and not self.jit_compile(strategy):
            self.log("note: jit_compile disabled for a multi-replica CPU strategy")
        return strategy

    def callbacks(self):
        """The run's callbacks (`kobjectives.runs.callbacks.run_callbacks`)."""
        from kobjectives.runs.callbacks import run_callbacks

        return run_callbacks(self._out_dir())

    def finished(self):
        """The metrics of the finished run of this recipe in `out_dir` (its
        `metrics.json`, written last, with no `backup/` waiting), or None: a
        new folder, or an interrupted run (which `train` resumes).

        Raises:
            ValueError: `out_dir` holds a finished run of another recipe
                (the keys that differ are named).
        """
        from kobjectives.distribute import RunBackup

        out_dir = self._out_dir()
        if not (out_dir / METRICS_FILE).is_file() or RunBackup(out_dir / "backup").has_backup():
            return None
        try:
            metrics = json.loads((out_dir / METRICS_FILE).read_text())
        except (OSError, ValueError):  # cut short (a kill while writing it): not finished
            return None
        path = out_dir / RECIPE_FILE
        recorded = json.loads(path.read_text()) if path.is_file() else {}
        try:  # keys added since it was written take their defaults, as `load_run` reads it
            recorded = self.recipe_class.from_dict(recorded, source=str(path)).to_dict()
        except (ValueError, KeyError, TypeError):  # a key that no longer exists: compared as is
            pass
        recorded = json.loads(json.dumps(_plain(recorded)))
        current = json.loads(json.dumps(_plain(self.recipe.to_dict())))
        if recorded != current:
            detail = (f"its {RECIPE_FILE} -> this one: {recipe_differences(recorded, current)}"
                      if recorded else f"it has no {RECIPE_FILE}")
            raise ValueError(
                f"--out {out_dir} holds a finished run of another recipe ({detail}). Give a "
                "new --out, or add --no-resume to train this recipe there from the start "
                "(replacing that run's outputs).")
        return metrics

    def train(self):
        """Trains, evaluates, saves and exports; returns the metrics dict
        (also written to `out_dir/metrics.json`).

        A folder with a backup resumes from its last completed round. A
        folder holding a finished run of the same recipe (`finished`) is
        left as it is: its recorded metrics are returned, nothing is
        trained (`kobjectives train --no-resume` trains it again).

        Raises:
            ValueError: `out_dir` holds a finished run of another recipe.
        """
        from kobjectives.runs.callbacks import check_resumed_step
        from kobjectives.runs.callbacks import restored_round

        started = time.time()
        out_dir = self._out_dir()
        recorded = self.finished()
        if recorded is not None:
            self.log(f"{out_dir} holds a finished {self.name!r} run of this recipe "
                     f"({METRICS_FILE}): nothing to train, the folder is left as it is. To "
                     "train it again there, rerun with --no-resume; or give a new --out.")
            return recorded
        out_dir.mkdir(parents=True, exist_ok=True)
        # From here until the new metrics.json, the folder holds no finished run.
        (out_dir / METRICS_FILE).unlink(missing_ok=True)
        write_json(out_dir / RECIPE_FILE, self.recipe.to_dict())
        keras.utils.set_random_seed(self.recipe.training.seed)
        self.prepare()
        self.strategy = self.resolve_strategy()
        epochs, steps_per_epoch = self.rounds()
        steps = self.recipe.training.steps
        resumed = restored_round(out_dir)
        done = min(resumed * steps_per_epoch, steps)
        check_resumed_step(out_dir, resumed, done)
        if resumed:
            self.log(f"resuming from {out_dir / 'backup'}: round {resumed} of {epochs} done "
                     f"(step {done}); the training data continues at batch {done + 1}")
        train, validation = self.datasets(self.strategy, done)
        with self.strategy.scope():
            model = self.build_model()
        self.log(f"model: {self.describe(model)}, strategy {type(self.strategy).__name__} "
                 f"x{self.strategy.num_replicas_in_sync}")
        last = steps - (epochs - 1) * steps_per_epoch
        self.log(f"training: {steps} steps in {epochs} rounds of {steps_per_epoch}"
                 + (f" (the last {last})" if last != steps_per_epoch else ""))
        history = self.fit(model, train, validation, self.callbacks())
        plot_history(history, out_dir / "loss_curve.png", self.title or self.name, steps_per_epoch,
                     steps=steps)
        fitted = FittedRun(
            model=model, history=history,
            evaluation=model.evaluate(validation, return_dict=True, verbose=0),
            validation=validation, steps=steps,
        )
        metrics = self.evaluate(fitted)
        folder = self.save(model)
        if self.recipe.training.saved_model:
            self.export(model, folder)
        losses = history.get("loss") or [float("nan")]
        metrics = {
            "recipe": self.name,
            **metrics,
            "steps": fitted.steps,
            "train_loss_first_round": losses[0],
            "train_loss_last_round": losses[-1],
            "documents": self.document_counts(),
            "wall_seconds": round(time.time() - started, 1),
        }
        write_json(out_dir / METRICS_FILE, metrics)
        for line in self.summary(metrics):
            self.log(line)
        self.log(f"run folder: {out_dir}")
        return metrics

    def fit(self, model, train, validation, callbacks):
        """The training loop: `model.fit` over `rounds()` with `callbacks`,
        `training.steps` steps in all (`StopAfterSteps` ends a shorter last
        round); returns the per-round history across resumes
        (`round_history`)."""
        from kobjectives.runs.callbacks import StopAfterSteps
        from kobjectives.runs.callbacks import progress_callbacks

        epochs, steps_per_epoch = self.rounds()
        steps = self.recipe.training.steps
        verbose, progress = progress_callbacks(epochs, steps_per_epoch, self.log, steps=steps)
        stop = [StopAfterSteps(steps, steps_per_epoch)] if epochs * steps_per_epoch > steps else []
        result = model.fit(
            train, epochs=epochs, steps_per_epoch=steps_per_epoch, validation_data=validation,
            callbacks=[*callbacks, *stop, *progress], verbose=verbose, shuffle=False,
        )
        return round_history(self._out_dir(), result.history)

    def evaluate(self, fitted):
        """The objective's held-out metrics and baselines (a dict); the base
        reports `val_loss`."""
        return {"val_loss": fitted.evaluation["loss"]}

    def summary(self, metrics):
        """The log lines that close the run."""
        return [f"held-out loss {metrics['val_loss']:.4f}"]

    # -- saving and export ---------------------------------------------------------

    def save(self, model):
        """Saves `model.keras` (the training objective) and, on the chief, the
        keras-hub preset `preset/` (the trained backbone and the tokenizer:
        what `--init` starts from); returns this worker's folder."""
        from kobjectives.distribute.fault_tolerance import is_chief
        from kobjectives.distribute.fault_tolerance import worker_dir

        folder = worker_dir(self._out_dir())
        folder.mkdir(parents=True, exist_ok=True)
        model.save(folder / MODEL_FILE)
        if is_chief():
            backbones.save_preset(
                getattr(model, model.exported_model), self.tokenizer,
                folder / backbones.PRESET_FOLDER)
        return folder

    def serving_preprocessor(self):
        """Raw strings -> the backbone's inputs, for the SavedModel:
        keras-hub's `BertTextClassifierPreprocessor` (`[CLS] text [SEP]`, the
        layout of training)."""
        import keras_hub

        return keras_hub.models.BertTextClassifierPreprocessor(
            tokenizer=self.tokenizer, sequence_length=self.recipe.model.sequence_length)

    def export(self, model, out_dir):
        """Writes `out_dir/saved_model/`: raw strings in, the objective's
        `export_outputs` out, in float32."""
        from kobjectives.export import export_saved_model

        keras.mixed_precision.set_global_policy("float32")
        export_saved_model(
            model, pathlib.Path(out_dir) / "saved_model",
            preprocessor=self.serving_preprocessor(), overwrite=True,
            generator=self.text_generator(model), **self.export_options)

    def text_generator(self, model):
        """The SavedModel's `generate` endpoint (a
        `kobjectives.export.TextGenerator`), or None (the default: runs
        whose model does not generate text)."""
        return None

    # -- reloading -----------------------------------------------------------------

    def with_recipe(self, recipe):
        """A copy of this run (sharing its prepared data and tokenizer) with
        another recipe (a tuning trial's)."""
        run = object.__new__(type(self))
        run.__dict__.update(self.__dict__)
        run.recipe = recipe.validate()
        return run

    def load_tokenizer(self):
        """The run folder's tokenizer (from its `preset/`)."""
        self.tokenizer = backbones.load_tokenizer(str(self._out_dir()))
        return self.tokenizer


def _plain(value):
    """`value` with numpy numbers as Python numbers, tuples as lists and
    non-finite floats as None: what JSON holds."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path, payload):
    """Writes `payload` as JSON; numpy numbers become Python numbers and
    non-finite floats `null` (JSON has no NaN or Infinity). The file is
    replaced whole (written beside it, then renamed), never left half
    written."""
    path = pathlib.Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(_plain(payload), indent=2, allow_nan=False) + "\n")
    os.replace(partial, path)


def recipe_differences(recorded, current, limit=5):
    """`"training.steps 200 -> 400, ..."`: the keys whose values differ
    between two `recipe.json` tables (at most `limit` named).

    Example:

    >>> recipe_differences({"recipe": "mlm", "training": {"steps": 200, "seed": 0}},
    ...                    {"recipe": "mlm", "training": {"steps": 400, "seed": 0}})
    'training.steps 200 -> 400'
    """

    def flat(table):
        out = {}
        for key, value in (table or {}).items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out

    missing = object()
    old, new = flat(recorded), flat(current)
    def shown(table, key):
        return json.dumps(table[key]) if key in table else "(absent)"

    changed = [f"{key} {shown(old, key)} -> {shown(new, key)}"
               for key in sorted(set(old) | set(new), key=lambda k: (k != "recipe", k))
               if old.get(key, missing) != new.get(key, missing)]
    more = f", and {len(changed) - limit} more" if len(changed) > limit else ""
    return ", ".join(changed[:limit]) + more


def round_history(out_dir, history):
    """The whole run's per-round logs `{key: [value per round]}`, across resumes.

    After a resume, `model.fit(...).history` holds only the rounds trained
    since; the `RunBackup` log `out_dir/history.csv` holds every round. Falls
    back to `history` where there is no log.

    Raises:
        RuntimeError: the last training loss is not finite.
    """
    from kobjectives.distribute import read_run_log

    path = pathlib.Path(out_dir) / "history.csv"
    rows = read_run_log(path) if path.exists() else []
    if rows:
        keys = [k for k in rows[0] if k not in ("epoch", "step")]
        history = {k: [row.get(k, float("nan")) for row in rows] for k in keys}
    losses = history.get("loss") or []
    if losses and not np.isfinite(losses[-1]):
        raise RuntimeError("Training diverged (non-finite loss); see the checkpoints.")
    return history


def plot_history(history, path, title, steps_per_round=None, steps=None):
    """Writes a PNG of the training and validation loss after each round;
    with `steps_per_round` the x axis counts training steps (at most
    `steps`: a shorter last round ends there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("loss", "train"), ("val_loss", "validation")):
        if key in history:
            x = np.arange(1, len(history[key]) + 1) * (steps_per_round or 1)
            if steps_per_round and steps:
                x = np.minimum(x, steps)
            ax.plot(x, history[key], marker="o", label=label)
    ax.set_xlabel("training step (train: mean over the preceding round)"
                  if steps_per_round else "round (epoch)")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

