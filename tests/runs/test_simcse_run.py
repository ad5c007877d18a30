import json

import numpy as np
import pytest

from kobjectives import cli

WORDS = ("the a cat dog sat ran on under mat tree house river big small red blue green old new "
         "man woman child plays eats reads walks sings").split()


def _corpus(tmp_path, n=300):
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, rng.integers(5, 12))) + "." for _ in range(n)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    sts = tmp_path / "sts-dev.csv"
    rows = []
    for i in range(40):
        a = " ".join(rng.choice(WORDS, 6))
        b = a if i % 3 == 0 else " ".join(rng.choice(WORDS, 6))
        rows.append(f"g\tf\t2012\t{i:04d}\t{5.0 if i % 3 == 0 else rng.uniform(0, 4):.3f}\t{a}\t{b}")
    sts.write_text("\n".join(rows) + "\n")
    return path, sts


TINY = ["--steps", "4", "--batch-size", "8", "--sequence-length", "16",
        "--set", "mlm.steps=3", "--set", "mlm.batch_size=8", "--set", "tokenizer.vocabulary_size=200",
        "--set", "training.epochs=1", "--set", "training.jit_compile=false",
        "--set", "data.validation_fraction=0.1"]


def test_simcse_cli_tiny_run(tmp_path):
    corpus, sts = _corpus(tmp_path)
    out = tmp_path / "run"
    code = cli.main(["train", "simcse", "--data", str(corpus), "--sts-dev", str(sts),
                     "--out", str(out), *TINY])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("stsb_dev_spearman", "untrained_spearman", "mlm_meanpool_spearman"):
        assert -1.0 <= metrics[key] <= 1.0
    assert set(metrics["trained_heldout"]) == {"alignment", "uniformity", "recall@1"}
    assert metrics["steps"] == 4 and metrics["mode"] == "unsupervised"
    for name in ("model.keras", "vocab.txt", "loss_curve.png", "saved_model/saved_model.pb"):
        assert (out / name).exists(), name


def test_simcse_flags_are_refused_elsewhere(tmp_path, capsys):
    assert cli.main(["train", "mlm", "--sts-dev", "x.csv", "--out", str(tmp_path)]) == 2
    assert "--sts-dev apply to the simcse recipes" in capsys.readouterr().err
    corpus, _ = _corpus(tmp_path, n=30)
    # Supervised needs a triples file; a reserved STS file is refused.
    assert cli.main(["train", "simcse", "--sts-dev", "sts-test.csv", "--data", str(corpus),
                     "--out", str(tmp_path / "r")]) == 2
    assert "reserved" in capsys.readouterr().err
    assert cli.main(["train", "simcse", "--supervised", "--out", str(tmp_path / "s")]) == 2
    assert "NLI triples" in capsys.readouterr().err
