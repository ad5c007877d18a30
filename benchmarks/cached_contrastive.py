"""Cached (GradCache) vs uncached contrastive step: peak memory and pairs/s.

Run: `python benchmarks/cached_contrastive.py` (about 4-8 minutes on 2 CPU
cores; `--batches 128 512` for a shorter run, `--loops` to add the
while-loop vs unrolled compile-time comparison, `--help` for the rest).

What is measured
----------------
`kobjectives.objectives.CachedContrastiveEncoder` trained on (anchor,
positive) pairs with the in-batch InfoNCE loss (temperature 0.05, cosine), at
global batch sizes 128, 512 and 2048:

* **cached**: `mini_batch_size=64` (GradCache: embed without a tape, loss and
  embedding gradients on the full batch, re-embed each 64-row chunk under a
  tape);
* **uncached**: `mini_batch_size=None`, the ordinary step (one tape around
  the whole batch; every activation kept until the backward pass).

The embedder is the same for both: a keras-hub `BertBackbone` (vocabulary
8192, 2 layers, hidden 128, 2 heads, intermediate 512, dropout 0.1, sequence
length 32) mean-pooled over real tokens (`GlobalAveragePooling1D` with the
padding mask), float32; optimizer Adam(1e-4); the step is a `tf.function`
(Keras' `train_function`), `jit_compile=False`. Inputs are random token ids
with random lengths 16-32 (padding included in the 32).

Each configuration runs in its **own subprocess** (peak memory is a process
high-water mark, so configurations must not share a process):

1. build the embedder and the objective, build the optimizer's slots, and run
   one tiny warm-up forward pass (2 rows) so TensorFlow's runtime, thread
   pools and oneDNN are initialized;
2. take the baselines: the *current* resident set size (RSS, from
   `/proc/self/statm`) and TensorFlow's CPU allocator counters
   (`tf.config.experimental.get_memory_info("CPU:0")`, which does work on
   CPU in TF 2.21; its peak is reset here with `reset_memory_stats`);
3. run the training steps (the first traces the step function);
4. report **peak RSS above baseline** = `getrusage(RUSAGE_SELF).ru_maxrss`
   (the process's high-water mark) minus the baseline RSS, and **peak
   allocator bytes above baseline** = allocator `peak` minus its `current` at
   the baseline. The allocator figure counts the tensors TensorFlow allocates
   (activations, gradients, embeddings, inputs) and nothing else; the RSS
   figure also counts the traced graph, Python objects, oneDNN scratch and
   malloc fragmentation, i.e. what the OS sees.

Throughput = pairs per second over the timed steps (steps after the first
two, sized to about 1024 pairs per repeat), median of 3 repeats.

The target: cached peak at batch 2048 at most 1.3x its peak at batch 128
(both measures are printed with the uncached ratio for contrast).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from subprocess_runs import cpu_model  # noqa: E402  (benchmarks/subprocess_runs.py)
from subprocess_runs import run_child  # noqa: E402

MINI_BATCH = 64
SEQ_LEN = 32
VOCAB = 8192
CONFIG = dict(vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=128,
              intermediate_dim=512, max_sequence_length=SEQ_LEN, dropout=0.1)


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _view(rng, batch):
    import numpy as np

    ids = rng.integers(5, VOCAB, (batch, SEQ_LEN)).astype("int32")
    for i, length in enumerate(rng.integers(16, SEQ_LEN + 1, batch)):
        ids[i, length:] = 0
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids),
            "padding_mask": (ids != 0).astype("int32")}


def _build(mini_batch_size):
    import keras
    import keras_hub

    from kobjectives.objectives import CachedContrastiveEncoder

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(**CONFIG)
    inputs = backbone.input
    pooled = keras.layers.GlobalAveragePooling1D()(
        backbone.output["sequence_output"], mask=inputs["padding_mask"])
    embedder = keras.Model(inputs, pooled)
    model = CachedContrastiveEncoder(embedder, mini_batch_size=mini_batch_size,
                                     temperature=0.05)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=False)
    model.optimizer.build(model.trainable_variables)
    return model, embedder


def child(batch, cached):
    """One configuration, in its own process: prints a JSON line."""
    import resource

    import numpy as np
    import tensorflow as tf

    model, embedder = _build(MINI_BATCH if cached else None)
    rng = np.random.default_rng(0)
    embedder(_view(rng, 2), training=False)  # tiny warm-up forward
    x = {k: {n: tf.constant(v) for n, v in _view(rng, batch).items()}
         for k in ("anchor", "positive")}

    baseline_rss = _rss_bytes()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tf.config.experimental.reset_memory_stats("CPU:0")
    baseline_alloc = tf.config.experimental.get_memory_info("CPU:0")["current"]

    start = time.perf_counter()
    first_loss = model.train_on_batch(x, return_dict=True)["loss"]
    first_step = time.perf_counter() - start
    model.train_on_batch(x)
    steps = max(1, 1024 // batch)
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(steps):
            loss = model.train_on_batch(x, return_dict=True)["loss"]
        rates.append(steps * batch / (time.perf_counter() - start))

    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak_alloc = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    print(json.dumps({
        "batch": batch,
        "cached": cached,
        "peak_rss_mib": (peak_rss - baseline_rss) / 2**20,
        "maxrss_before_mib": (maxrss_before - baseline_rss) / 2**20,
        "peak_alloc_mib": (peak_alloc - baseline_alloc) / 2**20,
        "baseline_rss_mib": baseline_rss / 2**20,
        "pairs_per_s": statistics.median(rates),
        "rates": rates,
        "first_step_s": first_step,
        "loss": [float(first_loss), float(loss)],
    }), flush=True)


def loops_child(batch, unroll, jit_compile):
    """Trace + compile time and step time of the bare cached gradients."""
    import numpy as np
    import tensorflow as tf

    from kobjectives import ops
    from kobjectives.objectives.grad_cache import cached_contrastive_gradients

    model, embedder = _build(MINI_BATCH)
    rng = np.random.default_rng(0)
    views = [{n: tf.constant(v) for n, v in _view(rng, batch).items()} for _ in range(2)]

    def loss_fn(e):
        return ops.global_weighted_mean(ops.info_nce(e[0], e[1]), 1.0)

    step = tf.function(
        lambda v: cached_contrastive_gradients(
            lambda c: embedder(c, training=True), loss_fn, v, MINI_BATCH,
            embedder.trainable_variables, unroll=unroll)[0],
        jit_compile=jit_compile, autograph=False)
    start = time.perf_counter()
    step(views).numpy()
    first = time.perf_counter() - start
    times = []
    for _ in range(3):
        start = time.perf_counter()
        step(views).numpy()
        times.append(time.perf_counter() - start)
    print(json.dumps({"batch": batch, "unroll": unroll, "jit": jit_compile,
                      "first_call_s": first, "step_s": statistics.median(times)}),
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--loops", action="store_true",
                        help="also compare tf.while_loop vs unrolled chunk loops")
    parser.add_argument("--child", nargs=2, metavar=("BATCH", "CACHED"), help=argparse.SUPPRESS)
    parser.add_argument("--loops-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(int(args.child[0]), args.child[1] == "1")
    if args.loops_child:
        b, unroll, jit = args.loops_child
        return loops_child(int(b), unroll == "1", jit == "1")

    started = time.time()
    print(f"date {datetime.date.today()}  machine {cpu_model()}, {os.cpu_count()} cores  "
          f"python {platform.python_version()}")
    import keras
    import tensorflow as tf

    print(f"tensorflow {tf.__version__}  keras {keras.__version__}")
    print(f"embedder: BertBackbone {CONFIG}, mean-pooled; mini-batch {MINI_BATCH}; "
          "jit_compile=False; Adam")
    results = {}
    for batch in args.batches:
        for cached in (True, False):
            result = run_child(__file__, ["--child", str(batch), "1" if cached else "0"], timeout=400)
            results[(batch, cached)] = result
            label = "cached  " if cached else "uncached"
            if "error" in result:
                print(f"B={batch:5d} {label} ERROR {result['error']}")
                continue
            print(f"B={batch:5d} {label} peak RSS +{result['peak_rss_mib']:8.1f} MiB  "
                  f"peak TF alloc +{result['peak_alloc_mib']:8.1f} MiB  "
                  f"{result['pairs_per_s']:7.1f} pairs/s  (first step "
                  f"{result['first_step_s']:.1f} s; repeats "
                  f"{', '.join(f'{r:.0f}' for r in result['rates'])})", flush=True)

    print()
    print("| batch | step | peak RSS above baseline (MiB) | peak TF allocator (MiB) | pairs/s |")
    print("|---:|---|---:|---:|---:|")
    for (batch, cached), r in results.items():
        if "error" in r:
            continue
        name = f"cached (m={MINI_BATCH})" if cached else "uncached"
        print(f"| {batch} | {name} | {r['peak_rss_mib']:.0f} | {r['peak_alloc_mib']:.0f} | "
              f"{r['pairs_per_s']:.0f} |")
    lo, hi = min(args.batches), max(args.batches)
    for cached in (True, False):
        a, b = results.get((lo, cached), {}), results.get((hi, cached), {})
        if "peak_rss_mib" in a and "peak_rss_mib" in b:
            name = "cached  " if cached else "uncached"
            rss = b["peak_rss_mib"] / a["peak_rss_mib"]
            alloc = b["peak_alloc_mib"] / a["peak_alloc_mib"]
            verdict = ""
            if cached:
                verdict = "  target <= 1.3x: " + ("met" if max(rss, alloc) <= 1.3 else "NOT met")
            print(f"{name} peak ratio B={hi}/B={lo}: RSS {rss:.2f}x, TF allocator "
                  f"{alloc:.2f}x{verdict}")

    if args.loops:
        print("\nchunk loop: tf.while_loop vs unrolled Python loop, bare cached gradients, "
              "B=512 (8 chunks x 2 views)")
        for jit in (False, True):
            for unroll in (False, True):
                r = run_child(__file__, ["--loops-child", "512", "1" if unroll else "0",
                                "1" if jit else "0"], timeout=300)
                name = ("unrolled" if unroll else "while_loop") + (" jit" if jit else "")
                if "error" in r:
                    print(f"{name:16s} ERROR {r['error'][-200:]}")
                else:
                    print(f"{name:16s} first call (trace+compile+run) {r['first_call_s']:6.1f} s"
                          f"   step {r['step_s']:.2f} s", flush=True)
    print(f"\ntotal {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
