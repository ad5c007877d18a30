"""Causal SFT: packed windows vs one example per padded row, on HH-RLHF.

Run: `python benchmarks/sft_packing.py` (from the repository root; a few
minutes on 2 CPU cores; `--help`). Needs `../shared/data/hh_rlhf/`.

What is measured
----------------
The chosen dialogues of the HH-RLHF train subsets (`helpful-base`,
`helpful-rejection-sampled`, `harmless-base`; `helpful-online` is reserved
and never read), as chat SFT examples (`kobjectives.data.read_hh_rlhf`,
`tokenize_sft_examples`, a WordPiece vocabulary trained on them), windows of
`--length` tokens (longer dialogues keep their last tokens). The same
examples become batches two ways with `kobjectives.data.sft_dataset`:
packed by best-fit decreasing (`packing=True`, attention and positions reset
at every example boundary) and one example per row padded to the window
(`packing=False`). `CausalLanguageModel` over the `gpt2_tiny` backbone of the
`sft` recipe trains on each (same initial weights, `jit_compile=True`, 3
warm-up steps, then `--steps` timed `train_on_batch` calls), `--repeats`
times round-robin; the best repeat of each counts.

Reported: useful (non-padding) tokens per second of wall time and of
process CPU time, and their ratio packed/padded. Exactness: for
`--check` examples, each example's mean completion loss computed inside
the packed windows and computed alone (one example, one row) by the same
weights; the largest absolute difference is printed (the goal is 1e-5).
"""

import argparse
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

from kobjectives.backbones import build_backbone
from kobjectives.data import read_hh_rlhf
from kobjectives.data import SFTExamples
from kobjectives.data import sft_dataset
from kobjectives.data import tokenize_sft_examples
from kobjectives.data.tokenizers import train_wordpiece
from kobjectives.objectives import CausalLanguageModel
from kobjectives.ops.sft import example_token_means
from kobjectives.runs.sft import chat_tokenizer


def examples(args):
    conversations = read_hh_rlhf(args.data, max_dialogues=args.dialogues)
    texts = [turn["content"] for c in conversations for turn in c]
    vocabulary = train_wordpiece(texts, args.vocabulary_size, max_training_documents=20000)
    tokenizer = chat_tokenizer(vocabulary, lowercase=True)
    tokenized = tokenize_sft_examples(conversations, tokenizer,
                                      start_token_id=tokenizer.start_token_id)
    return tokenized, tokenizer


def model_for(tokenizer, length, seed=0):
    keras.utils.set_random_seed(seed)
    backbone = build_backbone("gpt2_tiny", tokenizer.vocabulary_size(), length, dropout=0.0)
    model = CausalLanguageModel(backbone, reset_attention_at_boundaries=True)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=True)
    return model


def batches(tokenized, length, batch_size, packing, count):
    dataset = sft_dataset(tokenized, length, batch_size, packing=packing, truncation="left",
                          shuffle=True, seed=0, repeat=True)
    return [next_batch for next_batch, _ in zip(dataset, range(count))]


def time_steps(model, data, warmup):
    for x, y, w in data[:warmup]:
        model.train_on_batch(x, y, sample_weight=w)
    useful = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for x, y, w in data[warmup:]:
        model.train_on_batch(x, y, sample_weight=w)
        useful += int(tf.reduce_sum(tf.cast(x["padding_mask"], tf.int32)))
    return useful / (time.perf_counter() - wall), useful / (time.process_time() - cpu)


def example_losses(model, x, w):
    """Each example's mean completion loss in the batch (packed or not)."""
    labels, weights = model.targets(x, None, w)
    losses, _ = model.token_losses(model(x), labels)
    means, example_weights = example_token_means(losses, weights, x.get("segment_ids"))
    return means.numpy()[example_weights.numpy() > 0]


def exactness(model, tokenized, length, count):
    subset = SFTExamples(tokenized.token_ids[:count], tokenized.completion_mask[:count])
    packed = [example_losses(model, x, w) for x, _, w in sft_dataset(
        subset, length, count, packing=True, truncation="left", shuffle=False,
        drop_remainder=False)]
    alone = [example_losses(model, x, w) for x, _, w in sft_dataset(
        subset, length, 1, packing=False, truncation="left", shuffle=False,
        drop_remainder=False)]
    packed, alone = np.sort(np.concatenate(packed)), np.sort(np.concatenate(alone))
    assert packed.shape == alone.shape, (packed.shape, alone.shape)
    return float(np.max(np.abs(packed - alone)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/hh_rlhf")
    parser.add_argument("--dialogues", type=int, default=4000)
    parser.add_argument("--vocabulary-size", type=int, default=4000)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check", type=int, default=64)
    args = parser.parse_args()
    if not pathlib.Path(args.data).exists():
        raise SystemExit(f"{args.data} is absent: this benchmark needs the shared HH-RLHF data.")
    tokenized, tokenizer = examples(args)
    lengths = np.asarray(tokenized.lengths)
    print(f"{len(lengths)} dialogues; tokens per dialogue: median {np.median(lengths):.0f}, "
          f"mean {lengths.mean():.1f}, 90th percentile {np.percentile(lengths, 90):.0f}, "
          f"over {args.length}: {(lengths > args.length).mean():.1%}")
    count = args.steps + 3
    data = {packing: batches(tokenized, args.length, args.batch_size, packing, count)
            for packing in (True, False)}
    models = {packing: model_for(tokenizer, args.length) for packing in (True, False)}
    best = {True: (0.0, 0.0), False: (0.0, 0.0)}
    for repeat in range(args.repeats):
        for packing in (True, False):
            wall, cpu = time_steps(models[packing], data[packing], 3)
            best[packing] = (max(best[packing][0], wall), max(best[packing][1], cpu))
            print(f"repeat {repeat}: packing={packing}: {wall:,.0f} useful tokens/s wall, "
                  f"{cpu:,.0f} per CPU-second")
    fill = {p: float(np.mean([tf.reduce_mean(tf.cast(x["padding_mask"], tf.float32))
                              for x, _, _ in data[p]])) for p in data}
    print(f"window fill: packed {fill[True]:.1%}, padded {fill[False]:.1%}")
    print(f"best useful tokens/s (wall): packed {best[True][0]:,.0f}, padded "
          f"{best[False][0]:,.0f}, ratio {best[True][0] / best[False][0]:.2f}x")
    print(f"best useful tokens per CPU-second: packed {best[True][1]:,.0f}, padded "
          f"{best[False][1]:,.0f}, ratio {best[True][1] / best[False][1]:.2f}x")
    check = model_for(tokenizer, args.length)
    print(f"per-example loss, packed vs alone, {args.check} examples: max |difference| "
          f"{exactness(check, tokenized, args.length, args.check):.2e}")


if __name__ == "__main__":
    main()
