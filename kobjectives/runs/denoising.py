"""The denoising seq2seq runs behind `kobjectives train t5` (T5 span
corruption) and `kobjectives train bart` (BART noising).

Follows the run-module contract of `kobjectives.runs`: `SEARCH_SPACE`,
`prepare`, `make_dataset`, `build_model`, `train`. The recipe's `objective`
(`"t5"` or `"bart"`) picks the corruption.
"""

import math
import pathlib
import sys
import time
import warnings

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from kobjectives import data as data_lib
from kobjectives.backbones import build_backbone
from kobjectives.backbones import check_backbone
from kobjectives.data.pipelines import chunk_token_ids
from kobjectives.data.pipelines import finish
from kobjectives.layers import SpanCorruption
from kobjectives.objectives import DenoisingSeq2Seq
from kobjectives.objectives.denoising_seq2seq import export_seq2seq_saved_model
from kobjectives.ops.span_corruption import merge_span_corruption
from kobjectives.ops.span_corruption import raw_length_for_inputs_length
from kobjectives.ops.span_corruption import span_corruption_lengths
from kobjectives.runs import common

OBJECTIVES = ("t5", "bart")

# The natural hyperparameters of denoising pretraining (KerasTuner specs).
SEARCH_SPACE = {
    "training.learning_rate": ("float", 3e-4, 3e-3, "log"),
    "training.warmup_steps": ("int", 0, 300),
    "training.weight_decay": ("float", 1e-3, 0.1, "log"),
    "model.dropout": ("choice", [0.0, 0.1]),
}

# WordPiece special ids (kobjectives.data.tokenizers): [PAD] [UNK] [CLS] [SEP] [MASK].
PAD_ID, CLS_ID, SEP_ID, MASK_ID = 0, 2, 3, 4


def _quiet():
    # keras-hub's T5 attention layers warn about Keras masks they ignore.
    warnings.filterwarnings("ignore", message=r"Layer '.*attention' .* was passed an input with a mask")


def _objective(recipe):
    objective = recipe.get("objective")
    if objective not in OBJECTIVES:
        raise ValueError(
            f"kobjectives.runs.denoising runs the objectives {OBJECTIVES}; "
            f"received objective={objective!r}."
        )
    return objective


def lengths(recipe):
    """The run's static lengths: dict with `raw_length` (tokens read per
    sequence), `encoder_length` and `target_length`.

    T5: `model.sequence_length` is the encoder input length; the raw length
    and target length follow from the corruption (T5's
    `compute_input_and_target_lengths`). BART: both are
    `model.sequence_length` (`[CLS] tokens [SEP]`).
    """
    length = int(recipe["model"]["sequence_length"])
    if _objective(recipe) == "bart":
        if length < 4:
            raise ValueError(
                f"model.sequence_length={length} is too short for BART noising; use at least 4."
            )
        return {"raw_length": length - 2, "encoder_length": length, "target_length": length}
    cfg = recipe["corruption"]
    density, span = cfg["noise_density"], cfg["mean_noise_span_length"]
    if not 0.0 < density < 1.0:
        raise ValueError(
            f"corruption.noise_density must be in (0, 1); received {density}. T5 uses 0.15."
        )
    if not span >= 1.0:
        raise ValueError(
            f"corruption.mean_noise_span_length must be >= 1; received {span}. T5 uses 3.0."
        )
    raw = raw_length_for_inputs_length(length, density, span)
    encoder_length, target_length, spans = span_corruption_lengths(raw, density, span)
    if spans > int(cfg["num_sentinels"]):
        raise ValueError(
            f"Sequences of {raw} tokens get up to {spans} noise spans but "
            f"corruption.num_sentinels={cfg['num_sentinels']}. Raise it."
        )
    return {"raw_length": raw, "encoder_length": length, "target_length": target_length}


def prepare(recipe, out_dir, data=None, tfds=None, data_dir=None, log=print):
    """Checks the recipe, loads and splits the documents, trains the
    WordPiece vocabulary and (T5) appends the sentinel tokens
    `<extra_id_k>` at its top; saves `out_dir/vocab.txt`.

    Returns:
        dict with `train_documents`, `validation_documents`, `vocabulary`,
        `tokenizer` (a keras-hub `WordPieceTokenizer` that also reads the
        special tokens and sentinels written in text), `sentinel_ids` and
        the `lengths`.
    """
    _quiet()
    objective = _objective(recipe)
    check_backbone(recipe["model"]["backbone"], kind="seq2seq")
    run_lengths = lengths(recipe)
    log(f"lengths: {run_lengths['raw_length']} tokens read per sequence, encoder "
        f"{run_lengths['encoder_length']}, target {run_lengths['target_length']}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = int(recipe["training"]["seed"])
    train_docs, val_docs = common.load_split_documents(recipe["data"], seed, data, tfds, data_dir, log)
    tok_cfg = recipe["tokenizer"]
    started = time.time()
    vocabulary = data_lib.train_wordpiece(
        train_docs, tok_cfg["vocabulary_size"], lowercase=tok_cfg["lowercase"],
        max_training_documents=tok_cfg["max_training_documents"] or None,
    )
    special = list(data_lib.WORDPIECE_RESERVED_TOKENS)
    sentinel_ids = ()
    if objective == "t5":
        count = int(recipe["corruption"]["num_sentinels"])
        vocabulary = data_lib.add_sentinel_tokens(vocabulary, count)
        sentinel_ids = tuple(len(vocabulary) - 1 - k for k in range(count))
        special += vocabulary[-count:]
    data_lib.save_vocabulary(vocabulary, out_dir)
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary, lowercase=tok_cfg["lowercase"], oov_token="[UNK]",
        special_tokens=special, special_tokens_in_strings=True,
    )
    log(f"tokenizer: WordPiece, {len(vocabulary)} pieces"
        f"{f' ({len(sentinel_ids)} sentinels)' if sentinel_ids else ''} "
        f"({time.time() - started:.0f} s)")
    return {
        "train_documents": train_docs,
        "validation_documents": val_docs,
        "vocabulary": vocabulary,
        "tokenizer": tokenizer,
        "sentinel_ids": sentinel_ids,
        "lengths": run_lengths,
    }


def make_corruption(recipe, prepared):
    """The run's corruption layer: `SpanCorruption` (t5) or `BartNoising` (bart)."""
    seed = int(recipe["training"]["seed"])
    run_lengths = prepared["lengths"]
    if _objective(recipe) == "t5":
        cfg = recipe["corruption"]
        return SpanCorruption(
            noise_density=cfg["noise_density"],
            mean_noise_span_length=cfg["mean_noise_span_length"],
            vocabulary_size=len(prepared["vocabulary"]),
            sentinel_ids=prepared["sentinel_ids"],
            sequence_length=run_lengths["raw_length"],
            inputs_length=run_lengths["encoder_length"],
            eos_token_id=SEP_ID,
            padding_token_id=PAD_ID,
            seed=seed,
        )
    try:
        from kobjectives.layers import BartNoising
    except ImportError as error:
        raise ValueError(
            "The bart recipe needs kobjectives.layers.BartNoising, which this "
            "installation does not have yet."
        ) from error
    cfg = recipe["noising"]
    vocabulary = prepared["vocabulary"]
    sentence_ends = [vocabulary.index(t) for t in (".", "?", "!") if t in vocabulary]
    return BartNoising(
        mask_token_id=MASK_ID,
        sequence_length=run_lengths["encoder_length"],
        text_infilling_rate=cfg["text_infilling_rate"],
        poisson_lambda=cfg["poisson_lambda"],
        token_deletion_rate=cfg["token_deletion_rate"],
        sentence_permutation_rate=cfg["sentence_permutation_rate"],
        document_rotation_rate=cfg["document_rotation_rate"],
        sentence_end_token_ids=sentence_ends,
        unselectable_token_ids=(PAD_ID, CLS_ID, SEP_ID, MASK_ID),
        vocabulary_size=len(vocabulary),
        seed=seed,
    )


def pack_token_ids(token_ids, window_length):
    """Concatenates the rows of a ragged batch and cuts the stream into
    windows of `window_length` tokens (the last may be shorter), as T5's
    `reduce_concat_tokens` + `split_tokens`: short documents fill a window
    together instead of leaving it half padding.

    Example:

    >>> pack_token_ids(tf.ragged.constant([[1, 2, 3], [4], [5, 6]]), 4).to_list()
    [[1, 2, 3, 4], [5, 6]]
    """
    stream = token_ids.flat_values
    return chunk_token_ids(
        tf.RaggedTensor.from_row_lengths(stream, tf.shape(stream, out_type=tf.int64)),
        window_length,
    )


def _token_windows(documents, tokenizer, raw_length, shuffle, seed, pack=False):
    """Documents -> 1-D token windows of 2..`raw_length` tokens (long
    documents become several windows; one-token leftovers are dropped).
    With `pack`, the documents of each group of 256 are concatenated first
    (`pack_token_ids`), so windows are full."""
    dataset = tf.data.Dataset.from_tensor_slices(list(documents))
    if shuffle:
        dataset = dataset.shuffle(len(documents), seed=seed)
    window = pack_token_ids if pack else chunk_token_ids
    dataset = dataset.batch(256).map(
        lambda texts: window(tokenizer(texts), raw_length),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    dataset = dataset.unbatch().filter(lambda ids: tf.size(ids) >= 2)
    if shuffle:
        dataset = dataset.shuffle(4096, seed=seed + 1)
    return dataset


def _split(features):
    x = {k: features[k] for k in ("encoder_token_ids", "encoder_padding_mask",
                                  "target_ids", "target_padding_mask")}
    return x, features["target_ids"], tf.cast(features["target_padding_mask"], tf.float32)


def seq2seq_dataset(recipe, prepared, documents, batch_size, shuffle, repeat, seed, cache=False):
    """Documents -> `(x, target_ids, target_weights)` batches of static shape
    for `DenoisingSeq2Seq`."""
    if not documents:
        raise ValueError("There are no documents to train on: the split is empty.")
    tokenizer = prepared["tokenizer"]
    run_lengths = prepared["lengths"]
    corruption = make_corruption(recipe, prepared)
    windows = _token_windows(documents, tokenizer, run_lengths["raw_length"], shuffle, seed,
                             pack=bool(recipe["data"].get("pack_documents", False)))
    if _objective(recipe) == "t5":
        batches = windows.ragged_batch(batch_size, drop_remainder=True)
        dataset = corruption.map_over(batches, seed=seed, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        length = run_lengths["encoder_length"]
        packer = keras_hub.layers.StartEndPacker(
            sequence_length=length, start_value=CLS_ID, end_value=SEP_ID,
            pad_value=PAD_ID, return_padding_mask=True,
        )

        def pack(ids):
            token_ids, mask = packer(ids)
            return token_ids, mask

        batches = windows.ragged_batch(batch_size, drop_remainder=True).map(pack)

        def noise(original, mask, r):
            noised = corruption(original, seed=tf.stack([r, tf.constant(0, tf.int64)]))
            return {
                "encoder_token_ids": noised["token_ids"],
                "encoder_padding_mask": noised["padding_mask"],
                "target_ids": original,
                "target_padding_mask": mask,
            }

        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip((batches, seeds)).map(
            lambda pair, r: noise(pair[0], pair[1], r), num_parallel_calls=tf.data.AUTOTUNE
        )
    dataset = dataset.map(_split, num_parallel_calls=tf.data.AUTOTUNE)
    return finish(dataset, cache=cache, repeat=repeat)


def make_dataset(recipe, prepared, split, batch_size, input_context=None):
    """`(x, target_ids, target_weights)` batches of `split`.

    `"train"`: shuffled, repeated, a fresh corruption every epoch.
    `"validation"`: at most `training.validation_batches` batches with a
    fixed corruption (cached), finite with a known cardinality. With
    `input_context` the documents are sharded by input pipeline and
    `batch_size` is per replica.
    """
    documents = common.split_documents(prepared, split, input_context)
    seed = int(recipe["training"]["seed"])
    if split == "train":
        return seq2seq_dataset(recipe, prepared, documents, batch_size, True, True, seed)
    dataset = seq2seq_dataset(
        recipe, prepared, documents, batch_size, False, False, seed + 1, cache=True
    ).take(int(recipe["training"]["validation_batches"]))
    return common.finite_validation(dataset, len(documents), batch_size)


def reinitialize_t5_embedding(backbone):
    """Re-draws a keras-hub `T5Backbone`'s tied token embedding as T5 means
    it, in a form Adam can train; returns the `logit_scale` to give
    `DenoisingSeq2Seq` (1.0; `"auto"` for other backbones, left as they are).

    The bug it fixes: keras-hub's `T5Backbone` builds its embedding with
    `keras.initializers.TruncatedNormal(1.0)`, whose first argument is the
    *mean*, so every token starts as the all-ones vector plus noise of
    standard deviation 0.05: all tokens look alike to the encoder, and the
    tied projection gives all of them nearly the same logit. T5 draws the
    embedding from N(0, 1) and scales the decoder states by
    `hidden_dim ** -0.5` before the tied projection. Here the embedding is
    drawn from N(0, 1 / hidden_dim) and projected with scale 1 (the same
    logits as T5's for the same decoder states; the encoder and decoder read
    embeddings `sqrt(hidden_dim)` times smaller), an embedding of the scale
    of the other weights: Adam's steps are absolute (about the learning
    rate), not relative as Adafactor's (T5's optimizer), so it moves it at
    their pace. The recipe key
    `model.reinitialize_t5_embedding` turns it on.
    """
    if not isinstance(backbone, keras_hub.models.T5Backbone) or not backbone.tie_embedding_weights:
        return "auto"
    embeddings = backbone.token_embedding.embeddings
    draw = keras.initializers.RandomNormal(mean=0.0, stddev=backbone.hidden_dim ** -0.5)
    embeddings.assign(tf.cast(draw(embeddings.shape, dtype="float32"), embeddings.dtype))
    return 1.0


def build_model(recipe, prepared):
    """The compiled `DenoisingSeq2Seq` (call inside the strategy's scope)."""
    _quiet()
    model_cfg, train_cfg = recipe["model"], recipe["training"]
    epochs, steps_per_epoch = common.rounds(train_cfg)
    run_lengths = prepared["lengths"]
    backbone = build_backbone(
        model_cfg["backbone"], len(prepared["vocabulary"]),
        max(run_lengths["encoder_length"], run_lengths["target_length"]),
        dropout=model_cfg["dropout"],
    )
    logit_scale = "auto"
    if model_cfg.get("reinitialize_t5_embedding", False):
        logit_scale = reinitialize_t5_embedding(backbone)
    # T5 starts decoding from the padding id, BART from </s> ([SEP] here).
    start = PAD_ID if _objective(recipe) == "t5" else SEP_ID
    model = DenoisingSeq2Seq(backbone, decoder_start_token_id=start, padding_token_id=PAD_ID,
                             logit_scale=logit_scale)
    model.compile(
        optimizer=common.optimizer(train_cfg, steps_per_epoch * epochs),
        jit_compile=common.jit_compile_for(recipe),
    )
    return model


def unigram_baseline(train_dataset, validation_dataset, vocabulary_size, excluded_ids=(),
                     train_batches=100):
    """Held-out token accuracy and perplexity of a unigram model of targets.

    The unigram distribution is estimated (add-one smoothed) from the real
    target tokens of `train_batches` training batches (sentinels and EOS
    included); its accuracy is that of always predicting its most frequent
    token. `content_token_accuracy` is the same over the target tokens not in
    `excluded_ids` (sentinels, EOS: the text itself), always predicting the
    most frequent such token.

    Returns:
        dict with `token_accuracy`, `perplexity`, `token` (the most frequent
        id), `content_token_accuracy`, `content_token`.
    """
    counts = np.ones(vocabulary_size, np.float64)
    for _, targets, weights in train_dataset.take(train_batches):
        counts += np.bincount(targets.numpy().ravel(), weights=weights.numpy().ravel(),
                              minlength=vocabulary_size)
    log_p = np.log(counts / counts.sum())
    top = int(counts.argmax())
    content_counts = counts.copy()
    content_counts[list(excluded_ids)] = 0
    content_top = int(content_counts.argmax())
    nll = hits = total = content_hits = content_total = 0.0
    for _, targets, weights in validation_dataset:
        t, w = targets.numpy().ravel(), weights.numpy().ravel()
        nll -= float((log_p[t] * w).sum())
        hits += float(((t == top) * w).sum())
        total += float(w.sum())
        content = w * ~np.isin(t, list(excluded_ids))
        content_hits += float(((t == content_top) * content).sum())
        content_total += float(content.sum())
    return {
        "token_accuracy": hits / total,
        "perplexity": math.exp(nll / total),
        "token": top,
        "content_token_accuracy": content_hits / max(content_total, 1.0),
        "content_token": content_top,
    }


def copy_baselines(validation_dataset, excluded_ids=(), mask_token_id=MASK_ID):
    """Held-out teacher-forced accuracy of two copying baselines for BART
    (the target is the original sequence, the encoder reads its noised copy).

    - `copy`: the output is the noised input itself, position by position.
    - `pointer_copy`: a copying heuristic given the true previous target
      token (as teacher forcing gives the model): predict the encoder token
      after the one copied last, skipping `mask_token_id`; after each target
      token, move the pointer to its next occurrence in the encoder input
      (searching forward first, then from the start: a permuted sentence);
      a token found nowhere (it was under a mask) leaves the pointer.

    Both are counted over the real target tokens (`token_accuracy`) and over
    those not in `excluded_ids` (`content_token_accuracy`).

    Returns:
        dict `{"copy": {...}, "pointer_copy": {...}}` of
        `{"token_accuracy", "content_token_accuracy"}`.
    """
    excluded = np.asarray(sorted(excluded_ids) or [-1])
    counts = {name: np.zeros(4) for name in ("copy", "pointer_copy")}
    for x, targets, weights in validation_dataset:
        encoder = x["encoder_token_ids"].numpy()
        encoder_mask = x["encoder_padding_mask"].numpy().astype(bool)
        targets, weights = targets.numpy(), weights.numpy()
        for row in range(targets.shape[0]):
            source = encoder[row][encoder_mask[row]]
            target = targets[row][weights[row] > 0]
            content = ~np.isin(target, excluded)
            length = min(len(source), len(target))
            aligned = np.zeros(len(target), bool)
            aligned[:length] = source[:length] == target[:length]
            pointed = np.zeros(len(target), bool)
            pointer = -1
            for i, token in enumerate(target):
                guess = pointer + 1
                while guess < len(source) and source[guess] == mask_token_id:
                    guess += 1
                pointed[i] = guess < len(source) and source[guess] == token
                found = np.flatnonzero(source[pointer + 1:] == token)
                if found.size:
                    pointer = pointer + 1 + int(found[0])
                else:
                    found = np.flatnonzero(source == token)
                    if found.size:
                        pointer = int(found[0])
            for name, hits in (("copy", aligned), ("pointer_copy", pointed)):
                counts[name] += (hits.sum(), len(target), (hits & content).sum(), content.sum())
    return {
        name: {"token_accuracy": c[0] / max(c[1], 1.0),
               "content_token_accuracy": c[2] / max(c[3], 1.0)}
        for name, c in counts.items()
    }


def content_token_accuracy(model, validation_dataset, excluded_ids=()):
    """The model's teacher-forced accuracy over the held-out target tokens
    not in `excluded_ids` (the text, without sentinels and EOS).

    Returns `(text_argmax, any_argmax)`: the first predicts, at each text
    position, the model's most probable *text* token (the excluded ids'
    logits are ignored), so it is told, as the constant baseline
    `unigram_baseline(...)["content_token_accuracy"]` is, that the position
    holds text; the second takes the arg-max over the whole vocabulary, so a
    position where the model rates "the span ends here" (the next sentinel)
    above every single text token counts as a miss."""
    excluded = tf.constant(sorted(excluded_ids) or [-1], tf.int32)

    @tf.function
    def counts(x, targets, weights):
        logits = tf.cast(model(x, training=False), tf.float32)
        ids = tf.range(tf.shape(logits)[-1], dtype=tf.int32)
        allowed = tf.logical_not(tf.reduce_any(tf.equal(ids[:, None], excluded[None, :]), axis=-1))
        text_logits = tf.where(allowed, logits, tf.constant(-float("inf"), logits.dtype))
        targets = tf.cast(targets, tf.int32)
        content = tf.logical_not(tf.reduce_any(tf.equal(targets[..., None], excluded), axis=-1))
        w = tf.cast(weights, tf.float32) * tf.cast(content, tf.float32)
        hits = [tf.reduce_sum(w * tf.cast(tf.equal(
            tf.argmax(z, axis=-1, output_type=tf.int32), targets), tf.float32))
            for z in (text_logits, logits)]
        return tf.stack([*hits, tf.reduce_sum(w)])

    totals = np.zeros(3)
    for x, targets, weights in validation_dataset:
        totals += counts(x, targets, weights).numpy()
    return totals[0] / max(totals[2], 1.0), totals[1] / max(totals[2], 1.0)


def _example(model, recipe, prepared, validation_dataset):
    """One held-out example with the model's teacher-forced arg-max target,
    as text (T5: merged back into the sentence)."""
    vocabulary = prepared["vocabulary"]
    x, targets, weights = next(iter(validation_dataset))
    predicted = tf.argmax(model(x, training=False), axis=-1).numpy()[0]
    n = int(weights.numpy()[0].sum())

    def text(ids):
        return " ".join(vocabulary[i] for i in ids if i != PAD_ID).replace(" ##", "")

    encoder = [int(i) for i in x["encoder_token_ids"].numpy()[0] if i != PAD_ID]
    example = {
        "encoder_input": text(encoder),
        "target": text(targets.numpy()[0][:n]),
        "predicted_target": text(predicted[:n]),
    }
    if _objective(recipe) == "t5":
        example["merged_prediction"] = text(merge_span_corruption(
            encoder, predicted[:n], prepared["sentinel_ids"], SEP_ID, PAD_ID))
    return example


def train(recipe, out_dir, data=None, tfds=None, data_dir=None, strategy="auto", log=print):
    """Trains, evaluates and exports a denoising seq2seq model; returns the
    metrics dict.

    Writes into `out_dir`: `vocab.txt`, `recipe.json`, `checkpoints/`,
    `logs/`, `loss_curve.png`, `model.keras` (the training objective),
    `saved_model/` (inference: raw text and decoder ids in, logits out) and
    `metrics.json` (held-out token accuracy and perplexity of the targets
    next to a unigram baseline).
    """
    objective = _objective(recipe)
    model_cfg = recipe["model"]
    run = common.fit_run(
        sys.modules[__name__], recipe, out_dir, data, tfds, data_dir, strategy, log,
        title=f"denoising seq2seq ({objective})",
        describe=lambda model: (
            f"DenoisingSeq2Seq ({objective}) over {model_cfg['backbone']} "
            f"({model.count_params():,} parameters)"
        ),
    )
    model, prepared, evaluation = run.model, run.prepared, run.evaluation
    batch_size = int(recipe["training"]["batch_size"])
    local_val = make_dataset(recipe, prepared, "validation", batch_size)
    excluded = (PAD_ID, CLS_ID, SEP_ID, *prepared["sentinel_ids"])
    baseline = unigram_baseline(
        make_dataset(recipe, prepared, "train", batch_size), local_val, len(prepared["vocabulary"]),
        excluded,
    )
    content_accuracy, content_accuracy_any = content_token_accuracy(model, local_val, excluded)
    example = _example(model, recipe, prepared, local_val)
    copy_metrics = {}
    if objective == "bart":
        for name, values in copy_baselines(local_val, excluded).items():
            copy_metrics[f"{name}_token_accuracy"] = values["token_accuracy"]
            copy_metrics[f"{name}_content_token_accuracy"] = values["content_token_accuracy"]

    export(model, common.save_objective(model, out_dir), prepared, recipe)
    vocabulary = prepared["vocabulary"]
    metrics = common.write_metrics(run, {
        "objective": objective,
        "backbone": model_cfg["backbone"],
        "val_loss": evaluation["loss"],
        "val_perplexity": evaluation["perplexity"],
        "val_token_accuracy": evaluation["token_accuracy"],
        "unigram_perplexity": baseline["perplexity"],
        "unigram_token_accuracy": baseline["token_accuracy"],
        "unigram_token": vocabulary[baseline["token"]],
        # The same accuracy over the text tokens alone (no sentinels, EOS, [CLS]):
        # arg-max among text tokens (told the position is text, as the constant
        # baseline is), and arg-max over the whole vocabulary.
        "val_content_token_accuracy": content_accuracy,
        "val_content_token_accuracy_any_token": content_accuracy_any,
        "unigram_content_token_accuracy": baseline["content_token_accuracy"],
        "unigram_content_token": vocabulary[baseline["content_token"]],
        **copy_metrics,
        "lengths": prepared["lengths"],
        "example": example,
    })
    log(f"held-out target token accuracy {metrics['val_token_accuracy']:.4f}, perplexity "
        f"{metrics['val_perplexity']:.2f} vs unigram baseline accuracy "
        f"{baseline['token_accuracy']:.4f} (always {metrics['unigram_token']!r}), perplexity "
        f"{baseline['perplexity']:.2f}; on the text tokens alone {content_accuracy:.4f} "
        f"(arg-max over all tokens {content_accuracy_any:.4f}) vs "
        f"{baseline['content_token_accuracy']:.4f} (always {metrics['unigram_content_token']!r})")
    if copy_metrics:
        log(f"copying baselines: the noised input as output {copy_metrics['copy_token_accuracy']:.4f} "
            f"(text {copy_metrics['copy_content_token_accuracy']:.4f}), pointer copy "
            f"{copy_metrics['pointer_copy_token_accuracy']:.4f} "
            f"(text {copy_metrics['pointer_copy_content_token_accuracy']:.4f})")
    log(f"run folder: {out_dir}")
    return metrics



def export(model, out_dir, prepared, recipe):
    """Writes `out_dir/saved_model/` (`export_seq2seq_saved_model`):
    `serving_default` takes `text` (the corrupted text; T5 sentinels
    `<extra_id_k>` may be written in it) and `decoder_token_ids`, and
    returns `logits` and `encoder_sequence_output`, float32.

    `prepared` is `prepare`'s dict or the `Run` that `kobjectives export`
    reloads: the tokenizer is rebuilt from `prepared["vocabulary"]` as
    `prepare` builds it (special tokens and sentinels read in text), so
    both write the same signature."""
    vocabulary = list(prepared["vocabulary"])
    special = list(data_lib.WORDPIECE_RESERVED_TOKENS)
    if _objective(recipe) == "t5":
        special += vocabulary[-int(recipe["corruption"]["num_sentinels"]):]
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary, lowercase=recipe["tokenizer"]["lowercase"], oov_token="[UNK]",
        special_tokens=special, special_tokens_in_strings=True,
    )
    keras.mixed_precision.set_global_policy("float32")
    export_seq2seq_saved_model(
        model, pathlib.Path(out_dir) / "saved_model", tokenizer=tokenizer,
        encoder_sequence_length=lengths(recipe)["encoder_length"], eos_token_id=SEP_ID,
        overwrite=True,
    )
