"""`kobjectives train classify`: a tiny run from an mlm run folder (`--init`)
on the embedded corpus's module-classification task writes the metrics,
the confusion matrix and a SavedModel that names the classes; the shared
datasets are read as documented; bad settings fail before any work."""

import collections
import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from kobjectives import data as data_lib
from kobjectives.recipe import RecipeError
from kobjectives.runs import run_class
from tests.harness import tiny_run

SERVE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    model = tf.saved_model.load(sys.argv[1])
    texts = json.loads(sys.argv[2])
    out = model.signatures["serving_default"](text=tf.constant(texts))
    np.savez(sys.argv[3], **{k: v.numpy().astype(str) if v.dtype == tf.string
                             else v.numpy() for k, v in out.items()})
    foreign = [m for m in ("keras_hub", "kobjectives") if m in sys.modules]
    print("OK", foreign)
    """
)


@pytest.fixture(scope="module")
def classify(tmp_path_factory):
    """One tiny mlm run, then one tiny classify run started from its folder."""
    root = tmp_path_factory.mktemp("classify")
    tiny_run("mlm", root / "mlm", {"training.saved_model": False,
                                    "data.max_documents": 120}).train()
    run = tiny_run("classify", root / "run", {
        "model.init": str(root / "mlm"), "classifier.corpus_classes": 4, "training.steps": 4})
    metrics = run.train()
    return run, metrics, root


def model_probabilities(run, texts):
    model = keras.saving.load_model(run.out_dir / "model.keras", compile=False)
    logits = model.predict(run.serving_preprocessor()(texts), verbose=0)
    return keras.ops.convert_to_numpy(keras.ops.softmax(logits))


def test_init_run_reports_scores_baseline_and_confusion_matrix(classify):
    run, metrics, root = classify
    out = run.out_dir
    assert json.loads((out / "metrics.json").read_text())["val_accuracy"] == \
        metrics["val_accuracy"]
    # Started from the mlm run: its backbone name and its tokenizer.
    assert metrics["backbone"] == str(root / "mlm")
    assert (out / "vocab.txt").read_text() == (root / "mlm" / "vocab.txt").read_text()
    names = json.loads((out / "labels.json").read_text())
    assert names == metrics["classes"] == run.label_names and len(names) == 4
    assert names == sorted(names)

    # The scores are those of the saved model on every validation example.
    texts = [t for t, _ in run.validation_documents]
    labels = np.array([y for _, y in run.validation_documents])
    predicted = model_probabilities(run, texts).argmax(-1)
    matrix = np.zeros((4, 4))
    np.add.at(matrix, (labels, predicted), 1)
    np.testing.assert_array_equal(metrics["val_confusion_matrix"], matrix)
    assert metrics["val_accuracy"] == pytest.approx(np.mean(predicted == labels), abs=1e-4)
    f1 = []
    for c, name in enumerate(names):
        tp, pred, gold = matrix[c, c], matrix[:, c].sum(), matrix[c].sum()
        precision = tp / pred if pred else 0.0
        recall = tp / gold if gold else 0.0
        scores = metrics["val_classes"][name]
        assert scores["precision"] == pytest.approx(precision, abs=1e-4)
        assert scores["recall"] == pytest.approx(recall, abs=1e-4)
        assert scores["support"] == gold
        if pred or gold:
            f1.append(2 * tp / (pred + gold))
    assert metrics["val_macro_f1"] == pytest.approx(np.mean(f1), abs=1e-4)

    # The majority class of the training labels, scored on the validation labels.
    counts = collections.Counter(y for _, y in run.train_documents)
    majority = max(sorted(counts), key=lambda c: counts[c])
    assert metrics["majority_class"] == names[majority]
    assert metrics["majority_class_train_share"] == pytest.approx(
        counts[majority] / len(run.train_documents))
    assert metrics["val_majority_accuracy"] == pytest.approx(np.mean(labels == majority))
    support = (labels == majority).sum()
    assert metrics["val_majority_macro_f1"] == pytest.approx(
        2 * support / (len(labels) + support) / len(set(labels) | {majority}), abs=1e-4)
    # The bag-of-words baseline: naive Bayes on the training texts, scored here.
    from kobjectives.metrics.baselines import NaiveBayesBagOfWords
    bow = NaiveBayesBagOfWords(run.tokenizer, [t for t, _ in run.train_documents],
                               [y for _, y in run.train_documents], len(names))
    guessed = bow.predict([t for t, _ in run.validation_documents])
    assert metrics["val_bag_of_words_accuracy"] == pytest.approx(np.mean(guessed == labels))
    assert 0.0 <= metrics["val_bag_of_words_macro_f1"] <= 1.0
    assert metrics["documents"] == {"train": len(run.train_documents),
                                    "validation": len(labels)}
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_saved_model_maps_raw_text_to_probabilities_and_class_names(classify, tmp_path):
    run, _, _ = classify
    texts = [t for t, _ in run.validation_documents[:3]] + ["x"]
    arrays = tmp_path / "served.npz"
    served = subprocess.run(
        [sys.executable, "-c", SERVE, str(run.out_dir / "saved_model"), json.dumps(texts),
         str(arrays)], capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]
    assert "OK []" in served.stdout
    out = dict(np.load(arrays))
    expected = model_probabilities(run, texts)
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-4)
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out["label_ids"], expected.argmax(-1))
    assert out["labels"].tolist() == [run.label_names[i] for i in out["label_ids"]]


@pytest.mark.parametrize("values, message", [
    ({"data": {"dataset": "sst2", "shared_dir": "/no/such/folder"}},
     "data.dataset = 'sst2': The shared datasets folder '/no/such/folder' does not exist"),
    ({"data": {"dataset": "imdb"}}, "data.dataset = 'imdb': must be one of"),
    ({"data": {"dataset": "sst2", "files": ["a.tsv"]}}, "give data.files or data.dataset"),
    ({"data": {"files": ["../shared/data/sst2/test.tsv"]}}, "reserved split"),
    ({"data": {"files": ["a.tsv", "b.tsv", "c.tsv"]}}, "at most two files"),
    ({"data": {"files": ["/no/such/train.tsv"]}}, "matches no file"),
    ({"classifier": {"pooling": "max"}}, "classifier.pooling = 'max'"),
    ({"model": {"backbone": "gpt2_tiny"}}, "model.backbone = 'gpt2_tiny'"),
])
def test_bad_settings_fail_before_any_work(values, message, tmp_path):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(".", r"\.")):
        run_class("classify")(values, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_sst2_reads_train_and_dev_never_test(shared_data, tmp_path, monkeypatch):
    read = []
    original = data_lib.read_classification_tsv
    monkeypatch.setattr(data_lib, "read_classification_tsv",
                        lambda path, **kw: read.append(path.name) or original(path, **kw))
    run = tiny_run("classify", tmp_path / "run", {
        "data.dataset": "sst2", "data.shared_dir": str(shared_data),
        "data.max_documents": 200})
    run.prepare()
    assert read == ["train.tsv", "dev.tsv"]
    assert run.label_names == ["0", "1"]
    assert len(run.train_documents) + len(run.validation_documents) == 200
    assert len(run.validation_documents) == 40  # data.validation_fraction = 0.2
    assert len(run.heldout_examples) == 200 and run.heldout_name == "dev.tsv"
    assert run.heldout_examples[0] == (
        "one long string of cliches .", 0)
    x, y = next(iter(run.make_dataset("train", 4)))
    assert x["token_ids"].shape == (4, 32) and set(y.numpy()) <= {0, 1}


def test_chnsenticorp_tokenizer_splits_chinese_characters(shared_data, tmp_path):
    run = tiny_run("classify", tmp_path / "run", {
        "data.dataset": "chnsenticorp", "data.shared_dir": str(shared_data),
        "data.max_documents": 100})
    run.prepare()
    assert run.heldout_name == "chnsenticorp_dev.tsv" and len(run.heldout_examples) == 100
    vocabulary = run.vocabulary

    def cjk(c):
        return "\u4e00" <= c <= "\u9fff"

    # No piece holds two CJK characters: each is a word of its own.
    assert not [p for p in vocabulary if sum(cjk(c) for c in p.lstrip("#")) > 1]
    assert sum(cjk(p[0]) for p in vocabulary if p) > 50
    pieces = run.tokenizer.tokenize("酒店很好")
    assert len(pieces) == 4, pieces


# `kobjectives export RUN_DIR` (load_run, then Run.export): ~20-30 s more.
@pytest.mark.slow
def test_export_cli_rebuilds_the_same_serving_model(classify, tmp_path):
    import tensorflow as tf

    from kobjectives.runs import export_run_dir

    run, _, _ = classify
    path = export_run_dir(run.out_dir, tmp_path / "export", log=lambda *_: None)
    texts = tf.constant([t for t, _ in run.validation_documents[:2]])
    again = tf.saved_model.load(path).signatures["serving_default"](text=texts)
    trained = tf.saved_model.load(str(run.out_dir / "saved_model")).signatures[
        "serving_default"](text=texts)
    assert again["labels"].numpy().tolist() == trained["labels"].numpy().tolist()
    np.testing.assert_allclose(again["probabilities"], trained["probabilities"], atol=1e-5)
