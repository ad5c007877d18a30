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
