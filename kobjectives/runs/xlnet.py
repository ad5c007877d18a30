"""The permutation-LM (XLNet) run behind `kobjectives train xlnet`.

Follows the run-module contract of `kobjectives.runs`: `SEARCH_SPACE`,
`prepare`, `make_dataset`, `build_model`, `train`.
"""

import pathlib
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from kobjectives.backbones import build_backbone
from kobjectives.backbones import check_backbone
from kobjectives.data.pipelines import finish
from kobjectives.data.pipelines import packed_windows_dataset
from kobjectives.layers import PermutationLMMasker
from kobjectives.objectives import PermutationLanguageModel
from kobjectives.runs import common

# KerasTuner specs of the natural hyperparameters (see `kobjectives.runs`).
# `plm.*` change the training targets; every trial is scored on the fixed
# validation targets of the base recipe.
SEARCH_SPACE = {
    "training.learning_rate": ("float", 2e-4, 3e-3, "log"),
    "training.warmup_steps": ("int", 0, 300),
    "model.dropout": ("choice", [0.0, 0.1]),
    "plm.plm_probability": ("float", 0.1, 0.25, "linear"),
    "plm.max_span_length": ("int", 1, 8),
}

_X_KEYS = ("token_ids", "padding_mask", "segment_ids", "perm_mask", "target_mapping")


def check_recipe(recipe):
    """Fails early, naming the recipe key, on settings that cannot work."""
    check_backbone(recipe["model"]["backbone"], kind="permutation")
    plm_cfg = recipe["plm"]
    length = int(recipe["model"]["sequence_length"])
    probability = plm_cfg["plm_probability"]
    if not 0.0 < float(probability) <= 1.0:
        raise ValueError(
            f"plm.plm_probability must be in (0, 1]. Received: {probability}. XLNet uses 1/6."
        )
    if int(plm_cfg["max_span_length"]) < 1:
        raise ValueError(
            f"plm.max_span_length must be >= 1. Received: {plm_cfg['max_span_length']}."
        )
    if not 1 <= int(plm_cfg["num_predict"]) <= length:
        raise ValueError(
            f"plm.num_predict must be in [1, model.sequence_length={length}]. "
            f"Received: {plm_cfg['num_predict']}."
        )
    size = int(plm_cfg["permutation_size"])
    if size < 0 or (size and length % size):
        raise ValueError(
            f"plm.permutation_size must be 0 (one permutation of the whole sequence) or "
            f"divide model.sequence_length={length}. Received: {size}."
        )
    if length < 4:
        raise ValueError(f"model.sequence_length must be >= 4. Received: {length}.")


def prepare(recipe, out_dir, data=None, tfds=None, data_dir=None, log=print):
    """Checks the recipe, loads and splits the documents, trains the
    tokenizer (saved as `out_dir/vocab.txt`).

    Returns:
        dict with `train_documents`, `validation_documents`, `vocabulary`,
        `tokenizer`.
    """
    check_recipe(recipe)
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
    """The run's `PermutationLMMasker`, configured by `recipe["plm"]`."""
    plm_cfg = recipe["plm"]
    tokenizer = prepared["tokenizer"]
    return PermutationLMMasker(
        plm_probability=float(plm_cfg["plm_probability"]),
        max_span_length=int(plm_cfg["max_span_length"]),
        num_predict=int(plm_cfg["num_predict"]),
        permutation_size=int(plm_cfg["permutation_size"]) or None,
        unselectable_token_ids=sorted(set(tokenizer.special_token_ids)),
        padding_token_id=tokenizer.pad_token_id,
        seed=int(recipe["training"]["seed"]),
    )


def _split_features(features):
    x = {name: features[name] for name in _X_KEYS}
    return x, features["target_ids"], features["target_weights"]


def make_dataset(recipe, prepared, split, batch_size, input_context=None):
    """`(x, target_ids, target_weights)` batches of `split`.

    `"train"`: shuffled, repeated, new targets and orders every epoch.
    `"validation"`: at most `training.validation_batches` batches with fixed
    targets (cached), finite with a known cardinality. With `input_context`
    the documents are sharded by input pipeline and `batch_size` is per
    replica.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation'. Received: {split!r}.")
    seed = int(recipe["training"]["seed"])
    sequence_length = int(recipe["model"]["sequence_length"])
    documents = prepared[f"{split}_documents"]
    if input_context is not None and input_context.num_input_pipelines > 1:
        documents = documents[input_context.input_pipeline_id::input_context.num_input_pipelines]
    masker = make_masker(recipe, prepared)
    training = split == "train"
    seed = seed if training else seed + 1
    dataset = packed_windows_dataset(
        documents, prepared["tokenizer"], sequence_length, batch_size, shuffle=training, seed=seed
    )
    dataset = masker.map_over(dataset, seed=seed, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.map(_split_features, num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        return finish(dataset, repeat=True)
    # Take before caching, so the cache is complete after one pass and every
    # pass sees the same targets and orders.
    dataset = finish(dataset.take(int(recipe["training"]["validation_batches"])), cache=True)
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
    """The compiled `PermutationLanguageModel` (call inside the strategy's
    scope): the recipe's XLNet backbone, AdamW with warm-up and cosine decay
    over `training.steps`."""
    check_recipe(recipe)
    model_cfg, train_cfg = recipe["model"], recipe["training"]
    epochs, steps_per_epoch = common.rounds(train_cfg)
    backbone = build_backbone(
        model_cfg["backbone"], len(prepared["vocabulary"]), int(model_cfg["sequence_length"]),
        dropout=model_cfg["dropout"],
    )
    model = PermutationLanguageModel(backbone, mask_token_id=prepared["tokenizer"].mask_token_id)
    model.compile(
        optimizer=common.optimizer(train_cfg, steps_per_epoch * epochs),
        jit_compile=jit_compile_for(recipe),
    )
    return model


def unigram_counts(tokenizer, documents):
    """Token counts of the tokenized documents, special tokens zeroed."""
    counts = np.zeros(tokenizer.vocabulary_size(), np.int64)
    batches = tf.data.Dataset.from_tensor_slices(list(documents)).batch(1024).map(tokenizer)
    for ids in batches:
        counts += np.bincount(ids.flat_values.numpy(), minlength=len(counts))
    counts[list(tokenizer.special_token_ids)] = 0
    return counts


def unigram_baseline(counts, dataset, special_ids=()):
    """Accuracy and perplexity at the validation targets of a unigram model
    of the training tokens (add-one smoothed over the non-special ids):
    the accuracy of always predicting the most frequent token, and
    `exp(mean -log p_unigram(target))`."""
    smoothed = counts.astype(np.float64) + 1.0
    smoothed[list(special_ids)] = 0.0  # never targets
    with np.errstate(divide="ignore"):
        log_p = np.log(smoothed / smoothed.sum())
    most_frequent = int(counts.argmax())
    hits = nll = total = 0.0
    for _, target_ids, weights in dataset:
        ids, w = target_ids.numpy(), weights.numpy()
        hits += float(((ids == most_frequent) * w).sum())
        real = w > 0  # unused slots hold [PAD], whose probability is 0
        nll += float((-log_p[ids[real]] * w[real]).sum())
        total += float(w.sum())
    if not total:
        raise ValueError("The validation data has no target to score.")
    return {"accuracy": hits / total, "perplexity": float(np.exp(nll / total)),
            "token_id": most_frequent}


def train(recipe, out_dir, data=None, tfds=None, data_dir=None, strategy="auto", log=print):
    """Trains, evaluates and exports a permutation LM; returns the metrics dict.

    Writes into `out_dir`: `vocab.txt`, `recipe.json`, `checkpoints/`,
    `logs/` (TensorBoard), `loss_curve.png`, `model.keras` (the training
    objective), `saved_model/` (raw strings in: `sequence_output` and
    `plm_logits`, the prediction at each `[MASK]`) and `metrics.json`
    (held-out target accuracy and perplexity next to the unigram baseline).
    """
    started = time.time()
    check_recipe(recipe)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    common.write_json(out_dir / "recipe.json", recipe)
    model_cfg, train_cfg = recipe["model"], recipe["training"]
    keras.utils.set_random_seed(int(train_cfg["seed"]))

    prepared = prepare(recipe, out_dir, data, tfds, data_dir, log)
    vocabulary, tokenizer = prepared["vocabulary"], prepared["tokenizer"]

    epochs, steps_per_epoch = common.rounds(train_cfg)
    strategy, _ = common.training_strategy(train_cfg, strategy, log)
    train_ds, val_ds = common.training_datasets(sys.modules[__name__], recipe, prepared, strategy)
    with strategy.scope():
        model = build_model(recipe, prepared)
    log(f"model: PermutationLanguageModel over {model_cfg['backbone']} "
        f"({model.count_params():,} parameters), strategy "
        f"{type(strategy).__name__} x{strategy.num_replicas_in_sync}")

    history = common.round_history(out_dir, model.fit(
        train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch, validation_data=val_ds,
        callbacks=common.run_callbacks(out_dir), verbose="auto", shuffle=False,
    ).history)
    common.plot_history(history, out_dir / "loss_curve.png", "permutation LM (XLNet)",
                        steps_per_epoch)

    evaluation = model.evaluate(val_ds, return_dict=True, verbose=0)
    batch_size = int(train_cfg["batch_size"])
    unigram = unigram_baseline(
        unigram_counts(tokenizer, prepared["train_documents"]),
        make_dataset(recipe, prepared, "validation", batch_size),
        special_ids=tokenizer.special_token_ids,
    )

    common.save_and_export(model, out_dir, tokenizer, int(model_cfg["sequence_length"]))
    metrics = {
        "objective": "xlnet",
        "backbone": model_cfg["backbone"],
        "steps": steps_per_epoch * epochs,
        "val_loss": evaluation["loss"],
        "val_perplexity": evaluation["perplexity"],
        "val_target_accuracy": evaluation["masked_accuracy"],
        "unigram_target_accuracy": unigram["accuracy"],
        "unigram_perplexity": unigram["perplexity"],
        "unigram_token": vocabulary[unigram["token_id"]],
        "train_loss_first_round": history["loss"][0],
        "train_loss_last_round": history["loss"][-1],
        "documents": {
            "train": len(prepared["train_documents"]),
            "validation": len(prepared["validation_documents"]),
        },
        "wall_seconds": round(time.time() - started, 1),
    }
    common.write_json(out_dir / "metrics.json", metrics)
    log(f"held-out perplexity {metrics['val_perplexity']:.2f} vs unigram baseline "
        f"{metrics['unigram_perplexity']:.2f}; target accuracy "
        f"{metrics['val_target_accuracy']:.4f} vs unigram baseline "
        f"{metrics['unigram_target_accuracy']:.4f} (always {metrics['unigram_token']!r})")
    log(f"run folder: {out_dir}")
    return metrics
