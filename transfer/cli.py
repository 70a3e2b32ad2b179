"""The `transfer` command line: parse, call the library, print. No work happens here.

Every option's default comes from the command's settings dataclass (transfer/settings.py), and
every option is checked by that class's ``validated()`` before TensorFlow is imported, so a bad
option fails at once with one line. Errors are one red line and exit code 1 (usage errors 2);
``transfer --verbose`` (or ``--verbose`` after the command) shows TensorFlow's log and full
tracebacks.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import os
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from transfer import __version__, errors, quiet
from transfer import settings as S
from transfer.bases import BASES
from transfer.errors import Terminated, TransferError  # noqa: F401  (cli.Terminated)
from transfer.progress import RichReporter, printable, safe_console

BaseName = Literal[tuple(BASES)]  # noqa: F821  (choices come from the registry)
# ImageNet mode (predict, serve) and compare's transfer runs: the bases with ImageNet weights
PretrainedName = Literal[tuple(n for n, b in BASES.items() if b.pretrained)]  # noqa: F821
Pipeline = Literal[S.PIPELINES]
Distribute = Literal[S.DISTRIBUTE]
Source = Literal[S.FETCH_SOURCES]
PredictFormat = Literal[S.PREDICT_FORMATS]
ExportFormat = Literal[S.EXPORT_FORMATS]
Quantize = Literal[S.QUANTIZE]
Engine = Literal[S.ENGINES]
Tta = Literal[S.TTA_MODES]
ClassWeight = Literal[S.CLASS_WEIGHTS]
Schedule = Literal[S.LR_SCHEDULES]
_FROZEN, _SCRATCH = S.RECIPES["frozen"], S.RECIPES["scratch"]


def _recipe_default(key: str) -> str:
    """The defaults of a recipe setting, each recipe named (settings.RECIPES)."""
    others = [f"{values[key]} for {name}" for name, values in S.RECIPES.items()
              if name not in ("frozen", "scratch")]
    return (f"\\[default: {_FROZEN[key]} with a frozen base, {_SCRATCH[key]} from scratch"
            + "".join(f" ({other})" for other in others) + "]")
Invert = Literal[S.INVERT]
MnistDataset = Literal[S.MNIST_DATASETS]
MnistArch = Literal[S.MNIST_ARCHS]


def _patch_typer_help() -> None:
    """Typer 0.29 shows ``<bool>`` after on/off flags, ``<list[str]>`` after file arguments and
    ``{PATH}...`` in the usage line; and prints a usage error as a box of several lines. Make
    help read like ordinary Unix help and a usage error one line."""
    from typer import core, rich_utils

    option_type = core.TyperOption.display_type_rich

    def display_type(self, ctx):
        return None if self.is_flag else option_type(self, ctx)

    core.TyperOption.display_type_rich = display_type
    core.TyperArgument.display_type_rich = lambda self, ctx: None
    core.TyperArgument._usage_display_name = lambda self: (
        self.display_name_raw + ("..." if self.nargs != 1 else "") if self.required
        else f"[{self.display_name_raw}]" + ("..." if self.nargs != 1 else ""))

    def one_line_usage_error(exc) -> None:
        if exc.__class__.__name__ == "NoArgsIsHelpError":
            return
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = " ".join(exc.format_message().replace("Value error, ", "").split())
        err.print(f"[bold red]error:[/bold red] {escape(message + hint)}", highlight=False,
                  soft_wrap=True, markup=True)

    rich_utils.rich_format_error = one_line_usage_error
    if not sys.stdout.isatty() and rich_utils.MAX_WIDTH is None:
        rich_utils.MAX_WIDTH = int(os.environ.get("COLUMNS") or 0) or 120  # a pipe or a file


def _console(stderr: bool = False) -> Console:
    """A console that does not wrap at 80 columns when the output is a pipe or a file."""
    stream = sys.stderr if stderr else sys.stdout
    wide = None if stream.isatty() else int(os.environ.get("COLUMNS") or 0) or 200
    # markup=False: paths, class names and messages print as they are ("old [draft]/"); the
    # few prints with markup say so and escape what they interpolate
    return safe_console(stderr=stderr, width=wide)


out = _console()
err = _console(stderr=True)
_patch_typer_help()


def empty_argument(args: list[str], takes_path=lambda option: True,
                   is_flag=lambda option: False) -> str | None:
    """What is wrong with the first empty argument of a command line (None when there is
    none). ``Path("")`` is the current folder: ``transfer explain "$PHOTO"`` with PHOTO unset
    explained every photo under it, writing a picture beside each. ``takes_path(option)``:
    whether an option takes a path (only then is the current folder worth a word);
    ``is_flag(option)``: an option that takes no value (``--force ""``: the empty one is an
    argument, not the flag's value)."""
    for i, arg in enumerate(args[1:], start=1):
        before = args[i - 1]
        if arg == "" and before.startswith("-") and "=" not in before and not is_flag(before):
            what, option = f"{before} is empty", before
        elif arg == "":
            what, option = f"an empty argument after {before!r}", None
        elif arg.startswith("--") and arg.endswith("="):
            what, option = f"{arg} is empty", arg[:-1]
        else:
            continue
        if option is not None and not takes_path(option):
            return f"{what} (an unset shell variable?)"
        return (f"{what} (an unset shell variable?); an empty path would mean the current "
                "folder: write . for that")
    return None


class _Commands(typer.core.TyperGroup):
    """The command group; an empty argument is refused before any command reads it."""

    def parse_args(self, ctx, args):
        name = next((a for a in args if not a.startswith("-")), None)
        command = self.commands.get(name) if name else None

        def takes_path(option: str) -> bool:  # report --output is a str: a path too
            params = [p for p in (command.params if command else []) if option in p.opts]
            return (not params or "Path" in str(params[0].bare_type())
                    or params[0].name == "output")

        def is_flag(option: str) -> bool:
            params = [p for p in (command.params if command else []) if option in p.opts
                      or option in getattr(p, "secondary_opts", [])]
            return bool(params) and bool(getattr(params[0], "is_flag", False))

        problem = (empty_argument(args, takes_path, is_flag)
                   or option_without_value(args, command))
        if problem is not None:
            _error_line(problem)
            raise typer.Exit(2)
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_Commands,
    help="Image classification by transfer learning on TensorFlow/Keras.\n\n"
    "The tour: transfer fetch-data, transfer train --base inception, "
    "transfer predict photo.jpg, transfer evaluate, transfer mnist.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
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


def _error_line(message: str) -> None:
    message = " ".join(str(message).split())  # always one line
    err.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False,
              soft_wrap=True, markup=True)


def _as_os_error(exc: Exception) -> Exception:
    """A loop of symbolic links as Python 3.13 raises it (an OSError, one line): before it,
    ``Path.resolve()`` raised ``RuntimeError("Symlink loop from '...'")``, a traceback from
    every option given such a path."""
    said = str(exc)
    if type(exc) is RuntimeError and said.startswith("Symlink loop from "):
        import errno

        path = said.removeprefix("Symlink loop from ").strip("'\"")
        return OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
    return exc


def _os_error(exc: OSError) -> str:
    """One line for a file-system error: what failed, on which path, why."""
    reason = exc.strerror or exc.__class__.__name__
    paths = [p for p in (exc.filename, exc.filename2) if p]
    where = " -> ".join(str(p) for p in paths)
    return f"{reason}: {where}" if where else f"{reason} ({exc})"


@contextlib.contextmanager
def _terminate_as_interrupt(command: str):
    """While a command runs, SIGTERM raises Terminated in the main thread (the default ends the
    process at once, leaving temporary bundle and conversion folders behind) and SIGINT
    KeyboardInterrupt, both recorded (``errors.on_interrupt_signal``: a native library that
    turns the exception into another cannot make the run go on); the previous handlers come
    back after. Python runs a handler when the main thread next runs Python code: multi-worker
    training, whose TensorFlow waits hold the interpreter, puts the default back for its run
    (``training.join_cluster``), and ``serve`` handles both itself (``serve.run``: a graceful
    shutdown, then exit 130 or 143)."""
    import signal
    import threading

    if command == "serve" or threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread (a test runner's worker thread)
        return

    def on_signal(signum, frame):
        errors.on_interrupt_signal(signum, frame)

    on_signal.transfer_cli = True  # training.join_cluster puts the default back
    errors.clear_interrupted()
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
                if signal.getsignal(sig) is not signal.SIG_IGN}  # `nohup`, `trap '' INT`: kept
    try:
        with errors.catching_unraisable():  # a Ctrl-C raised inside a GC callback
            yield
    finally:  # the record stays for run's except clauses, which clear it
        for sig, handler in previous.items():
            if handler is not None:  # None: installed outside Python, nothing to put back
                signal.signal(sig, handler)


# the options whose str value is a path (typer's Path would drop a trailing "/", or the value
# may also be a name: serve --model NAME, train --weights imagenet|PATH)
_STR_PATHS = {"paths", "output", "model", "weights"}


def _given_paths(kw: dict) -> dict:
    """The command's arguments, with a path the shell left as ``~/...`` expanded (quoted,
    ``"~/my photos"``, or after ``=``, ``--model=~/m``: the shell expands neither, and the tool
    said an existing folder did not exist, or wrote into a folder named ``~`` beside the
    user)."""
    def expanded(value):
        if isinstance(value, list | tuple):
            return type(value)(expanded(v) for v in value)
        if isinstance(value, Path) and str(value).startswith("~"):
            return Path(os.path.expanduser(str(value)))
        if isinstance(value, str) and value.startswith("~"):
            return os.path.expanduser(value)
        return value

    def path_like(key, value) -> bool:
        return isinstance(value, Path) or key in _STR_PATHS or (
            isinstance(value, list | tuple) and any(isinstance(v, Path) for v in value))

    return {key: expanded(value) if path_like(key, value) else value
            for key, value in kw.items()}


def option_without_value(args: list[str], command) -> str | None:
    """What is wrong when an option that takes a value was given another option instead
    (``--data-dir --force``: the value left out, Click takes the next word as it; the run made
    a folder named ``--force`` and did not force anything), or None."""
    if command is None:
        return None
    flags = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    flags |= {"--help", "--verbose", "-v"}
    takes_value = {o for p in command.params if p.param_type_name == "option"
                   and not getattr(p, "is_flag", False) and p.nargs != 0 for o in p.opts}
    for option, value in zip(args, args[1:], strict=False):
        if option == "--":
            return None
        if option in takes_value and value in flags:
            return (f"{option} has no value: it took the next word, {value}, which is an option "
                    f"(give {option} a value; for a file named so, write ./{value})")
    return None


def command(name: str, examples: list[str]):
    """Register a command: its help ends with examples; a TransferError or an OSError becomes
    one red line and exit code 1; Ctrl-C exit code 130, SIGTERM 143 (after the same clean-up)."""
    epilog = "[bold]Examples[/bold]\n\n" + "\n\n".join(
        f"  [cyan]{line}[/cyan]" for line in examples)

    def wrap(fn):
        @functools.wraps(fn)
        def run(*a, **kw):
            kw = _given_paths(kw)
            try:
                errors.check_environment()  # TRANSFER_*_MB and the like: a typo is one line
                with _terminate_as_interrupt(name):
                    value = fn(*a, **kw)
                if errors.interrupted():  # raised, then swallowed by native code
                    _interrupted_exit(errors.interrupted())
                _end_on_signal(0)  # the work is done: a late Ctrl-C does not make it a failure
                return value
            except typer.Exit:
                raise
            except KeyboardInterrupt as exc:
                _interrupted_exit(type(exc))
            except Exception as exc:
                if errors.interrupted():  # a Ctrl-C a library turned into an error of its
                    _interrupted_exit(errors.interrupted())  # own (pybind11: a TypeError)
                exc = _as_os_error(exc)
                if not isinstance(exc, TransferError | OSError):
                    raise
                if _state["verbose"]:
                    err.print_exception()
                if isinstance(exc, TransferError):
                    _error_line(str(exc))
                    raise typer.Exit(getattr(exc, "exit_code", 1)) from None
                _error_line(_os_error(exc))
                raise typer.Exit(1) from None
            finally:
                errors.clear_interrupted()

        return app.command(name, epilog=epilog)(run)

    return wrap


def _end_on_signal(code: int) -> None:
    """From now on (the command's work done: its last line said, or train's model saved),
    Ctrl-C or SIGTERM ends the process at once with ``code``: what is left until ``main``
    ends it is nothing to interrupt, and a Ctrl-C there made a finished run exit 130 without
    a line, so that a script took a good model for a failed run. Only in the console command
    (``main``): a program (or a test runner) calling the CLI keeps its own handlers."""
    import signal

    if not _state.get("console") or threading.current_thread() is not threading.main_thread():
        return

    def end(signum, frame):
        _exit_now(code)

    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # `nohup`: kept
            signal.signal(sig, end)


def _interrupted_exit(kind: type[KeyboardInterrupt]) -> None:
    if issubclass(kind, Terminated):
        err.print("[bold red]terminated[/bold red]", markup=True)
        raise typer.Exit(143) from None
    err.print("[bold red]interrupted[/bold red]", markup=True)
    raise typer.Exit(130) from None


def _reporter() -> RichReporter:
    return RichReporter(err)


def _command_line() -> str:
    """The command as a shell takes it back: "--data-dir 'my flowers'" (a path with a space was
    recorded unquoted, and could not be pasted back)."""
    import shlex

    return "transfer " + shlex.join(sys.argv[1:])


# --------------------------------------------------------------------------- fetch-data

_F = S.FetchOptions()


@command("fetch-data", examples=[
    "transfer fetch-data                                  # Kaggle if configured, else Microsoft",
    "transfer fetch-data --archive ~/flowers --data-dir flowers-data  # your photos, 80/20",
    "transfer fetch-data --archive ~/Downloads/train.zip  # offline: Kaggle's zip",
    "transfer fetch-data --train-per-class 500 --validate-per-class 200 --test-per-class 100",
])
def fetch_data_cmd(
    source: Annotated[Source, typer.Option(
        help="auto: the zip an earlier run downloaded into DATA-DIR/.cache/ (no account or network "
             "needed), else Kaggle when credentials exist, else Microsoft.")] = _F.source,
    archive: Annotated[Path | None, typer.Option(
        help="A local zip or folder: Kaggle's train.zip, PetImages, or any folder of class "
        "folders (class = folder name); implies --source archive.", show_default=False)
    ] = _F.archive,
    competition: Annotated[str, typer.Option(help="Kaggle competition.")] = _F.competition,
    data_dir: Annotated[Path, typer.Option(help="Where the split goes.")] = _F.data_dir,
    train_per_class: Annotated[int | None, typer.Option(
        help="Training images per class \\[default: 1000 for the cats/dogs photos; a folder of "
        "class folders is split by --validation-split instead, or by counts when this and "
        "--validate-per-class are both given].", show_default=False)
    ] = _F.train_per_class,
    validate_per_class: Annotated[int | None, typer.Option(
        help="Validation images per class \\[default: 400 for the cats/dogs photos].",
        show_default=False)] = _F.validate_per_class,
    test_per_class: Annotated[int | None, typer.Option(
        help="Test images per class \\[default: 0, no test split].", show_default=False)
    ] = _F.test_per_class,
    validation_split: Annotated[float | None, typer.Option(
        help="Fraction of every class's usable images for validation \\[default: 0.2 for a "
        "folder of class folders]; not with the per-class counts.", show_default=False)
    ] = _F.validation_split,
    test_split: Annotated[float | None, typer.Option(
        help="Fraction of every class's usable images held out for test \\[default: 0].",
        show_default=False)] = _F.test_split,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = _F.seed,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace a split made with other arguments.")] = _F.force,
) -> None:
    """Lay out a train/validate (and test) split of your own folder of class folders (--archive),
    or of Kaggle's Dogs vs. Cats photos."""
    options = S.FetchOptions(source=source, archive=archive, competition=competition,
                             data_dir=data_dir, train_per_class=train_per_class,
                             validate_per_class=validate_per_class,
                             test_per_class=test_per_class, validation_split=validation_split,
                             test_split=test_split, seed=seed, force=force).validated()
    from transfer.datasets import fetch_data

    result = fetch_data(options, reporter=_reporter())
    if result.noop:
        return
    out.print(f"Split in {result.data_dir} (source: {result.source}, seed {seed})",
              highlight=False)
    _show(_split_table(result.counts))
    if result.skipped:
        out.print(f"skipped {len(result.skipped)} unusable file(s):")
        for item in result.skipped:
            out.print(f"  {item['name']}: {item['reason']}", highlight=False)
    out.print(f"manifest: {result.data_dir / 'manifest.json'}", highlight=False)


def _show(table: Table, console=None) -> None:
    """Print ``table``; into a pipe or a file its title and caption are lines of their own,
    whole (they wrap at the table's width: export's 'models/m/export/mo' / 'del-int8.tflite
    ...' broke a path that grep and the reader of a log look for)."""
    console = console or out
    if console.is_terminal or not (table.title or table.caption):
        console.print(table)
        return
    title, caption = table.title, table.caption  # (and its caption, a line below it)
    if title:
        console.print(title, soft_wrap=True, highlight=False, markup=False)
    table.title = table.caption = None
    try:
        console.print(table)
    finally:
        table.title, table.caption = title, caption
    if caption:
        console.print(caption, soft_wrap=True, highlight=False, markup=False)


def _fits(table: Table) -> bool:
    """Whether ``table`` prints at its natural width on this console (no squeezed columns)."""
    natural = out.measure(table, options=out.options.update_width(10**6)).maximum
    return natural <= out.width


def _split_table(counts: dict[str, dict[str, int]]) -> Table:
    """Images per split and class: a row per split, or, when the classes do not fit across
    the console, a row per class."""
    classes = list(next(iter(counts.values())))
    wide = Table()
    wide.add_column("split")
    for cls in classes:
        wide.add_column(cls, justify="right")
    for split, per_class in counts.items():
        wide.add_row(split, *(str(n) for n in per_class.values()))
    if _fits(wide):
        return wide
    tall = Table()
    tall.add_column("class")
    for split in counts:
        tall.add_column(split, justify="right")
    for cls in classes:
        tall.add_row(cls, *(str(per_class.get(cls, 0)) for per_class in counts.values()))
    return tall


# --------------------------------------------------------------------------- bases, train


@command("bases", examples=["transfer bases"])
def bases_cmd() -> None:
    """List the bases: Keras class, input size, parameters, ImageNet weights cached or not."""
    from transfer import bases

    table = Table(title=f"Bases (Keras weight cache: {bases.keras_cache_dir()})")
    for column in ("name", "Keras class", "input", "min", "preprocessing", "base parameters",
                   "ImageNet weights"):
        table.add_column(column, justify="right" if column in ("input", "min",
                                                               "base parameters") else "left")
    for base in bases.BASES.values():
        alphas = bases.MOBILENET_ALPHAS if base.has_alpha else (1.0,)
        for alpha in alphas:
            name = f"{base.name} --alpha {alpha}" if base.has_alpha else base.name
            cached = bases.weights_state(base, alpha)
            table.add_row(name, base.keras_class or bases.SCRATCH_SHOWN[base.name],
                          str(base.size), str(base.min_size),
                          f"{base.preprocess}: {bases.PREPROCESS_SHOWN[base.preprocess]}",
                          f"{bases.count_params(base, alpha):,}", cached)
    table.caption = ("ImageNet weights: train needs the file without the top, predict/serve "
                     "--imagenet the one with it")
    _show(table)
    reporter = RichReporter(err)
    for path, why in bases.damaged_files():  # which file, and what to do
        reporter.warn(f"{path} {why}; delete it and Keras downloads it again")


_T = S.TrainSettings()
_A = S.Augment()
DATA, BASE, AUG, HEAD, FINE, RUN = ("Data", "Base", "Augmentation", "Head and training",
                                    "Fine-tuning", "Output and run")


@command("train", examples=[
    "transfer train --base inception                   # the classic (downloads its weights)",
    "transfer train --base mobilenet --alpha 0.25      # fast on a laptop CPU",
    "transfer train --base vgg16 --weights none --image-size 64 --epochs 2",
    "transfer train --base mobilenet --fine-tune 20 --fine-tune-epochs 3",
    "transfer train --base scratch                     # the small CNN from scratch",
    "transfer train --base mobilenet --alpha 0.25 --data-dir ~/flowers   # class folders",
    "transfer train --data-dir data --output models/cats-vs-dogs --force",
])
def train_cmd(
    base: Annotated[BaseName, typer.Option(help="The pretrained ImageNet base, or scratch / "
                                           "scratch-seeds: a small CNN from scratch (see "
                                           "transfer bases).",
                                           rich_help_panel=BASE)] = _T.base,
    alpha: Annotated[float, typer.Option(help="MobileNet width: 1.0, 0.75, 0.5 or 0.25.",
                                         rich_help_panel=BASE)] = _T.alpha,
    weights: Annotated[str, typer.Option(help="imagenet | none | PATH to a weights file.",
                                         rich_help_panel=BASE)] = _T.weights,
    image_size: Annotated[int | None, typer.Option(
        help="Input size in pixels (default: the base's; with test-time flips, its "
        "registered test size: MobileNet 288).", show_default=False,
        rich_help_panel=BASE)] = _T.image_size,
    train_size: Annotated[int | None, typer.Option(
        help="Size in pixels of the images the head trains on, when it trains on features "
        "computed once (default without --image-size: the base's own size when test-time "
        "flips run the model at the base's larger test size, as MobileNet's default does, "
        "224 -> 288; else the image size).", show_default=False,
        rich_help_panel=BASE)] = _T.train_size,
    data_dir: Annotated[Path, typer.Option(
        help="Folder with train/ and validate/, or with one folder per class (split in memory).",
        rich_help_panel=DATA)] = _T.data_dir,
    validation_split: Annotated[float, typer.Option(
        help="Fraction of each class held out for validation, when --data-dir holds the class "
        "folders.", rich_help_panel=DATA)] = _T.validation_split,
    train_dir: Annotated[Path | None, typer.Option(
        help="Training folder of class subfolders \\[default: DATA_DIR/train].",
        show_default=False, rich_help_panel=DATA)] = _T.train_dir,
    validate_dir: Annotated[Path | None, typer.Option(
        help="Validation folder \\[default: the validate folder beside --train-dir, else "
        "DATA_DIR/validate].", show_default=False,
        rich_help_panel=DATA)] = _T.validate_dir,
    pipeline: Annotated[Pipeline, typer.Option(
        help="generator: ImageDataGenerator; tfdata: tf.data + Keras augmentation layers.",
        rich_help_panel=DATA)] = _T.pipeline,
    feature_cache: Annotated[bool, typer.Option(help="Cache base features on disk.",
                                                rich_help_panel=DATA)] = _T.feature_cache,
    engine: Annotated[Engine, typer.Option(
        help="What runs the frozen feature pass: TensorFlow, TFLite (XNNPACK), or the faster "
        "one measured on this machine.", rich_help_panel=DATA)] = _T.engine,
    augment: Annotated[bool, typer.Option(help="Augment training images.",
                                          rich_help_panel=AUG)] = _A.enabled,
    augment_copies: Annotated[int | None, typer.Option(
        help="Augmented feature copies cycled across epochs; 0: run the base every epoch "
        "\\[default: 1; none with test-time flips].", show_default=False,
        rich_help_panel=AUG)] = _T.augment_copies,
    tta: Annotated[Tta, typer.Option(
        help="Test-time flips: the saved model averages each photo with its mirror image "
        "(the head trains on plain photos at --train-size, or at one size on that mean). auto: "
        "on the frozen route of an augmenting run for bases measured to gain (MobileNet, at "
        "288 px); never with --no-flip (flip is refused with it).", rich_help_panel=AUG)
    ] = _T.tta,
    rotation: Annotated[float, typer.Option(help="Rotation range, degrees.",
                                            rich_help_panel=AUG)] = _A.rotation,
    shift: Annotated[float, typer.Option(help="Width/height shift, fraction.",
                                         rich_help_panel=AUG)] = _A.shift,
    shear: Annotated[float, typer.Option(
        help="Shear, degrees (the classic 0.2 barely shears; 10 does visibly).",
        rich_help_panel=AUG)] = _A.shear,
    zoom: Annotated[float, typer.Option(help="Zoom range, +- fraction.", rich_help_panel=AUG)
                    ] = _A.zoom,
    flip: Annotated[bool, typer.Option(
        help="Random horizontal flips; --no-flip: a mirror image is a different picture (no "
        "test-time flips either).", rich_help_panel=AUG)] = _A.flip,
    preview_augment: Annotated[bool, typer.Option(
        "--preview-augment", help="Also write augment-preview.png into --data-dir (or the "
        "folder holding --train-dir): photos beside their augmented versions (the bundle "
        "always keeps one).",
        rich_help_panel=AUG)] = _T.preview_augment,
    preview_only: Annotated[bool, typer.Option(
        "--preview-only", help="Write augment-preview.png as --preview-augment does and stop: "
        "no training (change --rotation, --zoom, ... and look again in seconds).",
        rich_help_panel=AUG)] = False,
    dropout: Annotated[float, typer.Option(help="Dropout before the classifier, in [0, 1).",
                                           rich_help_panel=HEAD)] = _T.dropout,
    dense: Annotated[int, typer.Option(help="Hidden Dense units in the head (0: none).",
                                       rich_help_panel=HEAD)] = _T.dense,
    l2: Annotated[float | None, typer.Option(
        help="L2 penalty of the head \\[default: chosen on the validation split].",
        show_default=False, rich_help_panel=HEAD)] = _T.l2,
    class_weight: Annotated[ClassWeight, typer.Option(
        help="Weigh classes by their rarity; auto: when the largest class is over 1.5x the "
        "smallest.", rich_help_panel=HEAD)] = _T.class_weight,
    epochs: Annotated[int | None, typer.Option(
        help="Training epochs " + _recipe_default("epochs") + ".", show_default=False,
        rich_help_panel=HEAD)] = _T.epochs,
    batch_size: Annotated[int, typer.Option(help="Batch size.", rich_help_panel=HEAD)
                          ] = _T.batch_size,
    learning_rate: Annotated[float | None, typer.Option(
        help="Adam's learning rate " + _recipe_default("learning_rate") + ".",
        show_default=False, rich_help_panel=HEAD)] = _T.learning_rate,
    lr_schedule: Annotated[Schedule | None, typer.Option(
        help="cosine: decay the learning rate to 0 over the epochs "
        + _recipe_default("lr_schedule") + ".", show_default=False, rich_help_panel=HEAD)
    ] = _T.lr_schedule,
    patience: Annotated[int | None, typer.Option(
        help="Early stopping patience, epochs without a better validation loss "
        + _recipe_default("patience") + ".", show_default=False, rich_help_panel=HEAD)
    ] = _T.patience,
    fine_tune: Annotated[int, typer.Option(
        help="Then unfreeze the top N base layers (0: no fine-tuning).",
        rich_help_panel=FINE)] = _T.fine_tune,
    fine_tune_lr: Annotated[float, typer.Option(help="Learning rate of fine-tuning.",
                                                rich_help_panel=FINE)] = _T.fine_tune_lr,
    fine_tune_epochs: Annotated[int, typer.Option(help="Fine-tuning epochs.",
                                                  rich_help_panel=FINE)] = _T.fine_tune_epochs,
    seed: Annotated[int, typer.Option(help="Same data and seed, same metrics.",
                                      rich_help_panel=RUN)] = _T.seed,
    distribute: Annotated[Distribute, typer.Option(
        help="mirrored: tf.distribute.MirroredStrategy over this machine's devices; "
             "multi-worker: every worker of TF_CONFIG runs this same command (worker 0, the "
             "chief, writes the bundle; see README, Training on several machines).",
        rich_help_panel=RUN)] = _T.distribute,
    worker_timeout: Annotated[float, typer.Option(
        help="multi-worker: seconds to wait for another worker before stopping.",
        rich_help_panel=RUN)] = _T.worker_timeout,
    feature_shard_size: Annotated[int, typer.Option(
        help="Images per feature shard: a cache entry, the unit of work shared between "
             "workers, and what the head reads back at a time when the features do not fit "
             "in memory (TRANSFER_FEATURE_MEMORY_MB).", rich_help_panel=RUN)
    ] = _T.feature_shard_size,
    tensorboard: Annotated[Path | None, typer.Option(
        help="Write TensorBoard logs to this folder.", show_default=False,
        rich_help_panel=RUN)] = _T.tensorboard,
    models_dir: Annotated[Path, typer.Option(help="Where bundles go.", rich_help_panel=RUN)
                          ] = _T.models_dir,
    output: Annotated[Path | None, typer.Option(
        help="Bundle folder \\[default: MODELS_DIR/<base>-<timestamp>].", show_default=False,
        rich_help_panel=RUN)] = _T.output,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing bundle at --output (and the data folder's "
        "augment-preview.png with --preview-augment or --preview-only).",
        rich_help_panel=RUN)] = _T.force,
    assert_accuracy_at_least: Annotated[float | None, typer.Option(
        help="Exit with code 3 when the validation accuracy is below this (a CI gate).",
        show_default=False, rich_help_panel=RUN)] = _T.assert_accuracy_at_least,
) -> None:
    """Train a classifier: a new head on a frozen ImageNet base (or the CNN from scratch)."""
    settings = S.TrainSettings(
        data_dir=data_dir, train_dir=train_dir, validate_dir=validate_dir,
        validation_split=validation_split, base=base, alpha=alpha, weights=weights,
        engine=engine, pipeline=pipeline, preview_augment=preview_augment, l2=l2,
        class_weight=class_weight, lr_schedule=lr_schedule,
        assert_accuracy_at_least=assert_accuracy_at_least,
        augment=S.Augment(enabled=augment, rotation=rotation, shift=shift, shear=shear,
                          zoom=zoom, flip=flip),
        augment_copies=augment_copies, tta=tta, image_size=image_size, train_size=train_size,
        dropout=dropout, dense=dense,
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, patience=patience,
        fine_tune=fine_tune, fine_tune_lr=fine_tune_lr, fine_tune_epochs=fine_tune_epochs,
        seed=seed, distribute=distribute, worker_timeout=worker_timeout,
        feature_shard_size=feature_shard_size, tensorboard=tensorboard,
        feature_cache=feature_cache, models_dir=models_dir, output=output, force=force,
        command=_command_line())
    if preview_only:  # what the network would see: drawn in seconds, nothing trained
        from transfer.training import preview

        preview(settings, reporter=_reporter())
        return
    settings.validated()  # every option checked before TensorFlow loads
    from transfer.training import train

    if settings.distribute == "multi-worker":
        _own_temp_folder()
    result = train(settings, reporter=_reporter())
    if result.bundle is None:  # a worker other than the chief: the chief reports the run
        return
    # the model is saved: a Ctrl-C while the summary is said ends the run as it ended (0, or
    # 3 when it missed --assert-accuracy-at-least), not as "interrupted"
    gate = result.meta.get("gate")
    _end_on_signal(3 if gate and not gate["passed"] else 0)
    m, t = result.meta["metrics"], result.meta["timings"]
    from transfer import metrics

    balanced = m.get("val_balanced_accuracy")
    validate = ((result.meta.get("data") or {}).get("counts") or {}).get("validate")
    shown = (f" (balanced accuracy {balanced:.4f})"
             if balanced is not None and metrics.unbalanced(validate) else "")
    among = (f", the best of epochs {m['best_epoch_from']}-{m['epochs_run']}"  # scratch's
             if (m.get("best_epoch_from") or m["epochs_run"]) < m["epochs_run"] else "")
    out.print(f"[bold]{escape(str(result.bundle))}[/bold]: validation accuracy "
              f"{m['val_accuracy']:.4f}{shown}, loss {m['val_loss']:.4f} (best epoch "
              f"{m['best_epoch']} of {m['epochs_run']}{among})", highlight=False, markup=True)
    ahead = (result.meta.get("engine") or {}).get("decoded_ahead")
    speed = (f", base {t['base_images_per_second']} images/s"
             # those photos were decoded by the helper (most before the pass reached them):
             # their decoding is not in the pass's images/s
             + (f" ({ahead} photos decoded ahead)" if ahead else "")
             if t.get("base_images_per_second") else "")
    importing = (f" ({t['tensorflow_import_seconds']:.1f} s of it importing TensorFlow)"
                 if t.get("tensorflow_import_seconds") else "")
    # total_seconds ends with the model trained and validated (meta.json is written after):
    # the bundle's files and its report are said apart, so that no time goes unaccounted
    writing = (f"; then {result.timings.writing:.1f} s writing the bundle and its report"
               if result.timings.writing else "")
    # no feature pass (the CNN from scratch, --augment-copies 0: the base runs every epoch):
    # "feature cache: off; features 0.0 s" read as a cache switched off
    features = (f"feature cache: {result.meta['feature_cache']}; features "
                f"{t['feature_extraction_seconds']:.1f} s, "
                if result.meta.get("engine") is not None else "no feature pass; ")
    out.print(f"{features}training {t['training_seconds']:.1f} s, total "
              f"{t['total_seconds']:.1f} s{importing}{speed}{writing}", highlight=False)
    engine, head = result.meta.get("engine") or {}, result.meta.get("head") or {}
    if engine.get("name"):
        detail = (f" ({engine['interpreter']}, {engine['threads']} threads, parity "
                  f"{engine['parity_max_abs_diff']:.1e})" if engine["name"] == "tflite" else "")
        why = f"; {engine['fallback']}" if engine.get("fallback") else ""
        out.print(f"engine {engine['name']}{detail}{why}", highlight=False)
    if "l2" in head:
        weights = (result.meta.get("training") or {}).get("class_weight") or {}
        out.print(f"head: l2 {head['l2']:g} ({head['l2_chosen_by']}); class weights "
                  f"{weights.get('applied') or 'none'}", highlight=False)
    if result.skipped:
        data = result.meta.get("data") or {}
        used = (f"; trained on {data['train_images']} and validated on "
                f"{data['validate_images']} images" if "train_images" in data else "")
        out.print(f"skipped {len(result.skipped)} unreadable file(s): listed above and in "
                  f"{result.bundle / 'meta.json'}{used}", highlight=False)
    _elsewhere(result.bundle, settings.models_dir)
    _gate(result.meta.get("gate"), "validation accuracy")


def _elsewhere(target: Path, models_dir: Path) -> None:
    """A bundle written outside --models-dir: say that the commands' default model
    (models_dir/latest) is not this one, and how to name it."""
    from transfer.bundle import LATEST

    latest = Path(models_dir) / LATEST
    if latest.resolve() == Path(target).resolve():
        return
    if latest.is_symlink():
        where = (f"still points at {latest.resolve()}" if latest.exists()
                 else f"leads to {os.readlink(latest)}, which does not exist")
    elif latest.exists():  # update_latest leaves a real file or folder of that name alone
        where = "is not a link but a folder or file of yours (left alone), so it is not this model"
    else:
        where = "does not exist"
    beside = Path(target).parent / LATEST  # bundle.update_latest's link, in the bundle's folder
    also = (f" (or --model {beside}, the link beside it)" if beside.is_symlink()
            and beside.resolve() == Path(target).resolve() else "")
    out.print(f"note: {latest} {where}; use --model {target}{also} with predict, evaluate, "
              "explain and export", highlight=False)


# --------------------------------------------------------------------------- predict


def _pct(value) -> str:
    return "" if value is None else f"{value:.4f}"


def _predictions_table(result, console: Console | None = None) -> Table:
    """The predictions as a table: with every class's probability for 2 to 5 classes, in a
    column each when those fit ``console`` (on 60 or 80 columns they were cut to "0.9..." or
    left off), else the other classes in one column (an 80-column terminal showed only the
    top class of five); more classes: the ``--top`` ones in one column. Numbers are never
    squeezed, names fold."""
    classes = result.class_names or []
    per_class = 2 <= len(classes) <= 5
    console = console or out
    # every column at its least (names fold, numbers never), with the borders and padding
    needed = 1 + sum(3 + width for width in (
        FILE_MIN, CLASS_MIN, PROBABILITY_MIN, *[_p_width(name) for name in classes
                                                if per_class]))
    fits = needed <= console.width
    return _predictions(result, per_class=per_class and fits, others=per_class and not fits)


FILE_MIN, CLASS_MIN = 12, 8  # the least widths of the folding columns (60 columns fit all)
PROBABILITY_MIN = len("probability")  # its header, never squeezed


def _p_width(name: str) -> int:
    """The least width of a class's probability column: its header up to 14 characters, and
    never under the 6 of "0.1234"."""
    return max(6, min(14, len(f"p({name})")))


def _predictions(result, per_class: bool, others: bool = False) -> Table:
    ranks = max((len(i.top) for i in result.items), default=0)  # 0: every row an error
    table = Table(title=result.model if result.mode == "bundle" or not ranks
                  else f"{result.model}: top {ranks}")
    table.add_column("file", overflow="fold", min_width=FILE_MIN)
    table.add_column("class", overflow="fold", min_width=CLASS_MIN)
    table.add_column("probability", justify="right", no_wrap=True, min_width=PROBABILITY_MIN)
    classes = result.class_names or []
    if per_class:
        for name in classes:
            header = printable(f"p({name})", newlines=False)
            table.add_column(header, justify="right", overflow="fold", min_width=_p_width(name))
    # (others: every other class, unless every row is an error)
    extra = 0 if per_class else len(classes) - 1 if others and ranks else max(ranks - 1, 0)
    if extra:
        table.add_column(f"next {extra}", overflow="fold")
    for item in result.items:
        if item.error:
            table.add_row(printable(item.file, newlines=False),
                          Text(printable(f"error: {item.error}"), style="red"))
            continue
        label = item.label + (" (inverted)" if (item.image or {}).get("inverted") else "")
        row = [printable(item.file, newlines=False), label, _pct(item.probability)]
        if per_class:
            row += [_pct(item.probabilities[name]) for name in classes]
        if extra:
            ranked = (sorted(((n, p) for n, p in item.probabilities.items() if n != item.label),
                             key=lambda pair: -pair[1]) if others and item.probabilities
                      else [(t["label"], t["probability"]) for t in item.top[1:]])
            row.append("\n".join(f"{name} {p:.4f}" for name, p in ranked))
        table.add_row(*row)
    return table


_P = S.PredictSettings()


@command("predict", examples=[
    "transfer predict elephant.jpg                        # models/latest, else ImageNet mode",
    "transfer predict photos/ 'more/*.jpg' --top 2 --output predictions.csv",
    "transfer predict dog.jpg --imagenet --base mobilenet --alpha 0.25",
    "transfer predict my_digit.png --model models/mnist-cnn --invert auto",
])
def predict_cmd(
    paths: Annotated[list[str], typer.Argument(
        metavar="PATH", help="Image files, folders (recursed) or globs.", show_default=False)],
    model: Annotated[Path | None, typer.Option(
        help="Model bundle folder \\[default: models/latest; without one, ImageNet mode].",
        show_default=False)] = _P.model,
    imagenet: Annotated[bool, typer.Option(
        "--imagenet", help="Classify with --base's pretrained ImageNet classifier.")
    ] = _P.imagenet,
    base: Annotated[PretrainedName, typer.Option(help="Base of ImageNet mode.")] = _P.base,
    alpha: Annotated[float, typer.Option(help="MobileNet width in ImageNet mode.")] = _P.alpha,
    top: Annotated[int | None, typer.Option(
        help="Labels per image, best first \\[default: 1; 3 in ImageNet mode].",
        show_default=False)] = _P.top,
    format: Annotated[PredictFormat | None, typer.Option(
        "--format", help="\\[default: from --output's suffix, else table]", show_default=False)
    ] = _P.format,
    output: Annotated[str | None, typer.Option(help="Write the results to this file (- for "
                                                    "standard output).",
                                               show_default=False)] = _P.output,
    invert: Annotated[Invert | None, typer.Option(
        help="Digit models: is the digit dark on light? \\[default: the bundle's, auto]",
        show_default=False)] = _P.invert,
    batch_size: Annotated[int, typer.Option(help="Images per inference batch.")
                          ] = _P.batch_size,
    models_dir: Annotated[Path, typer.Option(help="Where models/latest is looked for.")
                          ] = _P.models_dir,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --output file.")
                     ] = _P.force,
    engine: Annotated[Engine, typer.Option(
        help="What runs a bundle's model: TensorFlow, TFLite (XNNPACK; converted once, checked "
        "against TensorFlow), or auto: TFLite for a large folder when faster here.")
    ] = _P.engine,
) -> None:
    """Classify images with a trained bundle, or with an ImageNet classifier (--imagenet)."""
    if output is not None and str(output) == "-":  # the Unix convention: standard output
        output = None
    settings = S.PredictSettings(paths=paths, model=model, imagenet=imagenet, base=base,
                                 alpha=alpha, top=top, format=format, output=output,
                                 invert=invert, batch_size=batch_size, models_dir=models_dir,
                                 force=force, engine=engine).validated()
    note = settings.format_note()
    if note:
        _reporter().warn(note)
    from transfer.inference import engine_summary
    from transfer.predict import predict, write_text

    fmt = settings.format  # json and csv are written by predict itself; the table here
    result = predict(settings.replace(output=None) if fmt == "table" else settings,
                     reporter=_reporter())
    if (result.engine or {}).get("name") == "tflite":
        err.print(engine_summary(result.engine), highlight=False)
    if fmt == "table":
        if output is not None:
            recorder = safe_console(record=True, width=160, file=io.StringIO())
            _show(_predictions_table(result, recorder), recorder)
            text = recorder.export_text()
        else:
            _show(_predictions_table(result))
            counts = collections.Counter(i.label for i in result.items if not i.error)
            if len(result.items) > 1 and counts:
                out.print(f"{sum(counts.values())} image(s) classified: " + ", ".join(
                    f"{label}: {n}" for label, n in counts.most_common()), highlight=False)
    elif output is None:
        from transfer.files import write_stream

        write_stream(sys.stdout, result.render(fmt))  # a name not UTF-8 as its bytes
    if output is not None:
        if fmt == "table":
            write_text(output, text, force=force)
        err.print(f"wrote {output}", highlight=False)
    if result.failed:
        err.print(f"[bold red]{result.failed} of {len(result.items)} input(s) failed[/bold red]",
                  highlight=False, markup=True)
        raise typer.Exit(1)


# --------------------------------------------------------------------------- evaluate

_E = S.EvaluateSettings()


@command("evaluate", examples=[
    "transfer evaluate                                    # models/latest on its validation folder",
    "transfer evaluate --data-dir data/test --output reports/test",
    "transfer evaluate --model models/flowers --worst 30 --force   # suspects.csv: mislabeled?",
    "transfer evaluate --assert-accuracy-at-least 0.9  # exit code 3 below 90%",
])
def evaluate_cmd(
    model: Annotated[Path, typer.Option(help="Model bundle folder.")] = _E.model,
    data_dir: Annotated[Path | None, typer.Option(
        help="Folder of class subfolders \\[default: the bundle's validation folder].",
        show_default=False)] = _E.data_dir,
    output: Annotated[Path | None, typer.Option(
        help="Where report.json and the pictures go \\[default: the bundle].",
        show_default=False)] = _E.output,
    batch_size: Annotated[int, typer.Option(help="Images per inference batch.")
                          ] = _E.batch_size,
    worst: Annotated[int, typer.Option(
        help="The N most confident mistakes: misclassified.png and suspects.csv (mislabeled?).")
    ] = _E.worst,
    assert_accuracy_at_least: Annotated[float | None, typer.Option(
        help="Exit with code 3 when the accuracy is below this (a CI gate).",
        show_default=False)] = _E.assert_accuracy_at_least,
    force: Annotated[bool, typer.Option("--force",
                                        help="Replace another evaluation's outputs.")
                     ] = _E.force,
    engine: Annotated[Engine, typer.Option(
        help="What runs the model: TensorFlow, TFLite (XNNPACK; converted once, checked "
        "against TensorFlow), or auto: TFLite for a large folder when faster here.")
    ] = _E.engine,
) -> None:
    """Accuracy, per-class precision/recall/F1, ROC AUC, confusion matrix and worst mistakes."""
    settings = S.EvaluateSettings(model=model, data_dir=data_dir, output=output,
                                  batch_size=batch_size, worst=worst,
                                  assert_accuracy_at_least=assert_accuracy_at_least,
                                  force=force, engine=engine).validated()
    from transfer.evaluate import evaluate, evaluated_on
    from transfer.inference import engine_summary

    result = evaluate(settings, reporter=_reporter())
    r = result.report
    # not the whole folder when it was split: the other photos trained the model
    table = Table(title=f"{r['model']} on {evaluated_on(r['data_dir'], r.get('subset'))} "
                        f"({r['images']} images)")
    for column in ("class", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, row in r["per_class"].items():
        table.add_row(name, _pct(row["precision"]), _pct(row["recall"]), _pct(row["f1"]),
                      str(row["support"]))
    macro = r["macro_avg"]
    table.add_row("macro average", _pct(macro["precision"]), _pct(macro["recall"]),
                  _pct(macro["f1"]), str(r["images"]), style="bold")
    from transfer.metrics import macro_note

    table.caption = macro_note(r["per_class"])
    _show(table)
    names = r["class_names"]
    matrix = Table(title="Confusion matrix", caption="rows: true class; columns: predicted")
    matrix.add_column("")
    for name in names:
        matrix.add_column(name, justify="right")
    for name, counts in zip(names, r["confusion_matrix"], strict=True):
        matrix.add_row(name, *(str(c) for c in counts))
    _show(matrix if _fits(matrix) else _confusions(r["confusion_matrix"], names))
    auc = (f", ROC AUC {r['roc_auc']:.4f} ({r['roc_auc_positive_class']} positive)"
           if r["roc_auc"] is not None else "")
    out.print(f"[bold]accuracy {r['accuracy']:.4f}[/bold], loss {r['loss']:.4f}, balanced "
              f"accuracy {r['balanced_accuracy']:.4f}, macro F1 {r['macro_f1']:.4f}"
              f"{escape(auc)}", highlight=False, markup=True)
    trained = r.get("training_metrics") or {}
    if r["is_training_validation_folder"] and trained.get("val_accuracy") is not None:
        shown_again = (f" on the split it made then (this one holds {r['training_images']} of "
                       "its training images)" if r.get("training_images") else "")
        then = r.get("training_validate_images")
        if not shown_again and then and then != r["images"]:  # both count usable images
            shown_again = (f" on {then} images (this evaluation has {r['images']}: the folder "
                           "changed since)")
        out.print(f"training reported validation accuracy {trained['val_accuracy']:.4f}"
                  f"{shown_again}", highlight=False)
    if r.get("engine"):
        out.print(engine_summary(r["engine"]), highlight=False)
    if r["skipped"]:
        out.print(f"skipped {len(r['skipped'])} unreadable image(s) (listed in report.json)")
    written = [name for name in ("confusion.png", "misclassified.png", "suspects.csv",
                                 "report.html") if (result.output / name).is_file()]
    out.print(f"wrote {result.output / 'report.json'}, {', '.join(written)}", highlight=False)
    _gate(r.get("gate"), "accuracy")


def _confusions(matrix: list[list[int]], names: list[str], most: int = 15) -> Table:
    """The most frequent confusions, for a confusion matrix too wide for the console."""
    pairs = sorted(((count, t, p) for t, row in enumerate(matrix) for p, count in enumerate(row)
                    if t != p and count), key=lambda c: (-c[0], c[1], c[2]))
    table = Table(title=f"Most frequent confusions ({len(names)} classes: the whole matrix is "
                  "in confusion.png and report.json)",
                  caption=f"{min(most, len(pairs))} of {len(pairs)} confused pairs"
                  if pairs else "no image was confused")
    for column in ("true class", "predicted", "images"):
        table.add_column(column, justify="right" if column == "images" else "left")
    for count, t, p in pairs[:most]:
        table.add_row(names[t], names[p], str(count))
    return table


def _gate(gate: dict | None, what: str) -> None:
    """Exit code 3 with one line when --assert-accuracy-at-least was not met."""
    if gate and not gate["passed"]:
        from transfer.errors import GateFailed
        from transfer.metrics import below

        raise GateFailed(f"{what} {below(gate['accuracy'], gate['threshold'])} is below "
                         f"--assert-accuracy-at-least {gate['threshold']:g}")




# --------------------------------------------------------------------------- explain, export

_X = S.ExplainSettings()


@command("explain", examples=[
    "transfer explain dog.jpg                       # writes dog.gradcam.png beside it",
    "transfer explain dog.jpg --class cats --output why-not-a-cat.png",
    "transfer explain my_digit.png --model models/mnist-cnn",
    "transfer explain data/validate --output gradcam/        # every photo, one model load",
])
def explain_cmd(
    images: Annotated[list[Path], typer.Argument(
        metavar="IMAGES", help="The image(s) to explain: files, folders, globs.",
        show_default=False)],
    model: Annotated[Path, typer.Option(help="Model bundle folder.")] = _X.model,
    output: Annotated[Path | None, typer.Option(
        help="The PNG to write for one image, the folder for several \\[default: beside each "
        "image, <name>.gradcam.png].", show_default=False)] = _X.output,
    class_name: Annotated[str | None, typer.Option(
        "--class", help="Explain this class instead of the predicted one.",
        show_default=False)] = _X.class_name,
    invert: Annotated[Invert | None, typer.Option(help="Digit models only.",
                                                  show_default=False)] = _X.invert,
    force: Annotated[bool, typer.Option("--force", help="Replace existing PNGs.")
                     ] = _X.force,
) -> None:
    """Grad-CAM: a heatmap of where the model looked for its prediction, saved as PNG."""
    import glob

    one = len(images) == 1 and not images[0].is_dir() and (
        images[0].exists() or not glob.has_magic(str(images[0])))
    settings = S.ExplainSettings(image=images[0] if one else None,
                                 images=None if one else images, model=model, output=output,
                                 class_name=class_name, invert=invert, force=force).validated()
    from transfer.explain import explain, explain_all

    if one:
        _explained(images[0], explain(settings))
        return
    rows = explain_all(settings, reporter=_reporter())
    failed = 0
    for row in rows:
        if row.explanation is None:
            failed += 1
            err.print(printable(f"{row.image}: {row.error}", newlines=False), highlight=False,
                      markup=False)
        else:
            r = row.explanation
            predicted = max(r.probabilities, key=r.probabilities.get)
            out.print(printable(f"{escape(row.image)}: predicted [bold]{escape(predicted)}"
                                f"[/bold]{_inverted(r)} {r.probabilities[predicted]:.4f}; "
                                f"Grad-CAM of {escape(r.label)} -> "
                                f"{escape(str(r.png))}{escape(_empty(r))}", newlines=False),
                      highlight=False, markup=True)
    written = len(rows) - failed
    where = f"in {output}" if output is not None else "beside the images"
    out.print(f"wrote {written} Grad-CAM picture{'' if written == 1 else 's'} {where}"
              + (f"; {failed} image{'' if failed == 1 else 's'} failed" if failed else ""),
              highlight=False, markup=False)
    if failed:
        raise typer.Exit(1)


def _inverted(result) -> str:
    """" (inverted)" for a digit drawn dark on light, as predict's table says it."""
    return " (inverted)" if result.inverted else ""


def _explained(image, result) -> None:
    predicted = max(result.probabilities, key=result.probabilities.get)
    out.print(printable(f"{escape(str(image))}: predicted [bold]{escape(predicted)}[/bold]"
                        f"{_inverted(result)} {result.probabilities[predicted]:.4f}; Grad-CAM "
                        f"of {escape(result.label)} at layer {result.layer} "
                        f"({result.heatmap.shape[0]}x{result.heatmap.shape[1]} maps)"
                        f"{escape(_empty(result))}", newlines=False),
              highlight=False, markup=True)
    out.print(printable(f"wrote {result.png}", newlines=False), highlight=False, markup=False)


def _empty(explanation) -> str:
    """What a blank heatmap means, said (the picture is a plain blue overlay): no region of
    the image raises the class's score, which Grad-CAM's ReLU then shows as nothing; a map
    that is not a number is broken, not empty (``plots.map_state``, as the picture says)."""
    from transfer.plots import map_state

    state = map_state(explanation.heatmap)
    if state == "nan":
        return "; the map is not a number: the model's outputs are not numbers (diverged?)"
    if state == "empty":
        return f"; the map is empty: no region raises the score of {explanation.label}"
    return ""


_O = S.ExportSettings()


@command("export", examples=[
    "transfer export                                  # models/latest as TFLite, checked",
    "transfer export --format savedmodel --output serving/cats-vs-dogs",
    "transfer export --model models/mnist-cnn --check-images digits/",
    "transfer export --quantize int8 --output cats-vs-dogs-int8.tflite",
])
def export_cmd(
    model: Annotated[Path, typer.Option(help="Model bundle folder.")] = _O.model,
    format: Annotated[ExportFormat, typer.Option("--format", help="What to export as.")
                      ] = _O.format,
    output: Annotated[Path | None, typer.Option(
        help="File (.keras, .tflite) or folder (SavedModel) \\[default: MODEL/export/model.*, "
             "model-QUANTIZE.tflite].",
        show_default=False)] = _O.output,
    check_images: Annotated[list[Path] | None, typer.Option(
        metavar="<path>", help="Images (or folders, repeatable) to check the export on "
        "\\[default: the bundle's validation images].", show_default=False)] = _O.check_images,
    quantize: Annotated[Quantize, typer.Option(
        help="TFLite only: dynamic-range, float16 or int8 weights (int8 calibrated on training "
        "images); accuracy and size reported beside the float model's.")] = _O.quantize,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing export.")
                     ] = _O.force,
) -> None:
    """Export the model (Keras, SavedModel, TFLite) and check its outputs against Keras's."""
    settings = S.ExportSettings(model=model, format=format, output=output,
                                check_images=check_images, quantize=quantize,
                                force=force).validated()
    from transfer.export import export

    result = export(settings, reporter=_reporter())
    c = result.comparison
    if c is None:
        out.print(f"[bold]{escape(str(result.path))}[/bold] ({result.format}); check on "
                  f"{result.n_images} images from {escape(str(result.check_source))}: max abs "
                  f"difference {result.max_abs_diff:.2e} <= {result.tolerance:g} "
                  "[green]passed[/green]", highlight=False, markup=True)
    else:
        q, f = c["quantized"], c["float"]
        variant = f", {q['variant']}" if q.get("variant") not in (None, q["mode"]) else ""
        table = Table(title=f"{result.path} ({q['mode']}{variant}) on {c['images']} images "
                            f"from {c['source']}")
        for column in ("model", "accuracy", "size (bytes)"):
            table.add_column(column, justify="left" if column == "model" else "right")
        table.add_row("float TFLite", _pct(f["accuracy"]), f"{f['bytes']:,}")
        table.add_row(f"{q['mode']} TFLite", _pct(q["accuracy"]), f"{q['bytes']:,}")
        _show(table)
        out.print(f"size {c['size_ratio']:.2f}x of the float model; agreement with it "
                  f"{c['agreement']:.3f}; {c['confident_changed']} of the "
                  f"{c['confident_images']} confident images changed class; check "
                  "[green]passed[/green]", highlight=False, markup=True)
    out.print(f"class names and input recipe: {result.meta_path}", highlight=False)


# --------------------------------------------------------------------------- mnist

_M = S.MnistParams()


@command("mnist", examples=[
    "transfer mnist                                   # downloads MNIST through Keras",
    "transfer mnist --data ../shared/data/mnist       # offline: the four IDX files",
    "transfer mnist --data mnist.npz --limit 6000 --epochs 1 --batch-size 16",
    "transfer mnist --dataset fashion --arch tiny --output models/fashion-tiny",
])
def mnist_cmd(
    dataset: Annotated[MnistDataset, typer.Option(help="Which data set.")] = _M.dataset,
    arch: Annotated[MnistArch, typer.Option(
        help="cnn: the course's CNN; tiny: one convolution.")] = _M.arch,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = _M.epochs,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = _M.batch_size,
    validation_split: Annotated[float, typer.Option(help="Fraction held out for validation.")
                                ] = _M.validation_split,
    learning_rate: Annotated[float, typer.Option(help="Adam's learning rate.")
                             ] = _M.learning_rate,
    ema: Annotated[float, typer.Option(
        help="Momentum of the moving average of weights the model ends with; 0 = plain Adam.")
                   ] = _M.ema,
    label_smoothing: Annotated[float, typer.Option(
        help="Label smoothing of the cross-entropy's targets; 0 = off.")] = _M.label_smoothing,
    shift: Annotated[int, typer.Option(
        help="Shift each training image by up to this many pixels; 0 = off.")] = _M.shift,
    data: Annotated[Path | None, typer.Option(
        help="A Keras-style mnist.npz or a folder with the four IDX files (offline).",
        show_default=False)] = _M.data,
    limit: Annotated[int | None, typer.Option(
        help="Use the first N training images only (--validation-split of them are held out "
             "to validate).", show_default=False)] = _M.limit,
    output: Annotated[Path | None, typer.Option(
        help="Bundle folder \\[default: models/DATASET-ARCH, e.g. models/mnist-cnn, "
             "models/fashion-tiny].",
        show_default=False)] = _M.output,
    seed: Annotated[int, typer.Option(help="Random seed.")] = _M.seed,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle.")
                     ] = _M.force,
) -> None:
    """Train the small MNIST CNN from scratch (the baseline) and draw what it learned."""
    params = S.MnistParams(dataset=dataset, arch=arch, epochs=epochs, batch_size=batch_size,
                           validation_split=validation_split, data=data, limit=limit,
                           learning_rate=learning_rate, ema=ema,
                           label_smoothing=label_smoothing, shift=shift, output=output, seed=seed,
                           force=force, command=_command_line()).validated()
    from transfer.mnist import run

    result = run(params, reporter=_reporter())
    table = Table(title=f"{arch} model")
    for column in ("layer", "output shape", "parameters"):
        table.add_column(column, justify="right" if column == "parameters" else "left")
    for name, shape, n_params in result.summary:
        table.add_row(name, shape, f"{n_params:,}")
    _show(table)
    noise = Table(title="Test accuracy under Gaussian noise")
    noise.add_column("sigma", justify="right")
    noise.add_column("accuracy", justify="right")
    for sigma, accuracy in result.noise:
        noise.add_row(f"{sigma:.1f}", f"{accuracy:.4f}")
    _show(noise)
    m = result.meta["metrics"]
    out.print(f"[bold]{escape(str(result.bundle))}[/bold]: test accuracy "
              f"{m['test_accuracy']:.4f}, loss {m['test_loss']:.4f}; pictures: samples.png "
              "confusion.png misclassified.png filters.png feature_maps.png noise.png curves.png",
              highlight=False, markup=True)


# --------------------------------------------------------------------------- compare

_C = S.CompareSettings()


def _run_names(value: str) -> str:
    """compare's --runs: an unknown name is a usage error (exit code 2), as for --base."""
    for name in (n.strip() for n in value.split(",")):
        if name and name not in S.COMPARE_RUNS:
            raise typer.BadParameter(f"{name!r} is not one of "
                                     + ", ".join(map(repr, S.COMPARE_RUNS)) + ".")
    return value


@command("compare", examples=[
    "transfer compare --data-dir data --output runs/compare",
    "transfer compare --runs scratch,frozen --output runs/two",
    "transfer compare --data-dir ~/flowers --output runs/flowers --force",
])
def compare_cmd(
    data_dir: Annotated[Path, typer.Option(
        help="train/ + validate/, or one folder per class (as transfer train).")] = _C.data_dir,
    output: Annotated[Path, typer.Option(help="Where the bundles and compare.json go.")
                      ] = _C.output,
    runs: Annotated[str, typer.Option(
        help="Comma-separated: scratch (the CNN from scratch), frozen (a new head on the "
        "frozen base), fine-tuned (then its top layers trained too).", callback=_run_names)
    ] = ",".join(_C.runs),
    base: Annotated[PretrainedName, typer.Option(
        help="The pretrained base of frozen and fine-tuned.")
                    ] = _C.base,
    alpha: Annotated[float | None, typer.Option(
        help="MobileNet width \\[default: 0.25 for mobilenet].", show_default=False)
    ] = _C.alpha,
    validation_split: Annotated[float, typer.Option(
        help="Fraction held out when --data-dir holds the class folders.")
    ] = _C.validation_split,
    fine_tune: Annotated[int, typer.Option(help="Base layers unfrozen in the fine-tuned run.")
                         ] = _C.fine_tune,
    seed: Annotated[int, typer.Option(help="One seed for every run.")] = _C.seed,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier comparison.")
                     ] = _C.force,
) -> None:
    """The course's punchline: train from scratch, frozen and fine-tuned on one split, compare."""
    settings = S.CompareSettings(data_dir=data_dir, output=output, runs=runs.split(","),
                                 base=base, alpha=alpha, validation_split=validation_split,
                                 fine_tune=fine_tune, seed=seed, force=force).validated()
    from transfer.compare import compare

    result = compare(settings, reporter=_reporter())
    _show(compare_table(result.runs, f"compare on {settings.data_dir}"))
    from transfer.compare import notes

    for note in notes(result.data):
        out.print(note, highlight=False)
    out.print(f"wrote {result.output / 'compare.json'}, compare.png and report.html",
              highlight=False)


def compare_table(runs: dict, title: str) -> Table:
    """compare's table: a row per run (compare.json's ``runs``)."""
    from transfer.compare import epochs_cell, shows_balanced

    balanced = shows_balanced(runs)  # unbalanced classes: beside the accuracy
    table = Table(title=title)
    for column in ("run", "validation accuracy", *(["balanced accuracy"] if balanced else []),
                   "loss", "macro F1", "epochs (kept)", "seconds", "parameters trained"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for name, row in runs.items():
        table.add_row(name, _pct(row.get("val_accuracy")),
                      *([_pct(row.get("balanced_accuracy"))] if balanced else []),
                      _pct(row.get("val_loss")), _pct(row.get("macro_f1")), epochs_cell(row),
                      f"{row.get('seconds', 0):.0f}", f"{row.get('parameters_trained', 0):,}")
    return table


# --------------------------------------------------------------------------- serve, report

_V = S.ServeSettings()


@command("serve", examples=[
    "transfer serve                                   # http://127.0.0.1:8000, models/ bundles",
    "transfer serve --imagenet --base mobilenet --alpha 0.25",
    "transfer serve --model mnist-cnn --port 8080",
])
def serve_cmd(
    models_dir: Annotated[Path, typer.Option(help="Folder of bundles to offer.")
                          ] = _V.models_dir,
    model: Annotated[str | None, typer.Option(
        help="The page's default bundle: a name inside --models-dir, or its path "
             "(models/NAME).", show_default=False)
    ] = _V.model,
    imagenet: Annotated[bool, typer.Option(
        "--imagenet", help="Make --base's ImageNet classifier the page's default model.")
    ] = _V.imagenet,
    base: Annotated[PretrainedName, typer.Option(help="Base of ImageNet mode.")] = _V.base,
    alpha: Annotated[float, typer.Option(help="MobileNet width in ImageNet mode.")] = _V.alpha,
    host: Annotated[str, typer.Option(
        help="Address to bind (0.0.0.0: every interface, with a warning).")] = _V.host,
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = _V.port,
    max_upload_mb: Annotated[float, typer.Option(
        help="Largest request body accepted, in MiB (2^20 bytes: 20 = 20,971,520 bytes).")
    ] = _V.max_upload_mb,
    top: Annotated[int, typer.Option(help="Classes shown per image.")] = _V.top,
    cache_size: Annotated[int, typer.Option(help="Models kept loaded (least recently used "
                                            "dropped first).")] = _V.cache_size,
) -> None:
    """A web page and an HTTP API (/api/predict, /api/explain, /docs) for trained models."""
    settings = S.ServeSettings(models_dir=models_dir, model=model, imagenet=imagenet, base=base,
                               alpha=alpha, host=host, port=port, max_upload_mb=max_upload_mb,
                               top=top, cache_size=cache_size).validated()
    import signal

    from transfer.serve import run

    stopped_by = run(settings, reporter=_reporter())
    if stopped_by is not None:  # stopped cleanly ("stopped" said): the usual exit codes
        raise typer.Exit(143 if stopped_by == signal.SIGTERM else 130)


_R = S.ReportSettings()


@command("report", examples=[
    "transfer report                                  # models/latest/report.html",
    "transfer report reports/test                     # an evaluation's folder",
])
def report_cmd(
    folder: Annotated[Path, typer.Argument(
        metavar="FOLDER", help="A bundle, an evaluation's output folder or a comparison's "
                               "(transfer compare --output).")] = _R.folder,
    output: Annotated[str | None, typer.Option(  # a str: Path() would drop a trailing "/"
        help="HTML file to write \\[default: FOLDER/report.html].", show_default=False)
    ] = _R.output,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an --output file that is not a transfer report, or write "
                        "into another bundle's, evaluation's or comparison's folder.")] = _R.force,
) -> None:
    """Rebuild the one-file HTML report (curves, confusion matrix, mistakes, Grad-CAM)."""
    settings = S.ReportSettings(folder=folder, output=output, force=force).validated()
    from transfer.report import write_report

    notes: list[str] = []  # what the page skips (broken, or gone), said there and here
    path = write_report(settings.folder, settings.output, force=settings.force, notes=notes)
    reporter = _reporter()
    for note in notes:
        reporter.warn(note)
    out.print(f"wrote {path}", highlight=False)


def hoisted_verbose(args: list[str]) -> list[str]:
    """``args`` with a ``--verbose``/``-v`` given after the command moved before it, where the
    top-level option is read (``transfer train --verbose`` as ``transfer --verbose train``);
    nothing after a ``--`` is touched."""
    args = list(args)
    command = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if command is None:
        return args
    end = args.index("--") if "--" in args[command:] else len(args)
    flags = [i for i in range(command + 1, end) if args[i] in ("--verbose", "-v")]
    for i in reversed(flags):
        del args[i]
    return ["--verbose"] * bool(flags) + args


def main() -> None:
    """Console-script entry point."""
    _own_temp_folder("transfer-run-")
    _state["console"] = True
    from transfer.files import names_as_their_bytes

    # a table or line naming a class folder of a Latin-1 USB stick ended a finished split in a
    # UnicodeEncodeError traceback on a desktop's strict UTF-8 stdout (stderr is lenient)
    names_as_their_bytes(sys.stdout)
    try:
        app(args=hoisted_verbose(sys.argv[1:]), prog_name="transfer")
    except SystemExit as exc:
        _leave_cluster(exc.code)
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else None
        if code is not None and "tensorflow" in sys.modules:
            # done (its files written and its lines said; or interrupted, its clean-up done):
            # end now. Python's shutdown with TensorFlow loaded takes a second or more, and
            # (1) freeing a Keras fit's tf.data iterator waits for its prefetch thread, which
            # waits for the GIL that the freeing holds: a Ctrl-C in fit then hung the process
            # for ever at exit; (2) late in it Python puts the default handlers back, and a
            # Ctrl-C there made a finished run die by SIGINT (130, no line)
            _exit_now(code)
        raise
    except BaseException:
        if sys.modules.get("transfer.cluster") and sys.modules["transfer.cluster"].JOINED:
            import traceback

            traceback.print_exc()  # a bug: said in full before the process ends at once
        _leave_cluster(1)
        raise
    _leave_cluster(0)


_TEMP_FOLDERS: list[str] = []


def _own_temp_folder(prefix: str = "transfer-worker-") -> None:
    """Point this process's temp files into a folder of its own, removed when it ends.

    An interrupted run and a multi-worker process end with ``os._exit`` (``main``,
    ``_leave_cluster``), which skips the atexit handlers TensorFlow's autograph registers to
    delete the modules it generates in the temp folder: without this they stayed there, one or
    two for a Ctrl-C'd export or train, a dozen or so for a worker's run. A process killed
    outright (SIGKILL) leaves its folder to the next run of the same ``prefix``, which removes
    it."""
    import atexit
    import shutil
    import tempfile

    from transfer.files import own_temp_folder_prefix, sweep_temp_folders

    if _TEMP_FOLDERS:  # one folder a process: a worker's replaces the one main made
        tempfile.tempdir = os.path.dirname(_TEMP_FOLDERS[0])
        _remove_temp_folders()
        _TEMP_FOLDERS.clear()
    try:  # gettempdir (in both) raises FileNotFoundError when no folder is writable
        sweep_temp_folders(prefix)  # those of processes killed before they could
        folder = tempfile.mkdtemp(prefix=own_temp_folder_prefix(prefix))
    except OSError:  # no temp folder to write in: the commands say so when they need one
        return
    tempfile.tempdir = folder
    _TEMP_FOLDERS.append(folder)
    atexit.register(shutil.rmtree, folder, True)  # an ordinary exit (a worker that never joined)


def _exit_now(code: int) -> None:
    """End the process with ``code`` at once, its output flushed and its temporary folder
    removed (``os._exit`` runs no atexit handler)."""
    import logging

    for stream in (sys.stdout, sys.stderr):
        try:  # what is still buffered (predict's CSV) goes now: a full disk or a reader gone
            if stream is not None:  # (`| head`) fails here, as Python's own exit would
                stream.flush()
        except (OSError, ValueError) as exc:
            code = code or 120  # Python's exit status when it cannot flush stdout
            import errno

            if stream is sys.stdout and getattr(exc, "errno", None) not in (None, errno.EPIPE):
                with contextlib.suppress(Exception):  # a full disk is said; a closed pipe not
                    sys.stderr.write(f"error: could not write the output ({exc.strerror})\n")
                    sys.stderr.flush()
    with contextlib.suppress(Exception):
        logging.shutdown()
    _remove_temp_folders()
    os._exit(code)


def _remove_temp_folders() -> None:
    import shutil

    for folder in _TEMP_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


def _leave_cluster(status) -> None:
    """A process that joined a multi-worker cluster ends here, now: TensorFlow's collective
    runtime can hang the interpreter's shutdown once a peer is gone (the one line has been
    said; nothing is left to write)."""
    joined = sys.modules.get("transfer.cluster")
    if joined is None or not joined.JOINED:
        return
    if not isinstance(status, int):
        status = 0 if status is None else 1
    sys.stdout.flush()
    sys.stderr.flush()
    import signal

    if threading.current_thread() is threading.main_thread():  # ending: a second Ctrl-C (the
        for sig in (signal.SIGINT, signal.SIGTERM):  # terminal's, then the launcher's) must
            signal.signal(sig, signal.SIG_IGN)  # not break the linger with a traceback
    # the others may still be fetching this worker's part of the last collective (a receiver
    # pulls it from the sender): leaving at once failed theirs as "a worker is down" where it
    # had succeeded (seen twice in CI, two workers and the rest of the suite on 2 cores)
    time.sleep(joined.LINGER_SECONDS)
    _remove_temp_folders()
    os._exit(status)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
