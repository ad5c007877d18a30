import keras
import numpy as np
import pytest
import tensorflow as tf

from kobjectives.layers import PermutationLMMasker
from tests.ops.test_permutation_lm import visibility_checks

PAD, CLS, SEP = 0, 1, 2


def packed(n=64, length=32, seed=0, vocab=100):
    """[CLS] tokens [SEP] [PAD]... rows of random lengths."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, (n, length)).astype("int32")
    ids[:, 0] = CLS
    for b, real in enumerate(rng.integers(4, length + 1, n)):
        ids[b, real - 1] = SEP
        ids[b, real:] = PAD
    return ids


def masker(**kwargs):
    kwargs.setdefault("unselectable_token_ids", (PAD, CLS, SEP))
    return PermutationLMMasker(**kwargs)


def test_outputs_shapes_dtypes_and_pass_through():
    ids = packed(n=4, length=16)
    out = masker(num_predict=5, seed=1)(
        {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": ids != PAD}
    )
    assert out["perm_mask"].shape == (4, 16, 16) and out["perm_mask"].dtype == tf.float32
    assert out["target_mapping"].shape == (4, 5, 16)
    for key in ("target_positions", "target_ids", "target_weights"):
        assert out[key].shape == (4, 5)
    assert out["padding_mask"].dtype == tf.bool
    np.testing.assert_array_equal(out["token_ids"], ids)  # ids are not replaced
    np.testing.assert_array_equal(out["segment_ids"], np.zeros_like(ids))
    # Unbatched input: no batch axis; default num_predict = length.
    single = masker(seed=1)(ids[0])
    assert single["perm_mask"].shape == (16, 16) and single["target_mapping"].shape == (16, 16)


def test_rules_with_specials_and_padding():
    ids = packed(n=128, length=40, seed=3)
    out = masker(plm_probability=0.25, max_span_length=4, num_predict=24, seed=5)(ids)
    padding = ids != PAD
    selectable = padding & (ids > SEP)
    visibility_checks(out, padding, selectable)


def test_target_fraction_over_many_tokens():
    # 2,000 x 64 = 128,000 tokens without specials or padding.
    ids = np.random.default_rng(0).integers(3, 100, (2000, 64)).astype("int32")
    out = masker(seed=11)(ids)  # num_predict = length: never caps
    fraction = out["target_weights"].numpy().sum() / ids.size
    assert abs(fraction - 1 / 6) < 0.01
    # Among real tokens of packed rows too (specials and padding excluded).
    rows = packed(n=2000, length=64, seed=1)
    out = masker(seed=12)(rows)
    selectable = (rows > SEP).sum()
    assert abs(out["target_weights"].numpy().sum() / selectable - 1 / 6) < 0.015


def test_runs_in_tf_data_batched_and_unbatched_with_static_shapes():
    ids = packed(n=16, length=24)
    layer = masker(num_predict=6, seed=3)
    batched = tf.data.Dataset.from_tensor_slices(ids).batch(8).map(layer)
    spec = batched.element_spec
    assert spec["perm_mask"].shape.as_list() == [None, 24, 24]
    assert spec["target_mapping"].shape.as_list() == [None, 6, 24]
    unbatched = tf.data.Dataset.from_tensor_slices(ids).map(layer)
    assert unbatched.element_spec["target_ids"].shape.as_list() == [6]
    for element in unbatched.take(2):
        assert element["perm_mask"].shape == (24, 24)
    ragged = tf.data.Dataset.from_tensor_slices(tf.ragged.constant([[3, 4, 5], [6, 7]])).batch(2)
    out = next(iter(ragged.map(masker(sequence_length=8, seed=0))))
    assert out["perm_mask"].shape == (2, 8, 8)
    np.testing.assert_array_equal(out["padding_mask"].numpy().sum(1), [3, 2])


def test_seeds_make_it_reproducible():
    ids = packed(n=8, length=32)
    layer = masker(seed=0)
    a = layer(ids, seed=tf.constant([4, 2]))
    b = layer(ids, seed=tf.constant([4, 2]))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    # Without an explicit seed: the layer's generator, new draws each call.
    c, d = layer(ids), layer(ids)
    assert not np.array_equal(c["perm_mask"], d["perm_mask"])

    def epochs(seed):
        ds = tf.data.Dataset.from_tensor_slices(ids).batch(4)
        ds = masker(seed=seed).map_over(ds, num_parallel_calls=2)
        return [[x["perm_mask"].numpy() for x in ds] for _ in range(2)]

    first, second = epochs(9), epochs(9)
    np.testing.assert_array_equal(first[0], second[0])  # same seed, same pipeline
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0][0], first[1][0])  # new draws each epoch


def test_permutation_size_and_bad_arguments():
    ids = packed(n=4, length=16)
    out = masker(permutation_size=8, seed=1)(ids)  # HF's length / 2
    assert out["perm_mask"].shape == (4, 16, 16)
    with pytest.raises(ValueError, match="not a multiple of permutation_size=8"):
        masker(permutation_size=8)(packed(n=2, length=15))
    with pytest.raises(ValueError, match="permutation_size"):
        masker(permutation_size=8, sequence_length=15)
    for bad in (0.0, 1.5, -0.1, "0.2", True):
        with pytest.raises(ValueError, match="plm_probability"):
            masker(plm_probability=bad)
    with pytest.raises(ValueError, match="max_span_length"):
        masker(max_span_length=0)
    with pytest.raises(ValueError, match="num_predict"):
        masker(num_predict=0)
    with pytest.raises(ValueError, match="unselectable_token_ids"):
        masker(unselectable_token_ids=(-1,))
    with pytest.raises(ValueError, match="sequence_length"):
        masker()(tf.ragged.constant([[3, 4], [5]]))
    with pytest.raises(ValueError, match="integer token ids"):
        masker()(np.ones((2, 4), "float32"))
    with pytest.raises(ValueError, match="token_ids"):
        masker()({"ids": ids})
    with pytest.raises(ValueError, match="static sequence length"):
        tf.data.Dataset.from_generator(
            lambda: iter([ids]), output_signature=tf.TensorSpec([None, None], tf.int32)
        ).map(masker())
    with pytest.raises(tf.errors.InvalidArgumentError, match=">= 0"):
        masker()(np.array([[3, -4, 5, 6]], "int32"))


