import numpy as np
import pytest
import tensorflow as tf

from kobjectives.ops.labels import check_labels
from kobjectives.ops.labels import poison_invalid_labels


def test_whole_number_floats_are_labels():
    np.testing.assert_array_equal(check_labels(np.array([0.0, 2.0]), 3).numpy(), [0, 2])
    assert check_labels(np.array([1, 2]), 3).dtype == tf.int32


@pytest.mark.parametrize("bad", [2.7, -0.5, float("nan"), 3, -1])
def test_known_invalid_labels_fail_naming_the_value(bad):
    labels = np.array([1, bad], "float32" if isinstance(bad, float) else "int32")
    with pytest.raises(ValueError, match=r"`labels` must be integer ids in \[0, 3\)"):
        check_labels(labels, 3)


def test_traced_labels_are_asserted_outside_xla():
    graph = tf.function(lambda y: check_labels(y, 3))
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels"):
        graph(tf.constant([0, 5]))


def test_poison_sets_invalid_labels_to_nan_under_xla():
    poison = tf.function(lambda v, y: poison_invalid_labels(v, y, 3), jit_compile=True)
    out = poison(tf.ones([5]), tf.constant([0, 2, 3, -1, 1])).numpy()
    np.testing.assert_array_equal(np.isnan(out), [False, False, True, True, False])
    out = poison(tf.ones([3]), tf.constant([1.0, 2.7, 2.0])).numpy()
    np.testing.assert_array_equal(np.isnan(out), [False, True, False])
