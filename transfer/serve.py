"""`transfer serve`: a web page and an HTTP API over the bundles of a models folder.

    from transfer.serve import create_app, run, serving
    from transfer.settings import ServeSettings

    run(ServeSettings(models_dir=Path("models")))          # blocks; Ctrl-C stops it
    with serving(ServeSettings(port=0)) as url:            # in a background thread
        httpx.get(url + "api/health")

The API (OpenAPI docs at ``/docs``):

- ``GET /api/health``: ``{"status": "ok", ...}``.
- ``GET /api/models``: the bundles of the models folder (name, classes, base, accuracy, digit
  or not, link to the report) and the ImageNet classifiers whose weights are in the Keras
  cache, plus the page's default model.
- ``POST /api/predict`` (multipart: ``files`` repeatable; optional ``model``, ``top``,
  ``invert``): the JSON of ``transfer predict --format json`` plus ``server_seconds``. One
  unusable file among good ones gets its own error entry; when no file is a usable image the
  answer is 415 with a JSON error naming every file.
- ``POST /api/explain`` (multipart: ``file``; optional ``model``, ``class_name``, ``view``
  ``pair|overlay``, ``invert``): the Grad-CAM PNG (image | overlay, or the overlay alone);
  the class explained and its probability are in the ``X-Label`` / ``X-Probability``
  headers (URL-quoted).
- ``GET /models/<name>/report``: the bundle's ``report.html`` (rendered on the fly when the
  bundle has none).

Models are loaded once (bundles with Keras's ``safe_mode``, through ``transfer.inference``) and
kept in a small LRU (``cache_size``). Every model call runs on one worker thread, off the event
loop: concurrent requests queue there (never two model calls at once, at most MAX_PENDING
waiting, more get 503), and predict requests waiting for the same model are merged into one
batch, so the page stays responsive and a burst neither crashes the process nor runs it out
of memory. A model name that would leave
the models folder (``..``, an absolute path, a symbolic link pointing out) is 404; a request
body over ``max_upload_mb`` is 413.
"""


import asyncio
import contextlib
import functools
import importlib.util
import json
import socket
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from transfer.errors import TransferError
from transfer.progress import Reporter
from transfer.settings import INVERT, ServeSettings

STATIC = Path(__file__).parent / "static"
IMAGENET_PREFIX = "imagenet:"
MAX_FILES = 64  # images per request
MAX_PENDING = 256  # jobs waiting for the model thread; more get 503
MAX_BATCH_FILES = 64  # images in one merged predict batch
ALL_INTERFACES = ("0.0.0.0", "::", "", "[::]", "*")
SHOWN_SIDE = 384  # px: the longest side of the picture in an explain PNG
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
               "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
               "base-uri 'none'; frame-ancestors 'self'")
REPORT_POLICY = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                 "base-uri 'none'; form-action 'none'")


class NotFound(Exception):
    """No model of that name inside the models folder (the answer is 404)."""


class Broken(TransferError):
    """A bundle of that name is there but cannot be used: its meta.json unreadable, its model
    file damaged (the answer is 500, with the reason; the console says it once)."""


@dataclass(frozen=True)
class ImageNetEntry:
    name: str  # "imagenet:mobilenet-0.25"
    base: str
    alpha: float
    title: str  # "MobileNet alpha 0.25 (ImageNet)"


# --------------------------------------------------------------------------- models


class ModelStore:
    """The models a server offers: bundles inside ``models_dir`` and ImageNet classifiers,
    loaded on first use and kept in an LRU of ``cache_size`` (only touched from the model
    thread, except for listing)."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.root = Path(settings.models_dir)
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # models loaded so far (the LRU's misses)
        self.warn = lambda text: None  # where a broken bundle is said, once (serve's console)
        self._said: set = set()

    # ---- names

    def bundle_entry(self, name: str) -> tuple[Path, dict]:
        """The bundle folder ``name`` names inside the models folder, and its meta.json.

        Raises:
            NotFound: an empty name, a path (``/``, ``\\``), ``.`` or ``..``, a name whose real
                location (symbolic links followed) is not inside the models folder, or a folder
                without a meta.json.
            Broken: a folder whose meta.json is not a bundle's (unreadable, not JSON, lacking
                a field, from a newer transfer).
        """
        if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
                or name.startswith(".") or Path(name).is_absolute()):
            raise NotFound(name)
        candidate = self.root / name
        try:
            root = self.root.resolve(strict=True)
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            raise NotFound(name) from None
        if real == root or not real.is_relative_to(root) or not real.is_dir():
            raise NotFound(name)
        from transfer import bundle

        if not (real / bundle.META).exists():
            raise NotFound(name)
        try:
            meta = bundle.read_meta(real)
        except (TransferError, OSError) as exc:
            self._say(name, exc)
            raise Broken(f"model {name!r} cannot be used: {exc}") from None
        return candidate, meta

    def bundle_path(self, name: str) -> Path:
        """The bundle folder ``name`` names inside the models folder (``bundle_entry``)."""
        return self.bundle_entry(name)[0]

    def _say(self, name: str, problem) -> None:
        """Say a broken bundle on the console once (the page just does not list it)."""
        key = (name, str(problem))
        with self._lock:  # listing threads, the model thread: said once
            if key in self._said:
                return
            self._said.add(key)
        self.warn(f"{self.root / name}: not a usable bundle ({problem})")

    def imagenet_entries(self) -> list[ImageNetEntry]:
        """ImageNet classifiers offered: every pretrained base whose classifier weights (with
        the top) are in the Keras cache, and the one ``--imagenet`` asked for."""
        from transfer import bases

        entries: dict[str, ImageNetEntry] = {}

        def add(base_name: str, alpha: float) -> None:
            spec = bases.get(base_name)
            suffix = f"-{alpha:g}" if spec.has_alpha else ""
            width = f" alpha {alpha:g}" if spec.has_alpha else ""
            name = f"{IMAGENET_PREFIX}{base_name}{suffix}"
            entries[name] = ImageNetEntry(name, base_name, alpha,
                                          f"{spec.keras_class}{width} (ImageNet)")

        if self.settings.imagenet:
            add(self.settings.base, self.settings.alpha)
        for base_name, spec in bases.BASES.items():
            if not spec.pretrained:
                continue
            for alpha in (bases.MOBILENET_ALPHAS if spec.has_alpha else (1.0,)):
                try:
                    if bases.cached_weights(spec, alpha, include_top=True) is not None:
                        add(base_name, alpha)
                except (TransferError, KeyError, ValueError):
                    continue
        return list(entries.values())

    def imagenet_entry(self, name: str) -> ImageNetEntry:
        for entry in self.imagenet_entries():
            if entry.name == name:
                return entry
        raise NotFound(name)

    def bundles(self) -> list[dict]:
        """Every bundle directly inside the models folder, described for the page (the
        ``latest`` link is not listed twice: its target is)."""

        found = []
        if not self.root.is_dir():
            return found
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") or (folder.name == "latest" and folder.is_symlink()):
                continue
            try:
                path, meta = self.bundle_entry(folder.name)
            except (NotFound, TransferError, OSError):  # a broken one is said (bundle_entry)
                continue
            found.append(describe_bundle(folder.name, path, meta))
        return found

    def default_model(self) -> str | None:
        """The page's default: --model, else --imagenet's classifier, else the bundle
        ``latest`` points at, else the first bundle, else the first ImageNet classifier."""
        s = self.settings
        if s.model:
            return s.model
        if s.imagenet:
            return self.imagenet_entries()[0].name
        latest = self.root / "latest"
        with contextlib.suppress(NotFound, Broken):
            self.bundle_path("latest")
            return latest.resolve().name if latest.is_symlink() else "latest"
        listed = self.bundles()
        if listed:
            return listed[0]["name"]
        entries = self.imagenet_entries()
        return entries[0].name if entries else None

    # ---- loading

    def get(self, name: str | None):
        """The loaded classifier ``name`` names (a bundle, or ``imagenet:<base>[-alpha]``).

        Raises:
            NotFound: no such model.
            TransferError: the model exists but cannot be loaded (the message says why).
        """
        name = name or self.default_model()
        if not name:
            raise NotFound("no model: the models folder holds no bundle")
        from transfer import inference

        if name.startswith(IMAGENET_PREFIX):
            entry = self.imagenet_entry(name)
            key = ("imagenet", entry.base, entry.alpha)

            def load():
                return inference.ImageNetClassifier(entry.base, entry.alpha)
        else:
            path = self.bundle_path(name)
            real = path.resolve()
            try:
                stamp = (real / "model.keras").stat().st_mtime_ns
            except OSError:
                stamp = 0
            key = ("bundle", str(real), stamp)

            def load():
                try:
                    return inference.BundleClassifier(real)
                except TransferError as exc:  # a damaged model.keras, a meta.json that lies
                    self._say(name, exc)
                    raise Broken(f"model {name!r} cannot be used: {exc}") from None
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        classifier = load()
        with self._lock:
            self.loads += 1
            self._cache[key] = classifier
            self._cache.move_to_end(key)
            while len(self._cache) > max(1, self.settings.cache_size):
                self._cache.popitem(last=False)
        return classifier

    def loaded(self) -> list[str]:
        with self._lock:
            return [key[1] if key[0] == "bundle" else f"{key[1]} {key[2]:g}"
                    for key in self._cache]


def describe_bundle(name: str, path: Path, meta: dict) -> dict:
    """One bundle as ``/api/models`` lists it."""
    metrics = meta.get("metrics") or {}
    accuracy = metrics.get("test_accuracy", metrics.get("val_accuracy"))
    evaluated = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        report = json.loads((path / "report.json").read_text(encoding="utf-8"))
        evaluated = report.get("accuracy")
    prep = meta.get("preprocessing") or {}
    return {"name": name, "kind": "bundle", "title": name,
            "classes": list(meta.get("class_names", [])), "base": meta.get("base"),
            "alpha": meta.get("alpha"), "image_size": meta.get("image_size"),
            "accuracy": accuracy, "evaluated_accuracy": evaluated,
            "digits": meta.get("channels", 3) == 1 or prep.get("fit") == "mnist-box",
            "created": meta.get("created"),
            "report": f"/models/{quote(name)}/report"}


# --------------------------------------------------------------------------- work (model thread)


@dataclass
class Upload:
    filename: str
    data: bytes


def shown_name(filename: str | None, index: int) -> str:
    """The name an upload is reported under (what the client sent, without folders)."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name or f"upload-{index + 1}"


def predict_uploads(store: ModelStore, uploads: list[Upload], model: str | None, top: int,
                    invert: str | None) -> dict:
    """``transfer predict --format json``'s dict for uploaded files, through the file-based
    ``transfer.predict.predict`` (the uploads are written to a private temporary folder);
    each ``file`` is the name the client sent, ``model`` a bundle's name in the models
    folder (not its path on the server)."""
    from transfer.predict import predict

    model = model or store.default_model()
    classifier = store.get(model)
    if invert is not None and classifier.mode == "bundle" and \
            classifier.meta.get("channels", 3) != 1:
        invert = None  # the page sends one for every model; it means something for digits only
    if classifier.mode == "imagenet":
        invert = None
    if invert is not None:
        classifier.invert = invert
    with tempfile.TemporaryDirectory(prefix="transfer-serve-") as tmp:
        paths = []
        for i, upload in enumerate(uploads):
            path = Path(tmp) / f"{i:04d}.upload"
            path.write_bytes(upload.data)
            paths.append(path)
        try:
            result = predict([str(p) for p in paths], classifier=classifier, top=top,
                             batch_size=32)
        finally:
            if invert is not None:
                classifier.invert = None
    answer = result.as_dict()
    if classifier.mode == "bundle":
        answer["model"] = model  # its name here, not the server's file system path
    for item, upload in zip(answer["predictions"], uploads, strict=True):
        item["file"] = upload.filename
    return answer


def _shown_picture(classifier, data: bytes, array: np.ndarray) -> np.ndarray:
    """What the explain PNG shows: the photo (upright, RGB, longest side SHOWN_SIDE), or for a
    digit model the fitted 28x28 digit the model saw, enlarged."""
    from PIL import Image

    from transfer import images

    if classifier.mode == "bundle" and classifier.meta.get("channels", 3) == 1:
        digit = np.asarray(array, dtype="float32")[..., 0].clip(0, 255).astype("uint8")
        big = Image.fromarray(digit).resize((224, 224), Image.NEAREST)
        return np.repeat(np.asarray(big)[..., None], 3, axis=-1)
    return images.picture(data, SHOWN_SIDE)  # drafted: a phone photo decodes at 1/2-1/8


def imagenet_gradcam(classifier, array: np.ndarray, class_index: int | None = None):
    """(heatmap 0..1, probabilities, class index, layer) of an ImageNet classifier for one
    prepared input: the base's last convolutional maps weighted by the gradient of the class
    logit (the input of the final softmax, or the final Dense's pre-activation)."""
    from transfer import bases
    from transfer.tf import keras, tf

    model, spec = classifier.model, classifier.spec
    layer = spec.last_conv
    last = model.layers[-1]
    probe = keras.Model(model.inputs, [model.get_layer(layer).output, last.input, model.output])
    x = tf.convert_to_tensor(bases.preprocess_numpy(spec.preprocess)(
        np.asarray(array, dtype="float32")[None]))
    with tf.GradientTape() as tape:
        conv, before, probs = probe(x, training=False)
        if isinstance(last, keras.layers.Dense):
            logits = tf.matmul(before, last.kernel) + last.bias
        elif isinstance(last, keras.layers.Activation):
            logits = tf.reshape(before, (1, -1))
        else:
            logits = tf.math.log(tf.reshape(probs, (1, -1)) + 1e-12)
        probs_np = np.asarray(probs, dtype="float64").reshape(-1)
        if class_index is None:
            class_index = int(np.argmax(probs_np))
        score = logits[:, class_index]
    grads = tape.gradient(score, conv)
    weights = tf.reduce_mean(grads, axis=(1, 2))
    cam = tf.nn.relu(tf.reduce_sum(conv * weights[:, None, None, :], axis=-1))[0].numpy()
    peak = float(cam.max())
    return (cam / peak if peak > 0 else cam), probs_np, class_index, layer


def explain_upload(store: ModelStore, upload: Upload, model: str | None,
                   class_name: str | None, view: str, invert: str | None) -> tuple[bytes, dict]:
    """(Grad-CAM PNG, facts) of one uploaded image under a model.

    Raises:
        transfer.images.ImageError: the upload is not a usable image.
        TransferError: an unknown class, or a model Grad-CAM cannot trace.
    """
    from transfer.explain import gradcam
    from transfer.report import overlay_png

    model = model or store.default_model()
    classifier = store.get(model)
    if classifier.mode == "bundle":
        use_invert = invert if classifier.meta.get("channels", 3) == 1 else None
        from transfer import images

        array, _ = images.model_input(upload.data, classifier.meta, use_invert)
        names = classifier.class_names
        index = None
        if class_name is not None:
            if class_name not in names:
                raise TransferError(f"unknown class {class_name!r}; the model's classes are "
                                    f"{', '.join(names)}")
            index = names.index(class_name)
        heatmap, probs, index, layer = gradcam(classifier.model, classifier.meta, array, index)
        label = names[index]
    else:
        array, _ = classifier.prepare(upload.data)
        index = None
        if class_name is not None:
            labels = _imagenet_names()
            if class_name not in labels:
                raise TransferError(f"unknown ImageNet class {class_name!r}")
            index = labels.index(class_name)
        heatmap, probs, index, layer = imagenet_gradcam(classifier, array, index)
        label = _imagenet_names()[index]
    png = overlay_png(_shown_picture(classifier, upload.data, array), heatmap, view)
    return png, {"label": label, "probability": float(probs[index]), "class_index": index,
                 "layer": layer,
                 "model": model if classifier.mode == "bundle" else classifier.name}


@functools.lru_cache(maxsize=1)
def _imagenet_names() -> list[str]:
    """The 1000 ImageNet labels in index order (Keras's class index)."""
    from transfer import inference

    ranked = inference.imagenet_labels(np.linspace(1, 0, 1000)[None], 1000)[0]
    return [entry["label"] for entry in ranked]


# --------------------------------------------------------------------------- the application


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 (by its Content-Length
    at once, or while it streams)."""

    def __init__(self, app, limit_mb: float):
        self.app = app
        self.limit_mb = limit_mb
        self.limit = int(limit_mb * 2**20)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = 0
                if length > self.limit:
                    return await self._refuse(send)
        seen = 0
        state = {"over": False, "started": False}

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    state["over"] = True
                    raise _TooLarge()
            return message

        async def guarded_send(message):
            # the body parser turns our exception into its own error answer: replace it
            if state["over"]:
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await self._refuse(send)
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            if not state["started"]:
                state["started"] = True
                await self._refuse(send)

    async def _refuse(self, send):
        body = json.dumps({"detail": f"upload too large: the limit is {self.limit_mb:g} MB per "
                                     "request (--max-upload-mb)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


@dataclass
class _Job:
    fn: object  # what to run on the model thread (None for a predict job)
    args: tuple
    future: Future
    key: tuple | None = None  # predict jobs with the same key may share one model call
    uploads: list | None = None


class Worker:
    """The one thread that runs every model call. Jobs wait in order (at most MAX_PENDING; more
    get 503); predict requests waiting for the same model, ``top`` and ``invert`` are merged
    into one batch (up to MAX_BATCH_FILES images), so a burst of single-photo requests costs a
    few model calls, not one each."""

    def __init__(self, store: ModelStore):
        self.store = store
        self._jobs: deque = deque()
        self._cond = threading.Condition()
        self._restart = threading.Lock()
        self._closed = False
        self.requests = 0  # jobs run
        self.calls = 0  # model calls (batches) they took
        self._thread = threading.Thread(target=self._loop, name="transfer-model", daemon=True)
        self._thread.start()

    def start(self) -> None:
        """Run again after ``close`` (the app served a second time: a restarted server, a
        second TestClient); a no-op while running."""
        with self._restart:  # one restart at a time: never two model threads
            with self._cond:
                if not self._closed:
                    return
            self._thread.join()  # the closed loop ends after the call it is in, if any
            with self._cond:
                self._closed = False
            self._thread = threading.Thread(target=self._loop, name="transfer-model",
                                            daemon=True)
            self._thread.start()

    def _submit(self, job: _Job) -> Future:
        with self._cond:
            if self._closed or len(self._jobs) >= MAX_PENDING:
                raise _Busy()
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    async def run(self, fn, *args):
        """``fn(*args)`` on the model thread, after the jobs queued before it."""
        return await asyncio.wrap_future(self._submit(_Job(fn, args, Future())))

    async def predict(self, uploads: list[Upload], model: str | None, top: int,
                      invert: str | None) -> dict:
        """``predict_uploads`` on the model thread, batched with others like it."""
        job = _Job(None, (model, top, invert), Future(), key=(model, top, invert),
                   uploads=uploads)
        return await asyncio.wrap_future(self._submit(job))

    @property
    def pending(self) -> int:
        return len(self._jobs)

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None
            first = self._jobs.popleft()
            batch = [first]
            if first.key is not None:
                files, rest = len(first.uploads), deque()
                while self._jobs:
                    job = self._jobs.popleft()
                    if job.key == first.key and files + len(job.uploads) <= MAX_BATCH_FILES:
                        batch.append(job)
                        files += len(job.uploads)
                    else:
                        rest.append(job)
                self._jobs = rest
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not live:
                continue
            self.calls += 1
            self.requests += len(live)
            try:
                if live[0].key is None:
                    results = [live[0].fn(*live[0].args)]
                else:
                    merged = [upload for job in live for upload in job.uploads]
                    answer = predict_uploads(self.store, merged, *live[0].args)
                    results = split_answer(answer, [len(job.uploads) for job in live])
            except BaseException as exc:  # handed to every waiting request, never lost
                for job in live:
                    job.future.set_exception(exc)
            else:
                for job, result in zip(live, results, strict=True):
                    job.future.set_result(result)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for job in self._jobs:
                job.future.cancel()
            self._jobs.clear()
            self._cond.notify_all()


def split_answer(answer: dict, sizes: list[int]) -> list[dict]:
    """One predict answer per request of a merged batch (``sizes`` images each, in order)."""
    parts, start = [], 0
    for size in sizes:
        rows = answer["predictions"][start:start + size]
        start += size
        parts.append({**answer, "predictions": rows,
                      "failed": sum(row["error"] is not None for row in rows)})
    return parts


class _Busy(Exception):
    pass


DOCS_ASSETS = "/docs-assets"


def swagger_assets() -> Path | None:
    """The folder of Swagger UI's script and style in the ``fastapi-swagger`` package (a
    dependency; Swagger UI 5, which renders FastAPI's OpenAPI 3.1), or None without it: then
    ``/docs`` is FastAPI's own page, which loads them from a CDN."""
    try:
        spec = importlib.util.find_spec("fastapi_swagger")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "resources"
    needed = ("swagger-ui-bundle.js", "swagger-ui.css")
    return folder if all((folder / name).is_file() for name in needed) else None


def create_app(settings: ServeSettings):
    """The FastAPI application of ``transfer serve``.

    Args:
        settings: the models folder, the default model, the upload limit, the LRU size, the
            number of classes shown (``top``). Checked with ``validated()``.

    Returns:
        fastapi.FastAPI: the page at ``/``, the API under ``/api``, the reports under
        ``/models/<name>/report``, OpenAPI docs at ``/docs``.

    Raises:
        TransferError: a bad setting (port, limit, base, alpha), or a --model that is not a
            bundle inside the models folder.
    """
    from fastapi import FastAPI, File, Form, UploadFile
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool

    from transfer import __version__, images

    s = settings.validated()
    store = ModelStore(s)
    if s.model is not None:
        try:
            store.bundle_path(s.model)
        except NotFound:
            raise TransferError(f"--model {s.model}: no bundle of that name in {s.models_dir} "
                                "(a folder holding meta.json and model.keras)") from None
        except Broken as exc:
            raise TransferError(f"--model {s.model}: {exc}") from None
    worker = Worker(store)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        worker.close()

    swagger = swagger_assets()
    app = FastAPI(title="transfer serve", version=__version__, lifespan=lifespan,
                  docs_url=None if swagger else "/docs",
                  description="Classify photos with the bundles of a models folder or an "
                              "ImageNet classifier; Grad-CAM pictures; run reports.")
    app.state.store = store
    app.state.worker = worker
    app.state.settings = s

    # /docs fills "Try it out" with these examples (Swagger UI's own placeholders, "string"
    # and 0, are values the API refuses)
    MODEL_FIELD = Form(None, examples=[""], description=(  # noqa: N806
        "a model of GET /api/models (default: the page's default)"))
    INVERT_FIELD = Form(None, examples=["auto"], description=(  # noqa: N806
        "digit models: auto, yes or no (dark digit on light paper)"))

    def error(status: int, detail: str, **extra) -> JSONResponse:
        return JSONResponse({"detail": detail, **extra}, status_code=status)

    def bad_model(name: str | None) -> JSONResponse:
        return error(404, f"no model named {name!r} in {s.models_dir} (GET /api/models lists "
                          "them)")

    async def read_uploads(files: list) -> list[Upload]:
        uploads = []
        for i, upload in enumerate(files):
            data = await upload.read()
            uploads.append(Upload(shown_name(upload.filename, i), data))
        return uploads

    def check_invert(invert: str | None) -> str | None:
        if invert in (None, ""):
            return None
        if invert not in INVERT:
            raise ValueError(f"invert must be one of {', '.join(INVERT)}, not {invert!r}")
        return invert

    @app.get("/api/health", summary="Is the server up?")
    async def health():
        return {"status": "ok", "version": __version__, "models_dir": str(s.models_dir),
                "loaded": store.loaded(), "queued": worker.pending,
                "requests": worker.requests, "model_calls": worker.calls}

    @app.get("/api/models", summary="The bundles and ImageNet classifiers offered")
    async def models():
        bundles = await run_in_threadpool(store.bundles)
        entries = await run_in_threadpool(store.imagenet_entries)
        default = await run_in_threadpool(store.default_model)
        imagenet = [{"name": e.name, "kind": "imagenet", "title": e.title, "base": e.base,
                     "alpha": e.alpha, "classes": 1000, "accuracy": None, "digits": False,
                     "report": None} for e in entries]
        return {"default": default, "top": s.top, "max_upload_mb": s.max_upload_mb,
                "models": bundles + imagenet}

    @app.post("/api/predict", summary="Classify one or more images")
    async def predict_endpoint(files: list[UploadFile] = File(..., description="images"),
                               model: str | None = MODEL_FIELD,
                               top: int | None = Form(None, examples=[s.top], description=(
                                   f"classes per image (default {s.top})")),
                               invert: str | None = INVERT_FIELD):
        started = time.perf_counter()
        if len(files) > MAX_FILES:
            return error(413, f"too many files ({len(files)}); at most {MAX_FILES} per request")
        k = s.top if top is None else top
        if k < 1:
            return error(422, f"top must be at least 1, not {k}")
        try:
            invert = check_invert(invert)
        except ValueError as exc:
            return error(422, str(exc))
        uploads = await read_uploads(files)
        try:
            answer = await worker.predict(uploads, model or None, k, invert)
        except NotFound:
            return bad_model(model)
        except _Busy:
            return error(503, "the server is busy; try again in a moment")
        except Broken as exc:
            return error(500, str(exc))
        except TransferError as exc:
            return error(500, f"cannot use model {model or store.default_model()!r}: {exc}")
        answer["server_seconds"] = round(time.perf_counter() - started, 4)
        if answer["predictions"] and answer["failed"] == len(answer["predictions"]):
            names = ", ".join(f"{p['file']} ({p['error']})" for p in answer["predictions"])
            return error(415, f"no usable image: {names}",
                         errors=[{"file": p["file"], "error": p["error"]}
                                 for p in answer["predictions"]])
        return answer

    @app.post("/api/explain", summary="Grad-CAM of one image (a PNG)",
              response_class=Response,
              responses={200: {"content": {"image/png": {}}}})
    async def explain_endpoint(file: UploadFile = File(..., description="one image"),
                               model: str | None = MODEL_FIELD,
                               class_name: str | None = Form(None, examples=[""], description=(
                                   "the class to explain (default: the predicted one)")),
                               view: str = Form("pair", examples=["pair"], description=(
                                   "pair (photo and overlay) or overlay")),
                               invert: str | None = INVERT_FIELD):
        started = time.perf_counter()
        if view not in ("pair", "overlay"):
            return error(422, f"view must be pair or overlay, not {view!r}")
        try:
            invert = check_invert(invert)
        except ValueError as exc:
            return error(422, str(exc))
        upload = (await read_uploads([file]))[0]
        try:
            png, facts = await worker.run(explain_upload, store, upload, model or None,
                                          class_name or None, view, invert)
        except NotFound:
            return bad_model(model)
        except _Busy:
            return error(503, "the server is busy; try again in a moment")
        except images.ImageError as exc:
            return error(415, f"{upload.filename}: {exc}",
                         errors=[{"file": upload.filename, "error": str(exc)}])
        except Broken as exc:  # the server's bundle, not the request, is at fault
            return error(500, str(exc))
        except TransferError as exc:
            return error(422, str(exc))
        seconds = round(time.perf_counter() - started, 4)
        headers = {"X-Label": quote(facts["label"]),
                   "X-Probability": f"{facts['probability']:.6f}",
                   "X-Class-Index": str(facts["class_index"]),
                   "X-Layer": quote(facts["layer"]),
                   "X-Server-Seconds": f"{seconds}",
                   "Cache-Control": "no-store"}
        return Response(png, media_type="image/png", headers=headers)

    @app.get("/models/{name}/report", response_class=HTMLResponse,
             summary="A bundle's one-file HTML report")
    async def report(name: str):
        try:
            path = store.bundle_path(name)
        except NotFound:
            return bad_model(name)
        except Broken as exc:
            return error(500, str(exc))
        headers = {"Content-Security-Policy": REPORT_POLICY}
        page = path / "report.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html", headers=headers)
        from transfer.report import render_report

        html = await run_in_threadpool(render_report, path, gradcams=0)
        return HTMLResponse(html, headers=headers)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_POLICY,
                                     "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if swagger:  # Swagger UI from the installed package, so /docs works with no network
        from fastapi.openapi.docs import get_swagger_ui_html

        @app.get("/docs", include_in_schema=False)
        async def docs():
            return get_swagger_ui_html(  # relative URLs: right behind a path prefix too
                openapi_url="openapi.json", title=f"{app.title} - API",
                swagger_js_url=f"{DOCS_ASSETS[1:]}/swagger-ui-bundle.js",
                swagger_css_url=f"{DOCS_ASSETS[1:]}/swagger-ui.css",
                swagger_favicon_url=f"{DOCS_ASSETS[1:]}/favicon-32x32.png")

        app.mount(DOCS_ASSETS, StaticFiles(directory=swagger), name="docs-assets")

    openapi = app.openapi

    def openapi_with_file_pickers() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = files_as_binary(openapi())
        return app.openapi_schema

    app.openapi = openapi_with_file_pickers
    app.add_middleware(BodyLimit, limit_mb=s.max_upload_mb)
    return app


def files_as_binary(schema):
    """FastAPI writes an upload as OpenAPI 3.1 has it (``contentMediaType``), which Swagger UI 5
    shows as a file picker for one file but as text boxes for a list of files (so /docs sent
    text, and got 422). ``format: binary`` beside it is what 3.0 tools read and 3.1 ignores
    (FastAPI's pending fix does the same)."""
    if isinstance(schema, dict):
        if schema.get("type") == "string" and schema.get("contentMediaType") == \
                "application/octet-stream":
            schema.setdefault("format", "binary")
        for value in schema.values():
            files_as_binary(value)
    elif isinstance(schema, list):
        for value in schema:
            files_as_binary(value)
    return schema


# --------------------------------------------------------------------------- running


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (port 0: a free one).

    Raises:
        TransferError: the address cannot be bound (in use, not this machine's, no permission).
    """
    bare = host.strip("[]")
    try:
        infos = socket.getaddrinfo(bare or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise TransferError(f"--host {host}: {exc.strerror or exc}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6 and bare in ("::", ""):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise TransferError(f"cannot listen on {host}:{port}: "
                            f"{exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(host: str, port: int) -> str:
    bare = host.strip("[]")
    shown = "127.0.0.1" if bare in ("0.0.0.0", "") else ("::1" if bare == "::" else bare)
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def _server(settings: ServeSettings, reporter: Reporter):
    import uvicorn

    s = settings.validated()
    app = create_app(s)
    store = app.state.store
    if s.imagenet or s.model:  # the default asked for: loaded now, so a failure is one line
        name = store.default_model()  # at start-up, not a 500 on every request
        try:
            store.get(name)
        except TransferError as exc:
            raise TransferError(f"cannot serve {name}: {exc}") from None
    sock = _bind(s.host, s.port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_keep_alive=5)
    server = uvicorn.Server(config)
    if s.host.strip("[]") in ALL_INTERFACES:
        reporter.warn(f"listening on all interfaces ({s.host}): anyone who can reach this "
                      "machine can use the models; use --host 127.0.0.1 to keep it local")
    store.warn = reporter.warn  # a broken bundle is said on the console, once
    if not s.models_dir.is_dir():  # still served: bundles trained into it later are listed
        reporter.warn(f"no folder {s.models_dir} (a typo in --models-dir?): no bundle to "
                      "serve, " + ("only ImageNet classifiers" if store.imagenet_entries() else
                                   "and no ImageNet classifier is in the Keras cache (or use "
                                   "--imagenet)"))
    elif not store.bundles() and not store.imagenet_entries():
        reporter.warn(f"no model to serve: {s.models_dir} holds no bundle (train one with "
                      "`transfer train`) and no ImageNet classifier is in the Keras cache "
                      "(or use --imagenet)")
    url = url_of(s.host, port)
    reporter.info(f"transfer serve: {url} (API docs {url}docs); Ctrl-C stops it")
    return server, sock, url


def run(settings: ServeSettings, reporter: Reporter | None = None) -> None:
    """Serve the page and the API with uvicorn until Ctrl-C (or SIGTERM); returns then.

    Args:
        settings: where the bundles are, the default model, host and port (port 0 picks a
            free one), upload limit, LRU size.
        reporter: where the URL and the warning for all-interfaces binding go.

    Raises:
        TransferError: a bad setting, or an address that cannot be bound (port in use).
    """
    reporter = reporter or Reporter()
    server, sock, url = _server(settings, reporter)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then passed Ctrl-C on
        reporter.info("transfer serve: stopped")
    finally:
        sock.close()


@contextlib.contextmanager
def serving(settings: ServeSettings, reporter: Reporter | None = None,
            timeout: float = 60.0) -> Iterator[str]:
    """Run the server in a background thread while the ``with`` block runs; yields its URL.

    Args:
        settings: as for ``run`` (port 0 picks a free port).
        reporter: as for ``run``.
        timeout: seconds to wait for the server to start and to stop.

    Raises:
        TransferError: a bad setting, an address that cannot be bound, or a server that did
            not start within ``timeout``.
    """
    reporter = reporter or Reporter()
    server, sock, url = _server(settings, reporter)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="transfer-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise TransferError(f"the server at {url} did not start")
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
