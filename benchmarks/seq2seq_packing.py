"""Seq2seq SFT: exactly packed rows vs one pair per padded row, on HH-RLHF.

Run: `python benchmarks/seq2seq_packing.py` (from the repository root; a few
minutes on 2 CPU cores; `--help`). Needs `../shared/data/hh_rlhf/`.

What is measured
----------------
The chosen dialogues of the HH-RLHF train subsets (`helpful-base`,
`helpful-rejection-sampled`, `harmless-base`; `helpful-online` is reserved
and never read), read with `kobjectives.data.read_hh_rlhf` and turned into
seq2seq SFT pairs by `kobjectives.data.seq2seq_sft.dialogue_pair` (input:
the dialogue before its last assistant turn as text; target: that turn).
They are tokenized as the `seq2seq_sft` run does (a WordPiece vocabulary
trained on `input + "\\n" + target`, `tokenize_seq2seq_pairs` with T5's
layout: `input [end]` in `--encoder-length` ids, keeping its first tokens;
`target [end]` in `--target-length` ids). The same examples become batches
two ways with `seq2seq_sft_dataset`: packed exactly (`packing=True`:
best-fit decreasing on both lengths, per-example attention masks) and one
pair per row, padded (`packing=False`). `DenoisingSeq2Seq` over the
`t5_tiny` backbone, built as the run's `build_objective` builds it (the T5
embedding redrawn, decoder start = padding id), trains on each (same
initial weights, `jit_compile=True`, 3 warm-up steps, then `--steps` timed
`train_on_batch` calls), `--repeats` times round-robin; the best repeat of
each counts.

Reported: the target-slot fill (and encoder-slot fill) over all rows and
over the batches trained on, useful (non-padding) target tokens per second
of wall time and of process CPU time, and their ratio packed/padded. Exactness: for `--check` pairs,
each pair's per-token target losses and its mean target loss computed
inside packed rows (`pack_seq2seq_examples`, matched to the pair by its
row and segment id) and computed alone (one pair, one row) by the same
weights; the largest absolute differences are printed (the goal is 1e-5).
"""

import argparse
import dataclasses
import pathlib
import time
import warnings

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from kobjectives import backbones
from kobjectives.data import read_hh_rlhf
from kobjectives.data import train_wordpiece
from kobjectives.data.seq2seq_sft import PACKED_SEQ2SEQ_INPUTS
from kobjectives.data.seq2seq_sft import dialogue_pair
from kobjectives.data.seq2seq_sft import pack_seq2seq_examples
from kobjectives.data.seq2seq_sft import seq2seq_sft_dataset
from kobjectives.data.seq2seq_sft import tokenize_seq2seq_pairs
from kobjectives.objectives import DenoisingSeq2Seq
from kobjectives.runs.denoising import special_token_id

WARMUP = 3


def examples(args):
    conversations = read_hh_rlhf(args.data, target="chosen", max_dialogues=args.dialogues)
    pairs = [dialogue_pair(c, f"hh_rlhf dialogue {i}") for i, c in enumerate(conversations)]
    texts = [pair["input"] + "\n" + pair["target"] for pair in pairs]
    vocabulary = train_wordpiece(texts, args.vocabulary_size, lowercase=True,
                                 max_training_documents=2000)
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary, lowercase=True, oov_token="[UNK]")
    pad, end = special_token_id(tokenizer, "pad"), special_token_id(tokenizer, "end")
    tokenized = tokenize_seq2seq_pairs(
        [pair["input"] for pair in pairs], [pair["target"] for pair in pairs], tokenizer,
        args.encoder_length, args.target_length, end_token_id=end, padding_token_id=pad)
    return tokenized, tokenizer, pad


def model_for(tokenizer, args, pad, seed=0):
    keras.utils.set_random_seed(seed)
    backbone = backbones.build_backbone(
        "t5_tiny", tokenizer.vocabulary_size(), max(args.encoder_length, args.target_length),
        dropout=0.0)
    logit_scale = backbones.reinitialize_t5_embedding(backbone)
    model = DenoisingSeq2Seq(backbone, decoder_start_token_id=pad, padding_token_id=pad,
                             logit_scale=logit_scale)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=True)
    return model


def batches(tokenized, batch_size, packing, pad, count):
    dataset = seq2seq_sft_dataset(tokenized, batch_size, packing=packing, shuffle=True, seed=0,
                                  repeat=True, padding_token_id=pad)
    return [next_batch for next_batch, _ in zip(dataset, range(count))]


def time_steps(model, data):
    for x, y, w in data[:WARMUP]:
        model.train_on_batch(x, y, sample_weight=w)
    useful = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for x, y, w in data[WARMUP:]:
        model.train_on_batch(x, y, sample_weight=w)
        useful += int(tf.reduce_sum(x["target_padding_mask"]))
    return useful / (time.perf_counter() - wall), useful / (time.process_time() - cpu)


def token_losses(model, x, chunk=16):
    """The per-token target cross-entropy of every row of `x` (numpy)."""
    out = []
    for start in range(0, len(x["target_ids"]), chunk):
        part = {key: tf.constant(value[start:start + chunk]) for key, value in x.items()}
        logits = tf.cast(model(part, training=False), tf.float32)
        out.append(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=part["target_ids"], logits=logits).numpy())
    return np.concatenate(out)


def exactness(model, tokenized, count, pad):
    """Max |difference| of per-token and per-pair mean target losses, packed
    rows vs each pair alone in its row, over the first `count` pairs."""
    subset = dataclasses.replace(tokenized, **{
        field.name: getattr(tokenized, field.name)[:count]
        for field in dataclasses.fields(tokenized) if not field.name.endswith("_capacity")})
    rows, bins = pack_seq2seq_examples(subset, pad)
    packed = token_losses(model, {key: rows[key] for key in PACKED_SEQ2SEQ_INPUTS})
    alone = token_losses(model, subset.x())
    token_diff = mean_diff = 0.0
    seen = 0
    for row, members in enumerate(bins):
        for segment, index in enumerate(members, 1):
            where = rows["decoder_segment_ids"][row] == segment
            weights = rows["target_weights"][row][where]
            in_row = packed[row][where]
            length = int(subset.target_padding_mask[index].sum())
            own_weights = subset.target_weights[index, :length]
            assert np.array_equal(weights, own_weights), index
            by_itself = alone[index, :length]
            token_diff = max(token_diff, float(np.max(np.abs(in_row - by_itself))))
            weights = weights.astype(np.float64)
            mean_diff = max(mean_diff, abs(float(np.sum(in_row * weights) / weights.sum())
                                           - float(np.sum(by_itself * weights) / weights.sum())))
            seen += 1
    assert seen == count, (seen, count)
    return token_diff, mean_diff, len(bins)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/hh_rlhf")
    parser.add_argument("--dialogues", type=int, default=4000)
    parser.add_argument("--vocabulary-size", type=int, default=4096)
    parser.add_argument("--encoder-length", type=int, default=256)
    parser.add_argument("--target-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--check", type=int, default=64)
    args = parser.parse_args()
    # keras-hub's T5 attention layers warn about Keras masks they ignore.
    warnings.filterwarnings(
        "ignore", message=r"Layer '.*attention' .* was passed an input with a mask")
    if not pathlib.Path(args.data).exists():
        raise SystemExit(f"{args.data} is absent: this benchmark needs the shared HH-RLHF data "
                         "(../shared/data/hh_rlhf/, see ../shared/data/README).")
    tokenized, tokenizer, pad = examples(args)
    print(f"{len(tokenized)} pairs, vocabulary {tokenizer.vocabulary_size()}")
    for name, lengths, capacity in (
            ("input", tokenized.input_lengths, tokenized.input_capacity),
            ("target", tokenized.target_lengths, tokenized.target_capacity)):
        print(f"{name} tokens per pair: median {np.median(lengths):.0f}, mean "
              f"{lengths.mean():.1f}, 90th percentile {np.percentile(lengths, 90):.0f}, over "
              f"{capacity}: {(lengths > capacity).mean():.1%} (keep their first tokens)")
    rows = len(pack_seq2seq_examples(tokenized, pad)[1])
    targets, inputs = tokenized.target_padding_mask.sum(), tokenized.encoder_padding_mask.sum()
    print(f"packing: {len(tokenized)} pairs in {rows} rows ({len(tokenized) / rows:.2f} per row); "
          f"over all rows, target slots filled {targets / tokenized.target_ids.size:.1%} one per "
          f"row, {targets / (rows * args.target_length):.1%} packed; encoder slots "
          f"{inputs / tokenized.encoder_token_ids.size:.1%} / "
          f"{inputs / (rows * args.encoder_length):.1%}")
    count = args.steps + WARMUP
    data = {packing: batches(tokenized, args.batch_size, packing, pad, count)
            for packing in (True, False)}
    models = {packing: model_for(tokenizer, args, pad) for packing in (True, False)}
    models[False].set_weights(models[True].get_weights())
    best = {True: (0.0, 0.0), False: (0.0, 0.0)}
    for repeat in range(args.repeats):
        for packing in (True, False):
            wall, cpu = time_steps(models[packing], data[packing])
            best[packing] = (max(best[packing][0], wall), max(best[packing][1], cpu))
            print(f"repeat {repeat}: packing={packing}: {wall:,.0f} useful target tokens/s "
                  f"wall, {cpu:,.0f} per CPU-second", flush=True)

    def fill(packing, key):
        return float(np.mean([tf.reduce_mean(tf.cast(x[key], tf.float32))
                              for x, _, _ in data[packing]]))

    print(f"target-slot fill: packed {fill(True, 'target_padding_mask'):.1%}, padded "
          f"{fill(False, 'target_padding_mask'):.1%}; encoder-slot fill: packed "
          f"{fill(True, 'encoder_padding_mask'):.1%}, padded "
          f"{fill(False, 'encoder_padding_mask'):.1%}")
    print(f"best useful target tokens/s (wall): packed {best[True][0]:,.0f}, padded "
          f"{best[False][0]:,.0f}, ratio {best[True][0] / best[False][0]:.2f}x")
    print(f"best useful target tokens per CPU-second: packed {best[True][1]:,.0f}, padded "
          f"{best[False][1]:,.0f}, ratio {best[True][1] / best[False][1]:.2f}x")
    check = model_for(tokenizer, args, pad)
    token_diff, mean_diff, check_rows = exactness(check, tokenized, args.check, pad)
    print(f"target losses, packed ({check_rows} rows) vs alone, {args.check} pairs: max "
          f"|difference| per token {token_diff:.2e}, per pair mean {mean_diff:.2e}")


if __name__ == "__main__":
    main()
