"""The phases of a training run, each a function taking the run plan and returning a small result.

``transfer.training.train`` calls them in order::

    build_model -> extract_features -> train_head -> fine_tune -> final_validation

(``fit_end_to_end`` instead of the two feature phases when the base must run every epoch: the
classic augmented recipe and the CNN from scratch). Timings travel in the results (``Features``,
``Fit``), never in a shared dict.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transfer import bases, features, pipelines
from transfer.progress import Reporter

if TYPE_CHECKING:  # pragma: no cover
    from transfer.training import RunPlan


# --------------------------------------------------------------------------- results


@dataclass
class Built:
    """The model of a run: the base and three graphs sharing its layers (see training)."""

    strategy: Any
    base_model: Any
    full: Any  # raw pixels -> preprocess -> base -> pooling -> head (saved)
    core: Any  # preprocessed pixels -> base -> pooling -> head (trained end to end)
    feature_model: Any  # preprocessed pixels -> base -> pooling
    head: Any | None  # pooled features -> head (pretrained bases only)
    weights_source: str
    weights_sha256: str | None

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync


@dataclass
class Features:
    """Pooled features of the training images (one array per augmented copy) and validation."""

    train: list  # [copy] -> (n_train, width) float32
    labels: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    cache: str  # "hit", "miss" or "off"
    seconds: float  # time the base ran (0 on a cache hit)
    base_images: int  # images that went through the base


@dataclass
class Fit:
    """Per-epoch history of one or more fits (with a "phase" column) and their wall time."""

    history: dict = field(default_factory=dict)
    seconds: float = 0.0

    def then(self, other: Fit) -> Fit:
        history = {k: list(v) for k, v in self.history.items()}
        for key, values in other.history.items():
            history.setdefault(key, []).extend(values)
        return Fit(history, self.seconds + other.seconds)


@dataclass
class Validation:
    loss: float
    accuracy: float


# --------------------------------------------------------------------------- build


def strategy(name: str):
    """The tf.distribute strategy named by ``--distribute``."""
    from transfer.tf import tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def build_model(plan: RunPlan) -> Built:
    """Seed everything, then build the base (frozen unless scratch) and its graphs."""
    from transfer.tf import keras

    hp = plan.settings
    keras.utils.set_random_seed(hp.seed)
    chosen = strategy(hp.distribute)
    with chosen.scope():
        base_model = bases.build(plan.base, plan.size, plan.alpha, hp.weights)
        base_model.trainable = not plan.base.pretrained  # frozen ImageNet base; scratch learns
        graphs = graphs_of(plan.base, base_model, plan.size, len(plan.names), hp.dropout,
                           hp.dense)
    source, sha = bases.weights_fingerprint(plan.base, hp.weights, plan.alpha, plan.size,
                                            hp.seed)
    return Built(chosen, base_model, graphs["full"], graphs["core"], graphs["features"],
                 graphs.get("head"), source, sha)


def graphs_of(base, base_model, size: int, n_classes: int, dropout: float = 0.2,
              dense: int = 0) -> dict:
    """The full, core, features (and head) graphs over one set of layers."""
    from transfer.tf import keras

    layers = keras.layers
    binary = n_classes == 2
    out = layers.Dense(1 if binary else n_classes, activation="sigmoid" if binary else "softmax",
                       name="predictions")
    if base.pretrained:
        pool = layers.GlobalAveragePooling2D(name="pool")
        head_layers = [layers.Dropout(dropout, name="dropout")]
        if dense > 0:
            head_layers.append(layers.Dense(dense, activation="relu", name="dense"))
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
    x = bases.preprocess_layer(base.preprocess)(raw)
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


# --------------------------------------------------------------------------- features


def extract_features(plan: RunPlan, built: Built, reporter: Reporter) -> Features:
    """Run the frozen base once per training image (per augmented copy) and per validation
    image, through the feature cache when it is on."""
    hp = plan.settings
    cache_dir = Path(hp.data_dir) / ".cache" / "features"
    common = dict(base=plan.base.name, alpha=plan.alpha, weights=built.weights_sha256,
                  size=plan.size, pipeline=hp.pipeline, classes=plan.names, version=1)
    hits: list[bool] = []
    seconds, base_images = 0.0, 0

    def get(split_dir, files, augment, copy, label):
        nonlocal seconds, base_images
        key = features.cache_key(**common, files=files, augment=augment.as_dict() if augment
                                 else None, copy=copy, seed=hp.seed if augment else None)
        batches = pipelines.make(hp.pipeline, split_dir, plan.names, plan.size,
                                 plan.base.preprocess, hp.batch_size, augment, shuffle=False,
                                 seed=hp.seed + 1000 * copy)
        n_steps = pipelines.steps(len(files), hp.batch_size)

        def compute():
            return features.extract(built.feature_model, batches, n_steps, reporter,
                                    f"{plan.base.name} features: {label}")

        if not hp.feature_cache:
            x, y, spent = compute()
            hit = False
        else:
            x, y, spent, hit = features.cached(cache_dir, key, compute)
        hits.append(hit)
        seconds += spent
        if not hit:
            base_images += len(files)
        return x.astype("float32"), y.astype("float32" if plan.binary else "int64")

    if plan.copies:
        train_sets = [get(hp.train_dir, plan.train_files, hp.augment, k,
                          f"train, augmented copy {k + 1}/{plan.copies}")
                      for k in range(plan.copies)]
    else:
        train_sets = [get(hp.train_dir, plan.train_files, None, 0, "train")]
    val_x, val_y = get(hp.validate_dir, plan.val_files, None, 0, "validate")
    cache = "off" if not hp.feature_cache else ("hit" if all(hits) else "miss")
    return Features([x for x, _ in train_sets], train_sets[0][1], val_x, val_y, cache, seconds,
                    base_images)


def cycled_copies(copies: list, labels, batch_size: int, seed: int, epochs: int):
    """(dataset, steps per epoch): epoch e trains on copy e % K, reshuffled every epoch.

    The copy is chosen by the epoch's index inside one generator, not by Keras's epoch
    callbacks (Keras builds the next epoch's iterator, and prefetches from it, before it calls
    ``on_epoch_end``), so no batch can come from the wrong copy.
    """
    from transfer.tf import tf

    n, steps = len(labels), math.ceil(len(labels) / batch_size)

    def batches():
        rng = np.random.default_rng(seed)
        for epoch in range(epochs):
            copy = copies[epoch % len(copies)]
            order = rng.permutation(n)
            for i in range(steps):
                idx = order[i * batch_size:(i + 1) * batch_size]
                yield copy[idx], labels[idx]

    signature = (tf.TensorSpec((None, copies[0].shape[1]), tf.float32),
                 tf.TensorSpec((None,), tf.as_dtype(labels.dtype)))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return dataset.prefetch(2), steps


# --------------------------------------------------------------------------- fits


def train_head(plan: RunPlan, built: Built, feats: Features, reporter: Reporter) -> Fit:
    """Train the head on the cached features, one augmented copy per epoch."""
    hp = plan.settings
    data, steps = cycled_copies(feats.train, feats.labels, hp.batch_size, hp.seed, hp.epochs)
    with built.strategy.scope():
        compile_model(built.head, hp.learning_rate, plan.binary)
    start = time.perf_counter()
    with reporter.task("Training the head", total=hp.epochs) as advance:
        fit = built.head.fit(data, steps_per_epoch=steps,
                             validation_data=(feats.val_x, feats.val_y), epochs=hp.epochs,
                             verbose=0, shuffle=False,
                             callbacks=callbacks(plan, "head", advance))
    return Fit(history_of(fit.history, "head"), time.perf_counter() - start)


def fit_end_to_end(plan: RunPlan, built: Built, reporter: Reporter, phase: str = "train",
                   learning_rate: float | None = None, epochs: int | None = None) -> Fit:
    """Train the core graph on images through the pipeline (the base runs every epoch)."""
    hp = plan.settings
    epochs = epochs or hp.epochs
    train_data = pipelines.make(hp.pipeline, hp.train_dir, plan.names, plan.size,
                                plan.base.preprocess, hp.batch_size, hp.augment, shuffle=True,
                                seed=hp.seed)
    val_data = pipelines.make(hp.pipeline, hp.validate_dir, plan.names, plan.size,
                              plan.base.preprocess, hp.batch_size, None, shuffle=False,
                              seed=hp.seed)
    with built.strategy.scope():
        compile_model(built.core, learning_rate or hp.learning_rate, plan.binary)
    start = time.perf_counter()
    with reporter.task(f"Training ({phase})", total=epochs) as advance:
        fit = built.core.fit(train_data, validation_data=val_data, epochs=epochs, verbose=0,
                             callbacks=callbacks(plan, phase, advance))
    return Fit(history_of(fit.history, phase), time.perf_counter() - start)


def fine_tune(plan: RunPlan, built: Built, reporter: Reporter) -> Fit:
    """Unfreeze the top ``--fine-tune`` layers (BatchNormalization stays frozen) and train end
    to end with ``--fine-tune-lr``."""
    hp = plan.settings
    unfrozen = unfreeze_top(built.base_model, hp.fine_tune)
    reporter.info(f"fine-tuning the top {hp.fine_tune} layers of {plan.base.keras_class} "
                  f"({unfrozen} trainable, BatchNormalization frozen)")
    return fit_end_to_end(plan, built, reporter, "fine-tune", hp.fine_tune_lr,
                          hp.fine_tune_epochs)


def unfreeze_top(base_model, n: int) -> int:
    from transfer.tf import keras

    base_model.trainable = True
    for i, layer in enumerate(base_model.layers):
        top = i >= len(base_model.layers) - n
        layer.trainable = top and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(1 for layer in base_model.layers if layer.trainable and layer.weights)


def compile_model(model, lr: float, binary: bool) -> None:
    from transfer.tf import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr),
                  loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def callbacks(plan: RunPlan, phase: str, advance) -> list:
    """Early stopping (restoring the best weights), the best checkpoint, progress, TensorBoard."""
    from transfer.tf import keras

    hp = plan.settings
    plan.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    chosen = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=hp.patience,
                                      restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(str(plan.checkpoint_dir / f"best-{phase}.weights.h5"),
                                        monitor="val_loss", save_best_only=True,
                                        save_weights_only=True),
        progress_callback(advance, phase),
    ]
    if hp.tensorboard:
        chosen.append(keras.callbacks.TensorBoard(log_dir=str(Path(hp.tensorboard) / phase)))
    return chosen


def progress_callback(advance, phase: str):
    from transfer.tf import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            parts = [f"{phase} epoch {epoch + 1}"] + [
                f"{k} {logs[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy")
                if k in logs]
            advance(1, status="  ".join(parts))

    return EpochProgress()


def history_of(history: dict, phase: str) -> dict:
    """Keras's history as plain floats, with a "phase" column naming the fit of each epoch."""
    n = len(next(iter(history.values()), []))
    out = {key: [float(v) for v in values] for key, values in history.items()}
    out["phase"] = [phase] * n
    return out


# --------------------------------------------------------------------------- validation


def final_validation(plan: RunPlan, built: Built, feats: Features | None) -> Validation:
    """Loss and accuracy of the final model on the validation images; from the cached features
    when the base did not change after they were computed (no fine-tuning)."""
    from transfer.tf import keras

    hp = plan.settings
    if feats is not None:
        # the head on cached validation features is the full model on those images
        y = feats.val_y
        probs = built.head.predict(feats.val_x, verbose=0, batch_size=256)
    else:
        val = pipelines.make(hp.pipeline, hp.validate_dir, plan.names, plan.size,
                             plan.base.preprocess, hp.batch_size, None, shuffle=False,
                             seed=hp.seed)
        outputs, labels = [], []
        for x, y in pipelines.batches(val, pipelines.steps(len(plan.val_files),
                                                           hp.batch_size)):
            outputs.append(np.asarray(built.core(x, training=False)))
            labels.append(np.asarray(y))
        probs, y = np.concatenate(outputs), np.concatenate(labels).reshape(-1)
    loss_fn = (keras.losses.BinaryCrossentropy() if plan.binary
               else keras.losses.SparseCategoricalCrossentropy())
    loss = float(loss_fn(y.reshape(-1, 1) if plan.binary else y, probs))
    predicted = (probs.reshape(-1) > 0.5).astype(int) if plan.binary else probs.argmax(-1)
    return Validation(loss, float(np.mean(predicted == y.reshape(-1).astype(int))))
