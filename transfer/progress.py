"""Progress and messages, kept out of the library's logic.

Library functions take a ``Reporter``. The base class is silent, so a Python caller gets
no output unless it asks for it; the CLI passes a ``RichReporter`` (progress bars, coloured
messages on stderr).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Advance = Callable[..., None]

# The control characters a terminal obeys (C0 but tab and newline, DEL, C1), written as escapes
# when printed: a file or class name holding ESC [2J (from a zip, a camera, anyone's folder)
# would clear the screen, recolour or retitle it, and a carriage return overwrite the line.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))
             if c not in (0x09, 0x0A)} | {0x0D: "\\r"}


def printable(text: str, newlines: bool = True) -> str:
    """``text`` with the control characters a terminal obeys written as escapes ("\\x1b");
    newlines kept (a message of several lines), unless ``newlines`` is False (a file name in
    one table cell: "\\n")."""
    return text.translate(_CONTROLS if newlines else {**_CONTROLS, 0x0A: "\\n"})


def safe_console(**options):
    """A rich Console (``markup=False`` unless given) whose every printed string is made
    ``printable`` first: messages, table cells, error lines."""
    return _safe_console_class()(**{"markup": False, **options})


@functools.cache
def _safe_console_class():
    from rich.console import Console

    class SafeConsole(Console):
        def render_str(self, text: str, **options):
            return super().render_str(printable(text), **options)

    return SafeConsole


class Reporter:
    """Silent reporter: the default for library use."""

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    @contextmanager
    def task(self, description: str, total: float | None = None, kind: str = "items",
             completed: float = 0) -> Iterator[Advance]:
        """Yield ``advance(n=1, **fields)``; ``kind`` is "items" or "bytes"."""
        yield lambda n=1, **fields: None


class RichReporter(Reporter):
    """Progress bars and messages with rich, on stderr."""

    def __init__(self, console=None):
        self.console = console or safe_console(stderr=True)

    # Into a file or a pipe (a log), a message is one line, never broken at the console's
    # width (grep finds it); on a terminal it wraps to the window.
    # A message is one line: a newline in a file name ("bad\nwarning: fake.jpg") is written
    # "\n", not a second line that forged a warning of its own
    def info(self, message: str) -> None:  # paths and class names as they are: no markup
        self.console.print(printable(str(message), newlines=False), highlight=False,
                           markup=False, soft_wrap=not self.console.is_terminal)

    def warn(self, message: str) -> None:
        from rich.markup import escape

        self.console.print(f"[yellow]warning:[/yellow] "
                           f"{escape(printable(str(message), newlines=False))}",
                           highlight=False, markup=True, soft_wrap=not self.console.is_terminal)

    @contextmanager
    def task(self, description: str, total: float | None = None, kind: str = "items",
             completed: float = 0) -> Iterator[Advance]:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.table import Column

        # on any width the bar, the counts and the times stay whole: the description is cut
        # with an ellipsis to a third of the line, the status (the epoch's metrics) folds onto
        # further lines, the bar narrows (on 80 columns, a long path and the metrics pushed
        # the bar and the counts off the line)
        width = self.console.width
        name = TextColumn("{task.description}", markup=False,  # a file name is not markup
                          table_column=Column(no_wrap=True, overflow="ellipsis",
                                              max_width=max(15, width // (3 if width >= 100
                                                                           else 4))))
        bar = BarColumn(bar_width=max(10, min(40, width // 6)))
        remaining = [TimeRemainingColumn()] if width >= 100 else []  # narrow: elapsed only
        if kind == "bytes":
            columns = [name, bar, DownloadColumn(), TransferSpeedColumn(), *remaining]
        else:
            columns = [name, bar, MofNCompleteColumn(), TimeElapsedColumn(), *remaining,
                       TextColumn("{task.fields[status]}", markup=False,
                                  table_column=Column(overflow="fold", ratio=1))]
        with Progress(*columns, console=self.console, transient=False) as progress:
            task_id = progress.add_task(printable(description), total=total,
                                        completed=completed, status="")

            def advance(n: float = 1, **fields) -> None:
                if "status" in fields:
                    fields["status"] = printable(str(fields["status"]))
                progress.update(task_id, advance=n, **fields)

            yield advance
