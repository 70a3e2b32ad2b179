"""Keep TensorFlow's start-up noise off the terminal unless --verbose."""

from __future__ import annotations

import logging
import os
import warnings


def configure(verbose: bool) -> None:
    """Call before TensorFlow is imported (the CLI does, in its top-level callback)."""
    if verbose:
        os.environ["TRANSFER_VERBOSE"] = "1"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ INFO/WARNING/ERROR lines
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"keras\..*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # Pillow's DecompressionBombWarning (a RuntimeWarning) for an 89-179 megapixel photo, which
    # is decoded all the same. Here, not around each read: catch_warnings is not thread-safe.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit",
                            category=RuntimeWarning, module=r"PIL\.Image")
    # Pillow's complaints about a damaged EXIF block ("Truncated File Read", "Tag data larger
    # than file"): the photo is read all the same, its orientation too when that tag is whole
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
    warnings.showwarning = _one_line  # any other: one line, not a source path and its code


def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning as the CLI's own warnings read: ``warning: <message>``."""
    import sys

    stream = file if file is not None else sys.stderr
    if stream is None:
        return
    try:
        stream.write(f"warning: {message}\n")
    except (OSError, ValueError):  # a closed or broken stream: the warning is not worth a crash
        pass
