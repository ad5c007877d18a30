import json
import subprocess
import sys

import numpy as np
import pytest

from kobjectives import cli
from kobjectives.runs import run_class

TINY = [
    "--steps", "4", "--batch-size", "4", "--sequence-length", "16",
    "--set", "data.max_documents=300", "--set", "tokenizer.vocabulary_size=400",
    "--set", "tokenizer.max_training_documents=0", "--set", "training.epochs=2",
    "--set", "training.validation_batches=2", "--set", "training.warmup_steps=1",
    "--set", "cpc.max_offset=2",
    # XLA compilation is tested in tests/objectives; skip its compile time here.
    "--set", "training.jit_compile=false",
]


# End to end (train, export, serve from a clean process: minutes on 2 cores) under
# `-m slow`; the default suite covers this run's pipeline (tests/test_tpu_readiness.py),
# its objective (tests/objectives) and its recipe checks (below).
@pytest.mark.slow
def test_train_cpc_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "kobjectives.cli", "train", "cpc", *TINY, "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == "cpc" and metrics["steps"] == 4 and metrics["max_offset"] == 2
    for key in ("val_loss", "val_cpc_accuracy", "chance_cpc_accuracy", "chance_cpc_loss"):
        assert isinstance(metrics[key], float)
    # Each pair has at most 4 x 16 candidates (the positions of the batch), at least 2.
    assert 1 / 64 <= metrics["chance_cpc_accuracy"] <= 0.5
    np.testing.assert_array_less(metrics["chance_cpc_loss"], np.log(64) + 1e-6)
    assert len(metrics["val_cpc_accuracy_per_offset"]) == 2
    # The metric of evaluate() and the run's own per-offset pass agree.
    per_offset = [a for a in metrics["val_cpc_accuracy_per_offset"] if a is not None]
    assert abs(sum(per_offset) / len(per_offset) - metrics["val_cpc_accuracy"]) < 1e-5
    assert (out / "saved_model" / "saved_model.pb").is_file()
    assert (out / "vocab.txt").is_file() and (out / "model.keras").is_file()
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "epoch_001.weights.h5", "epoch_002.weights.h5"]
    assert any((out / "logs").rglob("events.out.tfevents*"))
    assert "ContrastivePredictiveCoding (K=2) over gpt2_tiny" in result.stdout
    assert "chance baseline" in result.stdout
    rounds = (out / "history.csv").read_text().splitlines()
    assert rounds[0].startswith("epoch,step,") and "loss" in rounds[0].split(",")
    assert [r.split(",")[:2] for r in rounds[1:]] == [["1", "2"], ["2", "4"]]
    assert not (out / "backup").exists()  # deleted after a normal end


def test_bad_settings_fail_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "cpc", "--set", "model.backbone=bert_tiny", "--out", str(out)]) == 2
    assert "causal" in capsys.readouterr().err
    assert cli.main(["train", "cpc", "--sequence-length", "4", "--set", "cpc.max_offset=4",
                     "--out", str(out)]) == 2
    assert "cpc.max_offset = 4: must be smaller than model.sequence_length = 4" in \
        capsys.readouterr().err
    assert cli.main(["train", "cpc", "--set", "cpc.temperature=0", "--out", str(out)]) == 2
    assert "cpc.temperature = 0.0: must be in (0, inf)" in capsys.readouterr().err
    assert cli.main(["train", "cpc", "--set", "cpc.similarity=l2", "--out", str(out)]) == 2
    assert "cpc.similarity = 'l2': must be one of 'cosine', 'dot'" in capsys.readouterr().err
    assert not out.exists()


def test_run_class_follows_the_contract(tmp_path, mirrored_strategy):
    import tensorflow as tf

    run = run_class("cpc")({
        "data": {"max_documents": 200, "validation_fraction": 0.2},
        "tokenizer": {"vocabulary_size": 300}, "model": {"sequence_length": 16},
        "training": {"batch_size": 4, "steps": 2, "validation_batches": 2},
    }, out_dir=tmp_path, log=lambda *_: None)
    for key, spec in run.search_space.items():
        run.recipe.get(key)  # a key of the recipe
        assert spec[0] in ("float", "int", "choice")
    run.prepare()
    train = run.make_dataset("train", 4)
    spec = train.element_spec
    assert all(s.shape.as_list() == [4, 16] for s in spec.values())
    validation = run.make_dataset("validation", 4)
    assert int(validation.cardinality()) == 2
    # Per-replica batches, sharded by input context: two disjoint shards.
    shards = [
        run.make_dataset("validation", 2, tf.distribute.InputContext(2, i, 2)) for i in range(2)
    ]
    first = [next(iter(s))["token_ids"].numpy() for s in shards]
    assert first[0].shape == (2, 16) and not (first[0] == first[1]).all()
    # Under a two-replica strategy the run's datasets are distributed.
    run.strategy = mirrored_strategy
    train_ds, val_ds = run.datasets(mirrored_strategy)
    assert isinstance(val_ds, tf.distribute.DistributedDataset)
    with mirrored_strategy.scope():
        model = run.build_model()
    assert not model.jit_compile  # logical CPU replicas cannot share an XLA step
    history = model.fit(train_ds, epochs=1, steps_per_epoch=2, validation_data=val_ds, verbose=0)
    assert all(map(np.isfinite, history.history["val_loss"]))
