"""The Contrastive Predictive Coding run behind `kobjectives train cpc`."""

import sys

import numpy as np
import tensorflow as tf

from kobjectives.backbones import build_backbone
from kobjectives.backbones import check_backbone
from kobjectives.data.pipelines import finish
from kobjectives.data.pipelines import packed_windows_dataset
from kobjectives.objectives import ContrastivePredictiveCoding
from kobjectives.runs import common

# The natural hyperparameters of CPC (see `kobjectives.runs`).
SEARCH_SPACE = {
    "training.learning_rate": ("float", 3e-4, 5e-3, "log"),
    "cpc.temperature": ("float", 0.03, 0.5, "log"),
    "cpc.max_offset": ("int", 1, 8),
    "cpc.similarity": ("choice", ["cosine", "dot"]),
}


# CPC needs a causal context network: small keras-hub decoders built from
# config (no download), by name. Vocabulary size and sequence length come
# from the run.
def cpc_dataset(
    documents, tokenizer, sequence_length, batch_size, shuffle=True, repeat=False,
    seed=0, cache=False,
):
    """Documents to `{"token_ids", "padding_mask", "segment_ids"}` batches for
    CPC: `kobjectives.data.packed_windows_dataset`, cached / repeated as asked."""
    dataset = packed_windows_dataset(
        documents, tokenizer, sequence_length, batch_size, shuffle=shuffle, seed=seed
    )
    return finish(dataset, cache=cache, repeat=repeat)


def held_out_statistics(model, dataset):
    """Per-offset held-out CPC accuracy and the chance baseline.

    The chance accuracy of a pair is `1 / num_candidates` (a uniform guess
    among the positive and its negatives) and the chance loss
    `log(num_candidates)`; like the metric, both are averaged over the
    counted pairs of each offset, then over the offsets.

    Returns:
        dict with `accuracy_per_offset` (list), `accuracy`, `chance_accuracy`,
        `chance_loss`.
    """

    @tf.function
    def terms(x):
        outputs = model(x, training=False)
        t = model.cpc_terms(x, outputs)
        weights = t.weights
        candidates = tf.maximum(t.num_candidates, 1.0)
        return tf.stack([
            tf.reduce_sum(t.correct, axis=[0, 1]),
            tf.reduce_sum(weights, axis=[0, 1]),
            tf.reduce_sum(weights / candidates, axis=[0, 1]),
            tf.reduce_sum(weights * tf.math.log(candidates), axis=[0, 1]),
        ])

    sums = 0.0
    for x in dataset:
        sums = sums + terms(x).numpy().astype(np.float64)
    correct, count, chance, chance_loss = sums
    present = count > 0
    if not present.any():
        raise ValueError("The validation data has no pair to score (all padding?).")

    def mean(values):
        return float((values[present] / count[present]).mean())

    return {
        "accuracy_per_offset": [
            float(c / n) if n else None for c, n in zip(correct, count)
        ],
        "accuracy": mean(correct),
        "chance_accuracy": mean(chance),
        "chance_loss": mean(chance_loss),
    }


def check_recipe(recipe):
    """Checks the CPC recipe values; the error names the key and the fix."""
    model_cfg, cpc_cfg = recipe["model"], recipe["cpc"]
    sequence_length = int(model_cfg["sequence_length"])
    max_offset = int(cpc_cfg["max_offset"])
    check_backbone(model_cfg["backbone"], causal=True)
    if not 1 <= max_offset < sequence_length:
        raise ValueError(
            f"cpc.max_offset must be >= 1 and smaller than model.sequence_length "
            f"({sequence_length}). Received: {max_offset}."
        )
    if not float(cpc_cfg["temperature"]) > 0.0:
        raise ValueError(
            f"cpc.temperature must be > 0. Received: {cpc_cfg['temperature']}."
        )
    if cpc_cfg["similarity"] not in ("cosine", "dot"):
        raise ValueError(
            f"cpc.similarity must be 'cosine' or 'dot'. Received: {cpc_cfg['similarity']!r}."
        )


def prepare(recipe, out_dir, data=None, tfds=None, data_dir=None, log=print):
    """Checks the recipe, then `common.prepare_documents`: documents split
    into train/validation and the trained tokenizer (`out_dir/vocab.txt`)."""
    check_recipe(recipe)
    return common.prepare_documents(recipe, out_dir, data, tfds, data_dir, log)


def make_dataset(recipe, prepared, split, batch_size, input_context=None):
    """`{"token_ids", "padding_mask", "segment_ids"}` batches of `split`.

    `"train"`: shuffled, repeated. `"validation"`: at most
    `training.validation_batches` batches, cached, finite with a known
    cardinality. With `input_context` the documents are sharded by input
    pipeline and `batch_size` is per replica.
    """
    documents = common.split_documents(prepared, split, input_context)
    seed = int(recipe["training"]["seed"])
    sequence_length = int(recipe["model"]["sequence_length"])
    tokenizer = prepared["tokenizer"]
    if split == "train":
        return cpc_dataset(documents, tokenizer, sequence_length, batch_size, repeat=True, seed=seed)
    dataset = cpc_dataset(
        documents, tokenizer, sequence_length, batch_size, shuffle=False, cache=True,
    ).take(int(recipe["training"]["validation_batches"]))
    return common.finite_validation(dataset, len(documents), batch_size)


def build_model(recipe, prepared):
    """The compiled `ContrastivePredictiveCoding` (call inside the strategy's
    scope): the recipe's causal backbone, AdamW with warm-up and cosine decay
    over `training.steps`."""
    check_recipe(recipe)
    model_cfg, cpc_cfg, train_cfg = recipe["model"], recipe["cpc"], recipe["training"]
    epochs, steps_per_epoch = common.rounds(train_cfg)
    backbone = build_backbone(
        model_cfg["backbone"], len(prepared["vocabulary"]), int(model_cfg["sequence_length"]),
        dropout=model_cfg["dropout"],
    )
    model = ContrastivePredictiveCoding(
        backbone,
        max_offset=int(cpc_cfg["max_offset"]),
        similarity=cpc_cfg["similarity"],
        temperature=cpc_cfg["temperature"],
        exclude_same_token=cpc_cfg["exclude_same_token"],
    )
    model.compile(
        optimizer=common.optimizer(train_cfg, steps_per_epoch * epochs),
        jit_compile=common.jit_compile_for(recipe),
    )
    return model


def train(recipe, out_dir, data=None, tfds=None, data_dir=None, strategy="auto", log=print):
    """Trains, evaluates and exports a CPC model; returns the metrics dict.

    Writes into `out_dir`: `vocab.txt`, `recipe.json`, `checkpoints/`,
    `logs/` (TensorBoard), `history.csv`, `loss_curve.png`, `model.keras`
    (the training objective), `saved_model/` (raw strings in, context
    representations out) and `metrics.json` (held-out `val_cpc_accuracy`
    next to the chance baseline `chance_cpc_accuracy`). Rerunning the same
    command after a kill resumes from `backup/`.
    """
    check_recipe(recipe)
    model_cfg = recipe["model"]
    max_offset = int(recipe["cpc"]["max_offset"])
    run = common.fit_run(
        sys.modules[__name__], recipe, out_dir, data, tfds, data_dir, strategy, log,
        title="contrastive predictive coding",
        describe=lambda model: (
            f"ContrastivePredictiveCoding (K={max_offset}) over {model_cfg['backbone']} "
            f"({model.count_params():,} parameters)"
        ),
    )
    prepared, evaluation = run.prepared, run.evaluation
    held_out = held_out_statistics(
        run.model, make_dataset(recipe, prepared, "validation", int(recipe["training"]["batch_size"]))
    )

    # Serve text tokenized exactly as in training ("[SEP]" in the text is
    # not the separator).
    common.save_and_export(
        run.model, out_dir, prepared["tokenizer"], int(model_cfg["sequence_length"]),
        special_tokens_in_strings=False,
    )
    metrics = common.write_metrics(run, {
        "objective": "cpc",
        "backbone": model_cfg["backbone"],
        "max_offset": max_offset,
        "val_loss": evaluation["loss"],
        "val_cpc_accuracy": evaluation["cpc_accuracy"],
        "val_cpc_accuracy_per_offset": held_out["accuracy_per_offset"],
        "chance_cpc_accuracy": held_out["chance_accuracy"],
        "chance_cpc_loss": held_out["chance_loss"],
    })
    per_offset = ", ".join(
        f"k={k + 1}: {a:.3f}" for k, a in enumerate(held_out["accuracy_per_offset"]) if a is not None
    )
    log(f"held-out CPC loss {metrics['val_loss']:.3f} (chance {metrics['chance_cpc_loss']:.3f}), "
        f"CPC accuracy {metrics['val_cpc_accuracy']:.4f} vs chance baseline "
        f"{metrics['chance_cpc_accuracy']:.4f} ({per_offset})")
    log(f"run folder: {out_dir}")
    return metrics
