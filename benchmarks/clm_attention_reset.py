"""Causal-LM training step with and without the attention reset at document
boundaries: CPU time per step.

Run: `python benchmarks/clm_attention_reset.py` (about a minute on 2 CPU
cores; `--steps`, `--jit/--no-jit`, `--help`).

What is measured
----------------
`kobjectives.objectives.CausalLanguageModel` over the `gpt2_tiny` backbone of
the default `clm` recipe (2 layers, hidden 128, vocabulary 1767, windows of
128, batch 16), on packed windows of random documents (`SequencePacker`,
several documents per window). For `reset_attention_at_boundaries` False
(the stock backbone call) and True (the backbone's layers re-wired with the
block-diagonal mask of `ops.document_causal_mask` and restarted positions),
the same weights and batches: compile, run 5 warm-up steps, then time
`--steps` `train_on_batch` calls. Reported per step: process CPU time
(`time.process_time`, all threads: what a shared machine's load does not
inflate) and wall time, each the median of 3 repeats.
"""

import argparse
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from kobjectives.backbones import build_backbone
from kobjectives.layers import SequencePacker
from kobjectives.objectives import CausalLanguageModel


def batches(vocabulary, length, batch_size, count, seed=0):
    rng = np.random.default_rng(seed)
    docs = [list(rng.integers(5, vocabulary, rng.integers(5, 120))) for _ in range(count * 40)]
    windows = SequencePacker(length, end_token_id=3, start_token_id=2)(tf.ragged.constant(docs))
    windows = {k: v[: count * batch_size] for k, v in windows.items()}
    return [{k: v[i * batch_size:(i + 1) * batch_size] for k, v in windows.items()}
            for i in range(count)]


def measure(reset, data, args):
    keras.utils.set_random_seed(0)
    backbone = build_backbone("gpt2_tiny", args.vocabulary, args.length, dropout=0.0)
    model = CausalLanguageModel(backbone, reset_attention_at_boundaries=reset)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=args.jit)
    for x in data[:5]:
        model.train_on_batch(x)
    cpu, wall = [], []
    for _ in range(3):
        c, w = time.process_time(), time.perf_counter()
        for i in range(args.steps):
            loss = model.train_on_batch(data[5 + i % (len(data) - 5)], return_dict=True)["loss"]
        cpu.append((time.process_time() - c) / args.steps)
        wall.append((time.perf_counter() - w) / args.steps)
    return statistics.median(cpu), statistics.median(wall), float(loss)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--vocabulary", type=int, default=1767)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    data = batches(args.vocabulary, args.length, args.batch_size, 25)
    segments = np.mean([float(np.max(x["segment_ids"].numpy(), axis=1).mean()) + 1 for x in data])
    print(f"gpt2_tiny, batch {args.batch_size} x {args.length}, {segments:.1f} documents "
          f"per window, jit_compile={args.jit}, {args.steps} steps x 3 repeats")
    results = {}
    for reset in (False, True):
        results[reset] = measure(reset, data, args)
        cpu, wall, loss = results[reset]
        print(f"reset_attention_at_boundaries={reset!s:5}: {1000 * cpu:7.1f} ms CPU/step, "
              f"{1000 * wall:7.1f} ms wall/step (last loss {loss:.3f})")
    print(f"reset / stock CPU time per step: {results[True][0] / results[False][0]:.3f}x")


if __name__ == "__main__":
    main()
