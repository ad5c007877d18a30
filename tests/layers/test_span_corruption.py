import numpy as np
import pytest
import keras
import tensorflow as tf

from kobjectives.layers import SpanCorruption
from kobjectives.ops.span_corruption import merge_span_corruption
from kobjectives.ops.span_corruption import span_corruption_lengths

V, L, EOS = 1000, 40, 3


def batch(rows=32, length=L, seed=0, min_length=2):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_length, length + 1, rows)
    ids = np.zeros((rows, length), np.int32)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(5, 900, n)
    return ids, lengths


def test_default_sentinels_count_down_from_the_top_and_merge_back():
    layer = SpanCorruption(vocabulary_size=V, eos_token_id=EOS, seed=1)
    ids, lengths = batch()
    out = layer(ids)
    inputs_length, targets_length, spans = span_corruption_lengths(L)
    assert out["encoder_token_ids"].shape == (32, inputs_length)
    assert out["target_ids"].shape == (32, targets_length)
    assert out["encoder_padding_mask"].dtype == tf.bool
    sentinels = layer.resolved_sentinel_ids(L)
    assert sentinels == tuple(range(V - 1, V - 1 - spans, -1))
    for i, n in enumerate(lengths):
        merged = merge_span_corruption(out["encoder_token_ids"][i].numpy(),
                                       out["target_ids"][i].numpy(), sentinels, EOS)
        assert merged == ids[i, :n].tolist()


def test_unbatched_ragged_and_dict_inputs():
    layer = SpanCorruption(vocabulary_size=V, sequence_length=L, eos_token_id=EOS, seed=0)
    inputs_length, targets_length, _ = span_corruption_lengths(L)
    ids, lengths = batch(rows=4)
    one = layer(ids[0])
    assert one["encoder_token_ids"].shape == (inputs_length,)
    assert one["target_ids"].shape == (targets_length,)
    ragged = tf.ragged.constant([row[:n].tolist() for row, n in zip(ids, lengths)])
    out = layer(ragged)
    assert out["encoder_token_ids"].shape == (4, inputs_length)
    sentinels = layer.resolved_sentinel_ids()
    for i, n in enumerate(lengths):
        assert merge_span_corruption(out["encoder_token_ids"][i].numpy(), out["target_ids"][i].numpy(),
                                     sentinels, EOS) == ids[i, :n].tolist()
    # A padding mask decides the real tokens; extra keys pass through.
    ids[:, -1] = 0
    mask = ids != 0
    mask[:, 5:] = False
    out = layer({"token_ids": ids, "padding_mask": mask, "label": np.ones(4, "float32")})
    assert "label" in out
    for i in range(4):
        assert merge_span_corruption(out["encoder_token_ids"][i].numpy(), out["target_ids"][i].numpy(),
                                     sentinels, EOS) == ids[i, :5].tolist()


def test_statistics_through_the_layer_over_1e5_tokens():
    layer = SpanCorruption(vocabulary_size=V, sequence_length=100, eos_token_id=EOS, seed=3)
    ids = np.random.default_rng(2).integers(5, 900, (1000, 100)).astype("int32")
    out = layer(ids)
    targets, mask = out["target_ids"].numpy(), out["target_padding_mask"].numpy()
    sentinel = targets >= V - 100
    noise_tokens = (mask & ~sentinel & (targets != EOS)).sum()
    spans = (mask & sentinel).sum()
    assert abs(noise_tokens / ids.size - 0.15) <= 0.005
    assert abs(noise_tokens / spans - 3.0) <= 0.15


def test_map_over_is_reproducible_static_shaped_and_new_every_epoch():
    ids, _ = batch(rows=16)
    layer = SpanCorruption(vocabulary_size=V, eos_token_id=EOS, seed=7)
    dataset = tf.data.Dataset.from_tensor_slices(ids).batch(8, drop_remainder=True)
    first = layer.map_over(dataset, num_parallel_calls=2)
    inputs_length, targets_length, _ = span_corruption_lengths(L)
    assert first.element_spec["encoder_token_ids"].shape.as_list() == [8, inputs_length]
    assert first.element_spec["target_ids"].shape.as_list() == [8, targets_length]
    epoch1 = [b["target_ids"].numpy() for b in first]
    epoch2 = [b["target_ids"].numpy() for b in first]
    again = [b["target_ids"].numpy() for b in layer.map_over(dataset)]
    np.testing.assert_array_equal(np.stack(epoch1), np.stack(again))
    assert not np.array_equal(np.stack(epoch1), np.stack(epoch2))
    # Unbatched elements in tf.data too.
    unbatched = layer.map_over(tf.data.Dataset.from_tensor_slices(ids))
    assert unbatched.element_spec["encoder_token_ids"].shape.as_list() == [inputs_length]


def test_given_sentinels_and_lengths():
    layer = SpanCorruption(sentinel_ids=[7, 8, 9, 10, 11], sequence_length=L, inputs_length=50,
                           targets_length=20, eos_token_id=EOS, seed=0)
    ids, lengths = batch(rows=8, min_length=30)
    ids = np.where(ids > 0, ids + 20, 0).astype("int32")
    out = layer(ids)
    assert out["encoder_token_ids"].shape == (8, 50) and out["target_ids"].shape == (8, 20)
    for i, n in enumerate(lengths):
        target = out["target_ids"][i].numpy()
        assert target[0] == 7
        assert merge_span_corruption(out["encoder_token_ids"][i].numpy(), target, [7, 8, 9, 10, 11],
                                     EOS) == ids[i, :n].tolist()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(noise_density=0.0), "noise_density"),
        (dict(noise_density=1.0), "noise_density"),
        (dict(noise_density=-0.1), "noise_density"),
        (dict(noise_density="high"), "noise_density"),
        (dict(mean_noise_span_length=0.5), "mean_noise_span_length"),
        (dict(vocabulary_size=None), "vocabulary_size"),
        (dict(sentinel_ids=[V + 1]), "outside the vocabulary"),
        (dict(sentinel_ids=[5, 5]), "repeats"),
        (dict(sentinel_ids=[EOS]), "EOS"),
        (dict(sequence_length=1), "sequence_length"),
        (dict(sequence_length=100, sentinel_ids=[999, 998]), "noise spans"),
        (dict(sequence_length=100, inputs_length=80), "inputs_length=91"),
        (dict(sequence_length=100, targets_length=10), "targets_length=21"),
        (dict(vocabulary_size=3, sequence_length=100, eos_token_id=None), "sentinels do not fit"),
    ],
)
def test_bad_configuration_fails_early(kwargs, match):
    config = dict(vocabulary_size=V, eos_token_id=EOS)
    config.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SpanCorruption(**config)


def test_bad_inputs_fail_loudly():
    layer = SpanCorruption(vocabulary_size=V, eos_token_id=EOS, seed=0)
    ids, _ = batch(rows=4)
    empty = ids.copy()
    empty[2] = 0
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 2"):
        layer(empty)
    one_token = ids.copy()
    one_token[1, 1:] = 0
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 2"):
        layer(one_token)
    collide = ids.copy()
    collide[0, 0] = V - 1  # the first sentinel's id used as a real token
    with pytest.raises(tf.errors.InvalidArgumentError, match="equals a sentinel id"):
        layer(collide)
    outside = ids.copy()
    outside[0, 0] = V + 5
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the vocabulary"):
        layer(outside)
    with pytest.raises(ValueError, match="integer"):
        layer(ids.astype("float32"))
    with pytest.raises(ValueError, match="sequence_length"):
        layer(tf.ragged.constant([[5, 6, 7], [8, 9]]))
    short = SpanCorruption(vocabulary_size=V)
    with pytest.raises(ValueError, match="too short"):
        short(np.array([[5]], "int32"))


def test_inside_a_traced_tf_data_pipeline_errors_still_name_the_fix():
    layer = SpanCorruption(vocabulary_size=V, sequence_length=8, eos_token_id=EOS, seed=0)
    dataset = tf.data.Dataset.from_tensor_slices(np.array([[5, 6, 7, 0], [8, 0, 0, 0]], "int32"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Filter out empty"):
        list(layer.map_over(dataset))


def test_config_and_keras_round_trip(tmp_path):
    layer = SpanCorruption(noise_density=0.2, mean_noise_span_length=2.5, vocabulary_size=V,
                           sequence_length=L, eos_token_id=EOS, seed=5)
    clone = SpanCorruption.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    ids, _ = batch(rows=4)
    seed = tf.constant([4, 2])
    np.testing.assert_array_equal(restored(ids, seed=seed)["target_ids"], layer(ids, seed=seed)["target_ids"])
    inputs = keras.Input(shape=(L,), dtype="int32")
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "span.keras")
    loaded = keras.saving.load_model(tmp_path / "span.keras")
    assert loaded.layers[-1].get_config() == layer.get_config()
    assert model.output["target_ids"].shape == (None, span_corruption_lengths(L, 0.2, 2.5)[1])


def test_short_rows_are_corrupted_by_the_seed():
    # 20 tokens get one noise span, which T5 always puts at the end: the same
    # corruption every epoch. Each seed places it anew; a seed is repeatable.
    layer = SpanCorruption(vocabulary_size=V, sequence_length=20, eos_token_id=EOS)
    ids = np.arange(5, 25, dtype=np.int32)[None].repeat(8, 0)
    corrupt = lambda seed: layer(ids, seed=tf.constant(seed))["encoder_token_ids"].numpy()
    np.testing.assert_array_equal(corrupt([1, 2]), corrupt([1, 2]))
    assert not np.array_equal(corrupt([1, 2]), corrupt([7, 2]))
    assert len({tuple(row) for row in corrupt([1, 2])}) > 1  # rows differ too
    epochs = layer.map_over(tf.data.Dataset.from_tensors(ids), seed=3)
    first, second = [next(iter(epochs))["target_ids"].numpy() for _ in range(2)]
    assert not np.array_equal(first, second)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(eos_token_id=V), "eos_token_id"),
        (dict(eos_token_id=-1), "eos_token_id"),
        (dict(padding_token_id=V + 2), "padding_token_id"),
        (dict(padding_token_id=-1), "padding_token_id"),
        (dict(eos_token_id=V - 1, sequence_length=L), "eos_token_id=999"),
    ],
)
def test_bad_special_ids_fail_naming_the_argument(kwargs, match):
    config = dict(vocabulary_size=V, eos_token_id=EOS)
    config.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SpanCorruption(**config)
    # Without `sequence_length` the default sentinels are known at the call.
    layer = SpanCorruption(vocabulary_size=V, eos_token_id=V - 1)
    with pytest.raises(ValueError, match="eos_token_id=999"):
        layer(batch(rows=2)[0])
