"""The permutation-LM (XLNet) run behind `kobjectives train xlnet`.

Follows the run-module contract of `kobjectives.runs`: `SEARCH_SPACE`,
`prepare`, `make_dataset`, `build_model`, `train`.
"""

import sys

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
    """Checks the recipe, then `common.prepare_documents`: documents split
    into train/validation and the trained tokenizer (`out_dir/vocab.txt`)."""
    check_recipe(recipe)
    return common.prepare_documents(recipe, out_dir, data, tfds, data_dir, log)


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
    documents = common.split_documents(prepared, split, input_context)
    seed = int(recipe["training"]["seed"])
    sequence_length = int(recipe["model"]["sequence_length"])
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
        jit_compile=common.jit_compile_for(recipe),
    )
    return model


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
    check_recipe(recipe)
    backbone = recipe["model"]["backbone"]
    run = common.fit_run(
        sys.modules[__name__], recipe, out_dir, data, tfds, data_dir, strategy, log,
        title="permutation LM (XLNet)",
        describe=lambda model: (
            f"PermutationLanguageModel over {backbone} ({model.count_params():,} parameters)"
        ),
    )
    prepared, evaluation = run.prepared, run.evaluation
    vocabulary, tokenizer = prepared["vocabulary"], prepared["tokenizer"]
    unigram = unigram_baseline(
        common.token_counts(tokenizer, prepared["train_documents"]),
        make_dataset(recipe, prepared, "validation", int(recipe["training"]["batch_size"])),
        special_ids=tokenizer.special_token_ids,
    )

    common.save_and_export(run.model, out_dir, tokenizer, int(recipe["model"]["sequence_length"]))
    metrics = common.write_metrics(run, {
        "objective": "xlnet",
        "backbone": backbone,
        "val_loss": evaluation["loss"],
        "val_perplexity": evaluation["perplexity"],
        "val_target_accuracy": evaluation["masked_accuracy"],
        "unigram_target_accuracy": unigram["accuracy"],
        "unigram_perplexity": unigram["perplexity"],
        "unigram_token": vocabulary[unigram["token_id"]],
    })
    log(f"held-out perplexity {metrics['val_perplexity']:.2f} vs unigram baseline "
        f"{metrics['unigram_perplexity']:.2f}; target accuracy "
        f"{metrics['val_target_accuracy']:.4f} vs unigram baseline "
        f"{metrics['unigram_target_accuracy']:.4f} (always {metrics['unigram_token']!r})")
    log(f"run folder: {out_dir}")
    return metrics
