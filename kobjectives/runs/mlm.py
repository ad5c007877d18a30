"""The masked-LM run behind `kobjectives train mlm` (and `kobjectives tune mlm`).

Follows the run-module contract of `kobjectives.runs`: `SEARCH_SPACE`,
`prepare`, `make_dataset`, `build_model`, `train`.
"""

import sys
import warnings


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
    return int(common.token_counts(tokenizer, documents).argmax())


def _ignore_pooler_warning():
    # Masked LM does not use BERT's pooler; Keras warns that it gets no gradient.
    warnings.filterwarnings(
        "ignore", message=r"Gradients do not exist for variables \['pooled_dense"
    )


def prepare(recipe, out_dir, data=None, tfds=None, data_dir=None, log=print):
    """Checks the recipe, then `common.prepare_documents`: documents split
    into train/validation and the trained tokenizer (`out_dir/vocab.txt`)."""
    _ignore_pooler_warning()
    check_backbone(recipe["model"]["backbone"], causal=False)
    return common.prepare_documents(recipe, out_dir, data, tfds, data_dir, log)


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
    documents = common.split_documents(prepared, split, input_context)
    seed = int(recipe["training"]["seed"])
    sequence_length = int(recipe["model"]["sequence_length"])
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
        jit_compile=common.jit_compile_for(recipe),
    )
    return model


def train(recipe, out_dir, data=None, tfds=None, data_dir=None, strategy="auto", log=print):
    """Trains, evaluates and exports a masked LM; returns the metrics dict.

    Writes into `out_dir`: `vocab.txt`, `recipe.json`, `checkpoints/`,
    `logs/` (TensorBoard), `loss_curve.png`, `model.keras` (the training
    objective), `saved_model/` (inference, raw strings in) and `metrics.json`.
    """
    backbone = recipe["model"]["backbone"]
    run = common.fit_run(
        sys.modules[__name__], recipe, out_dir, data, tfds, data_dir, strategy, log,
        title="masked LM",
        describe=lambda model: (
            f"MaskedLanguageModel over {backbone} ({model.count_params():,} parameters)"
        ),
    )
    prepared, evaluation = run.prepared, run.evaluation
    vocabulary, tokenizer = prepared["vocabulary"], prepared["tokenizer"]
    unigram_id = most_frequent_token(tokenizer, prepared["train_documents"])
    validation = make_dataset(recipe, prepared, "validation", int(recipe["training"]["batch_size"]))
    unigram = common.constant_prediction_accuracy(unigram_id, ((y, w) for _, y, w in validation))

    common.save_and_export(run.model, out_dir, tokenizer, int(recipe["model"]["sequence_length"]))
    metrics = common.write_metrics(run, {
        "objective": "mlm",
        "backbone": backbone,
        "val_loss": evaluation["loss"],
        "val_perplexity": evaluation["perplexity"],
        "val_masked_accuracy": evaluation["masked_accuracy"],
        "unigram_masked_accuracy": unigram,
        "unigram_token": vocabulary[unigram_id],
    })
    log(f"held-out perplexity {metrics['val_perplexity']:.2f}, masked accuracy "
        f"{metrics['val_masked_accuracy']:.4f} vs unigram baseline {unigram:.4f} "
        f"(always {vocabulary[unigram_id]!r})")
    log(f"run folder: {out_dir}")
    return metrics
