"""DPO: reference log-probabilities precomputed into the data vs the
reference model run online (issue 17): training steps per second and memory.

Run: `python benchmarks/dpo_reference.py` (from the repository root; 3 to
5 minutes on 2 CPU cores with the defaults, the `gpt2_small` backbone;
`--backbone gpt2_tiny` for the smallest, about half that; `--help` for the
rest). Reads HH-RLHF pairs from
`../shared/data/hh_rlhf/` (the train subsets `helpful-base`,
`helpful-rejection-sampled`, `harmless-base`; `helpful-online` is reserved
and never read) when the folder exists, else the corpus preference task
(`kobjectives.data.corpus_preference_pairs`); the output says which.

What is measured
----------------
`--pairs` preference pairs, tokenized with a WordPiece vocabulary trained on
their text (`kobjectives.data.tokenize_preference_pairs`, the chat
template), windows of `--length` tokens, batches of `--batch-size` pairs
(`kobjectives.data.preference_dataset`, shuffled with seed 0; the policy
runs on the `2 * batch` chosen and rejected rows). The policy is a
`CausalLanguageModel` over `--backbone` (`kobjectives.backbones`, dropout
0, seed 0), trained by `DirectPreferenceOptimization(loss_type="sigmoid",
beta=0.1)` with the objective's default optimizer and `jit_compile=True`,
in two modes:

* **online**: `reference=` a separate copy of the policy (`from_config` +
  `set_weights` of the backbone), run inside every training step;
* **precomputed**: no reference; the batches carry
  `reference_chosen_logps` / `reference_rejected_logps`, computed once by
  `precompute_reference_log_probs` over the pairs in order and passed back
  as `preference_dataset(extra_features=...)`.

Every stage runs in its own fresh subprocess (this script with `--mode`), so
one mode's memory never counts in the other's: first `precompute` (trains
the vocabulary, writes it and the reference values to a temporary folder,
and times the one pass over all pairs: the first pass includes tracing the
`tf.function`, the second is the steady cost); then one `online` and one
`precomputed` process, alive together but never running at the same time
(the idle one blocks on its stdin). Both read the same vocabulary, build the same batches (checked by a
checksum of their token ids) and the same initial weights (checked by a
checksum), then wait for commands. `--repeats` times, round-robin, each
process runs `--warmup` train steps (the first ones compile) and then
`--steps` timed `train_on_batch` calls on the same batches; the best repeat
of each mode counts (steps per second of wall time and per CPU-second of
the process).

Memory, per training process: the peak RSS (`getrusage(RUSAGE_SELF)
.ru_maxrss`) at the end, and its growth above the peak before any model was
built (imports, data and batches already in memory), and TensorFlow's CPU
allocator peak above its level at that point
(`tf.config.experimental.get_memory_info("CPU:0")`); plus the parameters
held (policy, and reference when online) and trained.

`--lora-rank N`: the policy trains rank-N LoRA adapters
(`kobjectives.backbones.enable_lora`: the attention query and value
projections, the rest frozen), enabled after the reference's copy is made;
the step then skips the frozen weights' gradients and optimizer updates, so
the reference's forward pass is a larger share of an online step.

Exactness (in the `precompute` process, after the timed passes): the loss
of the first training batch, eagerly, from the initial weights, by an
objective holding the reference and by one reading the precomputed values;
the goal is a max |difference| of 1e-5. The reference log-probabilities of
that batch, online vs stored, are compared too (sums over up to `--length`
tokens, so float32 rounding shows at about 1e-7 of their size).
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MODES = ("online", "precomputed")


# ---------------------------------------------------------------------------
# Children (`--mode`): each in its own process.
# ---------------------------------------------------------------------------


def _maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _vmrss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _emit(record):
    print(json.dumps(record), flush=True)


def _pairs(args):
    from kobjectives.data import corpus_preference_pairs
    from kobjectives.data import read_hh_rlhf_pairs

    if pathlib.Path(args.data).exists():
        with warnings.catch_warnings():
            if args.mode != "precompute":  # its process has said it (skipped rows)
                warnings.simplefilter("ignore", UserWarning)
            pairs = read_hh_rlhf_pairs(args.data, limit=args.pairs)
        return pairs, f"HH-RLHF ({args.data})"
    return corpus_preference_pairs(limit=args.pairs), "corpus_preference_pairs()"


def _examples(args, vocabulary, pairs=None):
    from kobjectives.data import tokenize_preference_pairs
    from kobjectives.runs.sft import chat_tokenizer

    pairs, source = _pairs(args) if pairs is None else (pairs, None)
    tokenizer = chat_tokenizer(vocabulary, lowercase=True)
    examples = tokenize_preference_pairs(pairs, tokenizer,
                                         start_token_id=tokenizer.start_token_id)
    return examples, tokenizer, source


def _backbones(args, vocabulary_size, with_reference):
    """The policy's backbone (seed 0) and, if asked, a separate copy."""
    import keras

    from kobjectives.backbones import build_backbone

    keras.utils.set_random_seed(0)
    policy = build_backbone(args.backbone, vocabulary_size, args.length, dropout=0.0)
    if not with_reference:
        return policy, None
    reference = type(policy).from_config(policy.get_config())
    reference.set_weights(policy.get_weights())
    return policy, reference


def _checksum(arrays):
    import numpy as np

    return float(sum(np.sum(np.asarray(a, np.float64) * (1 + np.arange(np.size(a)))
                            .reshape(np.shape(a))) for a in arrays))


def precompute_child(args):
    """Vocabulary and reference log-probabilities into `args.workdir`."""
    import numpy as np

    from kobjectives.data import preference_dataset
    from kobjectives.data.tokenizers import train_wordpiece
    from kobjectives.objectives import precompute_reference_log_probs

    pairs, source = _pairs(args)
    texts = [turn["content"] for conversation, _, _ in pairs for turn in conversation]
    texts += [text for _, chosen, rejected in pairs for text in (chosen, rejected)]
    vocabulary = train_wordpiece(texts, args.vocabulary_size)
    workdir = pathlib.Path(args.workdir)
    (workdir / "vocabulary.txt").write_text("\n".join(vocabulary) + "\n")
    examples, tokenizer, _ = _examples(args, vocabulary, pairs)
    lengths = examples.lengths
    reference, _ = _backbones(args, tokenizer.vocabulary_size(), with_reference=False)
    ordered = preference_dataset(examples, args.length, args.batch_size, shuffle=False,
                                 drop_remainder=False)
    passes = []
    for _ in range(2):
        wall, cpu = time.perf_counter(), time.process_time()
        values = precompute_reference_log_probs(reference, ordered)
        passes.append((time.perf_counter() - wall, time.process_time() - cpu))
    np.savez(workdir / "reference.npz", **values)
    peak_rss = _maxrss_mib()
    _emit(dict(exactness(args, examples, tokenizer, values), **{"source": source, "pairs": len(examples),
           "vocabulary_size": tokenizer.vocabulary_size(),
           "length_median": float(np.median(lengths)),
           "length_p90": float(np.percentile(lengths, 90)),
           "over_length": float(np.mean(lengths > args.length)),
           "first_pass_s": passes[0][0], "first_pass_cpu_s": passes[0][1],
           "pass_s": passes[1][0], "pass_cpu_s": passes[1][1],
           "batches": -(-len(examples) // args.batch_size),
           "peak_rss_mib": peak_rss}))


def exactness(args, examples, tokenizer, values):
    """The first training batch's loss and reference log-probabilities,
    online vs precomputed, the same initial weights (one process)."""
    import numpy as np

    from kobjectives.data import REFERENCE_LOGPS_KEYS
    from kobjectives.data import preference_dataset
    from kobjectives.objectives import CausalLanguageModel
    from kobjectives.objectives import DirectPreferenceOptimization

    batch = next(iter(preference_dataset(examples, args.length, args.batch_size, shuffle=True,
                                         seed=0, repeat=True, extra_features=values)))
    bare = {k: v for k, v in batch.items() if k not in REFERENCE_LOGPS_KEYS}
    out = {}
    for mode in MODES:
        policy, reference = _backbones(args, tokenizer.vocabulary_size(),
                                       with_reference=mode == "online")
        model = DirectPreferenceOptimization(CausalLanguageModel(policy), reference=reference,
                                             loss_type="sigmoid", beta=0.1)
        x = bare if mode == "online" else batch
        out[f"{mode}_loss"] = float(model.compute_loss(x=x, y_pred=model(x, training=False),
                                                       training=False))
        if mode == "online":
            online = model.compute_frozen_outputs("reference", bare)
    online = np.concatenate([np.asarray(online[k]) for k in REFERENCE_LOGPS_KEYS])
    stored = np.concatenate([np.asarray(batch[k]) for k in REFERENCE_LOGPS_KEYS])
    out["reference_max_diff"] = float(np.max(np.abs(online - stored)))
    out["reference_max_abs"] = float(np.max(np.abs(stored)))
    return out


def train_child(args):
    """One training mode; runs the commands read from stdin ("run", "exit")."""
    import numpy as np
    import tensorflow as tf

    from kobjectives.data import REFERENCE_LOGPS_KEYS
    from kobjectives.data import preference_dataset
    from kobjectives import backbones
    from kobjectives.objectives import CausalLanguageModel
    from kobjectives.objectives import DirectPreferenceOptimization

    online = args.mode == "online"
    workdir = pathlib.Path(args.workdir)
    vocabulary = (workdir / "vocabulary.txt").read_text().splitlines()
    examples, tokenizer, _ = _examples(args, vocabulary)
    extra = None
    if not online:
        with np.load(workdir / "reference.npz") as stored:
            extra = {key: stored[key] for key in REFERENCE_LOGPS_KEYS}
    dataset = preference_dataset(examples, args.length, args.batch_size, shuffle=True, seed=0,
                                 repeat=True, extra_features=extra)
    batches = [batch for batch, _ in zip(dataset, range(args.warmup + args.steps))]
    batch_checksum = _checksum([b[k].numpy() for b in batches
                                for k in ("chosen_token_ids", "rejected_token_ids")])
    rss_before, vmrss_before = _maxrss_mib(), _vmrss_mib()
    alloc_before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    tf.config.experimental.reset_memory_stats("CPU:0")

    policy, reference = _backbones(args, tokenizer.vocabulary_size(), with_reference=online)
    weight_checksum = _checksum(policy.get_weights())
    if args.lora_rank:  # after the reference's copy: only the policy adapts
        backbones.enable_lora(policy, args.lora_rank)
    model = DirectPreferenceOptimization(CausalLanguageModel(policy), reference=reference,
                                         loss_type="sigmoid", beta=0.1)
    model.compile(optimizer="auto", jit_compile=True)
    parameters = policy.count_params() + (reference.count_params() if online else 0)
    _emit({"mode": args.mode, "parameters": parameters,
           "policy_parameters": policy.count_params(),
           "trained_parameters": sum(int(np.prod(w.shape)) for w in model.trainable_weights),
           "batch_checksum": batch_checksum, "weight_checksum": weight_checksum})

    compile_s = None
    for command in sys.stdin:
        command = command.strip()
        if command == "exit":
            break
        if command != "run":
            raise SystemExit(f"unknown command {command!r}")
        for x in batches[:args.warmup]:
            start = time.perf_counter()
            model.train_on_batch(x)
            if compile_s is None:
                compile_s = time.perf_counter() - start
        wall, cpu = time.perf_counter(), time.process_time()
        for x in batches[args.warmup:]:
            logs = model.train_on_batch(x, return_dict=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        _emit({"mode": args.mode, "steps_per_s": args.steps / wall,
               "steps_per_cpu_s": args.steps / cpu, "loss": float(logs["loss"])})
    alloc_peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    _emit({"mode": args.mode, "compile_s": compile_s,
           "peak_rss_mib": _maxrss_mib(), "rss_growth_mib": _maxrss_mib() - rss_before,
           "vmrss_end_mib": _vmrss_mib(), "vmrss_before_models_mib": vmrss_before,
           "allocator_peak_growth_mib": (alloc_peak - alloc_before) / 2**20})


# ---------------------------------------------------------------------------
# The parent: no TensorFlow here.
# ---------------------------------------------------------------------------


def _child_command(args, mode):
    command = [sys.executable, os.path.abspath(__file__), "--mode", mode]
    for name in ("data", "pairs", "vocabulary_size", "backbone", "length", "batch_size",
                 "steps", "warmup", "workdir", "lora_rank"):
        command += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    return command


def _environment():
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


class _Child:
    """A training process, talked to over stdin / stdout JSON lines."""

    def __init__(self, args, mode):
        self.mode = mode
        self.process = subprocess.Popen(
            _child_command(args, mode), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=_environment())

    def read(self):
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.process.wait()
        raise SystemExit(f"the {self.mode} process ended (exit {self.process.returncode}) "
                         "without a result; its error is above")

    def send(self, command):
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def parent(args):
    with tempfile.TemporaryDirectory() as workdir:
        args.workdir = workdir
        done = subprocess.run(_child_command(args, "precompute"), stdout=subprocess.PIPE,
                              text=True, env=_environment())
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode or not lines:
            raise SystemExit(f"the precompute process failed (exit {done.returncode})")
        pre = json.loads(lines[-1])
        print(f"data: {pre['pairs']} pairs from {pre['source']}; vocabulary "
              f"{pre['vocabulary_size']}; pair length (start + prompt + longer completion) "
              f"median {pre['length_median']:.0f}, 90th percentile {pre['length_p90']:.0f}, "
              f"{pre['over_length']:.1%} over {args.length} (truncated keep_end)")
        print(f"backbone {args.backbone}, length {args.length}, batch {args.batch_size} "
              f"pairs ({2 * args.batch_size} rows), {args.warmup} warm-up + {args.steps} timed "
              f"steps, {args.repeats} repeats round-robin")
        print(f"precompute (one pass, {pre['batches']} batches): first pass "
              f"{pre['first_pass_s']:.2f} s (with tracing), second {pre['pass_s']:.2f} s wall, "
              f"{pre['pass_cpu_s']:.2f} CPU-s; process peak RSS {pre['peak_rss_mib']:.0f} MiB")

        children = {mode: _Child(args, mode) for mode in MODES}
        ready = {mode: child.read() for mode, child in children.items()}
        best = {mode: (0.0, 0.0) for mode in MODES}
        for repeat in range(args.repeats):
            for mode in MODES:
                r = children[mode].send("run")
                best[mode] = (max(best[mode][0], r["steps_per_s"]),
                              max(best[mode][1], r["steps_per_cpu_s"]))
                print(f"repeat {repeat}: {mode:>11}: {r['steps_per_s']:.2f} steps/s wall, "
                      f"{r['steps_per_cpu_s']:.2f} per CPU-second (loss {r['loss']:.4f})",
                      flush=True)
        final = {mode: children[mode].send("exit") for mode in MODES}
        for child in children.values():
            child.close()

    on, pc = ready["online"], ready["precomputed"]
    if on["batch_checksum"] != pc["batch_checksum"]:
        print("WARNING: the two modes trained on different batches")
    if on["weight_checksum"] != pc["weight_checksum"]:
        print("WARNING: the two modes started from different weights")
    for mode in MODES:
        f = final[mode]
        print(f"{mode:>11}: parameters held {ready[mode]['parameters']:,} (trained "
              f"{ready[mode]['trained_parameters']:,}); first compile "
              f"{f['compile_s']:.1f} s; peak RSS {f['peak_rss_mib']:.0f} MiB (growth "
              f"{f['rss_growth_mib']:.0f} MiB over {f['peak_rss_mib'] - f['rss_growth_mib']:.0f} "
              f"MiB before the models); RSS at the end {f['vmrss_end_mib']:.0f} MiB; TF "
              f"allocator peak growth {f['allocator_peak_growth_mib']:.1f} MiB")
    loss_diff = abs(pre["online_loss"] - pre["precomputed_loss"])
    print(f"first-batch loss: online {pre['online_loss']:.7f}, precomputed "
          f"{pre['precomputed_loss']:.7f}, max |difference| {loss_diff:.2e} (goal 1e-5); "
          f"reference log-probabilities of that batch: max |difference| "
          f"{pre['reference_max_diff']:.2e} (largest |value| {pre['reference_max_abs']:.1f})")
    for unit, index, key in (("s", 0, "pass_s"), ("CPU-s", 1, "pass_cpu_s")):
        saved = 1 / best["online"][index] - 1 / best["precomputed"][index]
        payback = f"{pre[key] / saved:.1f}" if saved > 0 else "never"
        print(f"the one pass over {pre['pairs']} pairs costs {pre[key]:.2f} {unit}, as much "
              f"as {pre[key] * best['online'][index]:.1f} online training steps; paid back "
              f"after {payback} precomputed steps ({pre['pairs'] / args.batch_size:.1f} steps "
              "make one epoch)")
    speed = best["precomputed"][0] / best["online"][0]
    cpu = best["precomputed"][1] / best["online"][1]
    rss = final["precomputed"]["peak_rss_mib"] / final["online"]["peak_rss_mib"]
    growth = final["precomputed"]["rss_growth_mib"] / final["online"]["rss_growth_mib"]
    alloc = (final["precomputed"]["allocator_peak_growth_mib"]
             / final["online"]["allocator_peak_growth_mib"])
    params = ready["precomputed"]["parameters"] / ready["online"]["parameters"]
    print(f"SUMMARY precomputed/online: steps/s {best['precomputed'][0]:.2f} / "
          f"{best['online'][0]:.2f} = {speed:.2f}x wall, {cpu:.2f}x per CPU-second (goal >= "
          f"1.5x); peak RSS {rss:.3f}x, RSS growth {growth:.2f}x, allocator peak growth "
          f"{alloc:.2f}x, parameters held {params:.2f}x (goal < 1)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/hh_rlhf",
                        help="HH-RLHF folder; absent: corpus_preference_pairs()")
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--vocabulary-size", type=int, default=4000)
    parser.add_argument("--backbone", default="gpt2_small",
                        help="a causal kobjectives.backbones name (gpt2_tiny, gpt2_small)")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lora-rank", type=int, default=0,
                        help="> 0: the policy trains LoRA adapters of this rank "
                        "(keras-hub's Backbone.enable_lora), its other weights frozen")
    parser.add_argument("--mode", choices=("precompute",) + MODES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode == "precompute":
        precompute_child(args)
    elif args.mode in MODES:
        train_child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
