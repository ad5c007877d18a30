"""The masked-LM run behind `kobjectives train mlm` (and `kobjectives tune mlm`).

Follows the run-module contract of `kobjectives.runs`: `SEARCH_SPACE`,
`prepare`, `make_dataset`, `build_model`, `train`.
"""

import pathlib
import sys
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from kobjectives import data as data_lib
from kobjectives.backbones import build_backbone
from kobjectives.backbones import check_backbone
from kobjectives.data.pipelines import masked_lm_dataset
from kobjectives.layers import MaskedLMMasker
from kobjectives.objectives import MaskedLanguageModel
from kobjectives.runs import common

# The natural hyperparameters of masked LM (KerasTuner specs, see
# `kobjectives.runs`). `masking.*` belong to the data pipeline: a trial's
# values change the training masks (the tuner scores every trial on the same
# fixed validation masks of the base recipe).
SEARCH_SPACE = {
    "training.learning_rate": ("float", 1e-4, 3e-3, "log"),
    "training.warmup_steps": ("int", 0, 300),
    "training.weight_decay": ("float", 1e-3, 0.1, "log"),
    "model.dropout": ("choice", [0.0, 0.1]),
    "masking.mask_selection_rate": ("float", 0.1, 0.25, "linear"),
}


def most_frequent_token(tokenizer, documents):
    """The most frequent non-special token id of the tokenized documents."""
    counts = np.zeros(tokenizer.vocabulary_size(), np.int64)
    batches = tf.data.Dataset.from_tensor_slices(documents).batch(1024).map(tokenizer)
    for ids in batches:
        counts += np.bincount(ids.flat_values.numpy(), minlength=len(counts))
    counts[list(tokenizer.special_token_ids)] = 0
    return int(counts.argmax())


def unigram_masked_accuracy(most_frequent, dataset):
    """Accuracy of always predicting `most_frequent` at the masked positions.

    Args:
        most_frequent: int, the most frequent training token id.
        dataset: the `(x, mask_ids, mask_weights)` validation dataset.

    Returns:
        The accuracy over the weighted masked positions.
    """
    hits = total = 0.0
    for _, mask_ids, mask_weights in dataset:
        weights = mask_weights.numpy()
        hits += float(((mask_ids.numpy() == most_frequent) * weights).sum())
        total += float(weights.sum())
    return hits / total if total else 0.0


def _ignore_pooler_warning():
    # Masked LM does not use BERT's pooler; Keras warns that it gets no gradient.
    warnings.filterwarnings(
        "ignore", message=r"Gradients do not exist for variables \['pooled_dense"
    )


def prepare(recipe, out_dir, data=None, tfds=None, data_dir=None, log=print):
    """Checks the recipe, loads and splits the documents, trains the
    tokenizer (saved as `out_dir/vocab.txt`).

    Returns:
        dict with `train_documents`, `validation_documents`, `vocabulary`,
        `tokenizer`.
    """
    _ignore_pooler_warning()
    check_backbone(recipe["model"]["backbone"], causal=False)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = int(recipe["training"]["seed"])
    train_docs, val_docs = common.load_split_documents(
        recipe["data"], seed, data, tfds, data_dir, log
    )
    vocabulary, tokenizer = common.train_tokenizer(train_docs, recipe["tokenizer"], out_dir, log)
    return {
        "train_documents": train_docs,
        "validation_documents": val_docs,
        "vocabulary": vocabulary,
        "tokenizer": tokenizer,
    }


def make_masker(recipe, prepared):
    """The run's `MaskedLMMasker`, configured by `recipe["masking"]`."""
    mask_cfg = recipe["masking"]
    tokenizer, vocabulary = prepared["tokenizer"], prepared["vocabulary"]
    return MaskedLMMasker(
        vocabulary_size=len(vocabulary),
        mask_selection_rate=mask_cfg["mask_selection_rate"],
        mask_token_id=tokenizer.mask_token_id,
        mask_selection_length=mask_cfg["mask_selection_length"],
        unselectable_token_ids=sorted(set(tokenizer.special_token_ids)),
        mask_token_rate=mask_cfg["mask_token_rate"],
        random_token_rate=mask_cfg["random_token_rate"],
        strategy=mask_cfg["strategy"],
        continuation_token_ids=(
            data_lib.continuation_token_ids(vocabulary)
            if mask_cfg["strategy"] == "whole_word" else None
        ),
        seed=int(recipe["training"]["seed"]),
    )


def make_dataset(recipe, prepared, split, batch_size, input_context=None):
    """Masked `(x, mask_ids, mask_weights)` batches of `split`.

    `"train"`: shuffled, repeated, fresh masks every epoch. `"validation"`:
    at most `training.validation_batches` batches with fixed masks (cached),
    finite with a known cardinality. With `input_context` the documents are
    sharded by input pipeline and `batch_size` is per replica.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation'. Received: {split!r}.")
    seed = int(recipe["training"]["seed"])
    sequence_length = int(recipe["model"]["sequence_length"])
    documents = prepared[f"{split}_documents"]
    if input_context is not None and input_context.num_input_pipelines > 1:
        documents = documents[input_context.input_pipeline_id::input_context.num_input_pipelines]
    masker = make_masker(recipe, prepared)
    tokenizer = prepared["tokenizer"]
    if split == "train":
        return masked_lm_dataset(
            documents, tokenizer, masker, sequence_length, batch_size, repeat=True, seed=seed
        )
    dataset = masked_lm_dataset(
        documents, tokenizer, masker, sequence_length, batch_size, shuffle=False,
        seed=seed + 1, cache=True,
    ).take(int(recipe["training"]["validation_batches"]))
    return common.finite_validation(dataset, len(documents), batch_size)


def jit_compile_for(recipe, strategy=None):
    """`training.jit_compile`, off for a multi-replica CPU strategy (XLA
    cannot compile a step whose replicas are logical CPU devices)."""
    strategy = strategy or tf.distribute.get_strategy()
    jit = bool(recipe["training"]["jit_compile"])
    if jit and strategy.num_replicas_in_sync > 1 and not tf.config.list_logical_devices("GPU"):
        return False
    return jit


def build_model(recipe, prepared):
    """The compiled `MaskedLanguageModel` (call inside the strategy's scope):
    the recipe's backbone, AdamW with warm-up and cosine decay over
    `training.steps`."""
    _ignore_pooler_warning()
    model_cfg, train_cfg = recipe["model"], recipe["training"]
    epochs, steps_per_epoch = common.rounds(train_cfg)
    backbone = build_backbone(
        model_cfg["backbone"], len(prepared["vocabulary"]), int(model_cfg["sequence_length"]),
        dropout=model_cfg["dropout"],
    )
    model = MaskedLanguageModel(backbone)
    model.compile(
        optimizer=common.optimizer(train_cfg, steps_per_epoch * epochs),
        jit_compile=jit_compile_for(recipe),
    )
    return model


def train(recipe, out_dir, data=None, tfds=None, data_dir=None, strategy="auto", log=print):
    """Trains, evaluates and exports a masked LM; returns the metrics dict.

    Writes into `out_dir`: `vocab.txt`, `recipe.json`, `checkpoints/`,
    `logs/` (TensorBoard), `loss_curve.png`, `model.keras` (the training
    objective), `saved_model/` (inference, raw strings in) and `metrics.json`.
    """
    started = time.time()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    common.write_json(out_dir / "recipe.json", recipe)
    model_cfg, train_cfg = recipe["model"], recipe["training"]
    keras.utils.set_random_seed(int(train_cfg["seed"]))

    prepared = prepare(recipe, out_dir, data, tfds, data_dir, log)
    vocabulary, tokenizer = prepared["vocabulary"], prepared["tokenizer"]

    epochs, steps_per_epoch = common.rounds(train_cfg)
    strategy, _ = common.training_strategy(train_cfg, strategy, log)
    train_ds, val_ds = common.training_datasets(
        sys.modules[__name__], recipe, prepared, strategy
    )
    with strategy.scope():
        model = build_model(recipe, prepared)
    log(f"model: MaskedLanguageModel over {model_cfg['backbone']} "
        f"({model.count_params():,} parameters), strategy "
        f"{type(strategy).__name__} x{strategy.num_replicas_in_sync}")

    history = common.round_history(out_dir, model.fit(
        train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch, validation_data=val_ds,
        callbacks=common.run_callbacks(out_dir), verbose="auto", shuffle=False,
    ).history)
    common.plot_history(history, out_dir / "loss_curve.png", "masked LM", steps_per_epoch)

    evaluation = model.evaluate(val_ds, return_dict=True, verbose=0)
    unigram_id = most_frequent_token(tokenizer, prepared["train_documents"])
    unigram = unigram_masked_accuracy(
        unigram_id, make_dataset(recipe, prepared, "validation", int(train_cfg["batch_size"]))
    )

    common.save_and_export(model, out_dir, tokenizer, int(model_cfg["sequence_length"]))
    metrics = {
        "objective": "mlm",
        "backbone": model_cfg["backbone"],
        "steps": steps_per_epoch * epochs,
        "val_loss": evaluation["loss"],
        "val_perplexity": evaluation["perplexity"],
        "val_masked_accuracy": evaluation["masked_accuracy"],
        "unigram_masked_accuracy": unigram,
        "unigram_token": vocabulary[unigram_id],
        "train_loss_first_round": history["loss"][0],
        "train_loss_last_round": history["loss"][-1],
        "documents": {
            "train": len(prepared["train_documents"]),
            "validation": len(prepared["validation_documents"]),
        },
        "wall_seconds": round(time.time() - started, 1),
    }
    common.write_json(out_dir / "metrics.json", metrics)
    log(f"held-out perplexity {metrics['val_perplexity']:.2f}, masked accuracy "
        f"{metrics['val_masked_accuracy']:.4f} vs unigram baseline {unigram:.4f} "
        f"(always {vocabulary[unigram_id]!r})")
    log(f"run folder: {out_dir}")
    return metrics
