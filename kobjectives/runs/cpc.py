"""The Contrastive Predictive Coding run behind `kobjectives train cpc`."""

import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

from kobjectives.backbones import build_backbone
from kobjectives.backbones import check_backbone
from kobjectives.data.pipelines import finish
from kobjectives.data.pipelines import packed_windows_dataset
from kobjectives.objectives import ContrastivePredictiveCoding
from kobjectives.runs import common

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


def train(recipe, out_dir, data=None, tfds=None, data_dir=None, strategy="auto", log=print):
    """Trains, evaluates and exports a CPC model; returns the metrics dict.

    Writes into `out_dir`: `vocab.txt`, `recipe.json`, `checkpoints/`,
    `logs/` (TensorBoard), `loss_curve.png`, `model.keras` (the training
    objective), `saved_model/` (raw strings in, context representations
    out) and `metrics.json` (held-out `val_cpc_accuracy` next to the chance
    baseline `chance_cpc_accuracy`).
    """
    started = time.time()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    common.write_json(out_dir / "recipe.json", recipe)
    data_cfg, tok_cfg = recipe["data"], recipe["tokenizer"]
    model_cfg, cpc_cfg, train_cfg = recipe["model"], recipe["cpc"], recipe["training"]
    seed = int(train_cfg["seed"])
    keras.utils.set_random_seed(seed)
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

    train_docs, val_docs = common.load_split_documents(data_cfg, seed, data, tfds, data_dir, log)
    vocabulary, tokenizer = common.train_tokenizer(train_docs, tok_cfg, out_dir, log)

    batch_size = int(train_cfg["batch_size"])
    train_ds = cpc_dataset(
        train_docs, tokenizer, sequence_length, batch_size, repeat=True, seed=seed
    )
    val_ds = cpc_dataset(
        val_docs, tokenizer, sequence_length, batch_size, shuffle=False, cache=True,
    ).take(int(train_cfg["validation_batches"]))
    val_ds = common.finite_validation(val_ds, len(val_docs), batch_size)

    epochs, steps_per_epoch = common.rounds(train_cfg)
    strategy, jit_compile = common.training_strategy(train_cfg, strategy, log)
    with strategy.scope():
        backbone = build_backbone(
            model_cfg["backbone"], len(vocabulary), sequence_length, dropout=model_cfg["dropout"]
        )
        model = ContrastivePredictiveCoding(
            backbone,
            max_offset=max_offset,
            similarity=cpc_cfg["similarity"],
            temperature=cpc_cfg["temperature"],
            exclude_same_token=cpc_cfg["exclude_same_token"],
        )
        model.compile(
            optimizer=common.optimizer(train_cfg, steps_per_epoch * epochs),
            jit_compile=jit_compile,
        )
    log(f"model: ContrastivePredictiveCoding (K={max_offset}) over {model_cfg['backbone']} "
        f"({model.count_params():,} parameters), strategy "
        f"{type(strategy).__name__} x{strategy.num_replicas_in_sync}")

    history = model.fit(
        train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch, validation_data=val_ds,
        callbacks=common.run_callbacks(out_dir), verbose="auto", shuffle=False,
    ).history
    common.plot_history(history, out_dir / "loss_curve.png", "contrastive predictive coding",
                        steps_per_epoch)
    if not np.isfinite(history["loss"][-1]):
        raise RuntimeError("Training diverged (non-finite loss); see the checkpoints.")

    evaluation = model.evaluate(val_ds, return_dict=True, verbose=0)
    held_out = held_out_statistics(model, val_ds)

    # Serve text tokenized exactly as in training ("[SEP]" in the text is
    # not the separator).
    common.save_and_export(
        model, out_dir, tokenizer, sequence_length, special_tokens_in_strings=False
    )
    metrics = {
        "objective": "cpc",
        "backbone": model_cfg["backbone"],
        "max_offset": max_offset,
        "steps": steps_per_epoch * epochs,
        "val_loss": evaluation["loss"],
        "val_cpc_accuracy": evaluation["cpc_accuracy"],
        "val_cpc_accuracy_per_offset": held_out["accuracy_per_offset"],
        "chance_cpc_accuracy": held_out["chance_accuracy"],
        "chance_cpc_loss": held_out["chance_loss"],
        "train_loss_first_round": history["loss"][0],
        "train_loss_last_round": history["loss"][-1],
        "documents": {"train": len(train_docs), "validation": len(val_docs)},
        "wall_seconds": round(time.time() - started, 1),
    }
    common.write_json(out_dir / "metrics.json", metrics)
    per_offset = ", ".join(
        f"k={k + 1}: {a:.3f}" for k, a in enumerate(held_out["accuracy_per_offset"]) if a is not None
    )
    log(f"held-out CPC loss {metrics['val_loss']:.3f} (chance {metrics['chance_cpc_loss']:.3f}), "
        f"CPC accuracy {metrics['val_cpc_accuracy']:.4f} vs chance baseline "
        f"{metrics['chance_cpc_accuracy']:.4f} ({per_offset})")
    log(f"run folder: {out_dir}")
    return metrics
