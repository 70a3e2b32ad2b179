"""The `transfer` command line: parse, call the library, print. No work happens here."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from transfer import __version__, quiet
from transfer.errors import TransferError
from transfer.progress import RichReporter

app = typer.Typer(
    help="Image classification by transfer learning on TensorFlow/Keras.\n\n"
    "The tour: transfer fetch-data, transfer train --base inception, "
    "transfer predict photo.jpg, transfer mnist.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
out = Console()
err = Console(stderr=True)
_state = {"verbose": False}


def _version(value: bool) -> None:
    if value:
        out.print(f"transfer {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show TensorFlow's log and full tracebacks.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    _state["verbose"] = verbose
    quiet.configure(verbose)


def command(*args, **kwargs):
    """Register a command whose TransferError becomes one red line and exit code 1."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*a, **kw):
            try:
                return fn(*a, **kw)
            except TransferError as exc:
                if _state["verbose"]:
                    err.print_exception()
                err.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                err.print("[bold red]interrupted[/bold red]")
                raise typer.Exit(130) from None

        return app.command(*args, **kwargs)(run)

    return wrap


def _reporter() -> RichReporter:
    return RichReporter(err)


# --------------------------------------------------------------------------- fetch-data


@command("fetch-data")
def fetch_data_cmd(
    source: Annotated[str, typer.Option(help="auto | kaggle | microsoft | archive. auto: Kaggle "
                                        "when credentials exist, else Microsoft.")] = "auto",
    archive: Annotated[Path | None, typer.Option(
        help="A local zip (Kaggle train.zip or PetImages layout) or folder; "
        "implies --source archive.")] = None,
    competition: Annotated[str, typer.Option(help="Kaggle competition.")] = "dogs-vs-cats",
    data_dir: Annotated[Path, typer.Option(help="Where the split goes.")] = Path("data"),
    train_per_class: Annotated[int, typer.Option(help="Training images per class.")] = 1000,
    validate_per_class: Annotated[int, typer.Option(help="Validation images per class.")] = 400,
    test_per_class: Annotated[int, typer.Option(help="Test images per class (0: no test split)."
                                                )] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 42,
    force: Annotated[bool, typer.Option(help="Replace a split made with other arguments.")] = False,
) -> None:
    """Download Kaggle's Dogs vs. Cats photos into data/train and data/validate."""
    from transfer.datasets import FetchOptions, fetch_data

    result = fetch_data(
        FetchOptions(source=source, archive=archive, competition=competition, data_dir=data_dir,
                     train_per_class=train_per_class, validate_per_class=validate_per_class,
                     test_per_class=test_per_class, seed=seed, force=force),
        reporter=_reporter(),
    )
    if result.noop:
        return
    table = Table(title=f"Split in {result.data_dir} (source: {result.source}, seed {seed})")
    table.add_column("split")
    for cls in next(iter(result.counts.values())):
        table.add_column(cls, justify="right")
    for split, per_class in result.counts.items():
        table.add_row(split, *(str(n) for n in per_class.values()))
    out.print(table)
    if result.skipped:
        out.print(f"skipped {len(result.skipped)} unusable file(s):")
        for item in result.skipped:
            out.print(f"  {item['name']}: {item['reason']}", highlight=False)
    out.print(f"manifest: {result.data_dir / 'manifest.json'}")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="transfer")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
