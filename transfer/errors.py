"""The exception types the CLI turns into a single error line."""


class TransferError(Exception):
    """A problem with the user's input or environment, explained in one line (exit code 1)."""

    exit_code = 1


class GateFailed(TransferError):
    """A quality gate (``--assert-accuracy-at-least``) was not met: exit code 3, for CI."""

    exit_code = 3
