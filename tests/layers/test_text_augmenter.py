import keras
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.layers import TextAugmenter

PAD, CLS, SEP = 0, 1, 2
SPECIAL = (PAD, CLS, SEP)
V = 1000


def _packed(batch, length, seed=0):
    """Rows `[CLS] words [SEP] [PAD]...` with random lengths."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, length), "int32")
    for row in range(batch):
        n = rng.integers(1, length - 1)
        ids[row, 0] = CLS
        ids[row, 1 : n + 1] = rng.integers(3, V, n)
        ids[row, n + 1] = SEP
    return ids


def _specials(row):
    return [t for t in row if t in (CLS, SEP)]


def test_deletion_rate_within_a_point():
    ids = _packed(2000, 64)
    words = int(((ids > SEP)).sum())
    assert words > 1e5 / 2
    aug = TextAugmenter(V, deletion_rate=0.2, unselectable_token_ids=SPECIAL)
    out = aug(tf.constant(ids), seed=tf.constant([3, 4]))
    for view in ("anchor", "positive"):
        kept = int((out[view]["token_ids"].numpy() > SEP).sum())
        assert abs(1 - kept / words - 0.2) < 0.01
    ids2 = _packed(2000, 64, seed=1)
    total = words + int((ids2 > SEP).sum())
    assert total > 1e5
    kept = sum(
        int((aug(tf.constant(x), seed=tf.constant([5, s]))["anchor"]["token_ids"].numpy() > SEP).sum())
        for s, x in enumerate((ids, ids2))
    )
    assert abs(1 - kept / total - 0.2) < 0.01


def test_replacement_and_insertion_rates():
    ids = _packed(2000, 64)
    words = ids > SEP
    aug = TextAugmenter(V, deletion_rate=0.0, replacement_rate=0.1, unselectable_token_ids=SPECIAL)
    out = aug(tf.constant(ids), seed=tf.constant([1, 1]))["anchor"]["token_ids"].numpy()
    changed = (out != ids)[words].mean()
    assert abs(changed - 0.1 * (1 - 1 / (V - 3))) < 0.01
    assert not np.isin(out[words], SPECIAL).any()  # replacements are never special
    aug = TextAugmenter(V, deletion_rate=0.0, insertion_rate=0.1, unselectable_token_ids=SPECIAL)
    ids = _packed(2000, 128)  # plenty of room
    ids[:, 40:] = 0
    ids[:, 39] = np.where(ids[:, 38] > 0, SEP, 0)
    out = aug(tf.constant(ids), seed=tf.constant([1, 2]))["anchor"]
    inserted = out["padding_mask"].numpy().sum() - (ids > 0).sum()
    assert abs(inserted / (ids > SEP).sum() - 0.1) < 0.01


def test_special_tokens_never_altered_static_shapes_and_padding():
    ids = _packed(64, 16)
    aug = TextAugmenter(V, deletion_rate=0.3, insertion_rate=0.3, replacement_rate=0.3,
                        swap_rate=0.3, unselectable_token_ids=SPECIAL)
    out = aug(tf.constant(ids), seed=tf.constant([0, 9]))
    for view in ("anchor", "positive"):
        got = out[view]["token_ids"].numpy()
        mask = out[view]["padding_mask"].numpy()
        assert got.shape == ids.shape and mask.dtype == bool
        for row_in, row_out, m in zip(ids, got, mask):
            assert row_out[0] == CLS
            assert _specials(row_out) == _specials(row_in)
            n = m.sum()
            assert m[:n].all() and not m[n:].any()  # real tokens first
            assert row_out[n - 1] == SEP and (row_out[n:] == PAD).all()
    # Static shapes inside tf.function / tf.data.
    spec = tf.TensorSpec([None, 16], tf.int32)
    traced = tf.function(lambda x: aug(x, seed=tf.constant([1, 1])), input_signature=[spec])
    concrete = traced.get_concrete_function()
    assert concrete.structured_outputs["anchor"]["token_ids"].shape.as_list() == [None, 16]
    jitted = tf.function(lambda x: aug(x, seed=tf.constant([0, 9])), jit_compile=True)
    np.testing.assert_array_equal(jitted(tf.constant(ids))["anchor"]["token_ids"], out["anchor"]["token_ids"])


def test_same_seed_same_views_and_views_differ():
    ids = tf.constant(_packed(32, 24))
    aug = TextAugmenter(V, deletion_rate=0.2, swap_rate=0.1, unselectable_token_ids=SPECIAL)
    a = aug(ids, seed=tf.constant([7, 7]))
    b = aug(ids, seed=tf.constant([7, 7]))
    c = aug(ids, seed=tf.constant([7, 8]))
    np.testing.assert_array_equal(a["anchor"]["token_ids"], b["anchor"]["token_ids"])
    assert not np.array_equal(a["anchor"]["token_ids"], a["positive"]["token_ids"])
    assert not np.array_equal(a["anchor"]["token_ids"], c["anchor"]["token_ids"])


def test_map_over_batched_and_unbatched_new_views_each_epoch():
    ids = _packed(64, 20)
    aug = TextAugmenter(V, deletion_rate=0.3, unselectable_token_ids=SPECIAL, seed=5)

    def run(dataset):
        return [x["anchor"]["token_ids"].numpy() for x in dataset]

    batched = aug.map_over(tf.data.Dataset.from_tensor_slices(ids).batch(16), num_parallel_calls=4)
    first, second = run(batched), run(batched)
    again = run(aug.map_over(tf.data.Dataset.from_tensor_slices(ids).batch(16), num_parallel_calls=4))
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)  # same seed: same views
    assert any(not np.array_equal(x, y) for x, y in zip(first, second))  # new epoch: new views
    assert first[0].shape == (16, 20)

    unbatched = aug.map_over(tf.data.Dataset.from_tensor_slices(
        {"token_ids": ids, "padding_mask": ids > 0, "segment_ids": np.zeros_like(ids)}))
    element = next(iter(unbatched))
    assert element["anchor"]["token_ids"].shape == (20,)
    assert set(element["positive"]) == {"token_ids", "padding_mask", "segment_ids"}
    assert unbatched.element_spec["anchor"]["token_ids"].shape == (20,)


def test_bad_arguments_and_inputs():
    aug = TextAugmenter(V, deletion_rate=0.1, swap_rate=0.2, unselectable_token_ids=SPECIAL, seed=3)
    with pytest.raises(ValueError, match="deletion_rate"):
        TextAugmenter(V, deletion_rate=1.5)
    with pytest.raises(ValueError, match="unselectable_token_ids"):
        TextAugmenter(V, unselectable_token_ids=(V,))
    with pytest.raises(ValueError, match="integer"):
        aug(tf.constant([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="ragged"):
        aug(tf.ragged.constant([[1, 2], [3]]))


@pytest.mark.parametrize("padding_token_id", [-1, V, True])
def test_bad_padding_token_id_names_the_argument(padding_token_id):
    with pytest.raises(ValueError, match="padding_token_id"):
        TextAugmenter(V, padding_token_id=padding_token_id)


@pytest.mark.parametrize("bad_id", [V, V + 50, -3])
def test_token_ids_outside_the_vocabulary_fail_naming_the_id(bad_id):
    aug = TextAugmenter(V, replacement_rate=0.5, unselectable_token_ids=SPECIAL, seed=0)
    ids = np.array([[1, 10, 11, 12, 2, 0]], "int32")
    aug(ids, seed=tf.constant([1, 2]))
    ids[0, 2] = bad_id
    pattern = rf"token id\W+{bad_id}\W(.|\n)*vocabulary_size = {V}"
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        aug(ids, seed=tf.constant([1, 2]))
    ds = tf.data.Dataset.from_tensors(ids).map(lambda x: aug(x, seed=tf.constant([1, 2])))
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        next(iter(ds))
    # Padding positions (per the padding mask) are not token ids to check.
    ids[0, 2] = 11
    ids[0, 5] = bad_id
    aug({"token_ids": ids, "padding_mask": ids != bad_id}, seed=tf.constant([1, 2]))
