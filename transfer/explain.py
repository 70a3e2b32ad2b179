"""`transfer explain`: where in the image the model looked (Grad-CAM, Selvaraju et al. 2017).

    from transfer.explain import explain
    result = explain(Path("dog.jpg"), model=Path("models/latest"))
    result.heatmap  # (h, w) in [0, 1] at the conv layer's resolution; result.png the picture
    explain(ExplainSettings(image=Path("dog.jpg"), class_name="cats"), write=False)

The heatmap is the ReLU of the last convolutional feature maps weighted by the mean gradient
of the class score (the logit, before sigmoid/softmax) with respect to each map. The layer
comes from the base's registry entry (``bases.Base.last_conv``); for other models (e.g.
``transfer mnist``) it is the last layer with a spatial output before the head.
"""

from __future__ import annotations

import difflib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transfer import bases, bundle, images, plots
from transfer.constants import and_list, gradcam_name, gradcam_png
from transfer.errors import NOT_NUMBERS_FOR_IT, TransferError, Untraceable
from transfer.files import refuse_existing, replacing, resolved, utf8_text
from transfer.inference import (
    BundleClassifier,
    check_invert,
    gather,
    given_classifier,
    glob_root,
    unread_reason,
    writable_folder,
)
from transfer.progress import Reporter
from transfer.settings import ExplainSettings, given

# px: the longest side of the photo in an explain PNG. The figure is 800 px wide, two panels,
# taller for a portrait photo: twice a panel keeps it sharp, and a phone photo is drafted.
SHOWN_SIDE = 768


@dataclass
class Explanation:
    image: Path
    png: Path | None
    heatmap: np.ndarray  # (h, w) at the conv layer's resolution, 0..1
    label: str
    probability: float
    class_index: int
    layer: str
    probabilities: dict[str, float]
    inverted: bool = False  # a digit drawn dark on light, inverted as MNIST's (predict says so)


def _is_model(layer) -> bool:
    from transfer.tf import keras

    return isinstance(layer, keras.Model)


def target_layer(model, meta: dict) -> str:
    """The name of the layer whose feature maps Grad-CAM weighs."""
    spec = bases.BASES.get(meta.get("base", ""))
    names = {layer.name for layer in model.layers}
    for layer in model.layers:
        if _is_model(layer):
            names |= {inner.name for inner in layer.layers}
    if spec is not None and spec.last_conv in names:
        return spec.last_conv
    last = None  # not a registered base: the last layer with (batch, h, w, c) output
    for layer in model.layers:
        if layer.name == "preprocess" or _is_model(layer):
            continue
        if len(layer.output.shape) == 4 and "conv" in type(layer).__name__.lower():
            last = layer.name
    if last is None:
        raise Untraceable("no convolutional layer found for Grad-CAM in this model")
    return last


def _forward(model, x, target: str):
    """(feature maps of ``target``, class logits, probabilities): the model's chain of layers
    run one by one, with the final Dense split into logits and activation. A model with
    test-time flips gives a list of two maps: the photo's and its mirror image's."""
    from transfer.tf import keras

    ops = keras.ops
    if "mirror" in {layer.name for layer in model.layers}:
        return _forward_flips(model, x, target)
    conv = None
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    for n, layer in enumerate(layers):
        last = n == len(layers) - 1
        if _is_model(layer) and target in {inner.name for inner in layer.layers}:
            probe = keras.Model(layer.input, [layer.get_layer(target).output, layer.output])
            conv, x = probe(x, training=False)
        elif last and isinstance(layer, keras.layers.Dense):
            logits = ops.matmul(x, layer.kernel) + layer.bias
            return conv, logits, layer.activation(logits)
        else:
            x = layer(x, training=False)
            if layer.name == target:
                conv = x
    raise Untraceable("the model does not end in a Dense classifier; Grad-CAM needs one")


def _forward_flips(model, x, target: str):
    """``_forward`` of the mirror-averaged model (``phases.graphs_of`` with flips): the base
    runs on the photo and on its mirror image, the head on the mean of their pooled features."""
    from transfer.tf import keras

    names = [layer.name for layer in model.layers]
    base = next(layer for layer in model.layers if _is_model(layer) and layer.name != "mirror")
    if target not in {inner.name for inner in base.layers}:
        raise TransferError(f"layer {target} is not in the base {base.name}")
    probe = keras.Model(base.input, [base.get_layer(target).output, base.output])
    x = model.get_layer("preprocess")(x)
    maps, pooled = [], []
    for view in (x, model.get_layer("mirror")(x)):
        conv, out = probe(view, training=False)
        maps.append(conv)
        pooled.append(model.get_layer("pool")(out))
    h = model.get_layer("mirror_mean")(pooled)
    head = model.layers[names.index("mirror_mean") + 1:]
    for layer in head[:-1]:
        h = layer(h, training=False)
    last = head[-1]
    logits = keras.ops.matmul(h, last.kernel) + last.bias
    return maps, logits, last.activation(logits)


def gradcam(model, meta: dict, array: np.ndarray, class_index: int | None = None,
            layer: str | None = None):
    """(heatmap 0..1, class probabilities, class index, layer) for one prepared input."""
    (one,), layer = gradcams(model, meta, array[None], [class_index], layer)
    return (*one, layer)


def gradcams(model, meta: dict, arrays: np.ndarray, class_indices: list | None = None,
             layer: str | None = None) -> tuple[list[tuple[np.ndarray, np.ndarray, int]], str]:
    """Grad-CAM of a batch of prepared inputs in one forward and one backward pass:
    ([(heatmap 0..1, class probabilities, class index)] in input order, layer).

    ``class_indices``: the class to explain for each input (None: its predicted class). In
    inference mode the inputs do not touch one another, so the gradient of the sum of their
    scores gives each its own map: the same maps as one call each, several times faster
    (the eager per-layer cost is paid once; `transfer train`'s report draws four)."""
    from transfer.metrics import class_probabilities
    from transfer.tf import tf

    layer = layer or target_layer(model, meta)
    x = tf.convert_to_tensor(np.asarray(arrays, dtype="float32"))
    n = int(x.shape[0])
    asked = list(class_indices) if class_indices is not None else [None] * n
    with tf.GradientTape() as tape:
        conv, logits, outputs = _forward(model, x, layer)
        if conv is None:
            raise TransferError(f"layer {layer} is not on the model's path")
        maps = conv if isinstance(conv, list) else [conv]  # [photo, mirror image] with flips
        for one in maps:
            tape.watch(one)
        probs = class_probabilities(np.asarray(outputs))
        indices = [int(np.argmax(p)) if c is None else int(c)
                   for p, c in zip(probs, asked, strict=True)]
        if logits.shape[-1] == 1:  # sigmoid: the logit favours class 1, its negative class 0
            signs = tf.constant([1.0 if i == 1 else -1.0 for i in indices], logits.dtype)
            score = tf.reduce_sum(logits[:, 0] * signs)
        else:
            score = tf.reduce_sum(tf.gather(logits, indices, axis=1, batch_dims=1))
    reference = np.asarray(model(x, training=False))
    if np.max(np.abs(reference - np.asarray(outputs))) > 1e-4:
        raise Untraceable("this model is not a simple chain of layers; Grad-CAM cannot trace it")
    total = 0.0
    for view, (one, grads) in enumerate(zip(maps, tape.gradient(score, maps), strict=True)):
        weights = tf.reduce_mean(grads, axis=(1, 2))  # (n, channels)
        cam = tf.reduce_sum(one * weights[:, None, None, :], axis=-1).numpy()  # (n, h, w)
        total = total + (cam[:, :, ::-1] if view == 1 else cam)  # the mirror's, flipped back
    results = []
    for i in range(n):
        cam = np.maximum(total[i], 0.0)
        peak = float(cam.max())
        results.append((cam / peak if peak > 0 else cam, probs[i], indices[i]))
    return results, layer


def map_note(heatmap: np.ndarray, label: str) -> str | None:
    """What a heatmap with nothing to show means, for the picture's title (None: it shows
    something). Empty: no region of the image raises ``label``'s score, and Grad-CAM's ReLU
    leaves nothing, drawn as a uniform tint that looked like a broken tool."""
    state = plots.map_state(heatmap)
    if state == "nan":  # a diverged model's: not empty, broken
        return f"{label}: the map is not a number (the model's outputs are not numbers)"
    if state is None:
        return None
    return f"{label}: empty map \u2014 no region raises this class's score"


def typed_key(name: str) -> str:
    """A class name as people type it: accents composed, case folded, spaces as underscores
    (``Tabby``, ``golden retriever`` for ImageNet's ``tabby``, ``golden_retriever``)."""
    return unicodedata.normalize("NFC", utf8_text(name)).strip().casefold().replace(" ", "_")


def loosely_named(labels: list[str], class_name: str) -> list[int]:
    """The indices of the labels ``class_name`` names as typed (``typed_key``)."""
    key = typed_key(class_name)
    return [i for i, label in enumerate(labels) if typed_key(label) == key]


def nearest_labels(labels: list[str], class_name: str) -> list[str]:
    """The labels whose typed form is nearest ``class_name``'s (difflib), the nearest
    first: what an unknown class's message suggests."""
    keys: dict[str, list[str]] = {}
    for label in labels:
        keys.setdefault(typed_key(label), [])
        if label not in keys[typed_key(label)]:
            keys[typed_key(label)].append(label)
    close = difflib.get_close_matches(typed_key(class_name), list(keys), n=4, cutoff=0.6)
    return [label for key in close for label in keys[key]]


def named_class(names: list[str], class_name: str | None) -> int | None:
    """The index of the class to explain (None: the predicted one): its name as the bundle
    holds it; else the one class it names as typed elsewhere: its accents composed otherwise
    ("café" typed on Linux for a folder named on a Mac, NFD), with the replacement mark a
    name that is not UTF-8 is shown with ("chi\\ufffdns" for a Latin-1 "chi\\xe9ns"), or in
    another case or with spaces for underscores (``Cats`` for ``cats``). These were "unknown
    class", listing a name that looked the same. The CLI and serve both ask here.

    Raises:
        TransferError: no class, or several, named so (the nearest names suggested).
    """
    if class_name is None:
        return None
    if class_name in names:
        return names.index(class_name)

    def typed(name: str) -> str:
        return unicodedata.normalize("NFC", utf8_text(name))

    same = [i for i, name in enumerate(names) if typed(name) == typed(class_name)]
    if len(same) == 1:
        return same[0]
    same = loosely_named(names, class_name)
    if len(same) == 1:
        return same[0]
    if same:
        quoted = [repr(names[i]) for i in same]
        raise TransferError(f"class {class_name!r} could be {and_list(quoted, 'or')}: give "
                            "it as the model has it")
    near = nearest_labels(names, class_name)
    raise TransferError(f"unknown class {class_name!r}; the model's classes are "
                        f"{', '.join(names)}" + (f" (the nearest: {', '.join(near)})"
                                                 if near else ""))


def explain(settings: ExplainSettings | Path, *, write: bool = True,
            classifier: BundleClassifier | None = None, **options) -> Explanation:
    """Grad-CAM of one image under a bundle's model, saved as a PNG (image | overlay).

    Args:
        settings: an ExplainSettings; or the image (``explain(Path("dog.jpg"), model=...)``).
            ``class_name`` explains that class instead of the predicted one; ``output``
            defaults to ``<image>.gradcam.png`` beside the image.
        write: False computes the heatmap without writing the PNG.
        classifier: the bundle already loaded (``BundleClassifier(settings.model,
            settings.invert)``), to explain many images without loading it each time.
        **options: ExplainSettings fields, applied over ``settings``.

    Returns:
        Explanation: the heatmap at the conv layer's resolution (0..1), the class explained,
        every class's probability, the layer, and the PNG written (None without ``write``).

    Raises:
        TransferError: a bad setting, an unknown class, an existing PNG (without ``force``),
            a file that is not a usable image, a broken bundle or a model Grad-CAM cannot trace.
        OSError: the PNG's folder cannot be written (its ``filename`` names it).
    """
    if not isinstance(settings, ExplainSettings):
        settings = ExplainSettings(image=settings, **options)
    elif options:
        settings = settings.replace(**options)
    if settings.images is not None:
        raise TransferError("explain takes one image; explain_all takes images")
    s = settings.validated()
    image = s.image
    if classifier is not None:  # it decides the model: another one asked for is an error
        given_classifier(classifier, "explain", BundleClassifier)
        default = ExplainSettings().model
        other = (Path(s.model) != default
                 and resolved(s.model) != resolved(classifier.path))
        if other or (s.invert is not None and s.invert != classifier.invert):
            given_too = "model" if other else "invert"
            raise TransferError(f"explain got a classifier and also {given_too}: the "
                                "classifier decides it; drop one or the other")
    # the bundle, the class and an existing picture are checked from meta.json, before the
    # model (and TensorFlow) loads: `explain photo.jpg` run again is refused at once
    known = classifier.meta if classifier is not None else bundle.read_meta(s.model)
    named_class(known["class_names"], s.class_name)
    check_invert(known, s.invert)  # --invert for a colour bundle: refused before, too
    png = Path(s.output) if s.output is not None else gradcam_png(image)
    if write:
        if png.exists() and resolved(png) == resolved(Path(image)):
            raise TransferError(f"{png} is the image being explained: it is not replaced by "
                                "its Grad-CAM picture, even with --force; choose another "
                                "--output")
        refuse_existing(png, s.force)
    classifier = classifier or BundleClassifier(s.model, s.invert)
    keras_model, meta, names = classifier.model, classifier.meta, classifier.class_names
    class_index = named_class(names, s.class_name)
    unread = unread_reason(Path(image))  # as predict and a folder of them say it
    if unread is not None:
        raise TransferError(f"{image}: {unread}")
    try:
        array, notes = classifier.prepare(image)
    except images.ImageError as exc:
        raise TransferError(f"{image}: {exc}") from None
    if write:
        writable_folder(png.parent)  # before the gradients: fail fast, naming the folder
    heatmap, probs, index, layer = gradcam(keras_model, meta, array, class_index)
    if not np.isfinite(probs).all():  # "predicted daisy nan" (NaN's argmax), exit 0
        raise TransferError(f"{image}: {NOT_NUMBERS_FOR_IT}")
    result = Explanation(image=image, png=None, heatmap=heatmap, label=names[index],
                         probability=float(probs[index]), class_index=index, layer=layer,
                         probabilities={n: float(p) for n, p in zip(names, probs, strict=True)},
                         inverted=bool((notes or {}).get("inverted")))
    if write:
        if meta.get("channels", 3) == 1:  # digits: show what the model saw (fitted 28x28)
            shown = np.repeat(array.astype("uint8"), 3, axis=-1)
        else:
            shown = images.picture(image, SHOWN_SIDE)  # a 48 MP photo never decoded whole
        predicted = names[int(np.argmax(probs))]
        title = (f"{image.name}: predicted {predicted} {probs.max():.2f}; Grad-CAM of "
                 f"{names[index]} at {layer}")
        note = map_note(heatmap, names[index])
        if note is not None:  # a uniform tint said nothing: the picture says why
            title += f"\n{note}"
        with replacing(png) as tmp:
            plots.gradcam(shown, heatmap, tmp, title=title)
        result.png = png
    return result


@dataclass
class Explained:
    """One image of ``explain_all``: its Explanation, or why it has none."""

    image: str  # as named, or as found in a folder or by a glob
    explanation: Explanation | None = None
    error: str | None = None


def outputs_of(paths: list[str | Path], output: Path | None
               ) -> list[tuple[str, Path | None, Path | None, str | None]]:
    """(name, image, PNG, error) for every image ``paths`` name (files, folders, globs, as
    ``predict`` takes them), each image once. The PNG goes beside the image, or into the
    folder ``output``, keeping the image's place below the folder it was found in
    (``photos`` or ``photos/*/*.jpg``: ``cats/1.jpg`` -> ``OUTPUT/cats/1.gradcam.png``); a file
    named alone goes to ``OUTPUT/<name>.gradcam.png``. Images that differ only by their
    extension (``IMG_1.JPG``, ``IMG_1.PNG``) keep it: ``IMG_1.PNG.gradcam.png``.

    Raises:
        TransferError: two different images would write one PNG.
    """
    import glob

    rows, images_seen = [], set()
    for raw in paths:
        named = Path(raw)
        root = (named if named.is_dir() else
                glob_root(str(raw)) if not named.exists() and glob.has_magic(str(raw)) else None)
        for name, image, error in gather([raw]):
            if image is None:
                rows.append((name, None, None, error))
                continue
            real = resolved(image)
            if real is None:  # a link loop
                rows.append((name, None, None, images.LINK_LOOP))
                continue
            if real in images_seen:
                continue  # named twice (a folder and a file in it, two spellings): once
            images_seen.add(real)
            if output is None:
                png = gradcam_png(image)
            else:
                below = image.relative_to(root) if root is not None else Path(image.name)
                png = Path(output) / gradcam_png(below)
            rows.append((name, image, png, error))
    # IMG_1.JPG beside IMG_1.PNG (a photo and its screenshot): both keep their extension,
    # whichever comes first (IMG_1.JPG.gradcam.png, IMG_1.PNG.gradcam.png)
    names_at: dict[Path, set[str]] = {}
    for _, image, png, _ in rows:
        if png is not None:
            names_at.setdefault(png, set()).add(Path(image).name)
    seen: dict[Path, tuple[str, Path]] = {}
    for i, (name, image, png, error) in enumerate(rows):
        if png is None:
            continue
        if len(names_at[png]) > 1:
            png = png.with_name(gradcam_name(Path(image).name))
            rows[i] = (name, image, png, error)
        if png in seen:
            first, first_image = seen[png]
            # beside their images they part only when they sit in different folders
            apart = output is not None and gradcam_png(image) != gradcam_png(first_image)
            hint = "explain them in two runs" + (", or without --output" if apart else "")
            raise TransferError(f"{first} and {name} would both write {png}; {hint}")
        seen[png] = (name, image)
    return rows


def explain_all(settings: ExplainSettings, *, reporter: Reporter | None = None
                ) -> list[Explained]:
    """Grad-CAM of every image ``settings.images`` names (files, folders, globs), the bundle
    loaded once; each PNG beside its image, or in the folder ``settings.output``.

    An image that cannot be read (or a name that finds none) gets its error and the others
    are explained. Existing PNGs are refused before any work unless ``force``.

    Raises:
        TransferError: a bad setting, a broken bundle, an unknown class, existing PNGs
            without ``force``, two images with one PNG.
    """
    given(settings, ExplainSettings, "explain_all")
    if settings.images is None:
        raise TransferError("explain_all takes images=[...] (files, folders, globs); explain "
                            "takes one image")
    s = settings.validated()
    reporter = reporter or Reporter()
    rows = outputs_of(list(s.images), s.output)
    # an earlier run's pictures named among the images (`explain --force photos/*`, the shell
    # expanding the glob): explained, they were overwritten before they were read, and
    # explained again as photos; they are this run's outputs, left out and said
    written = {resolved(png) for _, _, png, _ in rows if png is not None and png.exists()}
    again = [name for name, image, _, _ in rows
             if image is not None and resolved(image) in written]
    rows = [row for row in rows if row[0] not in again]
    existing = [png for _, _, png, _ in rows if png is not None and png.exists()]
    if existing and not s.force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise TransferError(f"{existing[0]}{more} already exist{'s' if not more else ''}; "
                            "use --force to replace")
    if again:
        reporter.warn(f"left out: {len(again)} Grad-CAM picture{'' if len(again) == 1 else 's'}"
                      f" of an earlier run named among the images ({again[0]}"
                      f"{', ...' if len(again) > 1 else ''}): this run writes "
                      f"{'it' if len(again) == 1 else 'them'} again")
    classifier = BundleClassifier(s.model, s.invert)
    named_class(classifier.class_names, s.class_name)  # an unknown class: before any image
    done = []
    with reporter.task("Grad-CAM", total=len(rows)) as advance:
        for name, image, png, error in rows:
            if image is not None:
                try:
                    # no --output: each picture beside its image, explain's own default,
                    # unless outputs_of named it otherwise (IMG_1.JPG beside IMG_1.PNG)
                    beside = s.output is None and png == gradcam_png(image)
                    one = ExplainSettings(image=image, model=s.model,
                                          output=None if beside else png,
                                          class_name=s.class_name, invert=s.invert, force=True)
                    done.append(Explained(name, explain(one, classifier=classifier)))
                except TransferError as exc:
                    done.append(Explained(name, error=str(exc).removeprefix(f"{image}: ")))
            else:
                done.append(Explained(name, error=error))
            advance()
    return done
