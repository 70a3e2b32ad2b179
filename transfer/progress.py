"""Progress and messages, kept out of the library's logic.

Library functions take a ``Reporter``. The base class is silent, so a Python caller gets
no output unless it asks for it; the CLI passes a ``RichReporter`` (progress bars, coloured
messages on stderr).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Advance = Callable[..., None]


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
        from rich.console import Console

        self.console = console or Console(stderr=True, markup=False)

    def info(self, message: str) -> None:  # paths and class names as they are: no markup
        self.console.print(message, highlight=False, markup=False)

    def warn(self, message: str) -> None:
        from rich.markup import escape

        self.console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False,
                           markup=True)

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

        if kind == "bytes":
            columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), TimeRemainingColumn()]
        else:
            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TimeRemainingColumn(),
                       TextColumn("{task.fields[status]}")]
        with Progress(*columns, console=self.console, transient=False) as progress:
            task_id = progress.add_task(description, total=total, completed=completed, status="")

            def advance(n: float = 1, **fields) -> None:
                if "status" in fields:
                    fields["status"] = str(fields["status"])
                progress.update(task_id, advance=n, **fields)

            yield advance
