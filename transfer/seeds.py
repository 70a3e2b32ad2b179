"""Runs seed the random generators, and give the caller's back.

``train`` and ``mnist`` seed Python's, NumPy's and TensorFlow's generators
(``keras.utils.set_random_seed``) so that a seed repeats a run. A program or notebook that calls
them keeps its own Python and NumPy random sequences: `keeps_random_state` restores both when
the run ends. TensorFlow's global seed stays as the run set it (it has no state to give back).
"""

from __future__ import annotations

import functools
import random

import numpy as np


def keeps_random_state(fn):
    """Decorate a run: Python's ``random`` and NumPy's global generator are as they were after
    it returns or raises."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        saved_python, saved_numpy = random.getstate(), np.random.get_state()
        try:
            return fn(*args, **kwargs)
        finally:
            random.setstate(saved_python)
            np.random.set_state(saved_numpy)

    return wrapper
