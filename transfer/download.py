"""Resumable HTTPS downloads: stream to ``<file>.part``, resume with a Range request,
check the size, rename into place when complete.

A host that cannot be reached at all (its name does not resolve, no route to it, no answer
within the timeout) fails at once with one line, and so does a file that cannot be written (a
full disk), and so does an address that cannot be right (``htp://``, a ``file://`` naming no
file): only a connection lost or refused is retried, and a connection that keeps dropping is
retried for as long as each attempt moves the download on.
"""

from __future__ import annotations

import errno
import http.client
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from transfer import __version__
from transfer.errors import TransferError
from transfer.files import entries_to_disk, to_disk
from transfer.progress import Reporter

CHUNK = 1 << 16


# answers a server gives while overloaded or restarting (too many requests, an error of its
# own, a gateway's): tried again as a lost connection is, the .part kept
PASSING_HTTP_ERRORS = (429, 500, 502, 503, 504)


def download(url: str, dest: Path, reporter: Reporter | None = None, retries: int = 5,
             timeout: float = 60.0, backoff: float = 1.0, offline_hint: str = "",
             facts: dict | None = None) -> Path:
    """Download ``url`` to ``dest``; return ``dest``.

    A complete ``dest`` is reused as is. A ``dest.part`` left by an interrupted run (or by a
    connection cut during this one) is resumed with ``Range: bytes=N-``; a server that
    ignores the range restarts from zero. The final size must equal the server's
    Content-Length, else the ``.part`` stays and an error says so. When the host cannot be
    reached at all, the error (one line, ending with ``offline_hint``) comes at once.
    ``facts``, when given, is filled with ``reused``: True when ``dest`` was already there
    (an earlier run's download, not fetched now); ``length_known``: False when the server never said
    the file's length (no Content-Length), so that a connection closed early could not be
    told from the end of the file: the caller's checksum is then the only check; ``resumed``:
    a ``.part`` an earlier run left was continued; ``restarted``: the server ignored the range
    and sent the whole file again.

    Raises:
        TransferError: the download failed (the message says why and what is kept).
    """
    reporter = reporter or Reporter()
    dest = Path(dest)
    if dest.is_file():
        if facts is not None:
            facts.update(reused=True)  # downloaded by an earlier run
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    total: int | None = None
    attempt = 0
    # resumed: a .part continued (a 206, or a 416 saying it is whole); restarted: the server
    # ignored the range and sent the whole file again
    resumed = restarted = False
    answered = False  # the server sent an answer during this run
    # the most of the file held so far: an attempt that goes past it resets the retries (a
    # server that ignores the range and drops at the same byte each time does not)
    reached = part.stat().st_size if part.exists() else 0
    with reporter.task(f"Downloading {dest.name}", total=None, kind="bytes") as advance:
        while True:
            have = part.stat().st_size if part.exists() else 0
            try:
                request = urllib.request.Request(
                    url, headers={"User-Agent": f"transfer/{__version__}"})
            except ValueError as exc:  # "unknown url type: ''", "Invalid IPv6 URL"
                raise TransferError(f"cannot download {url!r}: {exc}") from None
            if have:
                request.add_header("Range", f"bytes={have}-")
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    answered = True
                    if have and response.status == 206:
                        total = _total_from_content_range(response.headers, have)
                        mode, resumed = "ab", True
                    else:
                        if have:
                            reporter.warn("the server does not resume downloads; starting again")
                            restarted = True
                        have = 0
                        length = response.headers.get("Content-Length")
                        total = int(length) if length is not None else None
                        mode = "wb"
                    advance(0, total=total, completed=have)
                    _save(response, part, mode, advance, total)
            except urllib.error.HTTPError as exc:
                if exc.code == 416 and have and _total_from_content_range(exc.headers, -1) == have:
                    total, resumed = have, True  # the .part is whole: the server said its length
                elif exc.code == 416 and have:
                    part.unlink()  # our partial no longer matches the remote file
                    attempt += 1
                    if attempt > retries:
                        raise TransferError(f"download of {url} failed: HTTP 416") from exc
                    continue
                elif exc.code in PASSING_HTTP_ERRORS:  # the server's passing trouble
                    got = part.stat().st_size if part.exists() else 0
                    attempt += 1
                    said = f"HTTP {exc.code} {exc.reason}"
                    if attempt > retries:
                        raise _given_up(url, retries, said, part, got,
                                        "nothing was downloaded; run again later") from exc
                    reporter.warn(f"the server answered {said}; trying again "
                                  f"(attempt {attempt}/{retries})")
                    time.sleep(backoff * attempt)
                    continue
                else:
                    raise TransferError(f"download of {url} failed: HTTP {exc.code} {exc.reason}"
                                        ) from exc
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                if _hopeless(exc):  # a bad address, a file:// that is not there: no retry
                    raise TransferError(f"download of {url} failed ({_reason(exc)})"
                                        + (f"; {offline_hint}" if offline_hint else "")
                                        ) from exc
                if _unreachable(exc):
                    host = urllib.parse.urlsplit(url).hostname or url
                    raise TransferError(
                        f"could not reach {host} ({_reason(exc)}): no network?"
                        + (f" {offline_hint}" if offline_hint else "")) from exc
                if not answered and _timed_out(exc):  # retrying would wait as long again
                    host = urllib.parse.urlsplit(url).hostname or url
                    got = part.stat().st_size if part.exists() else 0
                    raise TransferError(
                        f"{host} did not answer within {timeout:g} s: no network, or the "
                        f"server is down? Run again to retry"
                        + (f" ({got} bytes kept in {part})" if got else "")
                        + (f"; {offline_hint}" if offline_hint else "")) from exc
                got = part.stat().st_size if part.exists() else 0
                # a link that drops often but moves on each time is not given up on
                attempt, reached = (1, got) if got > reached else (attempt + 1, reached)
                if attempt > retries:
                    raise _given_up(url, retries, _reason(exc), part, got,
                                    "nothing was downloaded"
                                    + (f"; {offline_hint}" if offline_hint else "")) from exc
                if answered:
                    reporter.warn(f"connection lost ({_reason(exc)}); resuming "
                                  f"(attempt {attempt}/{retries})")
                else:  # never connected: there is nothing to resume
                    host = urllib.parse.urlsplit(url).netloc or url
                    reporter.warn(f"could not connect to {host} ({_reason(exc)}); trying "
                                  f"again (attempt {attempt}/{retries})")
                time.sleep(backoff * attempt)
                continue
            size = part.stat().st_size
            if total is not None and size < total:
                attempt, reached = (1, size) if size > reached else (attempt + 1, reached)
                if attempt > retries:
                    raise TransferError(f"download of {url} stopped at {size} of {total} bytes; "
                                        f"kept in {part}, run again to resume")
                reporter.warn(f"connection closed at {size} of {total} bytes; resuming")
                continue
            if total is not None and size != total:
                raise TransferError(f"download of {url} is {size} bytes, expected {total}; "
                                    f"delete {part} and try again")
            break
    if facts is not None:
        facts.update(length_known=total is not None, resumed=resumed, restarted=restarted)
    to_disk(part)
    os.replace(part, dest)
    entries_to_disk(dest.parent)
    return dest


def _save(response, part: Path, mode: str, advance, total: int | None) -> None:
    """Append (``mode`` "ab") or write ("wb") the response's body to ``part``. The response's
    own errors (a connection lost) propagate as they are; a file that cannot be written (a
    full disk) is a TransferError at once: retrying cannot help."""

    def failed(exc: OSError) -> TransferError:
        got = part.stat().st_size if part.exists() else 0
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        return TransferError(
            f"could not write {part} ({exc.strerror or exc}): {got} bytes saved"
            + (f" of {total}" if total is not None else "")
            + ("; free some space (or use another --data-dir) and run again to resume"
               if full else "; run again to resume"))

    try:
        out = open(part, mode)
    except OSError as exc:
        raise failed(exc) from exc
    try:
        while chunk := response.read(CHUNK):
            try:
                out.write(chunk)
            except OSError as exc:
                raise failed(exc) from exc
            advance(len(chunk))
    finally:
        try:
            out.close()
        except OSError as exc:
            raise failed(exc) from exc


def _given_up(url: str, retries: int, reason: str, part: Path, got: int,
              nothing: str) -> TransferError:
    """The line of a download given up on after its retries: the bytes kept to resume from,
    or what to do when ``nothing`` came."""
    kept = f"{got} bytes kept in {part}, run again to resume" if got else nothing
    return TransferError(f"download of {url} failed after {retries} retries ({reason}); {kept}")


def _total_from_content_range(headers, have: int) -> int | None:
    value = (headers or {}).get("Content-Range", "")  # "bytes 100-999/1000" or "bytes */1000"
    if "/" in value and not value.endswith("*"):
        return int(value.rsplit("/", 1)[1])
    length = (headers or {}).get("Content-Length")
    return have + int(length) if length is not None and have >= 0 else None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, socket.gaierror):
        return "its name could not be resolved"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(exc).__name__


def _timed_out(exc: BaseException) -> bool:
    reason = getattr(exc, "reason", None) or exc
    return isinstance(reason, TimeoutError)


_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN}
# a file:// address naming nothing readable
_NO_FILE = {errno.ENOENT, errno.EACCES, errno.EISDIR, errno.ENOTDIR}


def _hopeless(exc: BaseException) -> bool:
    """True when the address itself is wrong, so asking again gives the same answer: urllib's
    "unknown url type: htp" (a URLError whose reason is text), a file:// address naming no
    readable file. These were retried five times as "connection lost ... resuming"."""
    if not isinstance(exc, urllib.error.URLError):
        return False
    reason = exc.reason
    return isinstance(reason, str) or (isinstance(reason, OSError)
                                       and reason.errno in _NO_FILE)


def _unreachable(exc: BaseException) -> bool:
    """True when retrying cannot help: the name does not resolve or there is no route."""
    reason = getattr(exc, "reason", None) or exc
    return isinstance(reason, socket.gaierror) or (
        isinstance(reason, OSError) and reason.errno in _UNREACHABLE)
