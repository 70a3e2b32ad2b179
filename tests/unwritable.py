"""A folder nobody can write into, root included (tests of read-only output folders).

``chmod`` does not stop root, so as root the folder is made immutable (``chattr +i``, ext4 and
most Linux file systems); when neither works the test fails under CI and is skipped with
the reason elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from conftest import missing


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@contextlib.contextmanager
def unwritable_folder(folder: Path):
    """Yield ``folder`` (created) made read-only for everyone; restored afterwards."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    as_root = os.geteuid() == 0
    if as_root:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    else:
        folder.chmod(0o555)
        done = True
    try:
        if not done or _writable(folder):
            missing("cannot make a folder read-only here (root without chattr +i)")
        yield folder
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        else:
            folder.chmod(0o755)


def names_path(error: BaseException, path: Path) -> bool:
    """True when ``error`` names ``path``: an OSError's filename, or the message's text (a
    TransferError from the settings' checks)."""
    return str(path) in (getattr(error, "filename", None) or "") or str(path) in str(error)
