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
