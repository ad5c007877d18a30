"""Class-id labels of the cross-entropies: checked where they can be, else
poisoned.

A label outside `[0, num_classes)` or a float label that is not a whole
number has no loss. Where its value is known (eager tensors, NumPy arrays,
constants) it fails with a `ValueError`; in a traced graph it fails with an
`InvalidArgumentError` from `tf.debugging` asserts. Under `jit_compile=True`
XLA drops those asserts and clamps out-of-range gather indices, which would
turn a bad label into a finite, wrong loss (the loss of the nearest valid
id). So the losses also pass through `poison_invalid_labels`, which sets the
loss of every invalid label to NaN: a bad label can make a loss NaN, never a
finite wrong value. Check ids where checking is possible (the input pipeline:
`kobjectives.layers` check token ids against their `vocabulary_size`; the
serving signature) to get a clear error instead.
"""

import numpy as np
import tensorflow as tf


def known_values(x):
    """`x` as a NumPy array when its values are known without running a
    graph (eager tensors, NumPy arrays, Python numbers, constants), else
    None."""
    if isinstance(x, tf.Variable):
        return None
    if isinstance(x, tf.Tensor):
        if hasattr(x, "numpy") and tf.executing_eagerly():
            return x.numpy()
        try:
            return tf.get_static_value(x)
        except (TypeError, ValueError):
            return None
    try:
        return np.asarray(x)
    except (TypeError, ValueError):
        return None


def _number(x):
    x = x.item()
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _invalid_message(name, num_classes):
    return (
        f"`{name}` must be integer ids in [0, {num_classes}) ({num_classes} "
        "classes: the vocabulary for a language model). Give ignored "
        "positions a valid id (e.g. 0) and sample_weight 0."
    )


def check_labels(labels, num_classes, name="labels"):
    """Integer class ids as int32, checked where they can be.

    Args:
        labels: int or float tensor (floats must hold whole numbers).
        num_classes: int, the number of classes.
        name: the argument name used in error messages.

    Returns:
        int32 tensor like `labels`. In a traced graph it carries
        `tf.debugging` asserts on the range (dropped by XLA: pair it with
        `poison_invalid_labels`).

    Raises:
        ValueError: labels with known values outside `[0, num_classes)` or
            not whole numbers, or labels of a non-numeric dtype.

    Example:

    >>> check_labels([0, 2.0], 3).numpy().tolist()
    [0, 2]
    >>> check_labels([2.7], 3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: `labels` must be integer ids in [0, 3) ... Received 2.7 ...
    """
    labels = tf.convert_to_tensor(labels)
    if not (labels.dtype.is_integer or labels.dtype.is_floating):
        raise ValueError(
            f"`{name}` must be integer class ids. Received dtype {labels.dtype.name}."
        )
    values = known_values(labels)
    if values is not None:
        values = np.asarray(values)
        bad = (values < 0) | (values >= num_classes)
        if labels.dtype.is_floating:
            bad |= values != np.floor(values)  # also NaN
        if bad.any():
            raise ValueError(
                f"{_invalid_message(name, num_classes)} Received "
                f"{_number(values[bad].ravel()[0])} (values from "
                f"{_number(np.nanmin(values))} to {_number(np.nanmax(values))})."
            )
        return tf.cast(labels, tf.int32)
    if tf.executing_eagerly():
        return tf.cast(labels, tf.int32)
    message = _invalid_message(name, num_classes)
    checks = [
        tf.debugging.assert_non_negative(labels, message=message),
        tf.debugging.assert_less(labels, tf.cast(num_classes, labels.dtype), message=message),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(tf.cast(labels, tf.int32))  # a new op: after the checks


def poison_invalid_labels(values, labels, num_classes):
    """`values` with NaN wherever `labels` is not a valid class id.

    The step-side guard of every cross-entropy: under `jit_compile=True` no
    assert runs and XLA clamps out-of-range indices, so a label outside
    `[0, num_classes)` (or a float label that is not a whole number) would
    otherwise give the finite loss of another class. Its loss becomes NaN
    instead, so the mean is NaN (`keras.callbacks.TerminateOnNaN` stops the
    run) unless the position has weight 0 (ignored positions never count,
    see `kobjectives.ops.global_weighted_mean`). Gradients are unaffected at
    valid positions.

    Args:
        values: float tensor, the per-position losses.
        labels: the labels as given (int or float), shaped like `values`.
        num_classes: int.

    Returns:
        `values` where the label is valid, NaN elsewhere.

    Example:

    >>> poison_invalid_labels(tf.ones([3]), tf.constant([0, 3, -1]), 3).numpy()
    array([ 1., nan, nan], dtype=float32)
    """
    labels = tf.convert_to_tensor(labels)
    valid = tf.logical_and(labels >= 0, labels < tf.cast(num_classes, labels.dtype))
    if labels.dtype.is_floating:
        valid = tf.logical_and(valid, tf.equal(labels, tf.floor(labels)))
    return tf.where(valid, values, tf.constant(float("nan"), values.dtype))
