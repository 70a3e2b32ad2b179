"""The one exception type the CLI turns into a single error line."""


class TransferError(Exception):
    """A problem with the user's input or environment, explained in one line."""
