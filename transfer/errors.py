"""The exception types the CLI turns into a single error line."""


class TransferError(Exception):
    """A problem with the user's input or environment, explained in one line (exit code 1)."""

    exit_code = 1


class GateFailed(TransferError):
    """A quality gate (``--assert-accuracy-at-least``) was not met: exit code 3, for CI."""

    exit_code = 3


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


def on_interrupt_signal(signum, frame) -> None:
    """Signal handler for SIGINT and SIGTERM while a command runs (``cli``): record, raise."""
    import signal

    kind = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    _interrupted.append(kind)
    raise kind


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
