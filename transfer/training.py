"""`transfer train`: a new head on a frozen ImageNet base, optionally fine-tuned.

The recipe, top to bottom:

1. Read the class folders of ``train`` and ``validate`` (sorted names are the class order).
2. Build the base from the registry, frozen, and three graphs that share the same layers::

       full:  raw pixels -> Preprocess -> base(training=False) -> pooling -> head   (saved)
       core:  preprocessed pixels -> base -> pooling -> head      (trained end to end)
       head:  pooled features -> head                             (trained on cached features)

3. With a frozen base the features never change, so each training image passes the base once
   (or once per augmented copy) and the head trains on cached arrays: ``--augment-copies K``
   precomputes K augmented copies and cycles through them across epochs; ``--no-augment`` needs
   one pass; ``--augment-copies 0`` is the classic recipe (the base runs every epoch).
4. Optionally unfreeze the top ``--fine-tune N`` layers (BatchNormalization stays frozen and
   in inference mode) and train end to end with a small learning rate.
5. Write the bundle: ``model.keras`` (takes raw 0-255 RGB), ``meta.json``, ``history.csv``,
   ``curves.png``, and point ``models/latest`` at it.
"""

from __future__ import annotations

import math
import platform
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfer import __version__, bases, bundle, features, pipelines, plots
from transfer.errors import TransferError
from transfer.progress import Reporter
from transfer.settings import DISTRIBUTE, HParams, TrainSettings  # noqa: F401


@dataclass
class TrainResult:
    bundle: Path
    meta: dict
    history: dict


def _cycled_copies(copies: list, labels, batch_size: int, seed: int, epochs: int):
    """(dataset, steps per epoch, copies used): epoch e trains on copy e % K, reshuffled.

    The copy is chosen by the epoch's index inside one generator, not by Keras's epoch
    callbacks (Keras builds the next epoch's iterator, and prefetches from it, before it calls
    ``on_epoch_end``), so no batch can come from the wrong copy.
    """
    from transfer.tf import tf

    n, steps = len(labels), math.ceil(len(labels) / batch_size)
    used: list[int] = []

    def batches():
        rng = np.random.default_rng(seed)
        for epoch in range(epochs):
            copy = epoch % len(copies)
            used.append(copy)
            order = rng.permutation(n)
            for i in range(steps):
                idx = order[i * batch_size:(i + 1) * batch_size]
                yield copies[copy][idx], labels[idx]

    signature = (tf.TensorSpec((None, copies[0].shape[1]), tf.float32),
                 tf.TensorSpec((None,), tf.as_dtype(labels.dtype)))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return dataset.prefetch(2), steps, used


def _progress_callback(advance, phase: str):
    from transfer.tf import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            parts = [f"{phase} epoch {epoch + 1}"] + [
                f"{k} {logs[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy")
                if k in logs]
            advance(1, status="  ".join(parts))

    return EpochProgress()


def _strategy(name: str):
    from transfer.tf import tf

    if name in ("none", "", None):
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    raise TransferError(f"unknown --distribute {name!r}; choose {' or '.join(DISTRIBUTE)}")


def train(hparams: HParams, reporter: Reporter | None = None) -> TrainResult:
    """Train a classifier as described by ``hparams`` and write its bundle."""
    from transfer.tf import keras, tf

    reporter = reporter or Reporter()
    hp = hparams.resolved()
    started = time.perf_counter()
    base = bases.get(hp.base)
    alpha = bases.check_alpha(base, hp.alpha)
    size = bases.check_size(base, hp.image_size or base.size)
    for name, value in (("epochs", hp.epochs), ("batch-size", hp.batch_size)):
        if value < 1:
            raise TransferError(f"--{name} must be at least 1")
    if hp.augment_copies < 0:
        raise TransferError("--augment-copies must be 0 or more")
    if hp.pipeline not in pipelines.PIPELINES:
        raise TransferError(f"unknown pipeline {hp.pipeline!r}; choose "
                            f"{' or '.join(pipelines.PIPELINES)}")
    names = pipelines.class_names(hp.train_dir)
    val_names = pipelines.class_names(hp.validate_dir)
    if val_names != names:
        raise TransferError(f"class folders differ: {hp.train_dir} has {names}, "
                            f"{hp.validate_dir} has {val_names}")
    train_files = pipelines.listing(hp.train_dir, names)
    val_files = pipelines.listing(hp.validate_dir, names)
    binary = len(names) == 2
    target = Path(hp.output) if hp.output else Path(hp.models_dir) / bundle.default_name(hp.base)
    if target.exists() and not hp.force:
        raise TransferError(f"{target} already exists; use --force to replace it")

    keras.utils.set_random_seed(hp.seed)
    strategy = _strategy(hp.distribute)
    with strategy.scope():
        base_model = bases.build(base, size, alpha, hp.weights)
        base_model.trainable = not base.pretrained  # frozen ImageNet base; scratch CNN learns
        graphs = _graphs(base, base_model, size, len(names), hp)
    weights_source, weights_sha = bases.weights_fingerprint(base, hp.weights, alpha, size,
                                                            hp.seed)

    use_cache = base.pretrained and (not hp.augment.enabled or hp.augment_copies > 0)
    copies = hp.augment_copies if hp.augment.enabled else 0
    timing = {"feature_extraction_seconds": 0.0, "base_images": 0}
    history: dict[str, list] = {}
    callbacks_dir = Path(hp.models_dir) / f".{target.name}.checkpoints"
    try:
        if use_cache:
            cache_state = _train_head_on_features(hp, base, alpha, size, names, weights_sha,
                                                  train_files, val_files, graphs, copies,
                                                  strategy, timing, history, callbacks_dir,
                                                  reporter)
        else:
            cache_state = "off"
            _fit_end_to_end(hp, base, size, names, graphs["core"], hp.learning_rate, hp.epochs,
                            "train", strategy, history, callbacks_dir, reporter, timing)
        if hp.fine_tune > 0:
            if not base.pretrained:
                raise TransferError("--fine-tune applies to pretrained bases, not scratch")
            unfrozen = _unfreeze_top(base_model, hp.fine_tune)
            reporter.info(f"fine-tuning the top {hp.fine_tune} layers of {base.keras_class} "
                          f"({unfrozen} trainable, BatchNormalization frozen)")
            _fit_end_to_end(hp, base, size, names, graphs["core"], hp.fine_tune_lr,
                            hp.fine_tune_epochs, "fine-tune", strategy, history, callbacks_dir,
                            reporter, timing)
        val_features = timing.pop("val_features", None) if hp.fine_tune == 0 else None
        val_loss, val_accuracy = _final_validation(hp, base, size, names, graphs, val_features,
                                                   len(val_files))
    except TransferError:
        raise
    except Exception:
        # A Keras pipeline stopped, most often on a file it cannot decode. Decoding every
        # image up front to name it would cost a tenth of a run, so it is done only now.
        pipelines.check_readable(hp.train_dir, names)
        pipelines.check_readable(hp.validate_dir, names)
        raise
    finally:
        shutil.rmtree(callbacks_dir, ignore_errors=True)
    head_seconds = timing.get("fit_seconds", 0.0)
    total = time.perf_counter() - started

    val_losses = history.get("val_loss", [])
    best_index = int(np.argmin(val_losses)) if val_losses else 0
    meta = {
        "schema_version": bundle.SCHEMA_VERSION,
        "kind": "transfer",
        "base": base.name,
        "keras_class": base.keras_class or "scratch CNN",
        "alpha": alpha if base.has_alpha else None,
        "weights": {"source": weights_source, "sha256": weights_sha},
        "image_size": size,
        "channels": 3,
        "preprocessing": {"mode": base.preprocess, "in_model": True,
                          "input": "RGB pixels 0-255, resized to image_size (bilinear)"},
        "class_names": names,
        "output": "sigmoid" if binary else "softmax",
        "pipeline": hp.pipeline,
        "augmentation": {**hp.augment.as_dict(), "copies": copies if use_cache else None},
        "head": {"dropout": hp.dropout, "dense": hp.dense} if base.pretrained else
                {"dense": 128, "dropout": 0.5},
        "training": {"epochs": hp.epochs, "batch_size": hp.batch_size,
                     "learning_rate": hp.learning_rate, "patience": hp.patience,
                     "fine_tune": hp.fine_tune, "fine_tune_lr": hp.fine_tune_lr,
                     "fine_tune_epochs": hp.fine_tune_epochs if hp.fine_tune else 0,
                     "distribute": hp.distribute,
                     "replicas": strategy.num_replicas_in_sync},
        "data": {"train_dir": str(hp.train_dir), "validate_dir": str(hp.validate_dir),
                 "train_images": len(train_files), "validate_images": len(val_files)},
        "metrics": {
            "val_accuracy": val_accuracy,
            "val_loss": val_loss,
            "best_val_accuracy": float(max(history.get("val_accuracy", [val_accuracy]))),
            "best_epoch": best_index + 1,
            "epochs_run": len(val_losses),
        },
        "feature_cache": cache_state,
        "timings": {
            "feature_extraction_seconds": round(timing["feature_extraction_seconds"], 3),
            "head_training_seconds": round(head_seconds, 3),
            "total_seconds": round(total, 3),
            "base_images_per_second": (round(timing["base_images"]
                                             / timing["feature_extraction_seconds"], 2)
                                       if timing["feature_extraction_seconds"] > 0 else None),
        },
        "versions": {"transfer": __version__, "tensorflow": tf.__version__,
                     "keras": keras.__version__, "python": platform.python_version()},
        "seed": hp.seed,
        "command": hp.command or shlex.join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with bundle.writing(target, hp.force) as tmp:
        graphs["full"].save(tmp / bundle.MODEL)
        bundle.write_json(tmp / bundle.META, meta)
        bundle.write_history(tmp / "history.csv", history)
        plots.curves({k: v for k, v in history.items()}, tmp / "curves.png",
                     title=f"{base.name} on {hp.train_dir.parent}")
    bundle.update_latest(target)
    return TrainResult(target, meta, history)


def _graphs(base, base_model, size: int, n_classes: int, hp: HParams) -> dict:
    """The full, core and head graphs over one set of layers."""
    from transfer.tf import keras

    layers = keras.layers
    binary = n_classes == 2
    out = layers.Dense(1 if binary else n_classes, activation="sigmoid" if binary else "softmax",
                       name="predictions")
    if base.pretrained:
        pool = layers.GlobalAveragePooling2D(name="pool")
        head_layers = [layers.Dropout(hp.dropout, name="dropout")]
        if hp.dense > 0:
            head_layers.append(layers.Dense(hp.dense, activation="relu", name="dense"))
    else:  # the seeds' CNN: Flatten-Dense128-Dropout0.5
        pool = layers.Flatten(name="flatten")
        head_layers = [layers.Dense(128, activation="relu", name="dense"),
                       layers.Dropout(0.5, name="dropout")]
    head_layers.append(out)

    def head(x):
        for layer in head_layers:
            x = layer(x)
        return x

    raw = keras.Input((size, size, 3), name="image")
    x = bases.preprocess_layer_class()(base.preprocess, name="preprocess")(raw)
    full = keras.Model(raw, head(pool(base_model(x, training=False))),
                       name=f"{base.name}_classifier")
    pre = keras.Input((size, size, 3), name="preprocessed")
    core = keras.Model(pre, head(pool(base_model(pre, training=False))), name="core")
    feature_model = keras.Model(pre, pool(base_model(pre, training=False)), name="features")
    graphs = {"full": full, "core": core, "features": feature_model}
    if base.pretrained:
        feats = keras.Input((feature_model.output_shape[-1],), name="features")
        graphs["head"] = keras.Model(feats, head(feats), name="head")
    return graphs


def _compile(model, lr: float, binary: bool) -> None:
    from transfer.tf import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr),
                  loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def _callbacks(hp: HParams, checkpoint_dir: Path, phase: str, advance) -> list:
    from transfer.tf import keras

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=hp.patience,
                                      restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(str(checkpoint_dir / f"best-{phase}.weights.h5"),
                                        monitor="val_loss", save_best_only=True,
                                        save_weights_only=True),
        _progress_callback(advance, phase),
    ]
    if hp.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(Path(hp.tensorboard) / phase)))
    return callbacks


def _merge(history: dict, new: dict, phase: str) -> None:
    n = len(next(iter(new.values()), []))
    for key, values in new.items():
        history.setdefault(key, []).extend(float(v) for v in values)
    history.setdefault("phase", []).extend([phase] * n)


def _train_head_on_features(hp, base, alpha, size, names, weights_sha, train_files, val_files,
                            graphs, copies, strategy, timing, history, checkpoint_dir,
                            reporter) -> str:
    feature_model = graphs["features"]
    cache_dir = Path(hp.data_dir) / ".cache" / "features"
    common = dict(base=base.name, alpha=alpha, weights=weights_sha, size=size,
                  pipeline=hp.pipeline, classes=names, version=1)
    hits = []

    def get(split_dir, files, augment, copy, label):
        key = features.cache_key(**common, files=files, augment=augment.as_dict() if augment
                                 else None, copy=copy, seed=hp.seed if augment else None)
        batches = pipelines.make(hp.pipeline, split_dir, names, size, base.preprocess,
                                 hp.batch_size, augment, shuffle=False, seed=hp.seed + 1000 * copy)
        n_steps = pipelines.steps(len(files), hp.batch_size)

        def compute():
            return features.extract(feature_model, batches, n_steps, reporter,
                                    f"{base.name} features: {label}")

        if not hp.feature_cache:
            x, y, seconds = compute()
            hit = False
        else:
            x, y, seconds, hit = features.cached(cache_dir, key, compute)
        hits.append(hit)
        timing["feature_extraction_seconds"] += seconds
        if not hit:
            timing["base_images"] += len(files)
        return x.astype("float32"), y.astype("float32" if len(names) == 2 else "int64")

    if copies:
        train_sets = [get(hp.train_dir, train_files, hp.augment, k,
                          f"train, augmented copy {k + 1}/{copies}") for k in range(copies)]
    else:
        train_sets = [get(hp.train_dir, train_files, None, 0, "train")]
    x_val, y_val = get(hp.validate_dir, val_files, None, 0, "validate")
    labels = train_sets[0][1]
    data, steps, used = _cycled_copies([x for x, _ in train_sets], labels, hp.batch_size,
                                       hp.seed, hp.epochs)
    with strategy.scope():
        _compile(graphs["head"], hp.learning_rate, len(names) == 2)
    start = time.perf_counter()
    with reporter.task("Training the head", total=hp.epochs) as advance:
        fit = graphs["head"].fit(data, steps_per_epoch=steps, validation_data=(x_val, y_val),
                                 epochs=hp.epochs, verbose=0, shuffle=False,
                                 callbacks=_callbacks(hp, checkpoint_dir, "head", advance))
    timing["fit_seconds"] = timing.get("fit_seconds", 0.0) + time.perf_counter() - start
    timing["copies_used"] = used
    timing["val_features"] = (x_val, y_val)
    _merge(history, fit.history, "head")
    if not hp.feature_cache:
        return "off"
    return "hit" if all(hits) else "miss"


def _fit_end_to_end(hp, base, size, names, model, lr, epochs, phase, strategy, history,
                    checkpoint_dir, reporter, timing) -> None:
    train_data = pipelines.make(hp.pipeline, hp.train_dir, names, size, base.preprocess,
                                hp.batch_size, hp.augment, shuffle=True, seed=hp.seed)
    val_data = pipelines.make(hp.pipeline, hp.validate_dir, names, size, base.preprocess,
                              hp.batch_size, None, shuffle=False, seed=hp.seed)
    with strategy.scope():
        _compile(model, lr, len(names) == 2)
    start = time.perf_counter()
    with reporter.task(f"Training ({phase})", total=epochs) as advance:
        fit = model.fit(train_data, validation_data=val_data, epochs=epochs, verbose=0,
                        callbacks=_callbacks(hp, checkpoint_dir, phase, advance))
    timing["fit_seconds"] = timing.get("fit_seconds", 0.0) + time.perf_counter() - start
    _merge(history, fit.history, phase)


def _unfreeze_top(base_model, n: int) -> int:
    from transfer.tf import keras

    base_model.trainable = True
    for i, layer in enumerate(base_model.layers):
        top = i >= len(base_model.layers) - n
        layer.trainable = top and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(1 for layer in base_model.layers if layer.trainable and layer.weights)


def _final_validation(hp, base, size, names, graphs, val_features, n_val: int):
    """(val_loss, val_accuracy) of the final model, from cached features when they apply."""
    from transfer.tf import keras

    binary = len(names) == 2
    if val_features is not None:
        # the head on cached validation features is the full model on those images
        x, y = val_features
        probs = graphs["head"].predict(x, verbose=0, batch_size=256)
    else:
        val = pipelines.make(hp.pipeline, hp.validate_dir, names, size, base.preprocess,
                             hp.batch_size, None, shuffle=False, seed=hp.seed)
        outputs, labels = [], []
        for x, y in pipelines.batches(val, pipelines.steps(n_val, hp.batch_size)):
            outputs.append(np.asarray(graphs["core"](x, training=False)))
            labels.append(np.asarray(y))
        probs, y = np.concatenate(outputs), np.concatenate(labels).reshape(-1)
    loss_fn = (keras.losses.BinaryCrossentropy() if binary
               else keras.losses.SparseCategoricalCrossentropy())
    loss = float(loss_fn(y.reshape(-1, 1) if binary else y, probs))
    predicted = (probs.reshape(-1) > 0.5).astype(int) if binary else probs.argmax(-1)
    accuracy = float(np.mean(predicted == y.reshape(-1).astype(int)))
    return loss, accuracy


