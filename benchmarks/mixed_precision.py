"""Masked-LM training throughput, float32 vs `mixed_bfloat16`, on this machine.

Run: `python benchmarks/mixed_precision.py` (`--help` for options). About 2-3
minutes on 2 quiet CPU cores with the defaults (jit off); `--jit on` or
`--jit both` add XLA compiles (minutes each on a CPU).

What is measured: `kobjectives.objectives.MaskedLanguageModel` on the same
`BertBackbone` as `benchmarks/mlm_step.py` (4 layers, hidden 256, 4 heads,
intermediate 1024, vocabulary 30522, batch 32 x length 128, 20 masked
positions), built once under each policy (the backbone's `dtype`; the
objective's loss is computed in float32 either way, checked below), AdamW as
in `mlm_step.py`. Both are fed the same cached batches of the real pipeline
(embedded corpus -> WordPiece -> pack -> `MaskedLMMasker`), warmed up, then
timed by `model.train_function` over `--steps` steps per repeat; the repeats
of the two policies are interleaved (A B B A ...) so machine noise hits both,
and the speedup is the median of the per-repeat paired ratios of training
tokens/s (`mixed_bfloat16` / `float32`). Tokens = batch x length.

Prints one table and the ratio; `--json FILE` also writes them.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mlm_step  # noqa: E402  (sets the backend, imports kobjectives)
from mlm_step import BATCH  # noqa: E402
from mlm_step import NUM_CACHED_BATCHES  # noqa: E402
from mlm_step import SEQUENCE_LENGTH  # noqa: E402
from mlm_step import TOKENS_PER_STEP  # noqa: E402

import keras  # noqa: E402
import keras_hub  # noqa: E402
import tensorflow as tf  # noqa: E402

from kobjectives.data import embedded_corpus  # noqa: E402
from kobjectives.objectives import MaskedLanguageModel  # noqa: E402

POLICIES = ("float32", "mixed_bfloat16")


def loss_dtype(model, batch):
    """The dtype of the objective's loss on one batch (float32 expected)."""
    x, y, w = batch
    outputs = model(x, training=False)
    return model.compute_loss(x=x, y=y, y_pred=outputs, sample_weight=w).dtype.name


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat (default 3)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after tracing (default 2)")
    parser.add_argument("--jit", choices=("off", "on", "both"), default="off",
                        help="jit_compile settings (default off: the faster on CPUs, "
                        "see benchmarks/RESULTS.md)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    jits = {"off": (False,), "on": (True,), "both": (False, True)}[args.jit]
    started = time.perf_counter()

    print("Masked-LM training throughput: float32 vs mixed_bfloat16 (kobjectives MaskedLanguageModel)")
    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"machine: {mlm_step.machine()}")
    print(f"python {platform.python_version()}, tensorflow {tf.__version__}, keras "
          f"{keras.__version__}, keras-hub {keras_hub.__version__}")
    print(f"config: the mlm_step.py BertBackbone; batch {BATCH} x length {SEQUENCE_LENGTH} = "
          f"{TOKENS_PER_STEP} tokens/step; {args.warmup} warm-up steps, median of "
          f"{args.repeats} interleaved repeats x {args.steps} steps", flush=True)

    documents = embedded_corpus()
    vocabulary, _ = mlm_step.wordpiece_vocabulary(documents)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    batches = [
        tf.nest.map_structure(lambda t: t.numpy(), b)
        for b in mlm_step.pipeline(documents, tokenizer).take(NUM_CACHED_BATCHES)
    ]
    cached = mlm_step.cached_dataset(batches)
    first = tf.nest.map_structure(tf.constant, batches[0])

    results = []
    for jit in jits:
        runners, dtypes = [], {}
        for policy in POLICIES:
            model = mlm_step.compiled(MaskedLanguageModel(mlm_step.backbone(policy)), jit)
            runner = mlm_step.Runner(policy, model, cached)
            runner.warmup_seconds = runner.warm_up(args.warmup)
            dtypes[policy] = (loss_dtype(model, first), model.backbone.compute_dtype)
            runners.append(runner)
        ratio, ratios = mlm_step.interleave(runners, args.steps, args.repeats)
        speedup = 1.0 / ratio  # interleave returns tokens/s of runners[0] over runners[1]
        for runner in runners:
            results.append({
                "policy": runner.name, "jit_compile": jit,
                "step_seconds": runner.step_time,
                "tokens_per_second": TOKENS_PER_STEP / runner.step_time,
                "loss_dtype": dtypes[runner.name][0],
                "compute_dtype": dtypes[runner.name][1],
                "warmup_seconds": runner.warmup_seconds,
                "last_loss": runner.loss,
            })
        results.append({
            "jit_compile": jit, "speedup_bf16_over_f32": speedup,
            "paired_ratios": [1.0 / r for r in ratios],
        })

    print()
    print("| policy | jit | compute dtype | loss dtype | step (s) | tokens/s | warm-up (s) | last loss |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for row in results:
        if "policy" in row:
            print(f"| {row['policy']} | {'on' if row['jit_compile'] else 'off'} | "
                  f"{row['compute_dtype']} | {row['loss_dtype']} | {row['step_seconds']:.3f} | "
                  f"{row['tokens_per_second']:,.0f} | {row['warmup_seconds']:.0f} | "
                  f"{row['last_loss']:.3f} |")
    for row in results:
        if "speedup_bf16_over_f32" in row:
            spread = ", ".join(f"{r:.2f}" for r in row["paired_ratios"])
            print(f"speedup mixed_bfloat16 / float32 (jit {'on' if row['jit_compile'] else 'off'}): "
                  f"{row['speedup_bf16_over_f32']:.2f}x (paired ratios: {spread})")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": mlm_step.machine(), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
