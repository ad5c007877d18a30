"""The causal-LM run behind `kobjectives train clm` (and `kobjectives tune clm`).

Follows the run-module contract of `kobjectives.runs`: `SEARCH_SPACE`,
`prepare`, `make_dataset`, `build_model`, `train`.
"""

import math
import pathlib
import sys

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from kobjectives import data as data_lib
from kobjectives.backbones import build_backbone
from kobjectives.backbones import check_backbone
from kobjectives.data.pipelines import causal_lm_dataset
from kobjectives.export import export_saved_model
from kobjectives.layers import SequencePacker
from kobjectives.objectives import CausalLanguageModel
from kobjectives.ops.causal_lm import causal_lm_targets
from kobjectives.runs import common

# The natural hyperparameters of causal LM (KerasTuner specs, see
# `kobjectives.runs`).
SEARCH_SPACE = {
    "training.learning_rate": ("float", 3e-4, 5e-3, "log"),
    "training.warmup_steps": ("int", 0, 300),
    "training.weight_decay": ("float", 1e-3, 0.1, "log"),
    "model.dropout": ("choice", [0.0, 0.1]),
}


# Backbones whose attention cannot be reset at document boundaries, and why
# (see `CausalLanguageModel(reset_attention_at_boundaries=...)`).
RESET_UNSUPPORTED = {
    "gemma_tiny": "keras-hub's GemmaDecoderBlock takes only a padding mask and builds "
                  "its causal mask inside, so a per-document attention mask cannot "
                  "reach its attention.",
}


def check_recipe(recipe):
    """Raises early, naming the recipe key, on settings that cannot work."""
    model_cfg, clm_cfg = recipe["model"], recipe["clm"]
    check_backbone(model_cfg["backbone"], causal=True)
    if int(model_cfg["sequence_length"]) < 2:
        raise ValueError(
            "model.sequence_length must be >= 2 (a window holds a token and the "
            f"token it predicts). Received: {model_cfg['sequence_length']}."
        )
    if int(clm_cfg["chunk_size"]) < 1:
        raise ValueError(f"clm.chunk_size must be >= 1. Received: {clm_cfg['chunk_size']}.")
    if not 0.0 <= float(clm_cfg["label_smoothing"]) < 1.0:
        raise ValueError(
            f"clm.label_smoothing must be in [0, 1). Received: {clm_cfg['label_smoothing']}."
        )
    if clm_cfg.get("reset_attention", False) and model_cfg["backbone"] in RESET_UNSUPPORTED:
        raise ValueError(
            f"clm.reset_attention = true cannot be used with model.backbone = "
            f"{model_cfg['backbone']!r}: {RESET_UNSUPPORTED[model_cfg['backbone']]} Set "
            "clm.reset_attention = false (the loss is still reset at document "
            "boundaries) or use gpt2_tiny, gpt2_small or llama_tiny."
        )
    test_data = recipe["evaluation"]["test_data"]
    if test_data and not pathlib.Path(test_data).is_file():
        raise ValueError(
            f"evaluation.test_data {test_data!r} is not a file. Give a text file, or "
            "leave it empty to skip the test evaluation."
        )


def prepare(recipe, out_dir, data=None, tfds=None, data_dir=None, log=print):
    """Checks the recipe, then `common.prepare_documents`: documents split
    into train/validation and the trained tokenizer (`out_dir/vocab.txt`)."""
    check_recipe(recipe)
    return common.prepare_documents(recipe, out_dir, data, tfds, data_dir, log)


def make_packer(recipe, prepared, drop_remainder=False):
    """The run's `SequencePacker`: `[CLS] document [SEP]` packed into windows
    of `model.sequence_length` (the layout keras-hub's BERT preprocessors
    give a single text, so serving sees what training saw)."""
    tokenizer = prepared["tokenizer"]
    return SequencePacker(
        sequence_length=int(recipe["model"]["sequence_length"]),
        end_token_id=tokenizer.end_token_id,
        start_token_id=tokenizer.start_token_id if recipe["clm"]["start_token"] else None,
        pad_token_id=tokenizer.pad_token_id,
        drop_remainder=drop_remainder,
    )


def make_dataset(recipe, prepared, split, batch_size, input_context=None):
    """Packed `x` batches of `split`.

    `"train"`: shuffled, repeated. `"validation"`: at most
    `training.validation_batches` batches, cached, finite with a known
    cardinality. With `input_context` the documents are sharded by input
    pipeline and `batch_size` is per replica.
    """
    documents = common.split_documents(prepared, split, input_context)
    seed = int(recipe["training"]["seed"])
    packer = make_packer(recipe, prepared)
    tokenizer = prepared["tokenizer"]
    if split == "train":
        return causal_lm_dataset(documents, tokenizer, packer, batch_size, repeat=True, seed=seed)
    dataset = causal_lm_dataset(
        documents, tokenizer, packer, batch_size, shuffle=False, cache=True
    ).take(int(recipe["training"]["validation_batches"]))
    return common.finite_validation(dataset, len(documents), batch_size)


def documents_alone_dataset(recipe, prepared, documents, batch_size):
    """Each document packed on its own (`[CLS] text [SEP]` from position 0,
    cut into windows of `model.sequence_length`, the last one padded): no
    window holds two documents, as serving sees a text. In order, finite."""
    packer = make_packer(recipe, prepared)
    tokenizer = prepared["tokenizer"]
    dataset = tf.data.Dataset.from_tensor_slices(list(documents))
    dataset = dataset.map(lambda text: packer(tokenizer(text)))
    return dataset.unbatch().batch(batch_size)


def build_model(recipe, prepared):
    """The compiled `CausalLanguageModel` (call inside the strategy's scope):
    the recipe's decoder backbone, attention reset at document boundaries
    with `clm.reset_attention` (positions restarted with
    `clm.restart_positions`), AdamW with warm-up and cosine decay over
    `training.steps`."""
    model_cfg, train_cfg, clm_cfg = recipe["model"], recipe["training"], recipe["clm"]
    epochs, steps_per_epoch = common.rounds(train_cfg)
    backbone = build_backbone(
        model_cfg["backbone"], len(prepared["vocabulary"]), int(model_cfg["sequence_length"]),
        dropout=model_cfg["dropout"],
    )
    model = CausalLanguageModel(
        backbone,
        chunk_size=int(clm_cfg["chunk_size"]),
        label_smoothing=float(clm_cfg["label_smoothing"]),
        reset_attention_at_boundaries=bool(clm_cfg.get("reset_attention", False)),
        restart_positions=bool(clm_cfg.get("restart_positions", True)),
    )
    model.compile(
        optimizer=common.optimizer(train_cfg, steps_per_epoch * epochs),
        jit_compile=common.jit_compile_for(recipe),
    )
    return model


def unigram_log_probs(tokenizer, documents, start_token=True):
    """Add-one smoothed unigram log-probabilities of the training targets.

    The targets of a packed document `[CLS] tokens [SEP]` are its tokens
    and the end token (never the start token), so those are counted.
    """
    counts = np.ones(tokenizer.vocabulary_size(), np.float64)
    batches = tf.data.Dataset.from_tensor_slices(list(documents)).batch(1024).map(tokenizer)
    for ids in batches:
        counts += np.bincount(ids.flat_values.numpy(), minlength=len(counts))
        counts[tokenizer.end_token_id] += int((ids.row_lengths().numpy() > 0).sum())
    if start_token:
        counts[tokenizer.start_token_id] = 1.0
    return np.log(counts / counts.sum())


def held_out_statistics(model, dataset, unigram):
    """Token-level held-out statistics of the model and the baselines.

    Returns:
        dict with `tokens` (targets scored), `loss` (mean cross-entropy,
        nats), `perplexity`, `next_token_accuracy`, `unigram_perplexity`
        (the add-one unigram model of the training tokens on the same
        targets) and `unigram_accuracy` (always the most frequent token).
    """
    log_probs = tf.constant(unigram, tf.float32)
    most_frequent = int(np.argmax(unigram))

    @tf.function
    def sums(x):
        hidden = model(x, training=False)
        labels, weights = causal_lm_targets(x["token_ids"], x["padding_mask"], x["segment_ids"])
        losses, correct = model.token_losses(hidden, labels)
        unigram_losses = -tf.gather(log_probs, labels)
        hits = tf.cast(tf.equal(labels, most_frequent), tf.float32)
        return tf.stack([
            tf.reduce_sum(weights),
            tf.reduce_sum(weights * losses),
            tf.reduce_sum(weights * correct),
            tf.reduce_sum(weights * unigram_losses),
            tf.reduce_sum(weights * hits),
        ])

    total = np.zeros(5, np.float64)
    for x in dataset:
        total += sums(x).numpy().astype(np.float64)
    count, loss, correct, unigram_loss, hits = total
    if count == 0:
        raise ValueError("The held-out data has no next-token target to score.")
    return {
        "tokens": int(count),
        "loss": loss / count,
        "perplexity": math.exp(loss / count),
        "next_token_accuracy": correct / count,
        "unigram_perplexity": math.exp(unigram_loss / count),
        "unigram_accuracy": hits / count,
    }


class ServingPreprocessor(tf.Module):
    """Raw strings -> `{"token_ids", "padding_mask"}` for the causal LM's
    SavedModel: `[CLS] tokens` (no end token, so `next_token_logits` is the
    prediction after the text), right-padded, truncated to
    `sequence_length` (the beginning of a long text is kept)."""

    def __init__(self, tokenizer, sequence_length, start_token=True):
        super().__init__()
        self.tokenizer = tokenizer
        self.sequence_length = int(sequence_length)
        self.packer = keras_hub.layers.StartEndPacker(
            sequence_length=self.sequence_length,
            start_value=tokenizer.start_token_id if start_token else None,
            pad_value=tokenizer.pad_token_id,
            return_padding_mask=True,
        )

    def __call__(self, text):
        token_ids, padding_mask = self.packer(self.tokenizer(text))
        return {"token_ids": token_ids, "padding_mask": padding_mask}


def test_documents(recipe, log=print):
    """The documents of `evaluation.test_data`, or None when unset."""
    path = recipe["evaluation"]["test_data"]
    if not path:
        return None
    documents = data_lib.load_texts(data=path, format=recipe["data"]["format"])
    log(f"test data: {len(documents)} documents from {path}")
    return documents


def train(recipe, out_dir, data=None, tfds=None, data_dir=None, strategy="auto", log=print):
    """Trains, evaluates and exports a causal LM; returns the metrics dict.

    Writes into `out_dir`: `vocab.txt`, `recipe.json`, `checkpoints/`,
    `logs/` (TensorBoard), `loss_curve.png`, `model.keras` (the training
    objective), `saved_model/` (inference: raw strings in, `logits`,
    `next_token_logits`, `hidden_states` out) and `metrics.json` (held-out
    token perplexity next to the unigram baseline, on packed windows and on
    the held-out documents one per window (`val_documents_alone`); with
    `evaluation.test_data`, the same on that file).
    """
    check_recipe(recipe)
    test_docs = test_documents(recipe, log)
    model_cfg = recipe["model"]
    run = common.fit_run(
        sys.modules[__name__], recipe, out_dir, data, tfds, data_dir, strategy, log,
        title="causal LM",
        describe=lambda model: (
            f"CausalLanguageModel over {model_cfg['backbone']} ({model.count_params():,} parameters)"
        ),
    )
    model, prepared, evaluation = run.model, run.prepared, run.evaluation
    tokenizer = prepared["tokenizer"]
    batch_size = int(recipe["training"]["batch_size"])
    start_token = bool(recipe["clm"]["start_token"])
    unigram = unigram_log_probs(tokenizer, prepared["train_documents"], start_token)
    held_out = held_out_statistics(
        model, make_dataset(recipe, prepared, "validation", batch_size), unigram
    )
    # The same held-out documents one per window: no context from a
    # neighbouring document (the serving regime).
    alone = held_out_statistics(
        model,
        documents_alone_dataset(recipe, prepared, prepared["validation_documents"], batch_size),
        unigram,
    )
    test = None
    if test_docs is not None:
        test_ds = causal_lm_dataset(
            test_docs, tokenizer, make_packer(recipe, prepared), batch_size,
            shuffle=False, drop_remainder=False,
        )
        test = held_out_statistics(model, test_ds, unigram)

    export(model, common.save_objective(model, out_dir), prepared, recipe)
    metrics = {
        "objective": "clm",
        "backbone": model_cfg["backbone"],
        "sequence_length": int(model_cfg["sequence_length"]),
        "val_loss": evaluation["loss"],
        "val_perplexity": held_out["perplexity"],
        "val_next_token_accuracy": held_out["next_token_accuracy"],
        "unigram_perplexity": held_out["unigram_perplexity"],
        "unigram_accuracy": held_out["unigram_accuracy"],
        "val_tokens": held_out["tokens"],
        "reset_attention": bool(recipe["clm"].get("reset_attention", False)),
        "val_documents_alone": {
            "perplexity": alone["perplexity"],
            "next_token_accuracy": alone["next_token_accuracy"],
            "unigram_perplexity": alone["unigram_perplexity"],
            "unigram_accuracy": alone["unigram_accuracy"],
            "tokens": alone["tokens"],
        },
        "perplexity_unit": "per WordPiece token of the run's tokenizer (vocab.txt)",
    }
    if test is not None:
        metrics["test"] = dict(test, data=recipe["evaluation"]["test_data"])
    metrics = common.write_metrics(run, metrics)
    log(f"held-out perplexity {held_out['perplexity']:.2f} vs unigram baseline "
        f"{held_out['unigram_perplexity']:.2f}; next-token accuracy "
        f"{held_out['next_token_accuracy']:.4f} vs unigram baseline "
        f"{held_out['unigram_accuracy']:.4f} ({held_out['tokens']} tokens)")
    log(f"held-out documents one per window: perplexity {alone['perplexity']:.2f} vs "
        f"unigram baseline {alone['unigram_perplexity']:.2f} ({alone['tokens']} tokens)")
    if test is not None:
        log(f"test ({recipe['evaluation']['test_data']}): perplexity {test['perplexity']:.2f} "
            f"vs unigram baseline {test['unigram_perplexity']:.2f} ({test['tokens']} tokens)")
    log(f"run folder: {out_dir}")
    return metrics


def export(model, out_dir, prepared, recipe):
    """Writes `out_dir/saved_model`: raw strings in (`ServingPreprocessor`),
    `logits`, `next_token_logits`, `hidden_states` out, in float32.

    `prepared` is `prepare`'s dict or the `Run` that `kobjectives export`
    reloads (only its `tokenizer` is used)."""
    keras.mixed_precision.set_global_policy("float32")
    export_saved_model(
        model, pathlib.Path(out_dir) / "saved_model",
        preprocessor=ServingPreprocessor(
            prepared["tokenizer"], int(recipe["model"]["sequence_length"]),
            bool(recipe["clm"]["start_token"]),
        ),
        overwrite=True, special_tokens_in_strings=False,
    )
