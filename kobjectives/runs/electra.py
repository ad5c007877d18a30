"""The ELECTRA run behind `kobjectives train electra` (and `kobjectives tune electra`).

Follows the run-module contract of `kobjectives.runs`: `SEARCH_SPACE`,
`prepare`, `make_dataset`, `build_model`, `train`.
"""

import pathlib
import sys
import warnings

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from kobjectives.backbones import BACKBONES
from kobjectives.backbones import build_backbone
from kobjectives.backbones import check_backbone
from kobjectives.data.pipelines import finish
from kobjectives.data.pipelines import packed_windows_dataset
from kobjectives.objectives import ElectraPretrainer
from kobjectives.runs import common
from kobjectives.runs.mlm import make_masker
from kobjectives.runs.mlm import most_frequent_token

# The natural hyperparameters of ELECTRA (KerasTuner specs, see
# `kobjectives.runs`). Trials are compared on `val_loss`, so only settings that
# leave the task and the loss scale alone are searched: the loss weights, the
# sampling temperature and the generator's size change what `val_loss`
# measures (a weaker generator makes replacements easier to spot).
SEARCH_SPACE = {
    "training.learning_rate": ("float", 2e-4, 3e-3, "log"),
    "training.warmup_steps": ("int", 0, 200),
    "training.weight_decay": ("float", 1e-3, 0.1, "log"),
    "model.dropout": ("choice", [0.0, 0.1]),
}

_X_KEYS = ("token_ids", "padding_mask", "segment_ids", "mask_positions", "mask_ids", "mask_weights")


def _ignore_pooler_warning():
    # ELECTRA does not use the backbones' poolers; Keras warns that they get no gradient.
    warnings.filterwarnings(
        "ignore", message=r"Gradients do not exist for variables \['pooled_dense"
    )


def check_generator_config(model_config):
    """Raises (before any work) unless the generator can share the
    discriminator's token embeddings: an encoder backbone whose embedding
    size does not follow `hidden_dim` (`embedding_dim` in its config, as
    `electra_tiny`), or a generator as wide as the discriminator; and a
    generator width divisible by its heads."""
    name = model_config["backbone"]
    check_backbone(name, causal=False)
    hidden, heads = int(model_config["generator_hidden_dim"]), int(model_config["generator_num_heads"])
    if hidden < 1 or heads < 1 or hidden % heads:
        raise ValueError(
            f"model.generator_hidden_dim ({hidden}) must be a positive multiple of "
            f"model.generator_num_heads ({heads})."
        )
    config = BACKBONES[name][1]
    if "embedding_dim" not in config and hidden != config["hidden_dim"]:
        raise ValueError(
            f"Backbone {name!r} ties its token embedding size to hidden_dim, so a "
            f"generator with hidden_dim={hidden} cannot share the discriminator's "
            f"{config['hidden_dim']}-wide token embeddings. Use backbone 'electra_tiny' "
            f"(embedding_dim is separate) or set model.generator_hidden_dim="
            f"{config['hidden_dim']}."
        )


def prepare(recipe, out_dir, data=None, tfds=None, data_dir=None, log=print):
    """Checks the recipe, then `common.prepare_documents`: documents split
    into train/validation and the trained tokenizer (`out_dir/vocab.txt`)."""
    _ignore_pooler_warning()
    check_generator_config(recipe["model"])
    electra_cfg = recipe["electra"]
    if not float(electra_cfg["temperature"]) > 0.0:
        raise ValueError(
            f"electra.temperature must be > 0. Received: {electra_cfg['temperature']}."
        )
    for key in ("generator_weight", "discriminator_weight"):
        if not float(electra_cfg[key]) >= 0.0:
            raise ValueError(f"electra.{key} must be >= 0. Received: {electra_cfg[key]}.")
    return common.prepare_documents(recipe, out_dir, data, tfds, data_dir, log)


def electra_dataset(documents, tokenizer, masker, sequence_length, batch_size,
                    shuffle=True, repeat=False, seed=0, cache=False):
    """Documents to `x` batches for `ElectraPretrainer`: packed windows masked
    by `masker` (a fresh seeded mask per element and epoch), all the masker's
    outputs in one dict (no `y`)."""
    dataset = packed_windows_dataset(
        documents, tokenizer, sequence_length, batch_size, shuffle=shuffle, seed=seed
    )

    def select(features):
        return {key: features[key] for key in _X_KEYS}

    dataset = masker.map_over(dataset, seed=seed, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.map(select, num_parallel_calls=tf.data.AUTOTUNE)
    return finish(dataset, cache=cache, repeat=repeat)


def make_dataset(recipe, prepared, split, batch_size, input_context=None):
    """ELECTRA `x` batches of `split`.

    `"train"`: shuffled, repeated, fresh masks every epoch. `"validation"`:
    at most `training.validation_batches` batches with fixed masks (cached),
    finite with a known cardinality. With `input_context` the documents are
    sharded by input pipeline and `batch_size` is per replica.
    """
    documents = common.split_documents(prepared, split, input_context)
    seed = int(recipe["training"]["seed"])
    sequence_length = int(recipe["model"]["sequence_length"])
    masker = make_masker(recipe, prepared)
    tokenizer = prepared["tokenizer"]
    if split == "train":
        return electra_dataset(
            documents, tokenizer, masker, sequence_length, batch_size, repeat=True, seed=seed
        )
    dataset = electra_dataset(
        documents, tokenizer, masker, sequence_length, batch_size, shuffle=False,
        seed=seed + 1, cache=True,
    ).take(int(recipe["training"]["validation_batches"]))
    return common.finite_validation(dataset, len(documents), batch_size)


def build_model(recipe, prepared):
    """The compiled `ElectraPretrainer` (call inside the strategy's scope):
    the recipe's backbone as discriminator, the same kind with
    `model.generator_*` sizes as generator, AdamW with warm-up and cosine
    decay over `training.steps`."""
    _ignore_pooler_warning()
    model_cfg, train_cfg, electra_cfg = recipe["model"], recipe["training"], recipe["electra"]
    epochs, steps_per_epoch = common.rounds(train_cfg)
    vocabulary_size = len(prepared["vocabulary"])
    sequence_length = int(model_cfg["sequence_length"])
    discriminator = build_backbone(
        model_cfg["backbone"], vocabulary_size, sequence_length, dropout=model_cfg["dropout"]
    )
    generator = build_backbone(
        model_cfg["backbone"], vocabulary_size, sequence_length, dropout=model_cfg["dropout"],
        hidden_dim=int(model_cfg["generator_hidden_dim"]),
        num_heads=int(model_cfg["generator_num_heads"]),
        intermediate_dim=int(model_cfg["generator_intermediate_dim"]),
        num_layers=int(model_cfg["generator_num_layers"]),
    )
    model = ElectraPretrainer(
        generator,
        discriminator,
        generator_weight=float(electra_cfg["generator_weight"]),
        discriminator_weight=float(electra_cfg["discriminator_weight"]),
        temperature=float(electra_cfg["temperature"]),
        disallow_correct=bool(electra_cfg["disallow_correct"]),
        seed=int(train_cfg["seed"]),
    )
    model.compile(
        optimizer=common.optimizer(train_cfg, steps_per_epoch * epochs),
        jit_compile=common.jit_compile_for(recipe),
    )
    return model


def held_out_statistics(model, dataset):
    """Threshold-free held-out statistics of the discriminator.

    Runs the objective (generator samples, discriminator logits) over the
    `x` batches of `dataset` and returns, over the non-padding tokens:
    `rtd_auc`, the ROC AUC of the replaced logit (the probability that a
    replaced token scores above an original one; 0.5 is chance, ties count
    half), `rtd_loss` (the discriminator's mean sigmoid cross-entropy) and
    `prior_rtd_loss`, the loss of the best constant prediction (the entropy
    of the replaced fraction), with `replaced_fraction`.
    """

    @tf.function
    def run(x):
        outputs = model(x, training=False)
        return outputs["rtd_logits"], outputs["rtd_labels"]

    logits, labels = [], []
    for x in dataset:
        batch_logits, batch_labels = run(x)
        real = np.asarray(x["padding_mask"]).astype(bool)
        logits.append(batch_logits.numpy()[real])
        labels.append(batch_labels.numpy()[real] > 0.5)
    logits = np.concatenate(logits).astype(np.float64)
    labels = np.concatenate(labels)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("The validation tokens are all original or all replaced; no AUC.")
    order = np.argsort(logits, kind="mergesort")
    ranks = np.empty(len(logits))
    sorted_logits = logits[order]
    # Average ranks over ties (1-based).
    _, first, counts = np.unique(sorted_logits, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    auc = (ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives)
    p = positives / len(labels)
    loss = np.logaddexp(0.0, -logits) * labels + np.logaddexp(0.0, logits) * ~labels
    return {
        "rtd_auc": float(auc),
        "rtd_loss": float(loss.mean()),
        "prior_rtd_loss": float(-(p * np.log(p) + (1 - p) * np.log(1 - p))),
        "replaced_fraction": float(p),
    }


def rtd_counts(model):
    """The held-out confusion counts `(tp, fp, fn, tn)` of the last
    `evaluate` (the `rtd_accuracy` metric's state, summed over replicas)."""
    return [float(v) for v in np.asarray(model.rtd_accuracy.counts.numpy(), np.float64)]


def export(model, out_dir, prepared, recipe):
    """Exports the discriminator alone (`model.detector()`) as an inference
    SavedModel in `out_dir/saved_model/`: raw strings in (keras-hub's
    `BertTextClassifierPreprocessor`, tokenized exactly as in training),
    per-token `rtd_logits` and `replaced_probability` out, float32.

    `prepared` is `prepare`'s dict or the `Run` that `kobjectives export`
    reloads (only its `tokenizer` is used)."""
    from kobjectives.export import export_saved_model

    keras.mixed_precision.set_global_policy("float32")
    export_saved_model(
        model.detector(), pathlib.Path(out_dir) / "saved_model",
        preprocessor=keras_hub.models.BertTextClassifierPreprocessor(
            tokenizer=prepared["tokenizer"],
            sequence_length=int(recipe["model"]["sequence_length"]),
        ),
        overwrite=True,
        special_tokens_in_strings=False,
    )


def train(recipe, out_dir, data=None, tfds=None, data_dir=None, strategy="auto", log=print):
    """Trains, evaluates and exports ELECTRA; returns the metrics dict.

    Writes into `out_dir`: `vocab.txt`, `recipe.json`, `checkpoints/`,
    `logs/` (TensorBoard), `loss_curve.png`, `model.keras` (the training
    objective), `saved_model/` (the discriminator, raw strings in) and
    `metrics.json` (held-out RTD accuracy next to the all-"original"
    baseline, replaced precision/recall, generator accuracy next to the
    unigram baseline).
    """
    model_cfg = recipe["model"]
    run = common.fit_run(
        sys.modules[__name__], recipe, out_dir, data, tfds, data_dir, strategy, log,
        title="ELECTRA",
        describe=lambda model: (
            f"ElectraPretrainer, discriminator {model_cfg['backbone']} "
            f"({model.discriminator.count_params():,} parameters), generator hidden "
            f"{model_cfg['generator_hidden_dim']} ({model.generator.count_params():,}, "
            f"token embeddings shared)"
        ),
    )
    model, prepared, evaluation = run.model, run.prepared, run.evaluation
    vocabulary, tokenizer = prepared["vocabulary"], prepared["tokenizer"]
    tp, fp, fn, tn = rtd_counts(model)
    tokens = tp + fp + fn + tn
    replaced_fraction = (tp + fn) / tokens if tokens else 0.0
    unigram_id = most_frequent_token(tokenizer, prepared["train_documents"])
    plain_val_ds = make_dataset(recipe, prepared, "validation", int(recipe["training"]["batch_size"]))
    unigram = common.constant_prediction_accuracy(
        unigram_id, ((x["mask_ids"], x["mask_weights"]) for x in plain_val_ds)
    )
    threshold_free = held_out_statistics(model, plain_val_ds)

    export(model, common.save_objective(model, out_dir), prepared, recipe)
    metrics = common.write_metrics(run, {
        "objective": "electra",
        "backbone": model_cfg["backbone"],
        "generator_hidden_dim": int(model_cfg["generator_hidden_dim"]),
        "val_loss": evaluation["loss"],
        "val_rtd_accuracy": evaluation["rtd_accuracy"],
        "all_original_rtd_accuracy": 1.0 - replaced_fraction,
        "val_replaced_precision": evaluation["replaced_precision"],
        "val_replaced_recall": evaluation["replaced_recall"],
        "val_replaced_fraction": replaced_fraction,
        "val_rtd_auc": threshold_free["rtd_auc"],
        "chance_rtd_auc": 0.5,
        "val_rtd_loss_second_pass": threshold_free["rtd_loss"],
        "prior_rtd_loss_second_pass": threshold_free["prior_rtd_loss"],
        "val_discriminator_loss": evaluation["discriminator_loss"],
        "val_generator_loss": evaluation["generator_loss"],
        "val_generator_accuracy": evaluation["generator_accuracy"],
        "unigram_generator_accuracy": unigram,
        "unigram_token": vocabulary[unigram_id],
    })
    log(f"held-out RTD AUC {metrics['val_rtd_auc']:.4f} vs chance 0.5; discriminator loss "
        f"{threshold_free['rtd_loss']:.4f} vs constant-prior loss {threshold_free['prior_rtd_loss']:.4f}")
    log(f"held-out RTD accuracy {metrics['val_rtd_accuracy']:.4f} vs all-original baseline "
        f"{metrics['all_original_rtd_accuracy']:.4f} (replaced precision "
        f"{metrics['val_replaced_precision']:.3f}, recall {metrics['val_replaced_recall']:.3f}); "
        f"generator accuracy {metrics['val_generator_accuracy']:.4f} vs unigram baseline "
        f"{unigram:.4f}")
    log(f"run folder: {out_dir}")
    return metrics
