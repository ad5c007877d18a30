"""The SimCSE run behind `kobjectives train simcse` (and `contrastive_aug`).

One run, three models on the same backbone and tokenizer, so the comparison
is fair:

1. `untrained`: the randomly initialized backbone, mean-pooled;
2. `mlm`: the backbone after a short masked-LM warm start on the same text
   (`[mlm]` in the recipe), mean-pooled;
3. the contrastive encoder: SimCSE (unsupervised dropout views, supervised
   NLI triples, or EDA views with `contrastive.augmentation = "text"`)
   trained from the untrained weights (from the masked-LM weights with
   `mlm.warm_start`), pooled as the recipe says; with
   `contrastive.freeze_token_embedding` its token vectors stay fixed.

Each is scored on STS-B dev (Spearman of cosine vs gold, `--sts-dev`) where
given, and always on held-out text: alignment and uniformity (Wang & Isola,
2020) and recall@1 of retrieving a text's augmented view (10% deletion,
fixed seed) among all held-out texts.
"""

import pathlib
import sys
import time

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from kobjectives import data as data_lib
from kobjectives.backbones import build_backbone
from kobjectives.data.pipelines import contrastive_dataset
from kobjectives.data.pipelines import masked_lm_dataset
from kobjectives.data.pipelines import tokenized_texts
from kobjectives.data.sts import read_nli_triples
from kobjectives.data.sts import read_stsb
from kobjectives.data.sts import split_sentences
from kobjectives.layers import MaskedLMMasker
from kobjectives.layers import TextAugmenter
from kobjectives.metrics.sts import STSEvaluator
from kobjectives.objectives import ContrastiveEncoder
from kobjectives.objectives import MaskedLanguageModel
from kobjectives.ops import embedding_metrics
from kobjectives.runs import common

AUGMENTATIONS = ("dropout", "text")


def _mean_pooled(model):
    """`embed` for an objective with `encode`: masked mean of the states."""

    def embed(inputs, training=False):
        hidden = model.encode(inputs, training=training)
        return embedding_metrics.pool_sequence(hidden, inputs["padding_mask"], "mean")

    return embed


def _embedder(embed, tokenizer, sequence_length):
    compiled = tf.function(lambda x: embed(x, training=False))

    def embed_texts(texts):
        batches = tokenized_texts(texts, tokenizer, sequence_length, 256)
        return np.concatenate([compiled(x).numpy() for x in batches], axis=0)

    return embed_texts, compiled


def _heldout_metrics(compiled, heldout_views):
    first = np.concatenate([compiled(a).numpy() for a, _ in heldout_views])
    second = np.concatenate([compiled(p).numpy() for _, p in heldout_views])
    return {
        "alignment": float(embedding_metrics.alignment(first, second)),
        "uniformity": float(embedding_metrics.uniformity(first)),
        "recall@1": float(embedding_metrics.recall_at_k(second, first, k=1)),
    }


def _evaluate(name, embed, tokenizer, sequence_length, evaluator, heldout_views, log):
    embed_texts, compiled = _embedder(embed, tokenizer, sequence_length)
    result = {"heldout": _heldout_metrics(compiled, heldout_views)}
    if evaluator is not None:
        result["sts"] = evaluator(embed_texts)
    sts = f"STS-B dev Spearman {result['sts']['spearman']:.4f}, " if "sts" in result else ""
    held = result["heldout"]
    log(f"{name}: {sts}held-out alignment {held['alignment']:.3f}, uniformity "
        f"{held['uniformity']:.3f}, view recall@1 {held['recall@1']:.3f}")
    return result


def _load_data(recipe, data, tfds, data_dir, supervised, seed, log):
    """`(train_texts, tokenizer_sentences, heldout_sentences, validation_texts)`."""
    data_cfg = recipe["data"]
    if supervised:
        if not data or len(data) != 1:
            raise ValueError(
                "--supervised trains on NLI triples: pass one TSV with --data "
                "(columns anchor, positive, hard_negative; e.g. "
                "../shared/data/nli/nli_triples_dev.tsv)."
            )
        triples = read_nli_triples(data[0])
        rows = list(zip(triples["anchor"], triples["positive"], triples["negative"]))
        keys = [" ".join(r) for r in rows]
        train_keys, _ = data_lib.train_validation_split(keys, data_cfg["validation_fraction"], seed=seed)
        train_keys = set(train_keys)
        train_rows = [r for r, k in zip(rows, keys) if k in train_keys]
        val_rows = [r for r, k in zip(rows, keys) if k not in train_keys]
        columns = {
            name: [r[i] for r in train_rows] for i, name in enumerate(("anchor", "positive", "negative"))
        }
        val_columns = {
            name: [r[i] for r in val_rows] for i, name in enumerate(("anchor", "positive", "negative"))
        }
        sentences = list(dict.fromkeys(s for r in train_rows for s in r))
        heldout = list(dict.fromkeys(r[0] for r in val_rows))
        log(f"data: {len(rows)} NLI triples ({len(train_rows)} train, {len(val_rows)} validation)")
        return columns, sentences, heldout, val_columns
    documents = data_lib.load_texts(
        data=data, tfds=tfds, data_dir=data_dir, format=data_cfg["format"],
        max_documents=data_cfg["max_documents"] or None,
    )
    sentences = split_sentences(documents, data_cfg["min_characters"], data_cfg["max_characters"])
    if data_cfg["max_sentences"]:
        order = np.random.default_rng(seed).permutation(len(sentences))[: data_cfg["max_sentences"]]
        sentences = [sentences[i] for i in sorted(order)]
    train, heldout = data_lib.train_validation_split(sentences, data_cfg["validation_fraction"], seed=seed)
    log(f"data: {len(documents)} documents -> {len(sentences)} sentences "
        f"({len(train)} train, {len(heldout)} held out)")
    return train, train, heldout, heldout


def _heldout_views(heldout, tokenizer, sequence_length, limit=1000):
    """Held-out texts and a fixed augmented view of each (10% deletion)."""
    augmenter = TextAugmenter(
        tokenizer.vocabulary_size(), deletion_rate=0.1,
        unselectable_token_ids=sorted(set(tokenizer.special_token_ids)),
        padding_token_id=tokenizer.pad_token_id,
    )
    views = []
    for index, batch in enumerate(tokenized_texts(heldout[:limit], tokenizer, sequence_length, 250)):
        out = augmenter(batch, seed=tf.constant([index, 7]))
        views.append((out["anchor"], out["positive"]))
    return views


# recipe key -> KerasTuner spec (see `kobjectives.runs`).
SEARCH_SPACE = {
    "training.learning_rate": ("float", 1e-5, 1e-3, "log"),
    "training.warmup_steps": ("int", 0, 100),
    "training.weight_decay": ("float", 0.0, 0.1, "linear"),
    "contrastive.temperature": ("float", 0.02, 0.2, "log"),
    "model.dropout": ("choice", [0.05, 0.1, 0.15]),
}


def _check_recipe(recipe, sts_dev=None):
    con_cfg = recipe["contrastive"]
    if con_cfg["mode"] not in ("unsupervised", "supervised"):
        raise ValueError(f"contrastive.mode must be 'unsupervised' or 'supervised'. Received {con_cfg['mode']!r}.")
    if con_cfg["augmentation"] not in AUGMENTATIONS:
        raise ValueError(f"contrastive.augmentation must be one of {AUGMENTATIONS}. Received {con_cfg['augmentation']!r}.")
    if con_cfg["mode"] == "supervised" and con_cfg["augmentation"] == "text":
        raise ValueError("Text augmentation makes views of unlabeled text; it does not apply with --supervised.")
    if sts_dev is not None and pathlib.Path(sts_dev).name == "sts-test.csv":
        raise ValueError("sts-test.csv is reserved for final evaluation; evaluate the run on sts-dev.csv.")


def prepare(recipe, out_dir, data=None, tfds=None, data_dir=None, log=print):
    """Loads and splits the texts (sentences, or NLI triples when
    `contrastive.mode` is `"supervised"`), trains the tokenizer (saved in
    `out_dir`) and fixes the held-out views."""
    _check_recipe(recipe)
    seed = int(recipe["training"]["seed"])
    supervised = recipe["contrastive"]["mode"] == "supervised"
    train_texts, sentences, heldout, val_texts = _load_data(
        recipe, data, tfds, data_dir, supervised, seed, log)
    vocabulary, tokenizer = common.train_tokenizer(sentences, recipe["tokenizer"], out_dir, log)
    sequence_length = int(recipe["model"]["sequence_length"])
    return {
        "train_texts": train_texts,
        "validation_texts": val_texts,
        "sentences": sentences,
        "heldout": heldout,
        "vocabulary": vocabulary,
        "tokenizer": tokenizer,
        "heldout_views": _heldout_views(heldout, tokenizer, sequence_length),
    }


def _augmenter(recipe, prepared, seed):
    con_cfg = recipe["contrastive"]
    if con_cfg["augmentation"] != "text":
        return None
    tokenizer = prepared["tokenizer"]
    return TextAugmenter(
        len(prepared["vocabulary"]), deletion_rate=con_cfg["deletion_rate"],
        insertion_rate=con_cfg["insertion_rate"], replacement_rate=con_cfg["replacement_rate"],
        swap_rate=con_cfg["swap_rate"], unselectable_token_ids=sorted(set(tokenizer.special_token_ids)),
        padding_token_id=tokenizer.pad_token_id, seed=seed,
    )


def make_dataset(recipe, prepared, split, batch_size, input_context=None):
    """Contrastive batches (`x` dicts, see `contrastive_dataset`): `"train"`
    shuffled and repeated; `"validation"` the held-out texts (triples when
    supervised) in order, views seeded apart from training's. With an
    `input_context`, each input pipeline takes every n-th batch."""
    seed = int(recipe["training"]["seed"])
    training = split == "train"
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation'. Received {split!r}.")
    texts = prepared["train_texts" if training else "validation_texts"]
    dataset = contrastive_dataset(
        texts, prepared["tokenizer"], int(recipe["model"]["sequence_length"]), batch_size,
        shuffle=training, repeat=training, seed=seed if training else seed + 1,
        augmenter=_augmenter(recipe, prepared, seed if training else seed + 1),
    )
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return dataset


def build_model(recipe, prepared):
    """The compiled `ContrastiveEncoder` over a fresh backbone (call it in the
    strategy's scope)."""
    model_cfg, con_cfg, train_cfg = recipe["model"], recipe["contrastive"], recipe["training"]
    backbone = build_backbone(
        model_cfg["backbone"], len(prepared["vocabulary"]), int(model_cfg["sequence_length"]),
        dropout=model_cfg["dropout"],
    )
    model = ContrastiveEncoder(
        backbone, pooling=con_cfg["pooling"], projection=con_cfg["projection"],
        temperature=con_cfg["temperature"],
        freeze_token_embedding=bool(con_cfg.get("freeze_token_embedding", False)),
    )
    epochs, steps_per_epoch = common.rounds(train_cfg)
    model.compile(
        optimizer=common.optimizer(train_cfg, steps_per_epoch * epochs),
        jit_compile=bool(train_cfg["jit_compile"]),
    )
    return model


def _masked_lm_baseline(recipe, prepared, backbone, strategy, jit_compile, log):
    """Trains `backbone` with masked LM on the run's sentences (`[mlm]`);
    returns the `MaskedLanguageModel` and its loss history."""
    mlm_cfg, seed = recipe["mlm"], int(recipe["training"]["seed"])
    tokenizer, vocabulary = prepared["tokenizer"], prepared["vocabulary"]
    mlm_steps = int(mlm_cfg["steps"])
    if mlm_steps <= 0:
        return MaskedLanguageModel(backbone), None
    t0 = time.time()
    masker = MaskedLMMasker(
        vocabulary_size=len(vocabulary), mask_selection_rate=0.15,
        mask_token_id=tokenizer.mask_token_id,
        mask_selection_length=int(mlm_cfg["mask_selection_length"]),
        unselectable_token_ids=sorted(set(tokenizer.special_token_ids)), seed=seed,
    )
    mlm_ds = masked_lm_dataset(
        prepared["sentences"], tokenizer, masker, int(recipe["model"]["sequence_length"]),
        int(mlm_cfg["batch_size"]), repeat=True, seed=seed,
    )
    with strategy.scope():
        mlm_model = MaskedLanguageModel(backbone)
        mlm_model.compile(
            optimizer=common.optimizer(dict(mlm_cfg, weight_decay=0.01), mlm_steps),
            jit_compile=jit_compile,
        )
    history = mlm_model.fit(mlm_ds, epochs=1, steps_per_epoch=mlm_steps, verbose=0, shuffle=False).history
    log(f"masked LM ({'warm start' if mlm_cfg['warm_start'] else 'baseline'}): {mlm_steps} steps, "
        f"loss {history['loss'][-1]:.3f} ({time.time() - t0:.0f} s)")
    return mlm_model, history["loss"]


def train(
    recipe, out_dir, data=None, tfds=None, data_dir=None, strategy="auto", log=print,
    supervised=None, sts_dev=None,
):
    """Trains a contrastive sentence encoder; returns the metrics dict.

    Writes into `out_dir`: `vocab.txt`, `recipe.json`, `checkpoints/`,
    `logs/`, `loss_curve.png`, `model.keras` (the `ContrastiveEncoder`),
    `saved_model/` (raw strings in, pooled embeddings out) and
    `metrics.json` (`stsb_dev_spearman`, `untrained_spearman`,
    `mlm_meanpool_spearman` when `sts_dev` is given; held-out alignment,
    uniformity and recall@1 always).

    Args:
        supervised: overrides `contrastive.mode` (True: NLI triples from
            `data`).
        sts_dev: optional STS-B file (e.g. `sts-dev.csv`) to evaluate on.
    """
    started = time.time()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = dict(recipe)
    recipe["contrastive"] = dict(recipe["contrastive"])
    if supervised:
        recipe["contrastive"]["mode"] = "supervised"
    _check_recipe(recipe, sts_dev)
    con_cfg, model_cfg, train_cfg = recipe["contrastive"], recipe["model"], recipe["training"]
    is_supervised = con_cfg["mode"] == "supervised"
    if is_supervised and not data:
        raise ValueError(
            "--supervised trains on NLI triples: pass one TSV with --data "
            "(columns anchor, positive, hard_negative; e.g. "
            "../shared/data/nli/nli_triples_dev.tsv)."
        )
    common.write_json(out_dir / "recipe.json", recipe)
    seed = int(train_cfg["seed"])
    keras.utils.set_random_seed(seed)
    evaluator = STSEvaluator(read_stsb(sts_dev)) if sts_dev else None

    prepared = prepare(recipe, out_dir, data, tfds, data_dir, log)
    tokenizer, vocabulary = prepared["tokenizer"], prepared["vocabulary"]
    sequence_length = int(model_cfg["sequence_length"])
    heldout_views = prepared["heldout_views"]

    strategy, jit_compile = common.training_strategy(train_cfg, strategy, log)
    recipe["training"] = dict(train_cfg, jit_compile=jit_compile)
    with strategy.scope():
        model = build_model(recipe, prepared)
    metrics = {
        "objective": "simcse",
        "mode": con_cfg["mode"],
        "augmentation": "nli" if is_supervised else con_cfg["augmentation"],
        "backbone": model_cfg["backbone"],
        "pooling": con_cfg["pooling"],
        "temperature": con_cfg["temperature"],
        "freeze_token_embedding": bool(con_cfg.get("freeze_token_embedding", False)),
    }
    untrained = _evaluate("untrained (mean-pooled)", _mean_pooled(
        MaskedLanguageModel(model.backbone)), tokenizer, sequence_length, evaluator, heldout_views, log)

    # 1. The masked-LM checkpoint: a baseline, and with `mlm.warm_start` the
    # start of contrastive training. Without it the masked LM trains its own
    # copy of the backbone (measured: a warm start on the embedded corpus
    # lowers STS-B dev Spearman).
    if recipe["mlm"]["warm_start"]:
        mlm_backbone = model.backbone
    else:
        with strategy.scope():
            mlm_backbone = build_backbone(
                model_cfg["backbone"], len(vocabulary), sequence_length, dropout=model_cfg["dropout"])
    mlm_model, mlm_loss = _masked_lm_baseline(recipe, prepared, mlm_backbone, strategy, jit_compile, log)
    mlm_result = _evaluate("masked LM (mean-pooled)", _mean_pooled(mlm_model), tokenizer,
                           sequence_length, evaluator, heldout_views, log)

    # 2. Contrastive training.
    t0 = time.time()
    epochs, steps_per_epoch = common.rounds(train_cfg)
    train_ds, val_ds = common.training_datasets(sys.modules[__name__], recipe, prepared, strategy)
    log(f"model: ContrastiveEncoder ({con_cfg['mode']}, "
        f"{'NLI' if is_supervised else con_cfg['augmentation']} views, {con_cfg['pooling']} pooling) "
        f"over {model_cfg['backbone']} ({model.count_params():,} parameters), strategy "
        f"{type(strategy).__name__} x{strategy.num_replicas_in_sync}")
    history = common.round_history(out_dir, model.fit(
        train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch, validation_data=val_ds,
        callbacks=common.run_callbacks(out_dir), verbose=0, shuffle=False,
    ).history)
    log(f"contrastive training: {steps_per_epoch * epochs} steps, loss {history['loss'][0]:.3f} -> "
        f"{history['loss'][-1]:.3f}, held-out loss {history['val_loss'][-1]:.3f} "
        f"({time.time() - t0:.0f} s)")
    common.plot_history(history, out_dir / "loss_curve.png", f"SimCSE ({con_cfg['mode']})", steps_per_epoch)
    trained = _evaluate(f"{'supervised' if is_supervised else 'unsupervised'} contrastive "
                        f"({con_cfg['pooling']}-pooled)", model.embed, tokenizer, sequence_length,
                        evaluator, heldout_views, log)

    model.save(out_dir / "model.keras")
    export(model, out_dir, prepared, recipe)
    if evaluator is not None:
        metrics["stsb_dev_spearman"] = trained["sts"]["spearman"]
        metrics["untrained_spearman"] = untrained["sts"]["spearman"]
        metrics["mlm_meanpool_spearman"] = mlm_result["sts"]["spearman"]
        metrics["sts_dev_file"] = str(sts_dev)
    for name, result in (("trained", trained), ("untrained", untrained), ("mlm_meanpool", mlm_result)):
        metrics[f"{name}_heldout"] = result["heldout"]
        if "sts" in result:
            metrics[f"{name}_sts_alignment"] = result["sts"]["alignment"]
            metrics[f"{name}_sts_uniformity"] = result["sts"]["uniformity"]
    metrics.update(
        mlm_steps=int(recipe["mlm"]["steps"]),
        steps=steps_per_epoch * epochs,
        val_loss=history["val_loss"][-1],
        train_loss_first_round=history["loss"][0],
        train_loss_last_round=history["loss"][-1],
        mlm_loss=mlm_loss,
        heldout_texts=len(prepared["heldout"]),
        wall_seconds=round(time.time() - started, 1),
    )
    common.write_json(out_dir / "metrics.json", metrics)
    if evaluator is not None:
        log(f"STS-B dev Spearman: trained {metrics['stsb_dev_spearman']:.4f} vs untrained "
            f"{metrics['untrained_spearman']:.4f} and masked-LM mean-pooled "
            f"{metrics['mlm_meanpool_spearman']:.4f}")
    log(f"run folder: {out_dir} ({metrics['wall_seconds']:.0f} s)")
    return metrics


def export(model, out_dir, prepared, recipe):
    """Writes `out_dir/saved_model`: raw strings in, pooled embeddings out."""
    from kobjectives.export import export_embedding_model

    keras.mixed_precision.set_global_policy("float32")
    export_embedding_model(
        model, pathlib.Path(out_dir) / "saved_model",
        preprocessor=keras_hub.models.BertTextClassifierPreprocessor(
            tokenizer=prepared["tokenizer"], sequence_length=int(recipe["model"]["sequence_length"])),
        overwrite=True,
    )
