"""Import TensorFlow and Keras quietly (the one place that does).

TensorFlow's C++ start-up lines ("Could not find cuda drivers", oneDNN notices) are written to
file descriptor 2 before its log level applies, so they are sent to /dev/null during the
import unless ``TRANSFER_VERBOSE=1`` (set by ``transfer --verbose``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time


@contextlib.contextmanager
def native_stderr_quiet():
    """Send file descriptor 2 (C++ log lines) to /dev/null unless TRANSFER_VERBOSE=1 (and
    keep the root logger as it was: ``root_logger_kept``)."""
    with root_logger_kept():
        if os.environ.get("TRANSFER_VERBOSE") == "1":
            yield
            return
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


@contextlib.contextmanager
def root_logger_kept():
    """Take back any handler the work inside gives Python's root logger: TensorFlow's
    SavedModel export logs through absl, which calls ``logging.basicConfig()``, after which
    the calling program's own ``basicConfig(level=...)`` did nothing."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)


def _load():
    global IMPORT_SECONDS, IMPORTED_AT
    import random

    import numpy as np

    started = time.perf_counter()
    verbose = os.environ.get("TRANSFER_VERBOSE") == "1"
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TensorFlow's first import draws from Python's random: a program's seeded sequence moved
    # on when a capability that keeps it elsewhere (serve, compare) first loaded TensorFlow
    saved_python, saved_numpy = random.getstate(), np.random.get_state()
    try:
        with native_stderr_quiet():
            import keras
            import tensorflow

            logger = tensorflow.get_logger()
            if not verbose and logger.level == logging.NOTSET:  # a caller's own level is kept
                logger.setLevel("ERROR")
    finally:
        random.setstate(saved_python)
        np.random.set_state(saved_numpy)
    IMPORTED_AT = time.perf_counter()
    IMPORT_SECONDS = IMPORTED_AT - started
    return tensorflow, keras


# how long importing TensorFlow and Keras took in this process, and when it ended (a
# time.perf_counter()): ``training`` tells a run that paid it (seconds on a laptop) from one
# in a program that had TensorFlow already
IMPORT_SECONDS = IMPORTED_AT = 0.0
tf, keras = _load()


def interrupt_at_batch_ends():
    """A Keras callback that raises, at each batch's end, the Ctrl-C (or SIGTERM) the CLI's
    handler recorded during the fit (``errors.at_safe_points``, which the fit runs inside)."""
    from transfer.errors import raise_if_interrupted

    class InterruptAtBatchEnds(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise_if_interrupted()

        def on_test_batch_end(self, batch, logs=None):
            raise_if_interrupted()

        def on_epoch_end(self, epoch, logs=None):
            raise_if_interrupted()

    return InterruptAtBatchEnds()
