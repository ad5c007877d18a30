"""Masked-LM training step: kobjectives vs keras-hub, tokens/s and FLOP/s.

Run: `python benchmarks/mlm_step.py [--steps N] [--quick]` (`--help` for the
rest). The full run (float32 and mixed_bfloat16, jit_compile on and off: 8
compiled models, 5 repeats x 2 steps each) is budgeted at about 6-7 minutes
on 2 quiet CPU cores (the XLA compiles dominate); `--quick` (jit off only, 3
repeats, a 2048 peak matmul) about 3 minutes. On a loaded machine both take
several times longer.

What is measured
----------------
1. **Step throughput.** `kobjectives.objectives.MaskedLanguageModel` vs
   `keras_hub.models.BertMaskedLM` on the *identical* `BertBackbone` config
   (4 layers, hidden 256, 4 heads, intermediate 1024, max length 128,
   vocabulary 30522: BERT's vocabulary, so the output projection has its
   real cost), batch 32 x length 128, 20 masked positions, in float32 and
   under `mixed_bfloat16` (passed as the backbone's `dtype`; both tasks take
   their policy from it), with `jit_compile` on and off. Both are compiled
   with the same optimizer (AdamW, learning rate 5e-4, weight decay 0.01,
   clipnorm 1.0: kobjectives' default) and the same `jit_compile`; each keeps
   its library's default loss and metrics (kobjectives: `MaskedLMLoss` +
   `MaskedAccuracy` + `Perplexity`; keras-hub: sparse categorical
   cross-entropy from logits + `SparseCategoricalAccuracy`), i.e. what a user
   of either gets. Both are fed the *same* cached batches: a few batches of
   the real pipeline (below), materialized to numpy and replayed with
   `Dataset.from_tensor_slices(...).repeat()`. Each model is warmed up (trace,
   XLA compile, first steps excluded), then timed by a tight loop over
   `model.train_function` (what `fit` calls each step) on one persistent
   iterator, `--steps` steps per repeat; the repeats of the two models are
   interleaved (A B B A ...), so machine noise hits both, and the ratio is
   the median of the per-repeat paired ratios. Tokens = batch x sequence
   length (padding positions included; the real-token share of the batches is
   printed).
2. **Model FLOP/s as a fraction of peak.** Peak = a jit-compiled 4096x4096
   `tf.matmul` in float32 and in bfloat16 (median of repeats): column
   "% jit peak". The non-jit (oneDNN) matmul is measured too; on this CPU
   XLA's bfloat16 matmul reaches only about half of oneDNN's, so a non-jit
   bf16 step can come close to (or beyond) the jit bf16 "peak": column
   "% best peak" divides by the better of the two. Model FLOPs are
   counted analytically (the formula is printed): matmuls of the encoder on
   every token, attention scores and values, and the MLM head (dense +
   vocabulary projection) on the 20 masked positions only; backward = 2 x
   forward. Embedding lookups, layer norms, softmax, GELU and the optimizer
   are not counted.
3. **Full pipeline vs cached batches.** `kobjectives.data.masked_lm_dataset`
   on `embedded_corpus()` (raw text -> WordPiece tokenize -> chunk -> pack ->
   `MaskedLMMasker`, all in tf.data, `repeat=True`) feeding the kobjectives
   model, against the same model fed cached batches, interleaved, in the
   fastest kobjectives configuration of part 1. The WordPiece vocabulary is
   trained once (`train_wordpiece(docs, 8000)`: the corpus supports about
   3,700 entries) and cached in the temp dir. The model keeps the 30522
   vocabulary (ids from the smaller tokenizer are valid ids of it; the step
   cost does not depend on which ids appear), and the masker draws random
   replacements from all 30522 ids.

keras-hub's `BertMaskedLM` under `mixed_bfloat16`
------------------------------------------------
With keras-hub 0.32 / Keras 3.15, `MaskedLMHead.call` computes the logits in
bfloat16 and then adds its float32 `output_bias` variable. Called eagerly
(`masked_lm(x)`), this fails: "cannot compute AddV2 as input #1(zero-based)
was expected to be a bfloat16 tensor but is a float tensor". Inside a
`tf.function` (`fit`, `predict`, jit on or off) it does *not* fail: there
`tf.Tensor.__add__` raises a `TypeError` while building the graph, Python
falls back to the Keras variable's `__radd__`, and `keras.ops.add` promotes
bf16 + f32 to float32, so keras-hub's logits come out float32 (its head's
dense and layer norm still compute in bfloat16). The script checks this at
run time (eager call of a tiny model; then the real `fit`) and prints what
it found. Should `fit` fail (another version), it falls back to the closest
working keras-hub configuration and says so in the table: the same
`BertMaskedLM` graph with its `MaskedLMHead` built with `dtype="float32"`
(subclass below; the tied projection then still runs in the embedding's
bfloat16 compute dtype), which is exactly how kobjectives' head is set up.
"""

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
import keras_hub  # noqa: E402

import kobjectives  # noqa: E402
from kobjectives.data import embedded_corpus  # noqa: E402
from kobjectives.data import load_vocabulary  # noqa: E402
from kobjectives.data import save_vocabulary  # noqa: E402
from kobjectives.data import train_wordpiece  # noqa: E402
from kobjectives.data.pipelines import masked_lm_dataset  # noqa: E402
from kobjectives.layers import MaskedLMMasker  # noqa: E402
from kobjectives.objectives import MaskedLanguageModel  # noqa: E402

warnings.filterwarnings("ignore")

# The issue's configuration.
VOCABULARY_SIZE = 30522
NUM_LAYERS = 4
HIDDEN = 256
NUM_HEADS = 4
INTERMEDIATE = 1024
SEQUENCE_LENGTH = 128
BATCH = 32
MASKED = 20
TOKENS_PER_STEP = BATCH * SEQUENCE_LENGTH
WORDPIECE_SIZE = 8000
MASK_ID = 4  # kobjectives' WordPiece convention: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4
SPECIAL_IDS = (0, 1, 2, 3, 4)
NUM_CACHED_BATCHES = 8
PEAK_SIZE = 4096


# ---------------------------------------------------------------------------
# Machine and FLOPs.
# ---------------------------------------------------------------------------


def machine():
    try:
        lscpu = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True
        ).stdout
        info = dict(
            (k.strip(), v.strip())
            for k, _, v in (line.partition(":") for line in lscpu.splitlines())
        )
        model = info.get("Model name", platform.processor())
        cpus = info.get("CPU(s)", str(os.cpu_count()))
    except (OSError, subprocess.CalledProcessError):
        model, cpus = platform.processor() or platform.machine(), os.cpu_count()
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return f"{model}, {cpus} CPUs (load average at start: {load})"


def step_flops():
    """Analytic FLOPs of one training step; returns (total, formula text)."""
    L, H, I, V = SEQUENCE_LENGTH, HIDDEN, INTERMEDIATE, VOCABULARY_SIZE
    tokens = BATCH * L
    per_layer_params = 4 * H * H + 2 * H * I  # q, k, v, o + two FFN matmuls
    encoder = 2 * NUM_LAYERS * per_layer_params * tokens
    attention = NUM_LAYERS * BATCH * 2 * 2 * L * L * H  # QK^T and AV
    head = 2 * BATCH * MASKED * (H * H + H * V)  # dense + vocab projection
    forward = encoder + attention + head
    total = 3 * forward  # backward = 2 x forward
    formula = (
        "step FLOPs = 3 x forward (backward = 2 x forward)\n"
        "forward    = 2*n_layers*(4*H^2 + 2*H*I)*B*L    (encoder matmuls, every token)\n"
        "           + n_layers*B*2*2*L^2*H              (attention QK^T and AV)\n"
        "           + 2*B*P*(H^2 + H*V)                 (MLM head at P masked positions)\n"
        f"  with n_layers={NUM_LAYERS} H={H} I={I} L={L} B={BATCH} P={MASKED} V={V}\n"
        f"           = {encoder / 1e9:.2f} + {attention / 1e9:.2f} + {head / 1e9:.2f}"
        f" = {forward / 1e9:.2f} GFLOP  ->  step = {total / 1e9:.1f} GFLOP"
        f" ({total / tokens / 1e6:.2f} MFLOP per token)"
    )
    return total, formula


def matmul_peak(dtype, size, repeats, jit):
    """Median FLOP/s of a `size` x `size` matmul (inputs already resident)."""
    a = tf.random.normal((size, size), dtype="float32")
    b = tf.random.normal((size, size), dtype="float32")
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)
    matmul = tf.function(tf.matmul, jit_compile=jit, autograph=False)
    matmul(a, b).numpy()  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).numpy()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


# ---------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------


def wordpiece_vocabulary(documents):
    """Trains the WordPiece vocabulary once; later runs load it from tmp."""
    directory = os.path.join(
        tempfile.gettempdir(),
        f"kobjectives_bench_wordpiece_{WORDPIECE_SIZE}_{len(documents)}",
    )
    if os.path.isdir(directory):
        try:
            return load_vocabulary(directory)[1], True
        except (OSError, ValueError):
            pass
    vocabulary = train_wordpiece(documents, WORDPIECE_SIZE)
    save_vocabulary(vocabulary, directory)
    return vocabulary, False


def pipeline(documents, tokenizer, seed=0):
    masker = MaskedLMMasker(
        vocabulary_size=VOCABULARY_SIZE,
        mask_selection_rate=0.15,
        mask_token_id=MASK_ID,
        mask_selection_length=MASKED,
        unselectable_token_ids=SPECIAL_IDS,
        seed=seed,
    )
    return masked_lm_dataset(
        documents, tokenizer, masker, SEQUENCE_LENGTH, BATCH, repeat=True,
        seed=seed,
    )


def cached_dataset(batches):
    """The materialized batches, replayed forever (no preprocessing)."""
    stacked = tf.nest.map_structure(lambda *t: np.stack(t), *batches)
    return (
        tf.data.Dataset.from_tensor_slices(stacked)
        .repeat()
        .prefetch(tf.data.AUTOTUNE)
    )


# ---------------------------------------------------------------------------
# Models.
# ---------------------------------------------------------------------------


def backbone(dtype):
    keras.utils.set_random_seed(0)  # identical initial backbone weights
    return keras_hub.models.BertBackbone(
        vocabulary_size=VOCABULARY_SIZE,
        num_layers=NUM_LAYERS,
        num_heads=NUM_HEADS,
        hidden_dim=HIDDEN,
        intermediate_dim=INTERMEDIATE,
        max_sequence_length=SEQUENCE_LENGTH,
        dtype=dtype,
    )


class BertMaskedLMFloat32Head(keras_hub.models.BertMaskedLM):
    """keras-hub's `BertMaskedLM` (0.32) with its head in float32.

    The fallback used only if stock `BertMaskedLM` fails inside `fit` under
    `mixed_bfloat16`. A copy of `BertMaskedLM.__init__` whose single change is
    `MaskedLMHead(dtype="float32")` instead of `dtype=backbone.dtype_policy`:
    the head's dense, layer norm and bias add then compute in float32; the
    tied projection still runs in the token embedding's bfloat16.
    """

    def __init__(self, backbone, preprocessor=None, **kwargs):
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.masked_lm_head = keras_hub.layers.MaskedLMHead(
            vocabulary_size=backbone.vocabulary_size,
            token_embedding=backbone.token_embedding,
            intermediate_activation="gelu",
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype="float32",
            name="mlm_head",
        )
        inputs = {
            **backbone.input,
            "mask_positions": keras.Input(
                shape=(None,), dtype="int32", name="mask_positions"
            ),
        }
        outputs = self.masked_lm_head(
            backbone(backbone.input)["sequence_output"], inputs["mask_positions"]
        )
        keras_hub.models.MaskedLM.__init__(
            self, inputs=inputs, outputs=outputs, **kwargs
        )


def optimizer():
    return keras.optimizers.AdamW(
        learning_rate=5e-4, weight_decay=0.01, clipnorm=1.0
    )


def keras_hub_eager_check():
    """Does an eager call of keras-hub's BertMaskedLM fail under bf16?"""
    tiny = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=1, num_heads=1, hidden_dim=8,
        intermediate_dim=8, max_sequence_length=8, dtype="mixed_bfloat16",
    )
    model = keras_hub.models.BertMaskedLM(tiny)
    x = {
        "token_ids": tf.ones((1, 8), "int32"),
        "padding_mask": tf.ones((1, 8), "bool"),
        "segment_ids": tf.zeros((1, 8), "int32"),
        "mask_positions": tf.zeros((1, 2), "int32"),
    }
    try:
        model(x)
        eager = "eager call OK"
    except Exception as error:  # noqa: BLE001 - reported, whatever it is
        lines = [l for l in str(error).splitlines() if "cannot compute" in l]
        message = (lines[0] if lines else str(error).splitlines()[0])
        message = message.replace("\x1b[1m", "").replace("\x1b[0m", "")
        eager = f"eager call FAILS ({type(error).__name__}: {message.strip()})"
    graph = tf.function(model.__call__, autograph=False)(x)
    return eager, f"inside tf.function OK, logits {graph.dtype.name}"


class Runner:
    """A model with a persistent iterator, timed step by step."""

    def __init__(self, name, model, dataset):
        self.name, self.model, self.dataset = name, model, dataset
        self.times, self.iterator, self.loss = [], None, float("nan")

    def warm_up(self, steps):
        start = time.perf_counter()
        # `fit` builds the model and the optimizer and traces (and, with
        # jit, XLA-compiles) the train function; then that same function is
        # warmed up on the iterator that will be timed.
        self.model.fit(self.dataset, steps_per_epoch=1, epochs=1, verbose=0)
        self.iterator = iter(self.dataset)
        self.run(max(steps, 1))
        return time.perf_counter() - start

    def run(self, steps):
        logs = None
        for _ in range(steps):
            logs = self.model.train_function(self.iterator)
        return float(logs["loss"])  # waits for the last step

    def time(self, steps):
        start = time.perf_counter()
        self.loss = self.run(steps)
        self.times.append((time.perf_counter() - start) / steps)

    @property
    def step_time(self):
        return statistics.median(self.times)


def compiled(model, jit):
    model.compile(optimizer=optimizer(), jit_compile=jit)
    return model


def interleave(runners, steps, repeats):
    """Times the runners' repeats in A B / B A order; paired ratios."""
    ratios = []
    for repeat in range(repeats):
        order = runners if repeat % 2 == 0 else runners[::-1]
        for runner in order:
            runner.time(steps)
        ratios.append(runners[1].times[-1] / runners[0].times[-1])
    # ratios: tokens/s of runners[0] over runners[1], per repeat
    return statistics.median(ratios), ratios


# ---------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per repeat (default 2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per model (default 5; quick 3)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps after compiling (default 1)")
    parser.add_argument("--jit", choices=("both", "on", "off"), default=None,
                        help="jit_compile settings (default both; quick off)")
    parser.add_argument("--quick", action="store_true",
                        help="fast sanity run: few steps, one jit setting")
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args()
    quick = args.quick
    steps = args.steps or 2
    repeats = args.repeats or (3 if quick else 5)
    warmup = args.warmup if args.warmup is not None else 1
    jit_setting = args.jit or ("off" if quick else "both")
    jits = {"both": (False, True), "on": (True,), "off": (False,)}[jit_setting]
    peak_repeats = 3 if quick else 5
    peak_size = 2048 if quick else PEAK_SIZE
    started = time.perf_counter()

    print("Masked-LM training step: kobjectives MaskedLanguageModel vs "
          "keras-hub BertMaskedLM" + ("  [--quick]" if quick else ""))
    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"machine: {machine()}")
    print(f"python {platform.python_version()}, tensorflow {tf.__version__}, "
          f"keras {keras.__version__}, keras-hub {keras_hub.__version__}, "
          f"kobjectives {getattr(kobjectives, '__version__', '?')}")
    print(f"config: BertBackbone layers={NUM_LAYERS} hidden={HIDDEN} "
          f"heads={NUM_HEADS} intermediate={INTERMEDIATE} vocab="
          f"{VOCABULARY_SIZE}; batch {BATCH} x length {SEQUENCE_LENGTH} "
          f"= {TOKENS_PER_STEP} tokens/step, {MASKED} masked positions; "
          f"AdamW(5e-4, wd 0.01, clipnorm 1); timing: {warmup} warm-up "
          f"steps, then median of {repeats} interleaved repeats x {steps} "
          "steps", flush=True)
    print()

    # --- Peak. -------------------------------------------------------------
    peaks, peaks_nojit = {}, {}
    for name, dtype in (("float32", "float32"), ("bfloat16", "bfloat16")):
        peaks[name] = matmul_peak(dtype, peak_size, peak_repeats, jit=True)
        peaks_nojit[name] = matmul_peak(dtype, peak_size, peak_repeats, jit=False)
    best_peaks = {k: max(peaks[k], peaks_nojit[k]) for k in peaks}
    flops, formula = step_flops()
    print(f"peak ({peak_size}x{peak_size} tf.matmul, median of "
          f"{peak_repeats}): float32 jit {peaks['float32'] / 1e9:.0f} GFLOP/s, "
          f"no jit (oneDNN) {peaks_nojit['float32'] / 1e9:.0f}; bfloat16 jit "
          f"{peaks['bfloat16'] / 1e9:.0f} GFLOP/s, no jit (oneDNN) "
          f"{peaks_nojit['bfloat16'] / 1e9:.0f}.")
    print(formula)
    print(flush=True)

    # --- Data. -------------------------------------------------------------
    t0 = time.perf_counter()
    documents = embedded_corpus()
    vocabulary, reused = wordpiece_vocabulary(documents)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary,
                                               lowercase=True)
    live = pipeline(documents, tokenizer)
    batches = [
        tf.nest.map_structure(lambda t: t.numpy(), b)
        for b in live.take(NUM_CACHED_BATCHES)
    ]
    real_share = np.mean([b[0]["padding_mask"].mean() for b in batches])
    cached = cached_dataset(batches)
    print(f"data: embedded_corpus() {len(documents):,} documents; WordPiece "
          f"{len(vocabulary):,} entries ({'loaded from cache' if reused else 'trained'}"
          f"); {NUM_CACHED_BATCHES} pipeline batches cached for the step "
          f"comparison; real (non-padding) tokens {real_share:.0%} of "
          f"positions; {time.perf_counter() - t0:.0f} s")

    eager, graph = keras_hub_eager_check()
    print(f"keras-hub BertMaskedLM under mixed_bfloat16: {eager}; {graph}.")
    print(flush=True)

    # --- Step comparison. --------------------------------------------------
    rows = []
    kobj_runners = []
    for policy in ("float32", "mixed_bfloat16"):
        for jit in jits:
            kobj = Runner(
                "kobjectives MaskedLanguageModel",
                compiled(MaskedLanguageModel(backbone(policy)), jit), cached,
            )
            hub = Runner(
                "keras-hub BertMaskedLM",
                compiled(keras_hub.models.BertMaskedLM(backbone(policy)), jit),
                cached,
            )
            compile_s = {}
            compile_s[kobj.name] = kobj.warm_up(warmup)
            try:
                compile_s[hub.name] = hub.warm_up(warmup)
            except (tf.errors.InvalidArgumentError, TypeError) as error:
                if policy != "mixed_bfloat16":
                    raise
                # See the module docstring: the stock head's bf16 + f32 bias
                # add. Fall back to the closest working configuration.
                print(f"  keras-hub BertMaskedLM FAILS inside fit ({policy}, "
                      f"jit={jit}): {str(error).splitlines()[0][:160]}; using "
                      "BertMaskedLM with MaskedLMHead(dtype='float32').")
                hub = Runner(
                    "keras-hub BertMaskedLM*f32 head",
                    compiled(BertMaskedLMFloat32Head(backbone(policy)), jit),
                    cached,
                )
                compile_s[hub.name] = hub.warm_up(warmup)
            ratio, ratios = interleave([kobj, hub], steps, repeats)
            precision = "float32" if policy == "float32" else "bfloat16"
            for runner in (kobj, hub):
                rows.append(dict(
                    model=runner.name, policy=policy, jit=jit,
                    step=runner.step_time, warm=compile_s[runner.name],
                    fraction=flops / runner.step_time / peaks[precision],
                    best_fraction=flops / runner.step_time / best_peaks[precision],
                    ratio=ratio if runner is kobj else 1.0,
                    spread=(min(ratios), max(ratios)) if runner is kobj else None,
                    loss=runner.loss,
                ))
            kobj_runners.append((kobj.step_time, policy, jit, kobj))
            print(f"  done {policy} jit={'on' if jit else 'off'}: kobjectives "
                  f"{TOKENS_PER_STEP / kobj.step_time:,.0f} tok/s, keras-hub "
                  f"{TOKENS_PER_STEP / hub.step_time:,.0f} tok/s "
                  f"({time.perf_counter() - started:.0f} s elapsed)", flush=True)
            del hub

    # --- Pipeline vs cached. -----------------------------------------------
    pipeline_result = None
    if not args.skip_pipeline:
        _, policy, jit, kobj = min(kobj_runners, key=lambda r: r[0])
        # The same compiled model (its train function is reused: the live
        # pipeline's batches have the cached ones' static shapes and dtypes),
        # fed from a second iterator.
        fed = Runner("pipeline", kobj.model, live)
        fed.iterator = iter(live)
        fed.run(max(warmup, 2) + 2)  # fills the shuffle buffers, warms up
        cached_runner = Runner("cached", kobj.model, cached)
        cached_runner.iterator = kobj.iterator
        cached_runner.run(1)
        ratio, ratios = interleave([fed, cached_runner], steps, repeats)
        pipeline_result = (policy, jit, fed.step_time, cached_runner.step_time,
                           ratio, ratios)

    # --- Report. -----------------------------------------------------------
    print()
    print(f"Results{' (QUICK run: few steps, noisy)' if quick else ''}: "
          f"tokens/s = {TOKENS_PER_STEP} / median step time; "
          "'vs keras-hub' = median of paired per-repeat ratios (min-max)")
    header = (f"| {'model':<34} | {'policy':<14} | {'jit':<3} | "
              f"{'step ms':>7} | {'tokens/s':>8} | {'GFLOP/s':>7} | "
              f"{'% jit peak':>10} | {'% best peak':>11} | {'vs keras-hub':>19} | {'warm-up s':>9} | "
              f"{'loss':>6} |")
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for row in rows:
        vs = (f"{row['ratio']:.2f}x ({row['spread'][0]:.2f}-"
              f"{row['spread'][1]:.2f})" if row["spread"] else "1.00x")
        print(f"| {row['model']:<34} | {row['policy']:<14} | "
              f"{'on' if row['jit'] else 'off':<3} | {row['step'] * 1e3:>7.0f} | "
              f"{TOKENS_PER_STEP / row['step']:>8,.0f} | "
              f"{flops / row['step'] / 1e9:>7.1f} | {row['fraction']:>10.1%} | "
              f"{row['best_fraction']:>11.1%} | "
              f"{vs:>19} | {row['warm']:>9.0f} | {row['loss']:>6.2f} |")
    print("(% jit peak: model FLOP/s over the jit-compiled matmul peak of the "
          "step's compute precision (float32 rows: float32 peak; "
          "mixed_bfloat16 rows: bfloat16 peak); % best peak: over the better "
          "of the jit and non-jit matmul. warm-up s: build + trace/compile + "
          "warm-up steps. loss: last step's; the two libraries' default "
          "losses differ in reduction: kobjectives divides by the number of "
          "real masked positions, keras-hub's SparseCategoricalCrossentropy "
          f"by all {BATCH}x{MASKED} slots, unused ones included.)")
    if any(r["fraction"] > 1 for r in rows):
        print("NOTE: a fraction above 100% means the load changed between the "
              "peak measurement and the step (a busy machine): the % columns "
              "are only meaningful on a quiet one.")
    if any(r["model"].endswith("f32 head") for r in rows):
        print("* stock BertMaskedLM failed inside fit under mixed_bfloat16; "
              "compared against BertMaskedLM with MaskedLMHead(dtype='float32').")
    if len(jits) == 1:
        print(f"(jit_compile={'on' if jits[0] else 'off'} only; run with "
              "--jit both for both settings.)")
    else:
        best = {}
        for row in rows:
            key = (row["model"], row["policy"])
            if key not in best or row["step"] < best[key]["step"]:
                best[key] = row
        print("faster jit setting per model and policy: " + "; ".join(
            f"{m.split()[0]} {p}: jit {'on' if r['jit'] else 'off'}"
            for (m, p), r in best.items()))
    if pipeline_result:
        policy, jit, fed_time, cached_time, ratio, ratios = pipeline_result
        print()
        print(f"Full pipeline vs cached batches (kobjectives, {policy}, jit "
              f"{'on' if jit else 'off'}, the fastest kobjectives configuration"
              "; interleaved):")
        print(f"| {'input':<58} | {'tokens/s':>8} |")
        print(f"|{'-' * 60}|{'-' * 10}|")
        print(f"| {'cached batches (from_tensor_slices().repeat())':<58} | "
              f"{TOKENS_PER_STEP / cached_time:>8,.0f} |")
        print(f"| {'raw text -> tokenize -> chunk -> pack -> mask (tf.data)':<58}"
              f" | {TOKENS_PER_STEP / fed_time:>8,.0f} |")
        verdict = "within" if ratio >= 0.95 else "NOT within"
        print(f"pipeline / cached: ratio of the medians {cached_time / fed_time:.3f}; "
              f"median of the paired ratios {ratio:.3f} (per repeat "
              f"{min(ratios):.3f}-{max(ratios):.3f}): {verdict} the 5% target")
    print()
    print(f"keras-hub BertMaskedLM under mixed_bfloat16: {eager}; {graph} "
          "(the bf16 + f32 bias add falls back to Keras' dtype promotion "
          "inside a graph), so fit works and stock BertMaskedLM is compared"
          + (" except where marked *." if any(
              r["model"].endswith("f32 head") for r in rows) else "."))
    print(f"total time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
