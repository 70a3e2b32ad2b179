"""The `transfer` command line: parse, call the library, print. No work happens here."""

from __future__ import annotations

import collections
import functools
import io
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
    out.print(f"Split in {result.data_dir} (source: {result.source}, seed {seed})",
              highlight=False)
    table = Table()
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


# --------------------------------------------------------------------------- predict


def _pct(value) -> str:
    return "" if value is None else f"{value:.4f}"


def _predictions_table(result) -> Table:
    ranks = max((len(i.top) for i in result.items), default=1)
    table = Table(title=result.model if result.mode == "bundle"
                  else f"{result.model}: top {ranks}")
    table.add_column("file", overflow="fold", min_width=16)
    table.add_column("class", overflow="fold", min_width=10)
    table.add_column("probability", justify="right")
    classes = result.class_names or []
    per_class = 2 <= len(classes) <= 5
    if per_class:
        for name in classes:
            table.add_column(f"p({name})", justify="right")
    extra = 0 if per_class else ranks - 1
    if extra:
        table.add_column(f"next {extra}", overflow="fold")
    for item in result.items:
        if item.error:
            table.add_row(item.file, f"[red]error: {item.error}[/red]")
            continue
        label = item.label + (" (inverted)" if (item.image or {}).get("inverted") else "")
        row = [item.file, label, _pct(item.probability)]
        if per_class:
            row += [_pct(item.probabilities[name]) for name in classes]
        if extra:
            row.append("\n".join(f"{t['label']} {t['probability']:.4f}" for t in item.top[1:]))
        table.add_row(*row)
    return table


@command("predict")
def predict_cmd(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (recursed) or globs.",
                                               show_default=False)],
    model: Annotated[Path | None, typer.Option(
        help="Model bundle folder (default: models/latest; without one, ImageNet mode).")
    ] = None,
    imagenet: Annotated[bool, typer.Option(
        "--imagenet", help="Classify with --base's pretrained ImageNet classifier.")] = False,
    base: Annotated[str, typer.Option(help="Base of ImageNet mode.")] = "inception",
    alpha: Annotated[float, typer.Option(help="MobileNet width in ImageNet mode.")] = 1.0,
    top: Annotated[int | None, typer.Option(
        help="Labels per image, best first (default 1; 3 in ImageNet mode).")] = None,
    format: Annotated[str | None, typer.Option(
        "--format", help="table | json | csv (default: from --output's suffix, else table).")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Write the results to this file.")] = None,
    invert: Annotated[str | None, typer.Option(
        help="Digit models: auto | yes | no (default: the bundle's, auto).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per inference batch.")] = 32,
    models_dir: Annotated[Path, typer.Option(help="Where models/latest is looked for.")
                          ] = Path("models"),
    force: Annotated[bool, typer.Option(help="Replace an existing --output file.")] = False,
) -> None:
    """Classify images with a trained bundle, or with an ImageNet classifier (--imagenet)."""
    from transfer.predict import FORMATS, predict, write_text

    fmt = format or {".json": "json", ".csv": "csv"}.get(
        output.suffix.lower() if output else "", "table")
    if fmt not in FORMATS:
        raise TransferError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if output is not None and output.exists() and not force:
        raise TransferError(f"{output} already exists; use --force to replace it")
    result = predict(paths, model=model, imagenet=imagenet, base=base, alpha=alpha, top=top,
                     batch_size=batch_size, invert=invert, models_dir=models_dir,
                     reporter=_reporter())
    if fmt == "table":
        table = _predictions_table(result)
        if output is not None:
            recorder = Console(record=True, width=160, file=io.StringIO())
            recorder.print(table)
            text = recorder.export_text()
        else:
            out.print(table)
            counts = collections.Counter(i.label for i in result.items if not i.error)
            if len(result.items) > 1 and counts:
                out.print(f"{sum(counts.values())} image(s) classified: " + ", ".join(
                    f"{label}: {n}" for label, n in counts.most_common()), highlight=False)
    else:
        text = result.render(fmt)
        if output is None:
            sys.stdout.write(text)
    if output is not None:
        write_text(output, text, force=force)
        err.print(f"wrote {output}", highlight=False)
    if result.failed:
        err.print(f"[bold red]{result.failed} of {len(result.items)} input(s) failed[/bold red]",
                  highlight=False)
        raise typer.Exit(1)


@command("evaluate")
def evaluate_cmd(
    model: Annotated[Path, typer.Option(help="Model bundle folder.")] = Path("models/latest"),
    data_dir: Annotated[Path | None, typer.Option(
        help="Folder of class subfolders (default: the bundle's validation folder).")] = None,
    output: Annotated[Path | None, typer.Option(
        help="Where report.json and the pictures go (default: the bundle).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per inference batch.")] = 32,
    force: Annotated[bool, typer.Option(help="Replace another evaluation's outputs.")] = False,
) -> None:
    """Accuracy, per-class precision/recall/F1, ROC AUC, confusion matrix and worst mistakes."""
    from transfer.evaluate import evaluate

    result = evaluate(model, data_dir=data_dir, output=output, batch_size=batch_size,
                      force=force, reporter=_reporter())
    r = result.report
    table = Table(title=f"{r['model']} on {r['data_dir']} ({r['images']} images)")
    for column in ("class", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, row in r["per_class"].items():
        table.add_row(name, _pct(row["precision"]), _pct(row["recall"]), _pct(row["f1"]),
                      str(row["support"]))
    macro = r["macro_avg"]
    table.add_row("macro average", _pct(macro["precision"]), _pct(macro["recall"]),
                  _pct(macro["f1"]), str(r["images"]), style="bold")
    out.print(table)
    names = r["class_names"]
    matrix = Table(title="Confusion matrix", caption="rows: true class; columns: predicted")
    matrix.add_column("")
    for name in names:
        matrix.add_column(name, justify="right")
    for name, counts in zip(names, r["confusion_matrix"], strict=True):
        matrix.add_row(name, *(str(c) for c in counts))
    out.print(matrix)
    auc = (f", ROC AUC {r['roc_auc']:.4f} ({r['roc_auc_positive_class']} positive)"
           if r["roc_auc"] is not None else "")
    out.print(f"[bold]accuracy {r['accuracy']:.4f}[/bold], loss {r['loss']:.4f}{auc}",
              highlight=False)
    trained = r.get("training_metrics") or {}
    if r["is_training_validation_folder"] and trained.get("val_accuracy") is not None:
        out.print(f"training reported validation accuracy {trained['val_accuracy']:.4f}",
                  highlight=False)
    if r["skipped"]:
        out.print(f"skipped {len(r['skipped'])} unreadable image(s) (listed in report.json)")
    out.print(f"wrote {result.output / 'report.json'}, confusion.png, misclassified.png",
              highlight=False)


@command("explain")
def explain_cmd(
    image: Annotated[Path, typer.Argument(help="The image to explain.", show_default=False)],
    model: Annotated[Path, typer.Option(help="Model bundle folder.")] = Path("models/latest"),
    output: Annotated[Path | None, typer.Option(
        help="PNG to write (default: IMAGE's folder, <name>.gradcam.png).")] = None,
    class_name: Annotated[str | None, typer.Option(
        "--class", help="Explain this class instead of the predicted one.")] = None,
    invert: Annotated[str | None, typer.Option(help="Digit models: auto | yes | no.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing PNG.")] = False,
) -> None:
    """Grad-CAM: a heatmap of where the model looked for its prediction, saved as PNG."""
    from transfer.explain import explain

    result = explain(image, model=model, output=output, class_name=class_name, invert=invert,
                     force=force)
    predicted = max(result.probabilities, key=result.probabilities.get)
    out.print(f"{image}: predicted [bold]{predicted}[/bold] "
              f"{result.probabilities[predicted]:.4f}; Grad-CAM of {result.label} at layer "
              f"{result.layer} ({result.heatmap.shape[0]}x{result.heatmap.shape[1]} maps)",
              highlight=False)
    out.print(f"wrote {result.png}", highlight=False)


@command("export")
def export_cmd(
    model: Annotated[Path, typer.Option(help="Model bundle folder.")] = Path("models/latest"),
    format: Annotated[str, typer.Option("--format", help="keras | savedmodel | tflite.")
                      ] = "tflite",
    output: Annotated[Path | None, typer.Option(
        help="File (.keras, .tflite) or folder (SavedModel); default: MODEL/export/.")] = None,
    check_images: Annotated[list[Path] | None, typer.Option(
        help="Images (or folders) to check the export on; default: the bundle's validation "
        "images.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing export.")] = False,
) -> None:
    """Export the model (Keras, SavedModel, TFLite) and check its outputs against Keras's."""
    from transfer.export import export

    result = export(model, format, output, force=force, check_images=check_images,
                    reporter=_reporter())
    out.print(f"[bold]{result.path}[/bold] ({result.format}); check on {result.n_images} "
              f"images from {result.check_source}: max abs difference "
              f"{result.max_abs_diff:.2e} <= {result.tolerance:g} [green]passed[/green]",
              highlight=False)
    out.print(f"class names and input recipe: {result.meta_path}", highlight=False)


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
    learning_rate: Annotated[float, typer.Option(help="Adam's learning rate.")] = 1e-3,
    ema: Annotated[float, typer.Option(
        help="Momentum of the moving average of weights the model ends with; 0 = plain Adam.")
                   ] = 0.99,
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
                             learning_rate=learning_rate, ema=ema,
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
