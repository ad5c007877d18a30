"""Tests for `kobjectives.layers.BartNoising` (Lewis et al., 2020).

The span-level statistics (Poisson lengths, one mask per span, the layout)
are tested on the plan in `tests/ops/test_bart_noising.py`; here the layer's
outputs are checked against the published definitions, plus input handling,
seeds, `tf.data`, errors and saving.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.layers import BartNoising
from kobjectives.ops import bart_noising

PAD, BOS, EOS, MASK, PERIOD = 0, 1, 2, 3, 4
FIRST_WORD = 10
VOCAB = 1000


def make_noiser(**kwargs):
    options = dict(
        mask_token_id=MASK,
        sequence_length=64,
        text_infilling_rate=0.3,
        poisson_lambda=3.0,
        token_deletion_rate=0.0,
        sentence_permutation_rate=1.0,
        document_rotation_rate=0.0,
        sentence_end_token_ids=[PERIOD],
        unselectable_token_ids=[PAD, BOS, EOS],
        vocabulary_size=VOCAB,
        seed=0,
    )
    options.update(kwargs)
    return BartNoising(**options)


def make_batch(batch, length, seed=0, sentences=True):
    """Rows `[BOS, words (distinct) with periods, EOS, PAD...]`."""
    rng = np.random.RandomState(seed)
    ids = np.zeros([batch, length], "int32")
    for i in range(batch):
        real = rng.randint(length // 2, length + 1)
        body = FIRST_WORD + np.arange(real - 2)
        if sentences:
            ends = rng.rand(real - 2) < 0.15
            body = np.where(ends, PERIOD, body)
        ids[i, :real] = [BOS, *body, EOS]
    return ids


def numpy_outputs(outputs):
    return {k: np.asarray(v) for k, v in outputs.items()}


def real_rows(ids, padding_mask=None):
    if padding_mask is None:
        padding_mask = ids != PAD
    return [list(r[m]) for r, m in zip(np.asarray(ids), padding_mask)]


def test_text_infilling_fraction_from_outputs():
    ids = make_batch(1024, 160, seed=1, sentences=False)
    noiser = make_noiser(
        sequence_length=176, sentence_permutation_rate=0.0
    )
    out = numpy_outputs(noiser(ids, seed=tf.constant([1, 1])))
    n = missing = masks = 0
    for original, got in zip(real_rows(ids), real_rows(**_ids_mask(out))):
        words = [t for t in original if t >= FIRST_WORD]
        kept = [t for t in got if t >= FIRST_WORD]
        # Uncovered tokens stay, in order, and specials at the ends.
        assert kept == [t for t in words if t in set(kept)]
        assert got[0] == BOS and got[-1] == EOS
        n += len(words)
        missing += len(words) - len(kept)
        masks += got.count(MASK)
    assert n > 100_000
    assert abs(missing / n - 0.3) < 0.005
    # One mask per span, lengths ~ Poisson(3) (the last span of a row cut
    # to the budget and edge spans make the covered tokens per mask a
    # little lower than 3).
    assert 2.6 < missing / masks < 3.0


def _ids_mask(out):
    return {"ids": out["token_ids"], "padding_mask": out["padding_mask"]}


def test_token_deletion_fraction_from_outputs():
    ids = make_batch(1024, 160, seed=2, sentences=False)
    noiser = make_noiser(
        text_infilling_rate=0.0,
        token_deletion_rate=0.2,
        sentence_permutation_rate=0.0,
        sequence_length=160,
    )
    out = numpy_outputs(noiser(ids, seed=tf.constant([2, 2])))
    n = deleted = 0
    for original, got in zip(real_rows(ids), real_rows(**_ids_mask(out))):
        assert MASK not in got
        assert got == [t for t in original if t in set(got)]  # in order
        assert got[0] == BOS and got[-1] == EOS
        n += len(original) - 2
        deleted += len(original) - len(got)
    assert n > 100_000
    assert abs(deleted / n - 0.2) < 0.005


def test_all_rates_zero_is_the_identity():
    ids = make_batch(16, 40, seed=3)
    noiser = make_noiser(
        text_infilling_rate=0.0,
        token_deletion_rate=0.0,
        sentence_permutation_rate=0.0,
        document_rotation_rate=0.0,
        sequence_length=40,
    )
    out = numpy_outputs(noiser(ids))
    np.testing.assert_array_equal(out["token_ids"], ids)
    np.testing.assert_array_equal(out["padding_mask"], ids != PAD)
    # sentence_permutation_rate=1.0 without sentence ends: one sentence.
    out = numpy_outputs(
        make_noiser(
            text_infilling_rate=0.0,
            sentence_end_token_ids=[],
            sequence_length=48,
        )(ids)
    )
    np.testing.assert_array_equal(out["token_ids"][:, :40], ids)


def test_permutation_and_rotation_keep_the_tokens_and_the_ends():
    ids = make_batch(256, 48, seed=4)
    noiser = make_noiser(
        text_infilling_rate=0.0,
        document_rotation_rate=1.0,
        sequence_length=48,
    )
    out = numpy_outputs(noiser(ids))
    changed = 0
    for original, got in zip(real_rows(ids), real_rows(**_ids_mask(out))):
        assert sorted(got) == sorted(original)
        assert got[0] == BOS and got[-1] == EOS
        changed += got != original
    assert changed > 240


def test_all_noises_keep_the_special_tokens_at_the_ends():
    ids = make_batch(128, 48, seed=5)
    noiser = make_noiser(
        text_infilling_rate=0.4,
        token_deletion_rate=0.3,
        document_rotation_rate=1.0,
        poisson_lambda=1.0,
    )
    out = numpy_outputs(noiser(ids))
    for got in real_rows(**_ids_mask(out)):
        assert got[0] == BOS and got[-1] == EOS
        assert BOS not in got[1:-1] and EOS not in got[1:-1]
    assert out["token_ids"].dtype == np.int32
    assert out["padding_mask"].dtype == bool
    # Padding is 0 and only after the real tokens.
    lengths = out["padding_mask"].sum(1)
    np.testing.assert_array_equal(
        out["padding_mask"], np.arange(64)[None] < lengths[:, None]
    )
    assert not out["token_ids"][~out["padding_mask"]].any()


def test_determinism_and_seeds():
    ids = make_batch(32, 64, seed=6)
    a, b = make_noiser(seed=11), make_noiser(seed=11)
    a1, a2, b1 = (numpy_outputs(x(ids)) for x in (a, a, b))
    np.testing.assert_array_equal(a1["token_ids"], b1["token_ids"])
    assert not np.array_equal(a1["token_ids"], a2["token_ids"])
    seed = tf.constant([3, 9], "int64")
    c1 = numpy_outputs(make_noiser(seed=None)(ids, seed=seed))
    c2 = numpy_outputs(make_noiser(seed=5)(ids, seed=seed))
    np.testing.assert_array_equal(c1["token_ids"], c2["token_ids"])
    other = numpy_outputs(a(ids, seed=tf.constant([3, 10], "int64")))
    assert not np.array_equal(other["token_ids"], c1["token_ids"])


def test_batched_equals_unbatched_per_row():
    ids = make_batch(6, 40, seed=7)
    noiser = make_noiser(
        token_deletion_rate=0.1, document_rotation_rate=0.5,
        sequence_length=40,
    )
    seed = tf.constant([4, 2], "int64")
    batched = numpy_outputs(noiser(ids, seed=seed))
    seeds = bart_noising.row_seeds(seed, 6)
    for i in range(6):
        alone = numpy_outputs(noiser(ids[i], seed=seeds[i]))
        assert alone["token_ids"].shape == (40,)
        np.testing.assert_array_equal(alone["token_ids"], batched["token_ids"][i])
        np.testing.assert_array_equal(
            alone["padding_mask"], batched["padding_mask"][i]
        )
    # One seed per row.
    per_row = tf.constant([[i, 7] for i in range(6)], "int64")
    batched = numpy_outputs(noiser(ids, seed=per_row))
    for i in (0, 3):
        alone = numpy_outputs(noiser(ids[i], seed=per_row[i]))
        np.testing.assert_array_equal(alone["token_ids"], batched["token_ids"][i])
    # A row's noise does not depend on its batch.
    again = numpy_outputs(noiser(ids[2:5], seed=per_row[2:5]))
    np.testing.assert_array_equal(
        again["token_ids"], batched["token_ids"][2:5]
    )


def test_tf_data_batched_and_unbatched():
    ids = make_batch(10, 32, seed=8)
    noiser = make_noiser(sequence_length=36, token_deletion_rate=0.1)
    unbatched = tf.data.Dataset.from_tensor_slices(ids).map(noiser)
    batched = tf.data.Dataset.from_tensor_slices(ids).batch(4).map(
        noiser, num_parallel_calls=tf.data.AUTOTUNE
    )
    assert unbatched.element_spec["token_ids"].shape == (36,)
    assert unbatched.element_spec["token_ids"].dtype == tf.int32
    assert batched.element_spec["token_ids"].shape.as_list() == [None, 36]
    assert batched.element_spec["padding_mask"].shape.as_list() == [None, 36]
    assert [int(e["token_ids"].shape[0]) for e in batched] == [4, 4, 2]
    for original, element in zip(real_rows(ids), unbatched):
        got = list(np.asarray(element["token_ids"])[element["padding_mask"]])
        assert got[0] == BOS and got[-1] == EOS and len(got) <= len(original)


def test_map_over_is_reproducible_and_new_each_epoch():
    ids = make_batch(32, 32, seed=9)

    def pipeline():
        ds = tf.data.Dataset.from_tensor_slices(ids).batch(8)
        return make_noiser(seed=None, sequence_length=32).map_over(
            ds, seed=123, num_parallel_calls=tf.data.AUTOTUNE
        )

    def epoch(ds):
        return np.concatenate([e["token_ids"].numpy() for e in ds])

    one, two = pipeline(), pipeline()
    one_e1, one_e2 = epoch(one), epoch(one)
    np.testing.assert_array_equal(one_e1, epoch(two))
    np.testing.assert_array_equal(one_e2, epoch(two))
    assert not np.array_equal(one_e1, one_e2)


def test_ragged_dict_and_other_inputs_match_dense():
    rows = [[BOS, 10, 11, PERIOD, 12, EOS], [BOS, 20, EOS], [BOS, *range(30, 50), EOS]]
    dense = np.zeros([3, 24], "int32")
    for i, row in enumerate(rows):
        dense[i, : len(row)] = row
    noiser = make_noiser(sequence_length=24)
    seed = tf.constant([5, 5])
    expected = numpy_outputs(noiser(dense, seed=seed))
    ragged = numpy_outputs(noiser(tf.ragged.constant(rows), seed=seed))
    np.testing.assert_array_equal(ragged["token_ids"], expected["token_ids"])
    # int64, shorter input (padded to sequence_length), nested lists.
    short = numpy_outputs(noiser(tf.constant(dense[:, :22], "int64"), seed=seed))
    np.testing.assert_array_equal(short["token_ids"], expected["token_ids"])
    nested = numpy_outputs(noiser(rows, seed=seed))
    np.testing.assert_array_equal(nested["token_ids"], expected["token_ids"])
    # A dict with a padding mask (here 0 is a real id inside the text);
    # other keys pass through.
    with_zero = dense.copy()
    with_zero[2, 5] = 0
    mask = np.zeros_like(dense, bool)
    for i, row in enumerate(rows):
        mask[i, : len(row)] = True
    out = noiser(
        {"token_ids": with_zero, "padding_mask": mask, "label": [1, 2, 3]},
        seed=seed,
    )
    np.testing.assert_array_equal(out["label"], [1, 2, 3])
    assert out["padding_mask"].numpy().sum(1)[2] > 0
    # Ragged in tf.data.
    ds = tf.data.Dataset.from_tensor_slices(tf.ragged.constant(rows)).batch(2)
    ds = ds.map(noiser)
    assert ds.element_spec["token_ids"].shape.as_list() == [None, 24]


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(text_infilling_rate=1.5), "text_infilling_rate"),
        (dict(text_infilling_rate=-0.1), "text_infilling_rate"),
        (dict(token_deletion_rate=2.0), "token_deletion_rate"),
        (dict(sentence_permutation_rate=-1.0), "sentence_permutation_rate"),
        (dict(document_rotation_rate=1.01), "document_rotation_rate"),
        (dict(document_rotation_rate="high"), "document_rotation_rate"),
        (dict(text_infilling_rate=0.7, token_deletion_rate=0.4),
         "token_deletion_rate"),
        (dict(poisson_lambda=0.0), "poisson_lambda"),
        (dict(poisson_lambda=-3.0), "poisson_lambda"),
        (dict(poisson_lambda=float("nan")), "poisson_lambda"),
        (dict(sequence_length=0), "sequence_length"),
        (dict(sequence_length=12.5), "sequence_length"),
        (dict(mask_token_id=VOCAB), "mask_token_id"),
        (dict(mask_token_id=-1), "mask_token_id"),
        (dict(mask_token_id=0), "mask_token_id"),
        (dict(unselectable_token_ids=[VOCAB + 1]), "unselectable_token_ids"),
        (dict(sentence_end_token_ids=[-4]), "sentence_end_token_ids"),
    ],
)
def test_construction_errors(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        make_noiser(**kwargs)


def test_call_errors():
    noiser = make_noiser(sequence_length=16)
    # Input longer than the output: fails before running, naming the fix.
    with pytest.raises(ValueError, match="sequence_length"):
        noiser(make_batch(2, 20))
    with pytest.raises(tf.errors.InvalidArgumentError, match="sequence_length"):
        noiser(tf.ragged.constant([[BOS, *range(10, 30), EOS]]))
    # Ids outside the vocabulary, with the id and the size in the message.
    ids = make_batch(2, 16)
    for bad in (VOCAB, -3):
        ids[1, 3] = bad
        pattern = rf"token id\W+{bad}\W(.|\n)*vocabulary_size = {VOCAB}"
        with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
            noiser(ids)
        ds = tf.data.Dataset.from_tensors(ids).map(noiser)
        with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
            next(iter(ds))
    with pytest.raises(ValueError, match="integer"):
        noiser(np.ones([2, 8], "float32"))
    with pytest.raises(ValueError, match="seed"):
        noiser(make_batch(2, 16), seed=tf.zeros([2, 2, 2], "int64"))


def test_keras_file_round_trip(tmp_path):
    noiser = make_noiser(sequence_length=40, token_deletion_rate=0.1)
    inputs = keras.Input(shape=(32,), dtype="int32")
    outputs = noiser(inputs)
    assert outputs["token_ids"].shape == (None, 40)
    assert outputs["padding_mask"].dtype == "bool"
    model = keras.Model(inputs, outputs)
    path = tmp_path / "noiser.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    layer = [l for l in loaded.layers if isinstance(l, BartNoising)][0]
    assert layer.get_config() == noiser.get_config()
    ids = make_batch(4, 32)
    seed = tf.constant([8, 8], "int64")
    np.testing.assert_array_equal(
        layer(ids, seed=seed)["token_ids"], noiser(ids, seed=seed)["token_ids"]
    )
    out = numpy_outputs(loaded(ids))
    assert out["token_ids"].shape == (4, 40)
