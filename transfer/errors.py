"""The exception types the CLI turns into a single error line."""

import contextlib

# A model whose training diverged (train and mnist save it, with a warning) answers NaN or
# infinity for every photo: what evaluate, export, predict and serve say of it, in one place.
NOT_NUMBERS = "outputs are not numbers (NaN or infinite)"
DIVERGED = "its training diverged; train it again with a lower --learning-rate"
# one photo's: predict's error row, explain's
NOT_NUMBERS_FOR_IT = f"the model's {NOT_NUMBERS} for it: {DIVERGED}"


class TransferError(Exception):
    """A problem with the user's input or environment, explained in one line (exit code 1)."""

    exit_code = 1


class GateFailed(TransferError):
    """A quality gate (``--assert-accuracy-at-least``) was not met: exit code 3, for CI."""

    exit_code = 3


class Untraceable(TransferError):
    """A model Grad-CAM cannot trace (no convolutional layer, no Dense classifier at its end,
    not a chain of layers): the model's fault, not the question's (a 500 from serve, not a
    422)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, ``docker stop``, systemd), raised where Python runs next:
    the same clean-up as Ctrl-C (temporary folders removed, nothing half-written), exit 143."""


# The interruption a signal raised while a command runs (KeyboardInterrupt or Terminated),
# kept after it is raised: a native library that calls back into Python (the TFLite
# converter, through pybind11) can turn the exception raised in its callback into another one
# (a bare TypeError), which a broad ``except Exception`` would then take for a failure of its
# own and carry on (TFLite "unavailable": TensorFlow used instead, the run going on after
# Ctrl-C). ``raise_if_interrupted`` in such handlers, and the CLI's error lines, raise it again.
_interrupted: list[type[KeyboardInterrupt]] = []


# While a Keras fit runs (``at_safe_points``), the first signal is recorded and raised at the
# fit's next batch end (``raise_if_interrupted`` in a callback) rather than wherever the
# main thread happens to be: raised inside Python that TensorFlow's C++ called (its nest
# ``Flatten`` importing a module), it made TensorFlow print a SystemError traceback.
_safe_points: list[int] = []  # for each open ``at_safe_points``: the record's length there


# An interruption lost in a garbage-collector callback (``on_unraisable``), being sent again:
# (kind, timer). Its signal, when it comes back, raises what was recorded already.
_resending: list = []
_hooks: list = []  # the unraisable hooks ``catching_unraisable`` replaced, innermost last


def on_interrupt_signal(signum, frame) -> None:
    """Signal handler for SIGINT and SIGTERM while a command runs (``cli``): record, then
    raise, or leave it to the next safe point when one is near (a second signal raises)."""
    import signal

    kind = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    if _resending and _resending[0][0] is kind:  # ``on_unraisable``'s: recorded already
        _resending.clear()
        raise kind
    _interrupted.append(kind)
    if _safe_points and len(_interrupted) == _safe_points[-1] + 1:
        return
    raise kind


def on_unraisable(unraisable) -> None:
    """``sys.unraisablehook`` while a command runs (``catching_unraisable``). A signal's
    interruption raised inside a weakref callback or a ``__del__`` that the garbage collector
    happened to run cannot propagate: Python printed "Exception ignored in ... Traceback ...
    KeyboardInterrupt" and dropped it, so the command went on after Ctrl-C. The signal is
    sent again a moment later (from a timer thread: Python handles it in the main thread,
    where the command runs) and raised there; the record stays meanwhile (for
    ``raise_if_interrupted``). Anything else goes to the hook that was there before."""
    import sys

    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _interrupted:
        if not _resending:
            import os
            import signal
            import threading

            kind = _interrupted[-1]
            signum = signal.SIGTERM if kind is Terminated else signal.SIGINT
            timer = threading.Timer(0.01, os.kill, (os.getpid(), signum))
            timer.daemon = True
            _resending.append((kind, timer))
            timer.start()
        return
    (_hooks[-1] if _hooks else sys.__unraisablehook__)(unraisable)


@contextlib.contextmanager
def catching_unraisable():
    """``on_unraisable`` as ``sys.unraisablehook`` inside, the previous hook back after. An
    interruption still being sent again when the block ends (the command finished within
    those milliseconds) is raised there: the Ctrl-C is not lost, nor delivered after the
    command to whoever called it."""
    import sys

    _hooks.append(sys.unraisablehook)
    sys.unraisablehook = on_unraisable
    try:
        yield
    finally:
        sys.unraisablehook = _hooks.pop()
        pending = [kind for kind, timer in _resending]  # its signal not handled yet
        for _, timer in _resending:
            timer.cancel()
        _resending.clear()
        if pending and sys.exc_info()[0] is None:
            raise pending[0]


@contextlib.contextmanager
def at_safe_points():
    """Defer the first interruption inside to the next ``raise_if_interrupted`` (a Keras
    callback at each batch end), and raise it on the way out if none came."""
    _safe_points.append(len(_interrupted))
    try:
        yield
    finally:
        start = _safe_points.pop()
    if len(_interrupted) > start:
        raise _interrupted[-1]


def interrupted() -> type[KeyboardInterrupt] | None:
    """The interruption a signal raised during this command, or None."""
    return _interrupted[-1] if _interrupted else None


def raise_if_interrupted() -> None:
    """Raise the signal's interruption again when one was raised during this command: for
    ``except Exception`` handlers that would otherwise go on after a wrapped Ctrl-C."""
    kind = interrupted()
    if kind is not None:
        raise kind


def clear_interrupted() -> None:
    _interrupted.clear()


def without_op_name(text: str) -> str:
    """A TensorFlow error's text without the op it came from, which an eager op's error opens
    with: "{{function_node __wrapped__CollectiveBcastSend_device_/job:worker/...}} Collective
    ops is aborted by: ..." (the cluster's lost-worker line, the engines' fallback line)."""
    import re

    return re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)


# The environment variables that take a number: (a whole one?, the largest taken), read
# through env_number. Each command checks them all as it starts (cli), so a typo is one line,
# not a silent default; the largest values are beyond any use (1e308 MB overflowed in bytes,
# 1e10 s in the watchdog's clock).
ENV_NUMBERS = {"TRANSFER_DECODE_AHEAD_MB": (False, 1e9), "TRANSFER_FEATURE_MEMORY_MB": (False, 1e9),
               "TRANSFER_STARTUP_SECONDS": (False, 1e8), "TRANSFER_REPORT_GRADCAMS": (True, 1e6)}


def env_number(name: str, default: float) -> float:
    """The number in environment variable ``name`` (one of ENV_NUMBERS), ``default`` when it is
    unset or empty; anything else than a number from 0 to its largest is a TransferError."""
    import math
    import os

    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    whole, largest = ENV_NUMBERS[name]
    if not (math.isfinite(value) and 0 <= value <= largest
            and (not whole or value.is_integer())):
        kind = "a whole number" if whole else "a number"
        raise TransferError(f"environment variable {name} must be {kind} from 0 to "
                            f"{largest:g}, not {text!r}")
    return int(value) if whole else value


def check_environment() -> None:
    """Raise a TransferError for the first malformed number in ENV_NUMBERS."""
    for name in ENV_NUMBERS:
        env_number(name, 0)
