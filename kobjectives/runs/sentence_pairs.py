"""The sentence-pair pretraining run behind `kobjectives train bert` (masked
LM + next-sentence prediction) and `kobjectives train albert` (masked LM +
sentence-order prediction); recipe objective `"sentence_pairs"`.

Follows the run-module contract of `kobjectives.runs`: `SEARCH_SPACE`,
`prepare`, `make_dataset`, `build_model`, `train`.
"""

import pathlib
import sys

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from kobjectives.backbones import build_backbone
from kobjectives.backbones import check_backbone
from kobjectives.data.sentences import sentence_documents
from kobjectives.data.sentences import sentence_pair_dataset
from kobjectives.layers import SentencePairGenerator
from kobjectives.objectives import SentencePairPretrainer
from kobjectives.runs import common
from kobjectives.runs.mlm import make_masker
from kobjectives.runs.mlm import most_frequent_token

SEARCH_SPACE = {
    "training.learning_rate": ("float", 1e-4, 3e-3, "log"),
    "training.warmup_steps": ("int", 0, 300),
    "training.weight_decay": ("float", 1e-3, 0.1, "log"),
    "pairs.pair_weight": ("float", 0.25, 2.0, "log"),
    "pairs.short_seq_prob": ("choice", [0.0, 0.1, 0.2]),
}

PAIR_SEPARATOR = "[SEP]"
"""What separates the two segments in the exported raw-text signature."""


def _check_recipe(recipe):
    pairs, model_cfg = recipe["pairs"], recipe["model"]
    check_backbone(model_cfg["backbone"], causal=False)
    if pairs["task"] not in ("nsp", "sop"):
        raise ValueError(f"pairs.task must be 'nsp' or 'sop'. Received: {pairs['task']!r}.")
    for key in ("short_seq_prob", "negative_rate"):
        if not 0.0 <= float(pairs[key]) <= 1.0:
            raise ValueError(f"pairs.{key} must be in [0, 1]. Received: {pairs[key]}.")
    for key in ("mlm_weight", "pair_weight"):
        if not float(pairs[key]) >= 0.0:
            raise ValueError(f"pairs.{key} must be >= 0. Received: {pairs[key]}.")
    if int(pairs["min_sentences"]) < (2 if pairs["task"] == "sop" else 1):
        raise ValueError(
            "pairs.min_sentences must be >= 2 for sentence-order prediction (>= 1 for "
            f"NSP). Received: {pairs['min_sentences']}."
        )
    if int(model_cfg["sequence_length"]) < 5:
        raise ValueError(
            "model.sequence_length must be >= 5 ([CLS] A [SEP] B [SEP]). Received: "
            f"{model_cfg['sequence_length']}."
        )
    if int(recipe["training"]["batch_size"]) < 2:
        raise ValueError(
            "training.batch_size must be >= 2: NSP draws its random segments from the "
            "other documents of the batch."
        )


def prepare(recipe, out_dir, data=None, tfds=None, data_dir=None, log=print):
    """Checks the recipe, loads, splits and sentence-splits the documents
    (keeping those with `pairs.min_sentences`), trains the tokenizer (saved as
    `out_dir/vocab.txt`).

    Returns:
        dict with `train_documents`, `validation_documents` (lists of
        sentence lists), `vocabulary`, `tokenizer`.
    """
    _check_recipe(recipe)
    prepared = common.prepare_documents(recipe, out_dir, data, tfds, data_dir, log)
    train_docs, val_docs = prepared["train_documents"], prepared["validation_documents"]
    min_sentences = int(recipe["pairs"]["min_sentences"])
    train_sentences = sentence_documents(train_docs, min_sentences)
    val_sentences = sentence_documents(val_docs, min_sentences)
    log(f"sentences: {len(train_sentences)} train and {len(val_sentences)} validation "
        f"documents with >= {min_sentences} sentences "
        f"({sum(map(len, train_sentences))} train sentences)")
    return {**prepared, "train_documents": train_sentences, "validation_documents": val_sentences}


def make_generator(recipe, prepared):
    """The run's `SentencePairGenerator`, configured by `recipe["pairs"]`."""
    pairs, tokenizer = recipe["pairs"], prepared["tokenizer"]
    return SentencePairGenerator(
        task=pairs["task"],
        sequence_length=int(recipe["model"]["sequence_length"]),
        start_value=tokenizer.cls_token_id,
        end_value=tokenizer.sep_token_id,
        pad_value=tokenizer.pad_token_id,
        short_seq_prob=float(pairs["short_seq_prob"]),
        negative_rate=float(pairs["negative_rate"]),
        seed=int(recipe["training"]["seed"]),
    )


def make_dataset(recipe, prepared, split, batch_size, input_context=None):
    """`(x, y)` batches of `split` (see `kobjectives.data.sentence_pair_dataset`).

    `"train"`: shuffled, repeated, new pairs and masks every epoch.
    `"validation"`: `training.validation_batches` batches drawn over as many
    passes over the validation documents as needed (each pass new pairs),
    then cached (fixed), finite with a known cardinality.
    """
    documents = common.split_documents(prepared, split)  # sharded by sentence_pair_dataset
    seed = int(recipe["training"]["seed"])
    generator = make_generator(recipe, prepared)
    masker = make_masker(recipe, prepared)
    tokenizer = prepared["tokenizer"]
    if split == "train":
        return sentence_pair_dataset(
            documents, tokenizer, generator, masker, batch_size, repeat=True, seed=seed,
            input_context=input_context,
        )
    dataset = sentence_pair_dataset(
        documents, tokenizer, generator, masker, batch_size, shuffle=True, repeat=True,
        seed=seed + 1, input_context=input_context,
    )
    per_pass = len(documents) // max(
        1, input_context.num_input_pipelines if input_context else 1
    ) // batch_size
    if per_pass == 0:
        raise ValueError(
            f"The validation split ({len(documents)} documents with enough sentences) is "
            f"smaller than one batch of {batch_size}. Give more data or raise "
            "data.validation_fraction."
        )
    dataset = dataset.take(int(recipe["training"]["validation_batches"])).cache()
    return common.finite_validation(dataset, len(documents), batch_size)


def build_model(recipe, prepared):
    """The compiled `SentencePairPretrainer` (call inside the strategy's
    scope): the recipe's backbone, AdamW with warm-up and cosine decay."""
    model_cfg, train_cfg, pairs = recipe["model"], recipe["training"], recipe["pairs"]
    epochs, steps_per_epoch = common.rounds(train_cfg)
    backbone = build_backbone(
        model_cfg["backbone"], len(prepared["vocabulary"]), int(model_cfg["sequence_length"]),
        dropout=model_cfg["dropout"],
    )
    model = SentencePairPretrainer(
        backbone,
        task=pairs["task"],
        mlm_weight=float(pairs["mlm_weight"]),
        pair_weight=float(pairs["pair_weight"]),
    )
    model.compile(
        optimizer=common.optimizer(train_cfg, steps_per_epoch * epochs),
        jit_compile=common.jit_compile_for(recipe),
    )
    return model


class PairTextPreprocessor(tf.Module):
    """Serving preprocessor: `"sentence A [SEP] sentence B"` strings to
    `[CLS] A [SEP] B [SEP]` token ids with segment ids.

    Splits each string at its first `separator` and packs the two parts with
    keras-hub's `BertTextClassifierPreprocessor` (a `MultiSegmentPacker`, as
    in training). A string without the separator becomes `[CLS] A [SEP]
    [SEP]`.

    Args:
        tokenizer: the run's `keras_hub.models.BertTokenizer`.
        sequence_length: int, the packed length.
        separator: str. Defaults to `"[SEP]"`.
    """

    def __init__(self, tokenizer, sequence_length, separator=PAIR_SEPARATOR):
        super().__init__()
        self.preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
            tokenizer=tokenizer, sequence_length=sequence_length
        )
        self.tokenizer = tokenizer
        self.sequence_length = sequence_length
        self.separator = separator

    def __call__(self, text):
        parts = tf.strings.split(text, sep=self.separator, maxsplit=1)
        parts = parts.to_tensor(default_value="", shape=[None, 2])
        return self.preprocessor(
            x=(tf.strings.strip(parts[:, 0]), tf.strings.strip(parts[:, 1]))
        )


def export(model, out_dir, prepared, recipe):
    """Writes `out_dir/saved_model/`: `serving_default` takes `text` strings
    `"A [SEP] B"` and returns `pair_probabilities`, `pair_logits`,
    `pooled_output`, `sequence_output`, `mlm_logits`, `token_ids`,
    `padding_mask`; `serve_token_ids` takes packed ids. Float32.

    `prepared` is `prepare`'s dict or the `Run` that `kobjectives export`
    reloads (only its `tokenizer` is used)."""
    from kobjectives.export import export_saved_model

    keras.mixed_precision.set_global_policy("float32")
    export_saved_model(
        model, pathlib.Path(out_dir) / "saved_model",
        preprocessor=PairTextPreprocessor(
            prepared["tokenizer"], int(recipe["model"]["sequence_length"])
        ),
        overwrite=True, special_tokens_in_strings=False,
    )


def held_out_baselines(dataset, unigram_id):
    """Baselines on the validation batches: the unigram masked accuracy
    (always predicting `unigram_id`) and the majority-label pair accuracy.

    Returns:
        dict with `unigram_masked_accuracy`, `majority_pair_accuracy`,
        `negative_fraction` (share of label 1), `pairs`.
    """
    hits = total = negatives = pairs = 0.0
    for _, y in dataset:
        weights = y["mask_weights"].numpy()
        hits += float(((y["mask_ids"].numpy() == unigram_id) * weights).sum())
        total += float(weights.sum())
        labels = y["pair_labels"].numpy()
        negatives += float(labels.sum())
        pairs += labels.size
    fraction = negatives / pairs
    return {
        "unigram_masked_accuracy": hits / total if total else 0.0,
        "majority_pair_accuracy": max(fraction, 1.0 - fraction),
        "negative_fraction": fraction,
        "pairs": int(pairs),
    }


def train(recipe, out_dir, data=None, tfds=None, data_dir=None, strategy="auto", log=print):
    """Trains, evaluates and exports BERT (NSP) / ALBERT (SOP) pretraining;
    returns the metrics dict.

    Writes into `out_dir`: `vocab.txt`, `recipe.json`, `checkpoints/`,
    `logs/`, `loss_curve.png`, `model.keras`, `saved_model/` (raw
    `"A [SEP] B"` strings in) and `metrics.json` (held-out pair accuracy vs
    the 0.5 chance / majority baseline, masked accuracy vs the unigram
    baseline).
    """
    _check_recipe(recipe)
    backbone, task = recipe["model"]["backbone"], recipe["pairs"]["task"]
    run = common.fit_run(
        sys.modules[__name__], recipe, out_dir, data, tfds, data_dir, strategy, log,
        title=f"masked LM + {task.upper()}",
        describe=lambda model: (
            f"SentencePairPretrainer ({task.upper()}) over {backbone} "
            f"({model.count_params():,} parameters)"
        ),
    )
    prepared, evaluation = run.prepared, run.evaluation
    vocabulary, tokenizer = prepared["vocabulary"], prepared["tokenizer"]
    unigram_id = most_frequent_token(
        tokenizer, [" ".join(doc) for doc in prepared["train_documents"]]
    )
    baselines = held_out_baselines(
        make_dataset(recipe, prepared, "validation", int(recipe["training"]["batch_size"])),
        unigram_id,
    )

    export(run.model, common.save_objective(run.model, out_dir), prepared, recipe)
    metrics = common.write_metrics(run, {
        "objective": "sentence_pairs",
        "task": task,
        "backbone": backbone,
        "val_loss": evaluation["loss"],
        "val_pair_accuracy": evaluation["pair_accuracy"],
        "chance_pair_accuracy": 0.5,
        "majority_pair_accuracy": baselines["majority_pair_accuracy"],
        "val_pair_loss": evaluation["pair_loss"],
        "chance_pair_loss": float(np.log(2.0)),
        "val_masked_accuracy": evaluation["masked_accuracy"],
        "unigram_masked_accuracy": baselines["unigram_masked_accuracy"],
        "unigram_token": vocabulary[unigram_id],
        "val_perplexity": evaluation["perplexity"],
        "val_mlm_loss": evaluation["mlm_loss"],
        "validation_pairs": baselines["pairs"],
        "validation_negative_fraction": baselines["negative_fraction"],
    })
    log(f"held-out {task.upper()} accuracy {metrics['val_pair_accuracy']:.4f} vs chance "
        f"baseline 0.5 (majority {metrics['majority_pair_accuracy']:.4f}, "
        f"{metrics['validation_pairs']} pairs); masked accuracy "
        f"{metrics['val_masked_accuracy']:.4f} vs unigram baseline "
        f"{metrics['unigram_masked_accuracy']:.4f}; perplexity {metrics['val_perplexity']:.1f}")
    log(f"run folder: {out_dir}")
    return metrics
