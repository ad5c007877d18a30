"""Chunked vs plain cross-entropy over a vocabulary projection: peak memory.

Run: `python benchmarks/chunked_ce.py` (a few minutes on 2 CPU cores and
about 4 GB of free memory; `--chunks 256` for a shorter run, `--jit` to
compile the steps with XLA, `--help` for the rest).

What is measured
----------------
The loss and its gradients w.r.t. `hidden` and `kernel` for the GPT-2-small
output layer: vocabulary 50257, length 1024, batch 4, hidden 768, random
hidden states (normal, std 1), kernel (normal, std 0.02) and labels, every
position weighted 1, float32:

* **plain**: `logits = hidden @ kernel` (`[4, 1024, 50257]`, 823 MB) and
  `kobjectives.ops.masked_lm_loss` (sparse softmax cross-entropy and the
  weighted mean), gradients by ordinary autodiff;
* **chunked**: `kobjectives.ops.chunked_cross_entropy(hidden, kernel,
  labels, chunk_size=C)` for each `C` of `--chunks` (logits of C positions
  at a time, recomputed in the backward pass).

Each configuration runs in its **own subprocess** (peak memory is a process
high-water mark): build the inputs, trace and run the step once (warm-up),
then take the baselines (TensorFlow's CPU allocator `current` bytes after
`reset_memory_stats`, and the current RSS from `/proc/self/statm`), run the
step once more and report the **peak allocator bytes above baseline**
(`get_memory_info("CPU:0")["peak"]`: every tensor TensorFlow allocates:
logits, softmax, gradients, the `[768, 50257]` kernel gradient both
methods must return) and the **peak RSS above baseline**
(`getrusage(...).ru_maxrss`; counts only growth past the warm-up's
high-water mark, so it is a weaker measure here). The step is a
`tf.function` (`--jit`: `jit_compile=True`).

Accuracy: one more subprocess computes both losses and gradients on the
same inputs; the target is loss equal to 1e-5 and gradients to 1e-4 (max
absolute difference), and chunked peak at most 0.3x the plain one.
"""

import argparse
import datetime
import json
import os
import platform
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from subprocess_runs import cpu_model  # noqa: E402  (benchmarks/subprocess_runs.py)
from subprocess_runs import run_child  # noqa: E402

VOCAB, LENGTH, BATCH, HIDDEN = 50257, 1024, 4, 768


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _inputs():
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    hidden = tf.constant(rng.standard_normal((BATCH, LENGTH, HIDDEN), dtype=np.float32))
    kernel = tf.constant(rng.standard_normal((HIDDEN, VOCAB), dtype=np.float32) * 0.02)
    labels = tf.constant(rng.integers(0, VOCAB, (BATCH, LENGTH)).astype("int32"))
    weights = tf.ones((BATCH, LENGTH), tf.float32)
    return hidden, kernel, labels, weights


def _step(chunk_size, jit):
    import tensorflow as tf

    from kobjectives import ops

    def loss_fn(hidden, kernel, labels, weights):
        if chunk_size:
            return ops.chunked_cross_entropy(hidden, kernel, labels, weights, chunk_size=chunk_size)
        return ops.masked_lm_loss(labels, tf.matmul(hidden, kernel), weights)

    @tf.function(jit_compile=jit)
    def step(hidden, kernel, labels, weights):
        with tf.GradientTape() as tape:
            tape.watch([hidden, kernel])
            loss = loss_fn(hidden, kernel, labels, weights)
        d_hidden, d_kernel = tape.gradient(loss, [hidden, kernel])
        return loss, d_hidden, d_kernel

    return step


def child(chunk_size, jit):
    """One configuration in its own process: prints a JSON line."""
    import resource

    import tensorflow as tf

    inputs = _inputs()
    step = _step(chunk_size, jit)
    start = time.perf_counter()
    [t.numpy() for t in step(*inputs)]
    first = time.perf_counter() - start

    baseline_rss = _rss_bytes()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tf.config.experimental.reset_memory_stats("CPU:0")
    baseline_alloc = tf.config.experimental.get_memory_info("CPU:0")["current"]
    start = time.perf_counter()
    loss = float(step(*inputs)[0])
    seconds = time.perf_counter() - start
    peak_alloc = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "chunk_size": chunk_size,
        "jit": jit,
        "loss": loss,
        "peak_alloc_mib": (peak_alloc - baseline_alloc) / 2**20,
        "peak_rss_mib": (max(peak_rss, maxrss_before) - baseline_rss) / 2**20,
        "first_call_s": first,
        "step_s": seconds,
    }), flush=True)


def accuracy_child(chunk_sizes, jit):
    """Loss and gradient differences, chunked vs plain, same inputs."""
    import numpy as np

    inputs = _inputs()
    plain = [t.numpy() for t in _step(None, jit)(*inputs)]
    out = {"plain_loss": float(plain[0]), "chunked": []}
    for chunk_size in chunk_sizes:
        chunked = [t.numpy() for t in _step(chunk_size, jit)(*inputs)]
        out["chunked"].append({
            "chunk_size": chunk_size,
            "loss_abs_diff": float(abs(chunked[0] - plain[0])),
            "d_hidden_max_abs_diff": float(np.abs(chunked[1] - plain[1]).max()),
            "d_kernel_max_abs_diff": float(np.abs(chunked[2] - plain[2]).max()),
            "d_hidden_max_abs": float(np.abs(plain[1]).max()),
            "d_kernel_max_abs": float(np.abs(plain[2]).max()),
        })
    print(json.dumps(out), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[128, 256],
                        help="chunk sizes to measure (positions per chunk)")
    parser.add_argument("--jit", action="store_true", help="compile the steps with XLA")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--accuracy-child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        chunk = int(args.child[0])
        return child(chunk or None, args.child[1] == "1")
    if args.accuracy_child:
        return accuracy_child([int(c) for c in args.accuracy_child[1:]], args.accuracy_child[0] == "1")

    started = time.time()
    print(f"date {datetime.date.today()}  machine {cpu_model()}, {os.cpu_count()} cores  "
          f"python {platform.python_version()}")
    import tensorflow as tf

    print(f"tensorflow {tf.__version__}; vocabulary {VOCAB}, length {LENGTH}, batch {BATCH}, "
          f"hidden {HIDDEN}, float32, jit_compile={args.jit}")
    jit = "1" if args.jit else "0"
    results = {}
    for chunk in [0, *args.chunks]:
        r = run_child(__file__, ["--child", str(chunk), jit], timeout=900)
        results[chunk] = r
        name = "plain" if not chunk else f"chunked C={chunk}"
        if "error" in r:
            print(f"{name:18s} ERROR {r['error']}")
            continue
        print(f"{name:18s} peak TF alloc +{r['peak_alloc_mib']:8.1f} MiB  peak RSS "
              f"+{r['peak_rss_mib']:8.1f} MiB  step {r['step_s']:.2f} s  loss {r['loss']:.6f}",
              flush=True)
    accuracy = run_child(__file__, ["--accuracy-child", jit, *map(str, args.chunks)], timeout=1200)

    print()
    print("| loss | chunk | peak TF allocator (MiB) | vs plain | peak RSS (MiB) | step (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    plain = results.get(0, {})
    for chunk, r in results.items():
        if "error" in r:
            continue
        ratio = r["peak_alloc_mib"] / plain["peak_alloc_mib"] if "peak_alloc_mib" in plain else float("nan")
        print(f"| {'plain' if not chunk else 'chunked'} | {chunk or '-'} | {r['peak_alloc_mib']:.0f} | "
              f"{ratio:.3f}x | {r['peak_rss_mib']:.0f} | {r['step_s']:.2f} |")
    if "error" in accuracy:
        print(f"accuracy ERROR {accuracy['error']}")
    else:
        for a in accuracy["chunked"]:
            ok = (a["loss_abs_diff"] <= 1e-5 and a["d_hidden_max_abs_diff"] <= 1e-4
                  and a["d_kernel_max_abs_diff"] <= 1e-4)
            ratio = (results.get(a["chunk_size"], {}).get("peak_alloc_mib", float("nan"))
                     / plain.get("peak_alloc_mib", float("nan")))
            print(f"C={a['chunk_size']}: |loss diff| {a['loss_abs_diff']:.2e}, max |d hidden diff| "
                  f"{a['d_hidden_max_abs_diff']:.2e} (max |d hidden| {a['d_hidden_max_abs']:.2e}), "
                  f"max |d kernel diff| {a['d_kernel_max_abs_diff']:.2e} (max |d kernel| "
                  f"{a['d_kernel_max_abs']:.2e}); accuracy target: {'met' if ok else 'NOT met'}; "
                  f"memory target <= 0.3x: {'met' if ratio <= 0.3 else 'NOT met'} ({ratio:.3f}x)")
    print(f"\ntotal {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
