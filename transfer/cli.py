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


# --------------------------------------------------------------------------- bases, train


@command("bases")
def bases_cmd() -> None:
    """List the bases: Keras class, input size, parameters, ImageNet weights cached or not."""
    from transfer import bases

    table = Table(title=f"Bases (Keras weight cache: {bases.keras_cache_dir()})")
    for column in ("name", "Keras class", "input", "min", "preprocessing", "parameters",
                   "ImageNet weights"):
        table.add_column(column, justify="right" if column in ("input", "min", "parameters")
                         else "left")
    for base in bases.BASES.values():
        alphas = bases.MOBILENET_ALPHAS if base.has_alpha else (1.0,)
        for alpha in alphas:
            name = f"{base.name} --alpha {alpha}" if base.has_alpha else base.name
            cached = ("-" if not base.pretrained
                      else "cached" if bases.cached_weights(base, alpha) else "not cached")
            table.add_row(name, base.keras_class or "Conv32-Pool-Conv32-Pool (from scratch)",
                          str(base.size), str(base.min_size), base.preprocess,
                          f"{bases.count_params(base, alpha):,}", cached)
    out.print(table)


@command("train")
def train_cmd(
    base: Annotated[str, typer.Option(help="inception | vgg16 | mobilenet | mobilenetv2 | "
                                      "resnet50 | efficientnetb0 | scratch")] = "inception",
    alpha: Annotated[float, typer.Option(help="MobileNet width: 1.0, 0.75, 0.5 or 0.25.")] = 1.0,
    weights: Annotated[str, typer.Option(help="imagenet | none | PATH to a weights file.")
                       ] = "imagenet",
    data_dir: Annotated[Path, typer.Option(help="Folder with train/ and validate/.")
                        ] = Path("data"),
    train_dir: Annotated[Path | None, typer.Option(help="Default: DATA_DIR/train.")] = None,
    validate_dir: Annotated[Path | None, typer.Option(help="Default: DATA_DIR/validate.")
                            ] = None,
    pipeline: Annotated[str, typer.Option(help="generator (ImageDataGenerator) | tfdata.")
                        ] = "generator",
    augment: Annotated[bool, typer.Option(help="Augment training images.")] = True,
    augment_copies: Annotated[int, typer.Option(
        help="Augmented feature copies cycled across epochs; 0: run the base every epoch.")] = 1,
    rotation: Annotated[float, typer.Option(help="Rotation range, degrees.")] = 20.0,
    shift: Annotated[float, typer.Option(help="Width/height shift, fraction.")] = 0.2,
    shear: Annotated[float, typer.Option(help="Shear, degrees.")] = 0.2,
    zoom: Annotated[float, typer.Option(help="Zoom range, +- fraction.")] = 0.2,
    flip: Annotated[bool, typer.Option(help="Random horizontal flips.")] = True,
    image_size: Annotated[int | None, typer.Option(help="Override the base's input size.")
                          ] = None,
    dropout: Annotated[float, typer.Option(help="Dropout before the classifier.")] = 0.2,
    dense: Annotated[int, typer.Option(help="Hidden Dense units in the head (0: none).")] = 0,
    epochs: Annotated[int, typer.Option(help="Head training epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate of the head.")
                             ] = 1e-3,
    patience: Annotated[int, typer.Option(help="Early stopping patience (validation loss).")
                        ] = 3,
    fine_tune: Annotated[int, typer.Option(help="Unfreeze the top N base layers afterwards.")
                         ] = 0,
    fine_tune_lr: Annotated[float, typer.Option(help="Learning rate of fine-tuning.")] = 1e-5,
    fine_tune_epochs: Annotated[int, typer.Option(help="Fine-tuning epochs.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed: same data + seed, same metrics.")] = 42,
    distribute: Annotated[str, typer.Option(help="none | mirrored (MirroredStrategy).")
                          ] = "none",
    tensorboard: Annotated[Path | None, typer.Option(help="Write TensorBoard logs here.")
                           ] = None,
    feature_cache: Annotated[bool, typer.Option(help="Cache base features on disk.")] = True,
    models_dir: Annotated[Path, typer.Option(help="Where bundles go.")] = Path("models"),
    output: Annotated[Path | None, typer.Option(help="Bundle folder (default: "
                                                "MODELS_DIR/<base>-<timestamp>).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing bundle at --output.")
                     ] = False,
) -> None:
    """Train a classifier: a new head on a frozen ImageNet base (or the CNN from scratch)."""
    from transfer.pipelines import Augment
    from transfer.training import HParams, train

    hp = HParams(
        data_dir=data_dir, train_dir=train_dir, validate_dir=validate_dir, base=base,
        alpha=alpha, weights=weights, pipeline=pipeline,
        augment=Augment(enabled=augment, rotation=rotation, shift=shift, shear=shear,
                        zoom=zoom, flip=flip),
        augment_copies=augment_copies, image_size=image_size, dropout=dropout, dense=dense,
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, patience=patience,
        fine_tune=fine_tune, fine_tune_lr=fine_tune_lr, fine_tune_epochs=fine_tune_epochs,
        seed=seed, distribute=distribute, tensorboard=tensorboard, feature_cache=feature_cache,
        models_dir=models_dir, output=output, force=force,
        command="transfer " + " ".join(sys.argv[1:]))
    result = train(hp, reporter=_reporter())
    m, t = result.meta["metrics"], result.meta["timings"]
    out.print(f"[bold]{result.bundle}[/bold]: validation accuracy {m['val_accuracy']:.4f}, "
              f"loss {m['val_loss']:.4f} (best epoch {m['best_epoch']} of {m['epochs_run']})",
              highlight=False)
    speed = (f", base {t['base_images_per_second']} images/s"
             if t["base_images_per_second"] else "")
    out.print(f"feature cache: {result.meta['feature_cache']}; features "
              f"{t['feature_extraction_seconds']:.1f} s, training {t['head_training_seconds']:.1f}"
              f" s, total {t['total_seconds']:.1f} s{speed}", highlight=False)


# --------------------------------------------------------------------------- mnist


@command("mnist")
def mnist_cmd(
    dataset: Annotated[str, typer.Option(help="mnist | fashion.")] = "mnist",
    arch: Annotated[str, typer.Option(help="cnn (the seeds' CNN) | tiny (one convolution).")
                    ] = "cnn",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 128,
    validation_split: Annotated[float, typer.Option(help="Fraction held out for validation.")
                                ] = 0.1,
    data: Annotated[Path | None, typer.Option(
        help="A Keras-style mnist.npz or a folder with the four IDX files (offline).")] = None,
    limit: Annotated[int | None, typer.Option(help="Train on the first N images only.")
                     ] = None,
    output: Annotated[Path | None, typer.Option(
        help="Bundle folder (default models/mnist-cnn or models/fashion-cnn).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    force: Annotated[bool, typer.Option(help="Replace an existing bundle.")] = False,
) -> None:
    """Train the MNIST CNN from scratch (the baseline) and draw what it learned."""
    from transfer.mnist import MnistParams, run

    result = run(MnistParams(dataset=dataset, arch=arch, epochs=epochs, batch_size=batch_size,
                             validation_split=validation_split, data=data, limit=limit,
                             output=output, seed=seed, force=force,
                             command="transfer " + " ".join(sys.argv[1:])),
                 reporter=_reporter())
    table = Table(title=f"{arch} model")
    for column in ("layer", "output shape", "parameters"):
        table.add_column(column, justify="right" if column == "parameters" else "left")
    for name, shape, params in result.summary:
        table.add_row(name, shape, f"{params:,}")
    out.print(table)
    noise = Table(title="Test accuracy under Gaussian noise")
    noise.add_column("sigma", justify="right")
    noise.add_column("accuracy", justify="right")
    for sigma, accuracy in result.noise:
        noise.add_row(f"{sigma:.1f}", f"{accuracy:.4f}")
    out.print(noise)
    m = result.meta["metrics"]
    out.print(f"[bold]{result.bundle}[/bold]: test accuracy {m['test_accuracy']:.4f}, "
              f"loss {m['test_loss']:.4f}; pictures: samples.png confusion.png "
              "misclassified.png filters.png feature_maps.png noise.png curves.png",
              highlight=False)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="transfer")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
