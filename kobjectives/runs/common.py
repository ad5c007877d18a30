"""What every training run shares: schedules, callbacks, run-folder outputs."""

import json
import pathlib

import keras
import numpy as np


def warmup_cosine_schedule(learning_rate, steps, warmup_steps):
    """Linear warm-up to `learning_rate`, then cosine decay to 0 at `steps`."""
    warmup_steps = min(warmup_steps, max(steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(steps - warmup_steps, 1),
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
    )


def optimizer(training_config, steps):
    """AdamW with warm-up and cosine decay over `steps`, clipnorm 1.0."""
    return keras.optimizers.AdamW(
        learning_rate=warmup_cosine_schedule(
            training_config["learning_rate"], steps, training_config["warmup_steps"]
        ),
        weight_decay=training_config["weight_decay"],
        clipnorm=1.0,
    )


def run_callbacks(out_dir, resume=True):
    """The run's callbacks, writing into the run folder `out_dir`:

    - `kobjectives.distribute.RunBackup` in `backup/` (model and optimizer
      state after every round; rerunning the same command resumes from the
      last completed round) with the round log `history.csv` (one row per
      round: `epoch`, `step`, the logs). Deleted when training ends.
    - `ModelCheckpoint`: `checkpoints/epoch_NNN.weights.h5` every round.
    - `TensorBoard` logs in `logs/`.
    - `kobjectives.distribute.StopOnNonFiniteLoss`: the first NaN/inf loss
      stops training with an error naming the step; the last good checkpoint
      and the backup are kept.

    In a multi-worker cluster only the chief writes `checkpoints/` and
    `logs/`; the other workers write into `out_dir/.workers/`.

    Args:
        out_dir: the run folder.
        resume: bool; False deletes an existing `backup/` (and round log)
            first, so the run starts over.
    """
    from kobjectives.distribute import fault_tolerance

    out_dir = pathlib.Path(out_dir)
    own_dir = fault_tolerance.worker_dir(out_dir)
    backup_dir = out_dir / "backup"
    if not resume and fault_tolerance.is_chief():
        import shutil

        shutil.rmtree(backup_dir, ignore_errors=True)
        (out_dir / "history.csv").unlink(missing_ok=True)
    return [
        fault_tolerance.RunBackup(str(backup_dir), log_path=str(out_dir / "history.csv")),
        keras.callbacks.ModelCheckpoint(
            str(own_dir / "checkpoints" / "epoch_{epoch:03d}.weights.h5"),
            save_weights_only=True,
        ),
        keras.callbacks.TensorBoard(log_dir=str(own_dir / "logs")),
        fault_tolerance.StopOnNonFiniteLoss(
            checkpoint_hint=f"{out_dir / 'checkpoints'} (last completed round) and {backup_dir}"
        ),
    ]


def plot_history(history, path, title, steps_per_round=None):
    """Writes a PNG of the training and validation loss after each round
    (epoch); with `steps_per_round` the x axis counts training steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("loss", "train"), ("val_loss", "validation")):
        if key in history:
            x = np.arange(1, len(history[key]) + 1) * (steps_per_round or 1)
            ax.plot(x, history[key], marker="o", label=label)
    ax.set_xlabel(
        "training step (train: mean over the preceding round)"
        if steps_per_round else "round (epoch)"
    )
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_json(path, payload):
    def default(value):
        if isinstance(value, (np.floating, np.integer)):
            return value.item()
        raise TypeError(f"not JSON serializable: {type(value).__name__}")

    pathlib.Path(path).write_text(json.dumps(payload, indent=2, default=default) + "\n")


def train_tokenizer(documents, tokenizer_config, out_dir, log=print):
    """Trains the run's WordPiece vocabulary, saves `vocab.txt`, and returns
    `(vocabulary, keras_hub.models.BertTokenizer)`."""
    import time

    import keras_hub

    from kobjectives import data as data_lib

    started = time.time()
    vocabulary = data_lib.train_wordpiece(
        documents, tokenizer_config["vocabulary_size"],
        lowercase=tokenizer_config["lowercase"],
        max_training_documents=tokenizer_config["max_training_documents"] or None,
    )
    data_lib.save_vocabulary(vocabulary, out_dir)
    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=vocabulary, lowercase=tokenizer_config["lowercase"]
    )
    log(f"tokenizer: WordPiece, {len(vocabulary)} pieces ({time.time() - started:.0f} s)")
    return vocabulary, tokenizer


def load_split_documents(data_config, seed, data=None, tfds=None, data_dir=None, log=print):
    """The run's documents (files, tfds or the embedded corpus), split into
    `(train, validation)` deterministically."""
    from kobjectives import data as data_lib

    documents = data_lib.load_texts(
        data=data, tfds=tfds, data_dir=data_dir, format=data_config["format"],
        max_documents=data_config["max_documents"] or None,
    )
    train, validation = data_lib.train_validation_split(
        documents, data_config["validation_fraction"], seed=seed
    )
    log(f"data: {len(documents)} documents ({len(train)} train, {len(validation)} validation)")
    return train, validation


def finite_validation(dataset, num_documents, batch_size):
    """Fills a cached validation dataset once and tells Keras its length.

    One pass fills the cache (fixed validation masks or pairs) and counts the
    batches, so Keras knows the cardinality and never "runs out of data".

    Raises:
        ValueError: the validation split is smaller than one batch.
    """
    import tensorflow as tf

    batches = sum(1 for _ in dataset)
    if batches == 0:
        raise ValueError(
            f"The validation split ({num_documents} documents) is smaller than one "
            f"batch of {batch_size}. Give more data or raise data.validation_fraction."
        )
    return dataset.apply(tf.data.experimental.assert_cardinality(batches))


def rounds(training_config):
    """`(epochs, steps_per_epoch)`: the steps split into evaluation rounds."""
    steps = int(training_config["steps"])
    epochs = max(1, min(int(training_config["epochs"]), steps))
    return epochs, max(1, steps // epochs)


def training_strategy(training_config, strategy_name, log=print):
    """Sets the dtype policy and returns `(strategy, jit_compile)`; `strategy_name`
    is a name from `kobjectives.distribute.STRATEGIES` or a `tf.distribute.Strategy`.

    XLA cannot compile a step whose replicas are logical CPU devices ("Trying
    to access resource ... located in device CPU:1"), so `jit_compile` is
    turned off for multi-replica CPU strategies, with a note.
    """
    import keras
    import tensorflow as tf

    from kobjectives.distribute import resolve_strategy

    keras.mixed_precision.set_global_policy(training_config["dtype_policy"])
    strategy = (
        strategy_name if isinstance(strategy_name, tf.distribute.Strategy)
        else resolve_strategy(strategy_name)
    )
    if isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        raise ValueError(
            "strategy='parameter_server': Keras 3's model.fit cannot drive a "
            "ParameterServerStrategy. Use --strategy multiworker (synchronous, same TF_CONFIG "
            "without 'ps' jobs) for kobjectives train."
        )
    jit_compile = bool(training_config["jit_compile"])
    if jit_compile and strategy.num_replicas_in_sync > 1 and not tf.config.list_logical_devices("GPU"):
        log("note: jit_compile disabled for a multi-replica CPU strategy")
        jit_compile = False
    return strategy, jit_compile


def save_and_export(model, out_dir, tokenizer, sequence_length, **export_kwargs):
    """Saves the training objective (`model.keras`) and exports its inference
    SavedModel (`saved_model/`, raw strings in, through keras-hub's
    `BertTextClassifierPreprocessor`, the serving twin of the training
    packer). The export computes in float32 whatever the training policy."""
    import keras_hub

    from kobjectives.distribute.fault_tolerance import worker_dir
    from kobjectives.export import export_saved_model

    out_dir = worker_dir(out_dir)  # the chief's folder; other workers write aside
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "model.keras")
    keras.mixed_precision.set_global_policy("float32")
    export_saved_model(
        model, out_dir / "saved_model",
        preprocessor=keras_hub.models.BertTextClassifierPreprocessor(
            tokenizer=tokenizer, sequence_length=sequence_length
        ),
        overwrite=True,
        **export_kwargs,
    )


def training_datasets(runner, recipe, prepared, strategy):
    """The run's `(train, validation)` datasets for `model.fit` under `strategy`.

    With one replica on one worker this is `runner.make_dataset(...)` at the
    global batch size. With several replicas or workers the datasets go
    through `kobjectives.distribute.distribute_datasets` (that is,
    `strategy.distribute_datasets_from_function`): `make_dataset` is called
    once per input pipeline with a `tf.distribute.InputContext`, a
    per-replica batch size (global // replicas) and its shard of the data;
    the validation shards are cut to a common length so every replica runs
    the same number of steps with static shapes.

    Args:
        runner: a run module with `make_dataset(recipe, prepared, split,
            batch_size, input_context=None)` (see `kobjectives.runs`).
        recipe: the run's recipe dict; `training.batch_size` is the global batch.
        prepared: what the run module's `prepare` returned.
        strategy: the `tf.distribute.Strategy` the model was built under.

    Raises:
        ValueError: the global batch size is not divisible by the number of
            replicas.
    """
    from kobjectives.distribute import distribute_datasets

    batch_size = int(recipe["training"]["batch_size"])

    def make(split):
        return lambda size, context=None: runner.make_dataset(
            recipe, prepared, split, size, input_context=context
        )

    return (
        distribute_datasets(strategy, make("train"), batch_size),
        distribute_datasets(strategy, make("validation"), batch_size, finite=True),
    )


def round_history(out_dir, history):
    """The whole run's per-round logs `{key: [value per round]}`, across resumes.

    After a resume, `model.fit(...).history` holds only the rounds trained
    since; the `RunBackup` log `out_dir/history.csv` holds every round. Falls
    back to `history` where there is no log. Raises `RuntimeError` if the last
    training loss is not finite.
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
