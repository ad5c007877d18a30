"""Argument checks the preprocessing layers share (errors name the argument)."""

import numbers

import numpy as np


def is_real(value):
    """True for a real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_int(name, value, minimum=None):
    """Raises `ValueError` unless `value` is an int (not a bool) >= `minimum`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`{name}` must be an integer. Received: {name}={value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}. Received: {name}={value!r}.")


def check_id(name, value, vocabulary_size=None, optional=False):
    """`value` as an int token id in `[0, vocabulary_size)` (`>= 0` without a
    vocabulary size); `None` passes when `optional`. Raises `ValueError`
    naming the argument otherwise."""
    if value is None and optional:
        return None
    check_int(name, value, minimum=0)
    if vocabulary_size is not None and value >= vocabulary_size:
        raise ValueError(
            f"`{name}` must be a token id in [0, vocabulary_size - 1] = "
            f"[0, {vocabulary_size - 1}]. Received: {name}={value!r}. Use the "
            "tokenizer's id or fix `vocabulary_size`."
        )
    return int(value)


def check_distinct(**ids):
    """Raises `ValueError` when two of the named token ids (`None` skipped)
    are equal: each must be an id of its own."""
    seen = {}
    for name, value in ids.items():
        if value is None:
            continue
        if value in seen:
            raise ValueError(
                f"`{seen[value]}` and `{name}` are both {value}: they must be "
                "different token ids (the outputs could not tell them apart). "
                "Use the tokenizer's ids for each."
            )
        seen[value] = name
