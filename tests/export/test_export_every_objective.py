"""`kobjectives export RUN_DIR` for every objective: a tiny `kobjectives
train NAME` run, then `kobjectives export RUN_DIR --out OTHER`; the exported
`serving_default` serves raw strings in a clean process (tensorflow and
tensorflow_text only) for batches of 1 and 3, with finite outputs, rows that
do not depend on the batch, and the same outputs as the SavedModel the
training run wrote itself."""

import json
import subprocess
import sys

import numpy as np
import pytest

from kobjectives import cli

WORDS = (
    "the a cat dog sat ran on under mat tree house river big small red blue green old new "
    "man woman child plays eats reads walks sings quickly slowly city garden window door "
    "book table water light night morning friend teacher music paper stone bridge road"
).split()

# The corpus holds one document per line (the bert recipe defaults to paragraphs).
COMMON = ["--steps", "2", "--format", "lines", "--set", "training.epochs=1",
          "--set", "training.jit_compile=false"]

# Per recipe: tiny overrides as in that run's own tests (tests/runs/).
TINY = {
    "clm": ["--batch-size", "4", "--sequence-length", "16",
            "--set", "tokenizer.vocabulary_size=300", "--set", "tokenizer.max_training_documents=0",
            "--set", "training.validation_batches=2", "--set", "training.warmup_steps=1",
            "--set", "clm.chunk_size=24"],
    "electra": ["--batch-size", "4", "--sequence-length", "16",
                "--set", "tokenizer.vocabulary_size=300",
                "--set", "tokenizer.max_training_documents=0",
                "--set", "training.validation_batches=2", "--set", "training.warmup_steps=1",
                "--set", "masking.mask_selection_length=3"],
    "bert": ["--batch-size", "4", "--sequence-length", "24",
             "--set", "tokenizer.vocabulary_size=300", "--set", "training.validation_batches=2",
             "--set", "training.warmup_steps=1", "--set", "masking.mask_selection_length=4"],
    "t5": ["--batch-size", "4", "--sequence-length", "24",
           "--set", "tokenizer.vocabulary_size=300", "--set", "training.validation_batches=2",
           "--set", "training.warmup_steps=1"],
    "bart": ["--batch-size", "4", "--sequence-length", "24",
             "--set", "tokenizer.vocabulary_size=300", "--set", "training.validation_batches=2",
             "--set", "training.warmup_steps=1"],
    "xlnet": ["--batch-size", "4", "--sequence-length", "16",
              "--set", "tokenizer.vocabulary_size=300", "--set", "training.validation_batches=2",
              "--set", "training.warmup_steps=1", "--set", "plm.num_predict=6"],
    "cpc": ["--batch-size", "4", "--sequence-length", "16",
            "--set", "tokenizer.vocabulary_size=300", "--set", "tokenizer.max_training_documents=0",
            "--set", "training.validation_batches=2", "--set", "training.warmup_steps=1",
            "--set", "cpc.max_offset=2"],
    # sft reads data.dataset (the corpus task), not --data: cleared by the --set.
    "sft": ["--batch-size", "4", "--sequence-length", "24", "--set", "data.files=",
            "--set", "data.max_documents=120", "--set", "tokenizer.vocabulary_size=300",
            "--set", "training.validation_batches=2", "--set", "training.warmup_steps=1",
            "--set", "sft.chunk_size=24"],
    "simcse": ["--batch-size", "8", "--sequence-length", "16",
               "--set", "mlm.steps=2", "--set", "mlm.batch_size=8",
               "--set", "tokenizer.vocabulary_size=200", "--set", "data.validation_fraction=0.1"],
}

# A clean process: only tensorflow and tensorflow_text are imported. Calls
# `serving_default` of each SavedModel (argv[2:]) on 1 and 3 raw strings;
# any non-string input (the seq2seq decoder ids) gets start ids, one step.
SERVE = r"""
import sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401

TEXTS = ["the cat sat on the mat . a dog ran under the tree [SEP] the old man reads",
         "big red house", "x"]
arrays = {}
for index, path in enumerate(sys.argv[2:]):
    fn = tf.saved_model.load(path).signatures["serving_default"]
    for batch in (1, 3):
        feed = {}
        for name, spec in fn.structured_input_signature[1].items():
            if spec.dtype == tf.string:
                feed[name] = tf.constant(TEXTS[:batch])
            else:
                shape = [batch] + [d if d is not None else 1 for d in spec.shape.as_list()[1:]]
                feed[name] = tf.zeros(shape, spec.dtype)
        for name, value in fn(**feed).items():
            arrays[f"{index}__{batch}__{name}"] = value.numpy()
arrays["foreign"] = np.array([m for m in ("keras_hub", "kobjectives") if m in sys.modules],
                             dtype=str)
np.savez(sys.argv[1], **arrays)
print("OK")
"""

CASES = [
    # clm too (about 35 s): tests/runs/test_load_run.py re-exports a run folder
    # in the default suite.
    pytest.param("clm", id="clm", marks=pytest.mark.slow),
    *(pytest.param(name, id=name, marks=pytest.mark.slow)
      for name in ("electra", "bert", "t5", "bart", "xlnet", "cpc", "simcse")),
    pytest.param("sft", id="sft", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """240 documents of 4-6 sentences (sentence pairs and SimCSE need several
    sentences of >= 20 characters per document)."""
    rng = np.random.default_rng(0)
    documents = []
    for _ in range(240):
        sentences = [" ".join(rng.choice(WORDS, rng.integers(6, 11))).capitalize() + "."
                     for _ in range(rng.integers(4, 7))]
        documents.append(" ".join(sentences))
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(documents) + "\n")
    return path


@pytest.mark.parametrize("name", CASES)
def test_export_rebuilds_the_training_runs_serving_model(name, small_corpus, tmp_path, capsys):
    run_dir, export_dir = tmp_path / "run", tmp_path / "export"
    code = cli.main(["train", name, "--data", str(small_corpus), *COMMON, *TINY[name],
                     "--out", str(run_dir)])
    assert code == 0, capsys.readouterr().err[-3000:]
    assert (run_dir / "saved_model").is_dir()
    recipe = json.loads((run_dir / "recipe.json").read_text())

    assert cli.main(["export", str(run_dir), "--out", str(export_dir)]) == 0, \
        capsys.readouterr().err[-3000:]
    assert (export_dir / "saved_model" / "saved_model.pb").is_file()
    assert not (export_dir / "model.keras").exists()  # only the SavedModel is written

    arrays_file = tmp_path / "served.npz"
    served = subprocess.run(
        [sys.executable, "-c", SERVE, str(arrays_file),
         str(export_dir / "saved_model"), str(run_dir / "saved_model")],
        capture_output=True, text=True, timeout=900,
    )
    assert served.returncode == 0, served.stderr[-3000:]
    arrays = dict(np.load(arrays_file))
    assert arrays.pop("foreign").tolist() == []

    exported = {k[len("0__"):]: v for k, v in arrays.items() if k.startswith("0__")}
    trained = {k[len("1__"):]: v for k, v in arrays.items() if k.startswith("1__")}
    names = sorted({k.split("__", 1)[1] for k in exported})
    assert names, "serving_default returned nothing"
    # Training and `kobjectives export` write the same signature and outputs.
    assert sorted(exported) == sorted(trained)
    length = int(recipe["model"]["sequence_length"])
    for key in names:
        one, three = exported[f"1__{key}"], exported[f"3__{key}"]
        assert one.shape[0] == 1 and three.shape[0] == 3, (key, one.shape, three.shape)
        assert one.shape[1:] == three.shape[1:], key
        if np.issubdtype(one.dtype, np.floating):
            assert one.dtype == np.float32, (key, one.dtype)
            assert np.isfinite(one).all() and np.isfinite(three).all(), key
            # A text's outputs do not depend on the other texts of the batch.
            np.testing.assert_allclose(one[0], three[0], atol=1e-4, err_msg=key)
        else:
            np.testing.assert_array_equal(one[0], three[0], err_msg=key)
        for batch in (1, 3):
            np.testing.assert_allclose(exported[f"{batch}__{key}"], trained[f"{batch}__{key}"],
                                       atol=1e-4, err_msg=key)
    # Raw strings were tokenized: real token ids, right-padded to the run's length
    # (except the seq2seq signature, whose ids are the encoder's).
    ids = exported.get("3__token_ids", exported.get("3__encoder_token_ids"))
    if ids is not None:
        assert ids.shape == (3, length), ids.shape
        vocabulary = len((run_dir / "vocab.txt").read_text().splitlines())
        assert ids.min() >= 0 and ids.max() < vocabulary
        assert (ids[0] != 0).sum() > (ids[2] != 0).sum() > 0  # long text vs "x"
