"""`kobjectives train tag`: a tiny CRF run on the embedded corpus's
entity-tagging task writes the tag set, the entity F1 next to the
dictionary baseline and a SavedModel that tags the words of raw text; the
shared datasets are read as documented; bad settings and tags outside the
training tag set fail clearly."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from kobjectives import data as data_lib
from kobjectives.data import labelled_pipelines as pipelines
from kobjectives.metrics.span_f1 import SpanF1
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
def tagged(tmp_path_factory):
    """One tiny tag run with the CRF, trained once for the file."""
    root = tmp_path_factory.mktemp("tag")
    run = tiny_run("tag", root / "run", {"tagging.use_crf": True, "training.steps": 4})
    metrics = run.train()
    return run, metrics


def saved_model_word_tags(run, sentences):
    """Word tag ids of `model.keras` (Viterbi over the first pieces)."""
    model = keras.saving.load_model(run.out_dir / "model.keras", compile=False)
    predicted, _ = run.predict_word_tags(model, sentences)
    return predicted


def test_run_reports_entity_f1_and_the_dictionary_baseline(tagged):
    run, metrics = tagged
    out = run.out_dir
    assert json.loads((out / "metrics.json").read_text())["val_span_f1"] == metrics["val_span_f1"]
    tags = json.loads((out / "tags.json").read_text())
    assert tags == run.tags == metrics["tags"] == data_lib.tag_set(run.train_documents)
    assert tags[0] == "O" and set(tags) <= {"O", "B-EXC", "I-EXC", "B-MOD", "I-MOD"}
    assert metrics["use_crf"] is True

    # The entity F1 is SpanF1 over the words of every validation sentence,
    # predicted by the saved model (Viterbi decoding of the CRF).
    sentences = run.validation_documents
    index = {t: i for i, t in enumerate(tags)}
    gold = [[index[t] for t in ts] for _, ts in sentences]
    predicted = saved_model_word_tags(run, sentences)
    assert [len(p) for p in predicted] == [len(g) for g in gold]
    width = max(map(len, gold))

    def pad(rows):
        return np.array([r + [0] * (width - len(r)) for r in rows])

    metric = SpanF1(tags)
    metric.update_state(pad(gold), pad(predicted), pad([[1] * len(g) for g in gold]))
    assert metrics["val_span_f1"] == pytest.approx(float(metric.result()), abs=1e-4)
    assert metrics["val_span_report"]["micro"]["f1"] == metrics["val_span_f1"]

    # The dictionary baseline by hand: each word's most frequent training tag, else O.
    counts = {}
    for words, ts in run.train_documents:
        for w, t in zip(words, ts):
            counts.setdefault(w, {}).setdefault(t, 0)
            counts[w][t] += 1
    true_positives = predicted_entities = gold_entities = 0
    for words, ts in sentences:
        guess = [max(counts[w], key=counts[w].get) if w in counts else "O" for w in words]
        # Corpus entities are single words (B- only), so an entity is one B- word.
        g = {(i, t) for i, t in enumerate(ts) if t.startswith("B-")}
        p = {(i, t) for i, t in enumerate(guess) if t.startswith("B-")}
        true_positives += len(g & p)
        predicted_entities += len(p)
        gold_entities += len(g)
    assert gold_entities > 0
    expected = 2 * true_positives / (predicted_entities + gold_entities)
    assert metrics["val_dictionary_span_f1"] == pytest.approx(expected, abs=1e-4)
    for kind in ("EXC", "MOD"):
        if kind in metrics["val_dictionary_span_report"]:
            assert set(metrics["val_dictionary_span_report"][kind]) == {
                "precision", "recall", "f1", "support"}
    # Sentences longer than 30 pieces lose words; they are counted.
    assert metrics["val_words_truncated"] >= 0
    assert metrics["documents"] == {"train": len(run.train_documents),
                                    "validation": len(sentences)}


def test_saved_model_tags_the_words_of_raw_text(tagged, tmp_path):
    run, _ = tagged
    sentences = run.validation_documents[:3]
    texts = [" ".join(words) for words, _ in sentences] + ["x"]
    arrays = tmp_path / "served.npz"
    served = subprocess.run(
        [sys.executable, "-c", SERVE, str(run.out_dir / "saved_model"), json.dumps(texts),
         str(arrays)], capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]
    assert "OK []" in served.stdout
    out = dict(np.load(arrays))
    length = run.recipe.model.sequence_length
    assert out["tags"].shape == (4, length) and out["tag_ids"].shape == (4, length)
    expected = saved_model_word_tags(run, [*sentences, (["x"], ["O"])])
    for row, (ids, names, n) in enumerate(zip(out["tag_ids"], out["tags"], out["num_words"])):
        n = int(n)
        words = len(texts[row].split())
        assert n == words
        shown = min(n, length)
        assert ids[:shown].tolist() == expected[row][:shown]
        assert names[:shown].tolist() == [run.tags[i] for i in ids[:shown]]
        assert (ids[shown:] == -1).all() and all(s == "" for s in names[shown:])


@pytest.mark.parametrize("values, message", [
    ({"data": {"dataset": "conll2003", "shared_dir": "/no/such/folder"}},
     "data.dataset = 'conll2003': The shared datasets folder"),
    ({"data": {"dataset": "conll2003", "files": ["a.txt"]}}, "give data.files or data.dataset"),
    ({"data": {"files": ["../shared/data/ner/conll2003/test.txt"]}}, "reserved split"),
    ({"data": {"files": ["../shared/data/ner/cluener2020/dev.txt"]}}, "reserved split"),
    ({"data": {"tfds": "conll2003"}}, "tagging reads data.files"),
    ({"tagging": {"span_mode": "lenient"}}, "tagging.span_mode = 'lenient'"),
])
def test_bad_settings_fail_before_any_work(values, message, tmp_path):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(".", r"\.")):
        run_class("tag")(values, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_validation_tag_outside_the_training_tags_fails_clearly(tmp_path):
    train = "".join(f"w{i}\tB-ORG\nsaid\tO\n\n" for i in range(40))
    heldout = "Paris\tB-LOC\n\n"
    (tmp_path / "train.txt").write_text(train)
    (tmp_path / "heldout.txt").write_text(heldout)
    run = tiny_run("tag", tmp_path / "run", {
        "data.files": [str(tmp_path / "train.txt"), str(tmp_path / "heldout.txt")]})
    with pytest.raises(ValueError, match=r"held-out file has a tag outside the training tag "
                                         r"set \['O', 'B-ORG', 'I-ORG'\].*heldout.txt:1.*'B-LOC'"):
        run.prepare()


def test_conll2003_reads_train_and_dev_never_test(shared_data, tmp_path, monkeypatch):
    read = []
    original = data_lib.read_conll
    monkeypatch.setattr(data_lib, "read_conll",
                        lambda path, **kw: read.append(path.name) or original(path, **kw))
    run = tiny_run("tag", tmp_path / "run", {
        "data.dataset": "conll2003", "data.shared_dir": str(shared_data),
        "data.max_documents": 200})
    run.prepare()
    assert read == ["train.txt", "dev.txt"]
    assert len(run.train_documents) + len(run.validation_documents) == 200
    assert len(run.heldout_sentences) == 200 and run.heldout_name == "dev.txt"
    assert run.tags == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG",
                        "B-PER", "I-PER"]
    assert (run.out_dir / "tags.json").read_text().count("B-") == 4
    x, y, w = next(iter(run.make_dataset("train", 4)))
    assert x["token_ids"].shape == (4, 32) and int(y.numpy().max()) < len(run.tags)


def test_cluener2020_holds_out_a_slice_and_never_reads_dev(shared_data, tmp_path,
                                                            monkeypatch):
    read = []
    original = data_lib.read_conll
    monkeypatch.setattr(data_lib, "read_conll",
                        lambda path, **kw: read.append(path.name) or original(path, **kw))
    run = tiny_run("tag", tmp_path / "run", {
        "data.dataset": "cluener2020", "data.shared_dir": str(shared_data),
        "data.max_documents": 150, "data.validation_fraction": 0.1})
    run.prepare()
    assert len(run.tags) == 21  # O and B-/I- of the 10 types
    assert read == ["train.txt"] and run.heldout_sentences is None
    assert len(run.validation_documents) == 15
    # One character a word: the aligner gives each its own first piece.
    words, _ = run.train_documents[0]
    assert all(len(w) == 1 for w in words)
    aligned = run.aligner()({"words": words[:10], "tags": [0] * 10})
    assert int(aligned["num_words_kept"]) == 10
    assert aligned["label_mask"].numpy().sum() == 10
    assert pipelines.TAGGING_DATASETS["cluener2020"][1] is None


# `kobjectives export RUN_DIR` (load_run, then Run.export): ~20-30 s more.
@pytest.mark.slow
def test_export_cli_rebuilds_the_same_serving_model(tagged, tmp_path):
    import tensorflow as tf

    from kobjectives.runs import export_run_dir

    run, _ = tagged
    path = export_run_dir(run.out_dir, tmp_path / "export", log=lambda *_: None)
    texts = tf.constant([" ".join(words) for words, _ in run.validation_documents[:2]])
    again = tf.saved_model.load(path).signatures["serving_default"](text=texts)
    trained = tf.saved_model.load(str(run.out_dir / "saved_model")).signatures[
        "serving_default"](text=texts)
    for key in ("tags", "tag_ids", "num_words"):
        assert again[key].numpy().tolist() == trained[key].numpy().tolist(), key
