import json

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from kobjectives import cli
from kobjectives.recipe import RecipeError
from kobjectives.runs import load_recipe
from kobjectives.runs import run_class

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
        words = list(rng.choice(WORDS, 6))
        a = " ".join(words)
        # Similar pairs differ in one word: no two cosines are equal but for round-off.
        b = " ".join(words[:-1] + [WORDS[i % len(WORDS)]]) if i % 3 == 0 \
            else " ".join(rng.choice(WORDS, 6))
        rows.append(f"g\tf\t2012\t{i:04d}\t{5.0 if i % 3 == 0 else rng.uniform(0, 4):.3f}\t{a}\t{b}")
    sts.write_text("\n".join(rows) + "\n")
    return path, sts


def _triples(tmp_path, n=120):
    rng = np.random.default_rng(1)
    path = tmp_path / "triples.tsv"
    rows = ["source\tanchor\tpositive\thard_negative"]
    for i in range(n):
        anchor = " ".join(rng.choice(WORDS, 7))
        rows.append(f"x\t{anchor} {i}\t{anchor}\t{' '.join(rng.choice(WORDS, 7))}")
    path.write_text("\n".join(rows) + "\n")
    return path


TINY = ["--steps", "4", "--batch-size", "8", "--sequence-length", "16",
        "--set", "mlm.steps=3", "--set", "mlm.batch_size=8", "--set", "tokenizer.vocabulary_size=200",
        "--set", "training.epochs=1", "--set", "training.jit_compile=false",
        "--set", "data.validation_fraction=0.1"]


# End to end (train, export, serve from a clean process: minutes on 2 cores) under
# `-m slow`; the default suite covers this run's pipeline (tests/test_tpu_readiness.py),
# its objective (tests/objectives) and its recipe checks (below).
@pytest.mark.slow
def test_simcse_cli_tiny_run(tmp_path):
    corpus, sts = _corpus(tmp_path)
    out = tmp_path / "run"
    code = cli.main(["train", "simcse", "--data", str(corpus),
                     "--set", f"evaluation.sts_dev={sts}", "--out", str(out), *TINY])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("model.keras", "vocab.txt", "loss_curve.png", "saved_model/saved_model.pb",
                 "preset/config.json"):
        assert (out / name).exists(), name
    assert metrics["recipe"] == "simcse" and metrics["steps"] == 4
    assert metrics["mode"] == "unsupervised" and metrics["augmentation"] == "dropout"
    assert metrics["sts_dev_file"] == str(sts) and metrics["mlm_steps"] == 3
    assert len(metrics["mlm_loss"]) == 1 and np.isfinite(metrics["val_loss"])
    for name in ("trained", "untrained", "mlm_meanpool"):
        assert set(metrics[f"{name}_heldout"]) == {"alignment", "uniformity", "recall@1"}
        assert np.isfinite(metrics[f"{name}_sts_uniformity"])
    assert metrics["documents"]["validation"] == metrics["heldout_texts"] > 0
    # The reported Spearman is the exported encoder's: embed the STS pairs with
    # the SavedModel (raw text in) and rank the cosines independently.
    served = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    columns = [line.split("\t") for line in sts.read_text().splitlines()]
    first, second = (served(text=tf.constant([row[k] for row in columns]))["embeddings"].numpy()
                     for k in (5, 6))
    norms = np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1)
    cosines = (first * second).sum(1) / norms
    gold = [float(row[4]) for row in columns]
    spearman = stats.spearmanr(cosines, gold)[0]
    assert metrics["stsb_dev_spearman"] == pytest.approx(spearman, abs=1e-5)
    # The untrained baseline is another model: its figure differs.
    assert metrics["untrained_spearman"] != metrics["stsb_dev_spearman"]


@pytest.mark.slow  # about 20 s; the NLI triples pipeline is tested in tests/data
def test_supervised_run_on_nli_triples(tmp_path):
    triples = _triples(tmp_path)
    recipe = load_recipe("simcse", overrides={
        "contrastive.mode": "supervised", "data.files": str(triples), "training.steps": 2,
        "training.epochs": 1, "training.batch_size": 8, "training.jit_compile": False,
        "model.sequence_length": 16, "mlm.steps": 0, "tokenizer.vocabulary_size": 200,
        "data.validation_fraction": 0.2, "training.saved_model": False,
    })
    run = run_class("simcse")(recipe, out_dir=tmp_path / "run", log=lambda *_: None)
    metrics = run.train()
    assert metrics["mode"] == "supervised" and metrics["augmentation"] == "nli"
    assert metrics["documents"] == {"train": 96, "validation": 24}
    assert metrics["mlm_loss"] is None and "stsb_dev_spearman" not in metrics
    # Held out: the validation triples' anchors, none of them trained on.
    assert metrics["heldout_texts"] == 24
    assert not set(run.validation_documents["anchor"]) & set(run.train_documents["anchor"])
    assert set(run.sentences()) == set(run.train_documents["anchor"]) | set(
        run.train_documents["positive"]) | set(run.train_documents["negative"])


def test_contrastive_aug_defaults():
    simcse, aug = load_recipe("simcse"), load_recipe("contrastive_aug")
    assert (aug.contrastive.augmentation, aug.contrastive.temperature) == ("text", 0.05)
    assert (aug.training.steps, aug.training.epochs) == (400, 4)
    assert not aug.contrastive.freeze_token_embedding and simcse.contrastive.freeze_token_embedding
    assert (simcse.contrastive.augmentation, simcse.training.steps) == ("dropout", 300)
    assert run_class("contrastive_aug").recipe_class is type(aug)


def test_recipe_keys_replace_the_old_flags(tmp_path, capsys):
    corpus, _ = _corpus(tmp_path, n=30)
    reserved = tmp_path / "sts-test.csv"
    reserved.write_text("")
    # A reserved STS file and a missing one are refused before any work.
    assert cli.main(["train", "simcse", "--set", f"evaluation.sts_dev={reserved}",
                     "--data", str(corpus), "--out", str(tmp_path / "r")]) == 2
    assert "reserved" in capsys.readouterr().err
    assert cli.main(["train", "simcse", "--set", "evaluation.sts_dev=missing.csv",
                     "--out", str(tmp_path / "m")]) == 2
    assert "evaluation.sts_dev = 'missing.csv': no such file" in capsys.readouterr().err
    # Supervised needs one triples file.
    assert cli.main(["train", "simcse", "--set", "contrastive.mode=supervised",
                     "--out", str(tmp_path / "s")]) == 2
    assert "NLI triples" in capsys.readouterr().err
    # A finished run folder reloads where its data and STS file are gone.
    moved = load_recipe("simcse", overrides={"evaluation.sts_dev": "gone.csv",
                                             "contrastive.mode": "supervised",
                                             "data.files": "gone.tsv"})
    assert run_class("simcse")(moved, reloading=True).recipe is moved
    with pytest.raises(RecipeError, match="gone.csv': no such file"):
        run_class("simcse")(moved)
    with pytest.raises(RecipeError, match="does not apply"):
        load_recipe("simcse", overrides={"contrastive.mode": "supervised",
                                         "contrastive.augmentation": "text",
                                         "data.files": str(corpus)})
    # The keys are the simcse recipes' own.
    assert cli.main(["train", "mlm", "--set", "evaluation.sts_dev=x.csv",
                     "--out", str(tmp_path / "x")]) == 2
    assert "Unknown recipe key 'evaluation.sts_dev'" in capsys.readouterr().err
    for flag in ("--supervised", "--sts-dev"):
        with pytest.raises(SystemExit):
            cli.main(["train", "simcse", flag, "x", "--out", str(tmp_path / "f")])
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()
