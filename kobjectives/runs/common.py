"""What every training run shares: schedules, callbacks, run-folder outputs."""

import dataclasses
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


def save_objective(model, out_dir):
    """Saves the training objective as `model.keras` in this worker's run
    folder (`out_dir` on the chief, a folder aside on other workers under
    multi-worker training) and returns that folder, where the run's
    SavedModel goes too."""
    from kobjectives.distribute.fault_tolerance import worker_dir

    out_dir = worker_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "model.keras")
    return out_dir


def save_and_export(model, out_dir, tokenizer, sequence_length, **export_kwargs):
    """Saves the training objective (`model.keras`) and exports its inference
    SavedModel (`saved_model/`, raw strings in, through keras-hub's
    `BertTextClassifierPreprocessor`, the serving twin of the training
    packer). The export computes in float32 whatever the training policy."""
    import keras_hub

    from kobjectives.export import export_saved_model

    out_dir = save_objective(model, out_dir)
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


def prepare_documents(recipe, out_dir, data=None, tfds=None, data_dir=None, log=print):
    """The `prepare` step most runs share: loads and splits the documents
    (`load_split_documents`) and trains the tokenizer (`train_tokenizer`,
    saved as `out_dir/vocab.txt`).

    Returns:
        dict with `train_documents`, `validation_documents`, `vocabulary`,
        `tokenizer`.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_docs, val_docs = load_split_documents(
        recipe["data"], int(recipe["training"]["seed"]), data, tfds, data_dir, log
    )
    vocabulary, tokenizer = train_tokenizer(train_docs, recipe["tokenizer"], out_dir, log)
    return {
        "train_documents": train_docs,
        "validation_documents": val_docs,
        "vocabulary": vocabulary,
        "tokenizer": tokenizer,
    }


def split_documents(prepared, split, input_context=None):
    """`prepared[f"{split}_documents"]`, this input pipeline's shard of them
    under a `tf.distribute.InputContext` with several pipelines.

    Raises:
        ValueError: `split` is not `"train"` or `"validation"`.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation'. Received: {split!r}.")
    documents = prepared[f"{split}_documents"]
    if input_context is not None and input_context.num_input_pipelines > 1:
        documents = documents[input_context.input_pipeline_id::input_context.num_input_pipelines]
    return documents


def jit_compile_for(recipe, strategy=None):
    """`training.jit_compile`, off for a multi-replica CPU strategy (XLA
    cannot compile a step whose replicas are logical CPU devices); `strategy`
    defaults to the one in scope."""
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    jit = bool(recipe["training"]["jit_compile"])
    if jit and strategy.num_replicas_in_sync > 1 and not tf.config.list_logical_devices("GPU"):
        return False
    return jit


def token_counts(tokenizer, documents):
    """Counts of every token id in the tokenized `documents` (list of str),
    special tokens zeroed: the unigram statistics of the baselines."""
    import tensorflow as tf

    counts = np.zeros(tokenizer.vocabulary_size(), np.int64)
    batches = tf.data.Dataset.from_tensor_slices(list(documents)).batch(1024).map(tokenizer)
    for ids in batches:
        counts += np.bincount(ids.flat_values.numpy(), minlength=len(counts))
    counts[list(tokenizer.special_token_ids)] = 0
    return counts


def constant_prediction_accuracy(token_id, targets):
    """Accuracy of always predicting `token_id`: `targets` yields
    `(target_ids, weights)` batches; the mean is over the weights."""
    hits = total = 0.0
    for ids, weights in targets:
        weights = np.asarray(weights)
        hits += float(((np.asarray(ids) == token_id) * weights).sum())
        total += float(weights.sum())
    return hits / total if total else 0.0


@dataclasses.dataclass
class FittedRun:
    """What `fit_run` leaves for a run's evaluation: `history` holds the
    per-round logs across resumes, `evaluation` is `model.evaluate` on the
    validation data (a dict), `started` the `time.time()` of the start."""

    prepared: dict
    model: keras.Model
    strategy: object
    history: dict
    evaluation: dict
    validation_dataset: object
    steps: int
    out_dir: pathlib.Path
    started: float


def fit_run(runner, recipe, out_dir, data=None, tfds=None, data_dir=None, strategy="auto",
            log=print, *, title, describe):
    """The training half every run shares, for a run module `runner` that
    follows the contract of `kobjectives.runs`.

    Writes `out_dir/recipe.json`, seeds Keras, `runner.prepare`s the data,
    resolves the strategy (and dtype policy), builds the datasets
    (`training_datasets`) and `runner.build_model` in the strategy's scope,
    logs `"model: " + describe(model)`, fits over `rounds(...)` with
    `run_callbacks` (checkpoints, TensorBoard, backup/resume, non-finite
    stop), plots `loss_curve.png` titled `title`, and evaluates on the
    validation data.

    Returns:
        `FittedRun`.
    """
    import time

    started = time.time()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "recipe.json", recipe)
    train_cfg = recipe["training"]
    keras.utils.set_random_seed(int(train_cfg["seed"]))

    prepared = runner.prepare(recipe, out_dir, data, tfds, data_dir, log)
    epochs, steps_per_epoch = rounds(train_cfg)
    strategy, _ = training_strategy(train_cfg, strategy, log)
    train_ds, val_ds = training_datasets(runner, recipe, prepared, strategy)
    with strategy.scope():
        model = runner.build_model(recipe, prepared)
    log(f"model: {describe(model)}, strategy {type(strategy).__name__} "
        f"x{strategy.num_replicas_in_sync}")

    history = round_history(out_dir, model.fit(
        train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch, validation_data=val_ds,
        callbacks=run_callbacks(out_dir), verbose="auto", shuffle=False,
    ).history)
    plot_history(history, out_dir / "loss_curve.png", title, steps_per_epoch)
    return FittedRun(
        prepared=prepared, model=model, strategy=strategy, history=history,
        evaluation=model.evaluate(val_ds, return_dict=True, verbose=0),
        validation_dataset=val_ds, steps=epochs * steps_per_epoch, out_dir=out_dir,
        started=started,
    )


def write_metrics(run, metrics):
    """Adds what every run reports (`steps`, the first and last rounds'
    training loss, the document counts, `wall_seconds`) to `metrics`, writes
    `run.out_dir/metrics.json` and returns the dict."""
    import time

    losses = run.history.get("loss") or [float("nan")]
    metrics = {
        **metrics,
        "steps": run.steps,
        "train_loss_first_round": losses[0],
        "train_loss_last_round": losses[-1],
        "documents": {
            "train": len(run.prepared["train_documents"]),
            "validation": len(run.prepared["validation_documents"]),
        },
        "wall_seconds": round(time.time() - run.started, 1),
    }
    write_json(run.out_dir / "metrics.json", metrics)
    return metrics
