"""The masked-LM run behind `kobjectives train mlm`."""

import pathlib
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


def train(recipe, out_dir, data=None, tfds=None, data_dir=None, strategy="auto", log=print):
    """Trains, evaluates and exports a masked LM; returns the metrics dict.

    Writes into `out_dir`: `vocab.txt`, `recipe.json`, `checkpoints/`,
    `logs/` (TensorBoard), `loss_curve.png`, `model.keras` (the training
    objective), `saved_model/` (inference, raw strings in) and `metrics.json`.
    """
    started = time.time()
    # Masked LM does not use BERT's pooler; Keras warns that it gets no gradient.
    warnings.filterwarnings("ignore", message=r"Gradients do not exist for variables \['pooled_dense")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    common.write_json(out_dir / "recipe.json", recipe)
    data_cfg, tok_cfg = recipe["data"], recipe["tokenizer"]
    model_cfg, mask_cfg, train_cfg = recipe["model"], recipe["masking"], recipe["training"]
    seed = int(train_cfg["seed"])
    keras.utils.set_random_seed(seed)
    check_backbone(model_cfg["backbone"], causal=False)

    train_docs, val_docs = common.load_split_documents(data_cfg, seed, data, tfds, data_dir, log)
    vocabulary, tokenizer = common.train_tokenizer(train_docs, tok_cfg, out_dir, log)

    sequence_length = int(model_cfg["sequence_length"])
    masker = MaskedLMMasker(
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
        seed=seed,
    )
    batch_size = int(train_cfg["batch_size"])
    train_ds = masked_lm_dataset(
        train_docs, tokenizer, masker, sequence_length, batch_size, repeat=True, seed=seed
    )
    val_ds = masked_lm_dataset(
        val_docs, tokenizer, masker, sequence_length, batch_size, shuffle=False,
        seed=seed + 1, cache=True,
    ).take(int(train_cfg["validation_batches"]))
    val_ds = common.finite_validation(val_ds, len(val_docs), batch_size)

    epochs, steps_per_epoch = common.rounds(train_cfg)
    strategy, jit_compile = common.training_strategy(train_cfg, strategy, log)
    with strategy.scope():
        backbone = build_backbone(
            model_cfg["backbone"], len(vocabulary), sequence_length, dropout=model_cfg["dropout"]
        )
        model = MaskedLanguageModel(backbone)
        model.compile(
            optimizer=common.optimizer(train_cfg, steps_per_epoch * epochs),
            jit_compile=jit_compile,
        )
    log(f"model: MaskedLanguageModel over {model_cfg['backbone']} "
        f"({model.count_params():,} parameters), strategy "
        f"{type(strategy).__name__} x{strategy.num_replicas_in_sync}")

    history = model.fit(
        train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch, validation_data=val_ds,
        callbacks=common.run_callbacks(out_dir), verbose="auto", shuffle=False,
    ).history
    common.plot_history(history, out_dir / "loss_curve.png", "masked LM", steps_per_epoch)
    if not np.isfinite(history["loss"][-1]):
        raise RuntimeError("Training diverged (non-finite loss); see the checkpoints.")

    evaluation = model.evaluate(val_ds, return_dict=True, verbose=0)
    unigram_id = most_frequent_token(tokenizer, train_docs)
    unigram = unigram_masked_accuracy(unigram_id, val_ds)

    common.save_and_export(model, out_dir, tokenizer, sequence_length)
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
        "documents": {"train": len(train_docs), "validation": len(val_docs)},
        "wall_seconds": round(time.time() - started, 1),
    }
    common.write_json(out_dir / "metrics.json", metrics)
    log(f"held-out perplexity {metrics['val_perplexity']:.2f}, masked accuracy "
        f"{metrics['val_masked_accuracy']:.4f} vs unigram baseline {unigram:.4f} "
        f"(always {vocabulary[unigram_id]!r})")
    log(f"run folder: {out_dir}")
    return metrics
