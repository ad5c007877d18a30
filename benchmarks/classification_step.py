"""Sequence-classification training step: `SequenceClassifier` vs keras-hub's
`BertTextClassifier` on the identical backbone.

Run: `python benchmarks/classification_step.py` (from the repository root;
about two minutes on 2 CPU cores; `--help`).

What is measured
----------------
Two copies of one `bert_tiny` backbone (the `classify` recipe's: 2 layers,
hidden 128; same weights), one under
`kobjectives.objectives.SequenceClassifier` (first-token pooling, dropout
0.1, its built-in loss and accuracy metric) and one under
`keras_hub.models.BertTextClassifier` (its pooled `[CLS]` output, dropout 0.1,
sparse cross-entropy from logits and sparse categorical accuracy, as its
docs compile it). Both use AdamW with the same settings and the same random
batches of token ids (`--batch-size` rows of `--length` tokens, 2 classes).
Each model: `jit_compile` as given, 3 warm-up steps, then `--steps` timed
`train_on_batch` calls, `--repeats` times round-robin; the best repeat of
each counts (steps per second of wall time and per process CPU-second).
The ratio is kobjectives / keras-hub: above 1.0 means ours is faster.

The two heads differ: keras-hub's `BertTextClassifier` classifies the
backbone's `pooled_output` (a dense tanh layer over `[CLS]`, BERT's pooler),
`SequenceClassifier(pooling="first")` the `[CLS]` state itself, and
`SequenceClassifier` computes its loss in float32 with label checks. The
benchmark times each as a user would run it.
"""

import argparse
import time

import keras
import keras_hub
import numpy as np

from kobjectives.backbones import build_backbone
from kobjectives.objectives import SequenceClassifier


def batches(vocabulary, length, batch_size, count, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        real = rng.integers(length // 2, length + 1, batch_size)
        mask = np.arange(length)[None, :] < real[:, None]
        ids = np.where(mask, rng.integers(5, vocabulary, (batch_size, length)), 0)
        ids[:, 0] = 2
        x = {"token_ids": ids.astype("int32"), "padding_mask": mask,
             "segment_ids": np.zeros_like(ids, "int32")}
        out.append((x, rng.integers(0, 2, batch_size).astype("int32")))
    return out


def optimizer():
    return keras.optimizers.AdamW(1e-4, weight_decay=0.01)


def models(vocabulary, length, jit):
    keras.utils.set_random_seed(0)
    backbone = build_backbone("bert_tiny", vocabulary, length)
    twin = backbone.__class__.from_config(backbone.get_config())
    twin.set_weights(backbone.get_weights())
    ours = SequenceClassifier(backbone, 2, pooling="first", dropout=0.1)
    ours.compile(optimizer=optimizer(), jit_compile=jit)
    theirs = keras_hub.models.BertTextClassifier(twin, 2, preprocessor=None, dropout=0.1)
    theirs.compile(optimizer=optimizer(), jit_compile=jit,
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=[keras.metrics.SparseCategoricalAccuracy()])
    return {"kobjectives SequenceClassifier": ours, "keras-hub BertTextClassifier": theirs}


def time_steps(model, data, warmup):
    for x, y in data[:warmup]:
        model.train_on_batch(x, y)
    wall, cpu = time.perf_counter(), time.process_time()
    for x, y in data[warmup:]:
        model.train_on_batch(x, y)
    steps = len(data) - warmup
    return steps / (time.perf_counter() - wall), steps / (time.process_time() - cpu)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocabulary", type=int, default=4000)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    data = batches(args.vocabulary, args.length, args.batch_size, args.steps + 3)
    candidates = models(args.vocabulary, args.length, args.jit)
    best = {name: (0.0, 0.0) for name in candidates}
    for repeat in range(args.repeats):
        for name, model in candidates.items():
            wall, cpu = time_steps(model, data, 3)
            best[name] = (max(best[name][0], wall), max(best[name][1], cpu))
            print(f"repeat {repeat}: {name}: {wall:.2f} steps/s wall, {cpu:.2f} per CPU-second")
    (ours, theirs) = best.values()
    print(f"best steps/s (wall): kobjectives {ours[0]:.2f}, keras-hub {theirs[0]:.2f}, "
          f"ratio {ours[0] / theirs[0]:.2f}x")
    print(f"best steps per CPU-second: kobjectives {ours[1]:.2f}, keras-hub {theirs[1]:.2f}, "
          f"ratio {ours[1] / theirs[1]:.2f}x")


if __name__ == "__main__":
    main()
