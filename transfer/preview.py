"""What the network sees: a few training photos next to their augmented versions.

    from transfer.preview import preview_augment
    from transfer.settings import Augment

    preview_augment("data/train", Augment(rotation=40), 150, "augment.png")

Each row is one photo (read by the reader training uses, at the model's size), then ``copies``
random versions drawn with the current augmentation settings by the same transforms the
training run applies: ImageDataGenerator's for ``--pipeline generator``, the Keras
augmentation layers for ``--pipeline tfdata``, the feature pass's for a frozen base trained on
cached augmented copies (``pipeline="features"``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transfer import plots
from transfer.constants import PREVIEW_PNG
from transfer.errors import TransferError
from transfer.files import replacing
from transfer.settings import PIPELINES, Augment

# Whose random transforms a preview draws: the end-to-end pipelines' (--pipeline) or the
# feature pass's (a frozen base trained on cached augmented copies).
ROUTES = (*PIPELINES, "features")


def pick_photos(source, n: int, seed: int, class_names: list[str] | None = None
                ) -> list[tuple[Path, str]]:
    """``n`` (path, class) photos of a folder of class folders, as evenly over the classes as
    they allow, drawn with ``seed``; or the first ``n`` of a list of paths, Samples or
    (path, class) pairs. A Sample's class index is named by ``class_names`` when given."""
    from transfer import pipelines

    if isinstance(source, str | Path):
        folder = Path(source)
        names = pipelines.class_names(folder)
        rng = random.Random(seed)
        per_class = {name: pipelines.image_files(folder / name) for name in names}
        for files in per_class.values():
            rng.shuffle(files)
        chosen: list[tuple[Path, str]] = []
        while len(chosen) < n and any(per_class.values()):
            for name in names:
                if per_class[name] and len(chosen) < n:
                    chosen.append((per_class[name].pop(), name))
        return chosen
    items = []
    for item in source:
        if hasattr(item, "path"):
            label = getattr(item, "label", "")
            if class_names is not None and isinstance(label, int | np.integer):
                label = class_names[label]
            items.append((Path(item.path), str(label)))
        elif isinstance(item, tuple | list):
            items.append((Path(item[0]), str(item[1])))
        else:
            items.append((Path(item), Path(item).parent.name))
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(item[1], []).append(item)
    if len(groups) < 2:
        return items[:n]  # plain files: the first n, in order
    rng = random.Random(seed)
    for group in groups.values():
        rng.shuffle(group)
    chosen = []
    while len(chosen) < n and any(groups.values()):
        for key in sorted(groups):
            if groups[key] and len(chosen) < n:
                chosen.append(groups[key].pop())
    return chosen


def augmented_versions(images: np.ndarray, augment: Augment, copies: int, seed: int,
                       pipeline: str = "generator", indices: list[int] | None = None
                       ) -> np.ndarray:
    """(n, copies, size, size, 3) uint8: ``copies`` random augmentations of each image
    (n, size, size, 3), seeded, by the transforms ``pipeline`` trains with: "generator"
    (ImageDataGenerator's), "tfdata" (the Keras layers) or "features" (the feature pass of a
    frozen base; with ``indices``, each image's place in the training list, the very copies
    the pass computed)."""
    if pipeline not in ROUTES:
        raise TransferError(f"unknown pipeline {pipeline!r}; choose {', '.join(ROUTES)}")
    from transfer import features, pipelines

    images = np.asarray(images, dtype="float32")
    out = np.zeros((len(images), copies, *images.shape[1:]), "float32")
    if pipeline == "features" and hasattr(features, "random_affine"):
        # the cached feature pass (a frozen base): copy k draws with seed + 1000 k, as training
        pixels = np.clip(np.rint(images), 0, 255).astype("uint8")
        for k in range(copies):
            for i, image in enumerate(pixels):
                at = indices[i] if indices is not None else i
                out[i, k] = features.random_affine(
                    image, augment, np.random.default_rng([seed + 1000 * k, at]))
    elif pipeline == "generator" and hasattr(pipelines, "_transformer"):
        transform = pipelines._transformer(augment)
        for k in range(copies):
            for i, image in enumerate(images):
                out[i, k] = transform(image, np.random.default_rng([seed, k, i]))
    else:
        layers = pipelines.augmentation_layers(augment, seed)
        for k in range(copies):
            out[:, k] = images if layers is None else np.asarray(layers(images, training=True))
    return np.clip(np.rint(out), 0, 255).astype("uint8")


@plots.drawn
def preview_augment(source, augment: Augment, size: int, path: Path, n: int = 6,
                    seed: int = 42, copies: int = 3, pipeline: str = "generator",
                    views: str | None = None, indices: dict | None = None,
                    class_names: list[str] | None = None) -> Path:
    """Write a PNG grid: per row one training photo, then ``copies`` augmented versions of it;
    or, for a run with test-time flips and no transformed copies, what its head trains on
    (``views``, as meta.json's ``test_time.train_views``): "photo and mirror", each photo
    beside its mirror image (the head trains on their mean), or "photo", the photo alone
    (at a smaller size than the model's, FixRes).

    Args:
        source: a folder of class folders (e.g. ``data/train``), or a list of image paths,
            ``pipelines.Sample``s or (path, class) pairs.
        augment: the augmentation settings (``enabled=False`` shows the photos unchanged and
            says so).
        size: the size the photos are read at, as training reads them (the model's input
            size; the training features' size under FixRes).
        path: the PNG to write (atomically).
        n: photos (rows); seed: which photos and which random transforms; copies: augmented
            versions per photo; pipeline: whose transforms (``ROUTES``: "generator",
            "tfdata" or "features"); indices: {path: its place in the training list}, for
            "features": the copies drawn are the very ones the feature pass computed;
            class_names: the names of Samples' class indices (the rows' labels).

    Returns:
        The path written.

    Raises:
        TransferError: no readable photo in ``source``, a bad pipeline name.
    """
    from transfer import images as image_io
    from transfer import pipelines

    photos, labels, places = [], [], []
    for file, label in pick_photos(source, max(n * 2, n), seed, class_names):
        if len(photos) == n:
            break
        try:
            photos.append(pipelines.read_rgb(file, size))
        except (image_io.ImageError, OSError):
            continue  # an unreadable file: training skips it too
        labels.append(f"{label}: {Path(file).name}" if label else Path(file).name)
        places.append((indices or {}).get(file, len(places)))
    if not photos:
        raise TransferError(f"no readable photo in {source} to preview")
    stack = np.stack(photos)
    mirror_only = views == "photo and mirror"
    if views == "photo":
        copies, versions = 0, stack[:, :0]
    elif mirror_only:
        copies, versions = 1, stack[:, None, :, ::-1]
    elif augment.enabled:
        versions = augmented_versions(stack, augment, copies, seed, pipeline,
                                      places if indices is not None else None)
    else:
        versions = np.repeat(stack[:, None], copies, axis=1)
    cols = copies + 1
    fig, axes = plots.subplots(len(photos), cols,
                               figsize=(cols * 2.0, len(photos) * 2.1 + 0.6), squeeze=False)
    for i in range(len(photos)):
        for j in range(cols):
            ax = axes[i, j]
            ax.imshow(stack[i] if j == 0 else versions[i, j - 1], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("photo" if j == 0 else "mirror image" if mirror_only
                             else f"augmented {j}", fontsize=9)
        axes[i, 0].set_ylabel(labels[i][:24], fontsize=8)
    fig.suptitle(f"{size} px, feature pass: each photo as it is (the saved model averages it "
                 "with its mirror image at its larger test size); no random transform"
                 if views == "photo"
                 else f"{size} px, feature pass: each photo and its mirror image (test-time "
                 "flips: the head trains on their mean); no random transform" if mirror_only
                 else describe(augment, size, pipeline), fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        plots.save(fig, tmp, dpi=80)
    return path


def describe(augment: Augment, size: int, pipeline: str = "generator") -> str:
    """One line naming the settings a preview shows."""
    if not augment.enabled:
        return f"{size} px, augmentation off (--no-augment): the network sees the photos as is"
    route = "feature pass" if pipeline == "features" else f"{pipeline} pipeline"
    return (f"{size} px, {route}: rotation {augment.rotation:g} deg, shift "
            f"{augment.shift:g}, shear {augment.shear:g} deg, zoom {augment.zoom:g}, "
            f"flip {'on' if augment.flip else 'off'}")


def grid_shape(n_photos: int, copies: int = 3) -> tuple[int, int]:
    """(rows, columns) of a preview's grid."""
    return n_photos, copies + 1


__all__: Sequence[str] = ("PREVIEW_PNG", "ROUTES", "augmented_versions", "describe", "grid_shape",
                          "pick_photos", "preview_augment")
