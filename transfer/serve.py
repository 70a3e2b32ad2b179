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
  cache, plus the page's default model, ``top``, ``max_upload_mb`` (MiB),
  ``max_upload_bytes`` and ``models_dir``.
- ``POST /api/predict`` (multipart: ``files`` repeatable; optional ``model``, ``top``,
  ``invert``): the JSON of ``transfer predict --format json`` plus ``server_seconds``. One
  unusable file among good ones gets its own error entry; when no file is a usable image the
  answer is 415 with a JSON error naming every file.
- ``POST /api/explain`` (multipart: ``file``; optional ``model``, ``class_name``, ``view``
  ``pair|overlay``, ``invert``): the Grad-CAM PNG (image | overlay, or the overlay alone);
  the class explained is in the headers (``EXPLAIN_HEADERS``, listed in the OpenAPI docs):
  ``X-Label`` (URL-quoted), ``X-Probability`` (every digit: 3.2e-07, not 0.000000),
  ``X-Class-Index``, ``X-Layer``, ``X-Server-Seconds``. Every error answer is JSON
  ``{"detail": "one line", "errors": [...]}`` (``api_error``).
- Their fields are form fields of the multipart body: the same names in the query string
  (``?model=flowers``), or a field other than ``files`` given twice, are a 422 saying so; a
  body that is not multipart/form-data (JSON, a raw JPEG, ``curl -d``) is a 415 saying how to
  send it, and a text field where a file goes a 422.
- ``GET /models/<name>/report``: the bundle's ``report.html`` (rendered on the fly when the
  bundle has none).

Models are loaded once (bundles with Keras's ``safe_mode``, through ``transfer.inference``) and
kept in a small LRU (``cache_size``). Every model call runs on one worker thread, off the event
loop: concurrent requests queue there (never two model calls at once, at most MAX_PENDING
waiting, more get 503), and predict requests waiting for the same model are merged into one
batch, so the page stays responsive and a burst neither crashes the process nor runs it out
of memory. A model name that would leave
the models folder (``..``, an absolute path, a symbolic link pointing out) is 404; a request
body over ``max_upload_mb`` MiB (2^20 bytes, as the page counts) is 413.
"""


import asyncio
import contextlib
import functools
import importlib.util
import json
import logging
import os
import re
import shlex
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

from transfer.constants import and_list
from transfer.errors import DIVERGED, TransferError, Untraceable
from transfer.errors import NOT_NUMBERS as OUTPUTS_NOT_NUMBERS
from transfer.files import resolved, utf8_text
from transfer.progress import Reporter
from transfer.settings import INVERT, ServeSettings, given

STATIC = Path(__file__).parent / "static"
IMAGENET_PREFIX = "imagenet:"
MAX_FILES = 64  # images per request
MAX_PENDING = 256  # jobs waiting for the model thread; more get 503
MAX_BATCH_FILES = 64  # images in one merged predict batch
MAX_PENDING_MB = 256  # uploads held in memory by the requests waiting; more get 503
GRACE_SECONDS = 8.0  # on Ctrl-C or SIGTERM: what requests in progress get to finish
DISCONNECT_POLL = 0.5  # seconds between checks that a waiting request's client is still there
ALL_INTERFACES = ("0.0.0.0", "::", "", "[::]", "*")
SHOWN_SIDE = 384  # px: the longest side of the picture in an explain PNG
# an upload over the limit is read to its end (and dropped) before the 413, up to this much
# more and this long: a client still sending when the server closes gets a reset, not the 413
DRAIN_MB = 64
DRAIN_SECONDS = 10.0
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
               "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
               "base-uri 'none'; frame-ancestors 'self'")
REPORT_POLICY = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                 "base-uri 'none'; form-action 'none'")


class NotFound(Exception):
    """No model of that name inside the models folder (the answer is 404)."""


class Broken(TransferError):
    """A model of that name is there but cannot be used: a bundle's meta.json unreadable, its
    model file damaged, an ImageNet classifier's weights damaged (the answer is 500, with the
    reason; the console says it once)."""

    reason: Exception | None = None  # the error behind it, when the message shortens it


@dataclass(frozen=True)
class ImageNetEntry:
    name: str  # "imagenet:mobilenet-0.25"
    base: str
    alpha: float
    title: str  # "MobileNet alpha 0.25 (ImageNet)"


# What /docs says /api/predict answers (FastAPI, given no response model, showed "string").
PREDICT_RESPONSES = {
    200: {"description": "One row per file, in order: `transfer predict --format json`'s "
                         "answer plus `server_seconds`; a file that is not a usable image has "
                         "its `error` (and `label` null)",
          "content": {"application/json": {"example": {
              "mode": "bundle", "model": "cats-dogs", "base": "mobilenet",
              "class_names": ["cats", "dogs"], "fallback": None, "failed": 0,
              "engine": {"requested": "auto", "name": "tf"},
              "predictions": [{"file": "cat.jpg", "label": "cats", "probability": 0.97,
                               "top": [{"label": "cats", "probability": 0.97}],
                               "probabilities": {"cats": 0.97, "dogs": 0.03},
                               "image": {"width": 500, "height": 375, "mode": "RGB"},
                               "error": None}],
              "server_seconds": 0.041}}}},
    400: {"description": "A multipart body that cannot be parsed"},
    404: {"description": "No such model"},
    413: {"description": "Too many files, or more than --max-upload-mb MiB (2^20 bytes "
                         "each) in the request"},
    415: {"description": "No file is a usable image (`errors` says why, file by file), or a "
                         "body that is not multipart/form-data"},
    422: {"description": "A form field out of range (`top`, `invert`), missing (`files`), "
                         "given twice, or sent as a query parameter"},
    500: {"description": "The model cannot be used (a damaged bundle, damaged ImageNet "
                         "weights: `detail` says why), or a bug"},
    503: {"description": "The server is busy or stopping; try again in a moment"},
}

# What /docs says /api/explain answers: the class the picture shows is in headers only.
EXPLAIN_HEADERS = {
    "X-Label": ("string", "the class the picture explains, URL-quoted (UTF-8 percent-encoding: "
                          "urllib.parse.unquote, decodeURIComponent)"),
    "X-Probability": ("number", "the model's probability of that class, 0 to 1, every digit "
                                "of the float (Python's repr: a tiny one reads 3.2e-07, not 0)"),
    "X-Class-Index": ("integer", "its index in the model's classes (a bundle's class_names, "
                                 "in the order GET /api/models lists them; ImageNet: 0-999)"),
    "X-Layer": ("string", "the convolutional layer whose maps Grad-CAM weighs, URL-quoted"),
    "X-Server-Seconds": ("number", "the seconds the server took"),
    "X-Map-Note": ("string", "only when the map shows nothing: why, URL-quoted (\"cats: empty "
                             "map ...\": no region raises that class's score; or a map that "
                             "is not a number)"),
}
EXPLAIN_RESPONSES = {
    200: {"description": "The Grad-CAM PNG (photo | overlay, or the overlay alone); the class "
                         "it explains and its probability are in the headers",
          "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
          "headers": {name: {"description": text, "schema": {"type": kind}}
                      for name, (kind, text) in EXPLAIN_HEADERS.items()}},
    400: PREDICT_RESPONSES[400],
    404: PREDICT_RESPONSES[404],
    413: PREDICT_RESPONSES[413],
    415: {"description": "The file is not a usable image (`errors` says why), or a body that "
                         "is not multipart/form-data"},
    422: {"description": "A form field out of range (`view`, `invert`), a class the model "
                         "does not have, more than one file, a field missing, given twice or "
                         "sent as a query parameter"},
    500: PREDICT_RESPONSES[500],
    503: PREDICT_RESPONSES[503],
}


@functools.cache
def api_error():
    """The model of every error answer (pydantic, imported with FastAPI). FastAPI documented
    its own 422 (``detail`` a list), which the API never sends."""
    from pydantic import BaseModel, Field

    class ApiError(BaseModel):
        detail: str = Field(description="what went wrong, in one line")
        errors: list[dict] | None = Field(None, description=(
            "the details, when there are several: a 415's files and their errors, a 422's "
            "fields"))

    return ApiError


def with_error_model(responses: dict) -> dict:
    """``responses`` with every error answer (400 and up) given ``api_error``'s model."""
    return {status: {**answer, "model": api_error()} if status >= 400 else answer
            for status, answer in responses.items()}


# The multipart form of each endpoint that takes uploads: its file field, and the fields it
# takes once each.
FORMS = {"/api/predict": ("files", ("model", "top", "invert")),
         "/api/explain": ("file", ("model", "class_name", "view", "invert"))}


def query_problem(path: str | None, query: list[tuple[str, str]]) -> str | None:
    """Why a request to a form endpoint is refused for its query string, or None. Its fields
    are read from the multipart body only: ``/api/predict?model=flowers&top=1`` was answered
    by the default model with 3 classes, as if the question had been heard."""
    if path not in FORMS or not query:
        return None
    file_field, fields = FORMS[path]
    given = list(dict.fromkeys(name for name, _ in query))
    known = [name for name in given if name in fields or name == file_field]
    others = [name for name in given if name not in known]
    if not known:
        return (f"POST {path} takes no query parameters ({and_list(others)}); its fields "
                f"({', '.join((file_field, *fields))}) are form fields of the multipart body")
    example = [f"-F {shlex.quote(f'{name}={value}')}" for name, value in query
               if name in fields]
    example.append(f"-F {file_field}=@photo.jpg")
    one = len(known) == 1
    line = (f"{and_list(known)} {'is a form field' if one else 'are form fields'} of the "
            f"multipart body, not {'a query parameter' if one else 'query parameters'} "
            f"(curl {' '.join(example)} ...)")
    if others:
        line += f"; {and_list(others)} {'is' if len(others) == 1 else 'are'} not a field of " \
                f"POST {path}"
    return line


def repeated_problem(form, fields: tuple[str, ...]) -> str | None:
    """Why a form is refused for a field given more than once, or None: the last of
    ``-F model=catsdogs -F model=flowers`` was used, in silence."""
    for name in fields:
        values = form.getlist(name)
        if len(values) > 1:
            shown = ", ".join(repr(v[:40]) if isinstance(v, str) else "a file" for v in values)
            return f"form field {name} given {len(values)} times ({shown}); give it once"
    return None


def unknown_problem(path: str, form) -> str | None:
    """Why a form is refused for a field its endpoint does not take, or None: ``-F modle=...``
    or ``-F class=roses`` was answered by the default model, or for the top class, in
    silence."""
    file_field, fields = FORMS[path]
    taken = (file_field, *fields)
    unknown = list(dict.fromkeys(str(name) for name in form.keys() if name not in taken))
    if not unknown:
        return None
    import difflib

    near = [f"{name} (did you mean {close[0]}?)" if close else name
            for name in unknown
            for close in [difflib.get_close_matches(name, taken, n=1, cutoff=0.6)]]
    one = len(unknown) == 1
    return (f"form field{'' if one else 's'} {and_list(near)} {'is' if one else 'are'} not "
            f"taken by POST {path}; its fields are {', '.join(taken)}")


def body_problem(path: str, content_type: str | None, errors: list[dict],
                 form) -> tuple[int, str] | None:
    """(status, line) for a form endpoint's body that FastAPI refused, or None (its own
    words then). Its words were "body.files: Field required" for a JSON, a raw JPEG or a
    ``curl -d`` body, and "Expected UploadFile, received: <class 'str'>" for ``-F files=hello``:
    true, and no help to whoever sent them."""
    file_field = FORMS[path][0]
    many = file_field == "files"
    what = "photos as file uploads" if many else "photo as a file upload"
    how = f"curl -F {file_field}=@photo.jpg"
    media = (content_type or "").split(";")[0].strip().lower()
    if media and media != "multipart/form-data":
        hint = ("; curl -d sends a urlencoded form, -F a multipart one"
                if media == "application/x-www-form-urlencoded" else "")
        return 415, (f"POST {path} takes a multipart/form-data body, the {what} in the "
                     f"field {file_field} ({how}), not {media}{hint}")
    for problem in errors:
        if tuple(problem.get("loc", ()))[:2] != ("body", file_field):
            continue
        if problem.get("type") == "missing":
            sent = sorted({str(name) for name in form.keys()}) if form else []
            return 422, (f"no {file_field}: POST {path} takes the {what} in the form field "
                         f"{file_field} ({how})" + (f"; this form has {and_list(sent)}"
                                                    if sent else ""))
        return 422, (f"{file_field} must be {'file uploads' if many else 'a file upload'} "
                     f"({how}), not text (a form part without a file name is text)")
    return None


# --------------------------------------------------------------------------- models


class ModelStore:
    """The models a server offers: bundles inside ``models_dir`` and ImageNet classifiers,
    loaded on first use and kept in an LRU of ``cache_size`` (only touched from the model
    thread, except for listing)."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        # absolute now: a program that serves, then changes its working directory (a
        # notebook's os.chdir) kept looking for ``models`` in the new one, listed no bundle
        # and answered with ImageNet's classes; the console still says the folder as given
        self.given = Path(settings.models_dir)
        self.root = self.given.absolute()
        self._cache: OrderedDict = OrderedDict()
        self._names: dict = {}  # cache key -> the name it was loaded under
        self._lock = threading.Lock()
        self.loads = 0  # models loaded so far (the LRU's misses)
        self.warn = lambda text: None  # where a broken bundle is said, once (serve's console)
        self._said: set = set()
        # bundles whose model.keras failed to load, as (real folder, its stamp): left out of
        # the list and the default until the file changes (retrained, repaired)
        self._failed: set = set()

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
        if "\ufffd" in name and not os.path.lexists(candidate):
            candidate = self.root / self._not_utf8(name)
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
            raise Broken(f"model {name!r} cannot be used: {self.public(exc)}") from None
        return candidate, meta

    def _not_utf8(self, name: str) -> str:
        """The folder name that ``name`` shows with replacement marks (a Latin-1 folder
        "l\\xe9at" is listed as "l\\ufffdat": it was listed, then 404 for every request),
        or ``name`` when no one folder, or several, show so."""
        with contextlib.suppress(OSError):
            same = [f.name for f in self.root.iterdir() if utf8_text(f.name) == name]
            if len(same) == 1:
                return same[0]
        return name

    def public(self, problem) -> str:
        """``problem``'s text as a client sees it: paths inside the models folder relative to
        it (``garbled/meta.json``), so an answer does not show the server's file system (the
        console, ``_say``, keeps them whole)."""
        text = str(problem)
        with contextlib.suppress(OSError, RuntimeError):
            text = text.replace(f"{self.root.resolve()}{os.sep}", "")
        text = text.replace(f"{self.root}{os.sep}", "")
        return text.replace(f"{self.given}{os.sep}", "")

    def bundle_path(self, name: str) -> Path:
        """The bundle folder ``name`` names inside the models folder (``bundle_entry``)."""
        return self.bundle_entry(name)[0]

    def _say(self, name: str, problem, what: str = "not a usable bundle") -> None:
        """Say a broken model on the console once (the page just does not list a bundle)."""
        key = (name, str(problem))
        with self._lock:  # listing threads, the model thread: said once
            if key in self._said:
                return
            self._said.add(key)
        where = name if name.startswith(IMAGENET_PREFIX) else self.given / name
        self.warn(f"{where}: {what} ({problem})")

    def imagenet_entries(self) -> list[ImageNetEntry]:
        """ImageNet classifiers offered: every pretrained base whose classifier weights (with
        the top) are in the Keras cache, and the one ``--imagenet`` asked for."""
        from transfer import bases

        entries: dict[str, ImageNetEntry] = {}

        def add(base_name: str, alpha: float) -> None:
            spec = bases.get(base_name)
            width = f" alpha {alpha:g}" if spec.has_alpha else ""
            name = imagenet_name(base_name, alpha)
            entries[name] = ImageNetEntry(name, base_name, alpha,
                                          f"{spec.keras_class}{width} (ImageNet)")

        if self.settings.imagenet:
            add(self.settings.base, self.settings.alpha)
        for base_name, spec in bases.BASES.items():
            if not spec.pretrained:
                continue
            for alpha in (bases.MOBILENET_ALPHAS if spec.has_alpha else (1.0,)):
                try:
                    # a damaged file too: a request for it is then a 500 naming the file
                    # and the way out (not a 404 saying its weights are not cached)
                    top = bases.keras_cache_dir() / spec.weight_file(alpha, include_top=True)
                    if top.is_file():
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
        folders = sorted(self.root.iterdir())
        real_folders = {resolved(f) for f in folders if not f.is_symlink()}
        for folder in folders:
            if folder.name.startswith(".") or (folder.is_symlink() and (
                    folder.name == "latest" or resolved(folder) in real_folders)):
                continue  # a link to a bundle listed under its own name (or a link loop)
            try:
                path, meta = self.bundle_entry(folder.name)
            except (NotFound, TransferError, OSError):  # a broken one is said (bundle_entry)
                continue
            if self._stamped(path) in self._failed:
                continue  # its model.keras failed to load (said then)
            found.append(describe_bundle(folder.name, path, meta))
        return found

    @staticmethod
    def _stamped(path: Path) -> tuple[str, tuple[int, int]]:
        """(the bundle's real folder, the modification times in ns of its model.keras and its
        meta.json, 0 for a missing one): the LRU's key, and the key of a failed load. A
        meta.json edited since (class names renamed) makes another model: the one in memory
        answered with the old names while /api/models listed the new ones."""
        real = path.resolve()
        stamp = []
        for name in ("model.keras", "meta.json"):
            try:
                stamp.append((real / name).stat().st_mtime_ns)
            except OSError:
                stamp.append(0)
        return str(real), (stamp[0], stamp[1])

    def _drop_changed(self) -> None:
        """Drop from the LRU (under the lock) each bundle deleted, retrained or edited since it
        was loaded: nothing would ask for that copy again, and it held a place."""
        for key in list(self._cache):
            if key[0] == "bundle" and self._stamped(Path(key[1]))[1] != key[2]:
                del self._cache[key]
                self._names.pop(key, None)

    def listed_name(self, name: str) -> str:
        """The name ``bundles`` lists the bundle ``name`` under: a link to a folder directly
        inside the models folder (``latest``, any alias) is listed as its target, so the page
        selects the model the server was asked for (``--model models/latest``), not the
        first of its list."""
        link = self.root / name
        if not link.is_symlink():
            return name
        target = resolved(link)
        root = resolved(self.root)
        return target.name if target is not None and target.parent == root else name

    def default_model(self) -> str | None:
        """The page's default: --model, else --imagenet's classifier, else the bundle
        ``latest`` points at, else the first bundle, else the first ImageNet classifier."""
        s = self.settings
        if s.model:
            return self.listed_name(s.model)
        if s.imagenet:
            return self.imagenet_entries()[0].name
        with contextlib.suppress(NotFound, Broken):
            if self._stamped(self.bundle_path("latest")) not in self._failed:
                return self.listed_name("latest")
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
                try:
                    return inference.ImageNetClassifier(entry.base, entry.alpha)
                except TransferError as exc:  # weights not to be had, or damaged
                    self._say(name, exc, "cannot be loaded")
                    broken = Broken(f"model {name!r} cannot be used: {self.public(exc)}")
                    broken.reason = exc  # what start-up says, whole
                    raise broken from None
        else:
            real, stamp = self._stamped(self.bundle_path(name))
            key = ("bundle", real, stamp)

            def load():
                try:
                    return inference.BundleClassifier(Path(real))
                except TransferError as exc:  # a damaged model.keras, a meta.json that lies
                    with self._lock:
                        self._failed.add((real, stamp))
                    self._say(name, exc)
                    raise Broken(f"model {name!r} cannot be used: {self.public(exc)}") from None
        with self._lock:
            self._drop_changed()
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        classifier = load()
        with self._lock:
            self.loads += 1
            if key[0] == "bundle":  # the same folder's older model: retrained since
                for old in [k for k in self._cache if k[:2] == key[:2]]:
                    del self._cache[old]
            self._cache[key] = classifier
            self._names[key] = name  # as the API was asked (a link's name, not its target's)
            self._cache.move_to_end(key)
            while len(self._cache) > max(1, self.settings.cache_size):
                self._cache.popitem(last=False)
            self._names = {k: v for k, v in self._names.items() if k in self._cache}
        return classifier

    def loaded(self) -> list[str]:
        """The models in memory, by the names the API takes (a bundle by its folder's name
        in the models folder), after dropping those deleted, retrained or edited since they
        were loaded (``_drop_changed``, at every model request too)."""
        names = []
        with self._lock:
            self._drop_changed()
            for key in self._cache:
                if key[0] == "imagenet":
                    names.append(imagenet_name(key[1], key[2]))
                else:
                    names.append(self._names.get(key) or Path(key[1]).name)
        return names


def imagenet_name(base_name: str, alpha: float) -> str:
    """The API's name of an ImageNet classifier: ``imagenet:mobilenet-0.25``,
    ``imagenet:inception``."""
    from transfer import bases

    suffix = f"-{alpha:g}" if bases.get(base_name).has_alpha else ""
    return f"{IMAGENET_PREFIX}{base_name}{suffix}"


def api_words(text: str | None) -> str | None:
    """An error written for the command line, said in the API's words: the form field
    ``invert=no``, not the option ``--invert no``."""
    if text is None:
        return None
    return (text.replace("--invert must", "invert must").replace("try --invert no",
                                                                 "send invert=no")
            .replace("try --invert yes", "send invert=yes"))


@functools.cache
def web_json():
    """The API's JSON response class: UTF-8 whatever the names. A class or file name that is
    not UTF-8 (a Latin-1 folder's "chi\\xe9ns") made every answer naming it a 500; it is
    sent with a replacement mark, as the console shows it. (FastAPI is imported here, when
    an app is made, not with this module.)"""
    from fastapi.responses import JSONResponse

    class WebJSON(JSONResponse):
        def render(self, content) -> bytes:
            try:
                return super().render(content)
            except UnicodeEncodeError:
                return utf8_text(json.dumps(content, ensure_ascii=False, allow_nan=False,
                                           separators=(",", ":"))).encode("utf-8")

    return WebJSON


def describe_bundle(name: str, path: Path, meta: dict) -> dict:
    """One bundle as ``/api/models`` lists it."""
    metrics = meta.get("metrics") or {}
    accuracy = metrics.get("test_accuracy", metrics.get("val_accuracy"))
    evaluated = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        report = json.loads((path / "report.json").read_text(encoding="utf-8-sig"))
        evaluated = report.get("accuracy")
    prep = meta.get("preprocessing") or {}
    return {"name": name, "kind": "bundle", "title": name,
            "classes": list(meta.get("class_names", [])), "base": meta.get("base"),
            "alpha": meta.get("alpha"), "image_size": meta.get("image_size"),
            "accuracy": accuracy, "evaluated_accuracy": evaluated,
            "digits": meta.get("channels", 3) == 1 or prep.get("fit") == "mnist-box",
            "created": meta.get("created"),
            "report": f"/models/{quote(utf8_text(name))}/report"}


# --------------------------------------------------------------------------- work (model thread)


@dataclass
class Upload:
    filename: str
    data: bytes


def shown_name(filename: str | None, index: int) -> str:
    """The name an upload is reported under (what the client sent, without folders)."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name or f"upload-{index + 1}"


# The most pixels the server decodes of one upload that is not a baseline JPEG (one is decoded
# in draft mode, at 1/2 to 1/8 scale: a 200-megapixel phone photo costs about 3). A PNG of
# one colour, 12000 x 12000, is a 450 KB upload that decodes to 430 MB: 2.3 s and a gigabyte
# more memory for one request, well under Pillow's own limit (179 megapixels). A progressive
# JPEG is no better in draft mode: libjpeg keeps every scan's coefficients of the whole image
# (a 5 KB upload whose header says 24000 x 24000 took 1.7 GB). A 61-megapixel camera's TIFF
# still fits.
MAX_UPLOAD_PIXELS = 64_000_000


def upload_problem(upload: Upload, side: int | None) -> str | None:
    """Why the server will not read ``upload``, in the reader's words, or None: a camera-raw
    or HEIC file by the client's name (refused by name as ``transfer predict`` refuses it; a
    raw file would be read from its small embedded preview), or an image with more than
    MAX_UPLOAD_PIXELS to decode when read for ``side`` (the classifier's ``read_side``: a
    baseline JPEG in draft mode, ``images.drafted_size``; its header read, nothing
    decoded)."""
    import io
    import warnings

    from PIL import Image

    from transfer import images
    from transfer.constants import unread_file, unread_line

    # by the client's name and the upload's bytes (a file of that name in the server's folder
    # was looked at, so a JPEG uploaded as x.heic was refused as a HEIC)
    kind = unread_file(upload.filename or "", upload.data)
    if kind:
        return unread_line(kind)
    jpeg = upload.data[:3] == images.JPEG_MAGIC
    limit = (f"the server decodes at most {MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels of an "
             "image that is not a baseline JPEG: scale it down, or save it as a "
             + ("baseline " if jpeg else "") + "JPEG")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # a JPEG's header read without Pillow's check on its stored size (a baseline
            # one is decoded in draft mode, ``images._draft``): the limit here is ours
            with images._opened(io.BytesIO(upload.data), drafted=True) as image:
                width, height = image.size
                progressive = bool(image.info.get("progressive"))
                decoded = images.drafted_size(image, side)
    except Image.DecompressionBombError as exc:  # over Pillow's own limit: its size, our line
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        return (f"image is {int(pixels.group(1)) / 1e6:.0f} megapixels; " if pixels
                else "image is too large; ") + limit
    except Exception:  # noqa: BLE001 - not an image: the reader says
        return None
    if jpeg and not progressive:  # drafted: a 17 KB JPEG whose header says 65000 x 65000 was
        # decoded to 66 megapixels (265 MB) and answered, and a long narrow one is drafted little
        drafted = decoded[0] * decoded[1]
        if drafted <= MAX_UPLOAD_PIXELS:
            return None
        return (f"image is {width}x{height} px ({width * height / 1e6:.0f} megapixels), "
                f"decoded at {decoded[0]}x{decoded[1]} ({drafted / 1e6:.0f} megapixels) to read "
                f"it for this model; the server decodes at most "
                f"{MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels: scale it down")
    if width * height <= MAX_UPLOAD_PIXELS:
        return None
    kind = ", a progressive JPEG, which is decoded whole" if jpeg else ""
    return f"image is {width}x{height} px ({width * height / 1e6:.0f} megapixels){kind}; {limit}"


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
    from transfer.files import own_temp_folder_prefix

    refused = {i: reason for i, upload in enumerate(uploads)
               if (reason := upload_problem(upload, classifier.read_side))}
    with tempfile.TemporaryDirectory(prefix=own_temp_folder_prefix("transfer-serve-")) as tmp:
        paths = []
        for i, upload in enumerate(uploads):
            path = Path(tmp) / f"{i:04d}.upload"
            # a refused upload is not written: its empty stand-in gets an error row, whose
            # reason is replaced below
            path.write_bytes(b"" if i in refused else upload.data)
            paths.append(path)
        try:
            result = predict([str(p) for p in paths], classifier=classifier, top=top,
                             batch_size=32)
        finally:
            if invert is not None:
                classifier.invert = None
    answer = result.as_dict()
    if classifier.mode == "imagenet":
        answer["title"] = answer["model"]  # "MobileNet alpha 0.25 (ImageNet)"
    answer["model"] = model  # the name a client sends back, not a path or a title
    for i, (item, upload) in enumerate(zip(answer["predictions"], uploads, strict=True)):
        item["file"] = upload.filename
        item["error"] = api_words(refused.get(i, item["error"]))
    return answer


def _reads_digits(classifier) -> bool:
    """Whether ``classifier`` is a digit bundle (one channel): it reads a photo for the digit
    in it, and its explain picture is that digit, not the photo."""
    return classifier.mode == "bundle" and classifier.meta.get("channels", 3) == 1


def _shown_picture(classifier, data: bytes, array: np.ndarray) -> np.ndarray:
    """What the explain PNG shows: the photo (upright, RGB, longest side SHOWN_SIDE), or for a
    digit model the fitted 28x28 digit the model saw, enlarged."""
    from PIL import Image

    from transfer import images

    if _reads_digits(classifier):
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
        transfer.errors.Untraceable: a bundle Grad-CAM cannot trace.
        TransferError: an unknown class.
    """
    from transfer.explain import gradcam, map_note, named_class
    from transfer.report import overlay_png

    model = model or store.default_model()
    classifier = store.get(model)
    side = classifier.read_side  # the picture too is read, for SHOWN_SIDE // 2: the larger
    # of the two sides decodes more pixels (a digit's picture is the digit the model saw)
    if side is not None and not _reads_digits(classifier):
        side = max(side, SHOWN_SIDE // 2)
    refused = upload_problem(upload, side)
    if refused:
        from transfer.images import ImageError

        raise ImageError(refused)
    if classifier.mode == "bundle":
        use_invert = invert if _reads_digits(classifier) else None
        from transfer import images

        array, _ = images.model_input(upload.data, classifier.meta, use_invert)
        names = classifier.class_names
        index = None
        if class_name is not None:  # as the API lists it, or its accents composed otherwise
            index = named_class(names, class_name)
        try:
            heatmap, probs, index, layer = gradcam(classifier.model, classifier.meta, array,
                                                   index)
        except Untraceable as exc:
            raise Untraceable(f"model {model!r} cannot be explained: {exc}") from None
        if not np.isfinite(probs).all():  # the model's fault, as predict says it: a 500
            raise Broken(f"cannot use model {model!r}: its {OUTPUTS_NOT_NUMBERS}: {DIVERGED}")
        label = names[index]
    else:
        array, _ = classifier.prepare(upload.data)
        index = None
        if class_name is not None:
            index = imagenet_index(class_name)
        heatmap, probs, index, layer = imagenet_gradcam(classifier, array, index)
        label = _imagenet_classes()[index][1]
    png = overlay_png(_shown_picture(classifier, upload.data, array), heatmap, view)
    return png, {"label": label, "probability": float(probs[index]), "class_index": index,
                 "layer": layer, "note": map_note(heatmap, label),  # an empty map: said
                 "model": model if classifier.mode == "bundle" else classifier.name}


@functools.lru_cache(maxsize=1)
def _imagenet_classes() -> list[tuple[str, str]]:
    """The 1000 ImageNet classes in index order, (synset, label) (Keras's class index)."""
    from transfer import inference

    ranked = inference.imagenet_labels(np.linspace(1, 0, 1000)[None], 1000)[0]
    return [(entry["synset"], entry["label"]) for entry in ranked]


def imagenet_index(class_name: str) -> int:
    """The index of the ImageNet class ``class_name`` names: its label, or its WordNet synset
    (``n03126707``), which tells apart the two labels ImageNet gives twice (crane the bird
    and the machine, maillot); else the label typed otherwise (``Tabby``, ``golden
    retriever``) when one label is meant.

    Raises:
        TransferError: no such class (the nearest labels suggested), or a name several
            classes have (their synsets said).
    """
    from transfer.explain import loosely_named, nearest_labels

    classes = _imagenet_classes()
    labels = [label for _, label in classes]
    wanted = class_name.strip()
    by_synset = [i for i, (synset, _) in enumerate(classes) if synset == wanted.lower()]
    by_label = [i for i, label in enumerate(labels) if label == class_name] or \
        loosely_named(labels, class_name)
    if by_synset or len(by_label) == 1:
        return (by_synset or by_label)[0]
    if not by_label:
        near = nearest_labels(labels, class_name)
        hint = f" (the nearest labels: {', '.join(near)})" if near else ""
        raise TransferError(f"unknown ImageNet class {class_name!r}{hint}; give a label as "
                            "/api/predict answers it (tabby, golden_retriever), or a WordNet "
                            "synset (n02123045)")
    named = sorted({labels[i] for i in by_label})
    said = repr(named[0]) if len(named) == 1 else and_list([repr(n) for n in named])
    raise TransferError(f"ImageNet has {len(by_label)} classes named {said} ("
                        f"{', '.join(classes[i][0] for i in by_label)}): give the synset")


# --------------------------------------------------------------------------- the application


class _TooLarge(Exception):
    pass


class CutOffAnswer:
    """ASGI middleware: a request cut off by the server's stop (still running when the grace
    period ends, its task cancelled) gets a JSON 503, as every other answer is JSON, when it
    had no answer under way; uvicorn would send a plain-text "500 Internal Server Error",
    which tells a client that it, not the server's stop, was at fault."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def noting_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        except asyncio.CancelledError:
            if not started:
                body = json.dumps({"detail": "the server stopped before this request was "
                                             "done; send it again when it is back"}).encode()
                with contextlib.suppress(Exception):  # the connection may be gone too
                    await send({"type": "http.response.start", "status": 503, "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")]})
                    await send({"type": "http.response.body", "body": body})
            raise


def mib(megabytes: float) -> str:
    """An upload limit as it is counted: ``--max-upload-mb 20`` is 20 MiB of 2^20 bytes, as
    the page counts it; "20 MB" said 20,000,000 to whoever reads MB as SI."""
    return f"{megabytes:g} MiB ({int(megabytes * 2**20):,} bytes)"


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 (by its Content-Length
    at once, or while it streams).

    The client gets to read the 413: the rest of the body is read and dropped first (up to
    ``DRAIN_MB`` more, for ``DRAIN_SECONDS``). Closing on a client still sending resets the
    connection, and curl or a browser then reports "connection reset", not the 413. A client
    that waits for "100 Continue" before sending gets the 413 at once instead."""

    def __init__(self, app, limit_mb: float):
        self.app = app
        self.limit_mb = limit_mb
        self.limit = int(limit_mb * 2**20)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        try:
            length = int(headers.get(b"content-length", 0))
        except ValueError:
            length = 0
        if length > self.limit:
            if headers.get(b"expect", b"").lower() != b"100-continue":  # the body is coming
                await self._drain(receive)
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
                    if message.get("more_body", False):
                        await self._drain(receive)
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

    @staticmethod
    async def _drain(receive) -> None:
        """Read the rest of a request body and drop it, within DRAIN_MB and DRAIN_SECONDS."""
        deadline, read = time.monotonic() + DRAIN_SECONDS, 0
        while read <= DRAIN_MB * 2**20:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                message = await asyncio.wait_for(receive(), left)
            except TimeoutError:
                return
            if message["type"] != "http.request":
                return  # the client went away
            read += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _refuse(self, send):
        body = json.dumps({"detail": f"upload too large: the limit is {mib(self.limit_mb)} per "
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
    size: int = 0  # bytes of upload held while waiting (MAX_PENDING_MB)


class Worker:
    """The one thread that runs every model call. Jobs wait in order (at most MAX_PENDING; more
    get 503); predict requests waiting for the same model, ``top`` and ``invert`` are merged
    into one batch (up to MAX_BATCH_FILES images), so a burst of single-photo requests costs a
    few model calls, not one each."""

    def __init__(self, store: ModelStore):
        self.store = store
        self._jobs: deque = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._generation = 0  # a loop whose generation is not this one's ends
        self._thread: threading.Thread | None = None  # started by the first job (or start)
        self.requests = 0  # jobs run
        self.calls = 0  # model calls (batches) they took

    def start(self) -> None:
        """Run the model thread: at the app's start-up, at the first job, and again after
        ``close`` (the app served a second time, or called through a ``TestClient`` outside
        a ``with`` block); a no-op while it runs. Never blocks: a closed loop still finishing
        a model call ends after it, on its own."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive() and not self._closed:
                return
            self._generation += 1
            self._closed = False
            self._thread = threading.Thread(target=self._loop, args=(self._generation,),
                                            name="transfer-model", daemon=True)
            self._thread.start()

    def _submit(self, job: _Job) -> Future:
        self.start()
        with self._cond:
            # jobs whose client went away (cancelled, ``answered``) leave the queue now
            self._jobs = deque(j for j in self._jobs if not j.future.cancelled())
            held = sum(j.size for j in self._jobs)
            if (self._closed or len(self._jobs) >= MAX_PENDING
                    or (self._jobs and held + job.size > MAX_PENDING_MB * 2**20)):
                raise _Busy()
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    async def run(self, fn, *args, size: int = 0):
        """``fn(*args)`` on the model thread, after the jobs queued before it (``size``: the
        bytes of upload it holds while it waits)."""
        return await asyncio.wrap_future(self._submit(_Job(fn, args, Future(), size=size)))

    async def predict(self, uploads: list[Upload], model: str | None, top: int,
                      invert: str | None) -> dict:
        """``predict_uploads`` on the model thread, batched with others like it."""
        job = _Job(None, (model, top, invert), Future(), key=(model, top, invert),
                   uploads=uploads, size=sum(len(u.data) for u in uploads))
        return await asyncio.wrap_future(self._submit(job))

    @property
    def pending(self) -> int:
        return sum(not job.future.cancelled() for job in list(self._jobs))

    def _take(self, generation: int) -> list[_Job] | None:
        with self._cond:
            while not self._jobs and not self._closed and generation == self._generation:
                self._cond.wait()
            if not self._jobs or generation != self._generation:
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

    def _loop(self, generation: int) -> None:
        while (batch := self._take(generation)) is not None:
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
            except Exception as exc:
                if live[0].key is None or len(live) == 1:
                    for job in live:
                        job.future.set_exception(exc)
                    continue
                # one request's upload must not fail the others merged with it: each again alone
                for n, job in enumerate(live):
                    try:
                        job.future.set_result(predict_uploads(self.store, job.uploads,
                                                              *job.args))
                    except Exception as alone:
                        job.future.set_exception(alone)
                    except BaseException as stop:  # an interruption: no request left waiting
                        for rest in live[n:]:
                            rest.future.set_exception(stop)
                        break
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
    """One predict answer per request of a merged batch (``sizes`` images each, in order).
    Each part's ``engine`` counts its own images; ``engine.merged`` says the pass was shared
    (its requests and images), which its speed and its ``fallback`` reason describe."""
    parts, start = [], 0
    engine = answer.get("engine")
    for size in sizes:
        rows = answer["predictions"][start:start + size]
        start += size
        part = {**answer, "predictions": rows,
                "failed": sum(row["error"] is not None for row in rows)}
        if engine is not None and len(sizes) > 1:
            part["engine"] = {**engine, "images": size,
                              "merged": {"requests": len(sizes), "images": sum(sizes)}}
        parts.append(part)
    return parts


class _Busy(Exception):
    pass


class _Gone(Exception):
    """The client closed its connection while its request waited."""


async def answered(request, waiting):
    """The result of ``waiting`` (a job for the model thread), checking every
    ``DISCONNECT_POLL`` seconds that the client is still there: when it has gone (a timeout, a
    closed tab) the job is cancelled, so a request nobody waits for is not run (one already
    running finishes), and ``_Gone`` is raised."""
    task = asyncio.ensure_future(waiting)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise _Gone()
    except asyncio.CancelledError:  # the server is stopping
        task.cancel()
        raise


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
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool

    from transfer import __version__, images

    s = given(settings, ServeSettings, "create_app").validated()
    from transfer.files import sweep_temp_folders

    sweep_temp_folders("transfer-serve-")  # photos a server killed by SIGKILL left behind
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
    WebJSON = web_json()  # noqa: N806 (a class)
    app = FastAPI(title="transfer serve", version=__version__, lifespan=lifespan,
                  default_response_class=WebJSON,
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
        return WebJSON({"detail": detail, **extra}, status_code=status)

    def bad_model(name: str | None) -> JSONResponse:
        if not name:
            default = store.default_model()
            if default:  # --model's bundle moved or deleted while serving
                return error(404, f"the server's default model {default!r} is gone; name "
                                  "another in the request's model field (GET /api/models "
                                  "lists them)")
            # no bundle, no ImageNet weights: nothing to default to
            return error(404, "no model to use: the models folder holds no bundle and no "
                              "ImageNet classifier's weights are in the server's Keras cache")
        if name.startswith(IMAGENET_PREFIX):
            return error(404, f"no model named {name!r}: an ImageNet classifier is offered "
                              "when its weights (with the top) are in the server's Keras cache "
                              "(GET /api/models lists the models)")
        return error(404, f"no model named {name!r} in the models folder (GET /api/models "
                          "lists them)")

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

    def route_path(request) -> str | None:
        """The path of the route a request reached (``/api/predict``), without a prefix."""
        return getattr(request.scope.get("route"), "path", None)

    async def refused_form(request) -> JSONResponse | None:
        """The 422 of a form endpoint's request whose fields would be ignored (sent in the
        query string, or not fields of the endpoint) or chosen among (given twice), or None.
        The form is the one FastAPI parsed (cached on the request)."""
        path = route_path(request)
        problem = query_problem(path, request.query_params.multi_items())
        if problem is None:
            problem = unknown_problem(path, await request.form())
        if problem is None:
            problem = repeated_problem(await request.form(), FORMS[path][1])
        return None if problem is None else error(422, problem)

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
                "max_upload_bytes": int(s.max_upload_mb * 2**20),  # what max_upload_mb counts
                "models_dir": str(s.models_dir), "models": bundles + imagenet}

    @app.post("/api/predict", summary="Classify one or more images",
              responses=with_error_model(PREDICT_RESPONSES))
    async def predict_endpoint(request: Request,
                               files: list[UploadFile] = File(..., description="images"),
                               model: str | None = MODEL_FIELD,
                               top: int | None = Form(None, examples=[s.top], description=(
                                   f"classes per image (default {s.top})")),
                               invert: str | None = INVERT_FIELD):
        started = time.perf_counter()
        refused = await refused_form(request)
        if refused is not None:
            return refused
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
            answer = await answered(request, worker.predict(uploads, model or None, k, invert))
        except _Gone:
            return error(499, "the client closed the request")
        except NotFound:
            return bad_model(model)
        except _Busy:
            return error(503, "the server is busy; try again in a moment")
        except Broken as exc:
            return error(500, str(exc))
        except TransferError as exc:
            return error(500, f"cannot use model {model or store.default_model()!r}: "
                              f"{api_words(store.public(exc))}")
        answer["server_seconds"] = round(time.perf_counter() - started, 4)
        if answer["predictions"] and answer["failed"] == len(answer["predictions"]):
            from transfer.predict import NOT_NUMBERS

            if any(p["error"] == NOT_NUMBERS for p in answer["predictions"]):  # not the photos'
                return error(500, f"cannot use model {answer.get('model') or model!r}: its "
                                  f"{OUTPUTS_NOT_NUMBERS}: {DIVERGED}")
            names = ", ".join(f"{p['file']} ({p['error']})" for p in answer["predictions"])
            return error(415, f"no usable image: {names}",
                         errors=[{"file": p["file"], "error": p["error"]}
                                 for p in answer["predictions"]])
        return answer

    @app.post("/api/explain", summary="Grad-CAM of one image (a PNG)",
              response_class=Response,
              responses=with_error_model(EXPLAIN_RESPONSES))
    async def explain_endpoint(request: Request,
                               file: UploadFile = File(..., description="one image"),
                               model: str | None = MODEL_FIELD,
                               class_name: str | None = Form(None, examples=[""], description=(
                                   "the class to explain (default: the predicted one); ImageNet: a "
                                   "label or a WordNet synset (n03126707)")),
                               view: str = Form("pair", examples=["pair"], description=(
                                   "pair (photo and overlay) or overlay")),
                               invert: str | None = INVERT_FIELD):
        started = time.perf_counter()
        refused = await refused_form(request)
        if refused is not None:
            return refused
        sent = len((await request.form()).getlist("file"))  # parsed once: the same form
        if sent > 1:
            return error(422, f"one file per request: {sent} were sent as 'file'")
        if view not in ("pair", "overlay"):
            return error(422, f"view must be pair or overlay, not {view!r}")
        try:
            invert = check_invert(invert)
        except ValueError as exc:
            return error(422, str(exc))
        upload = (await read_uploads([file]))[0]
        try:
            png, facts = await answered(request, worker.run(
                explain_upload, store, upload, model or None, class_name or None, view, invert,
                size=len(upload.data)))
        except _Gone:
            return error(499, "the client closed the request")
        except NotFound:
            return bad_model(model)
        except _Busy:
            return error(503, "the server is busy; try again in a moment")
        except images.ImageError as exc:
            said = api_words(str(exc))
            return error(415, f"{upload.filename}: {said}",
                         errors=[{"file": upload.filename, "error": said}])
        except Broken as exc:  # the server's bundle, not the request, is at fault
            return error(500, str(exc))
        except Untraceable as exc:  # the model's structure: no question would be answered
            return error(500, store.public(exc))
        except TransferError as exc:
            return error(422, api_words(store.public(exc)))
        seconds = round(time.perf_counter() - started, 4)
        headers = {"X-Label": quote(utf8_text(facts["label"])),
                   "X-Probability": repr(float(facts["probability"])),
                   "X-Class-Index": str(facts["class_index"]),
                   "X-Layer": quote(utf8_text(facts["layer"])),
                   "X-Server-Seconds": f"{seconds}",
                   "Cache-Control": "no-store"}
        if facts.get("note"):  # a uniform tint looks like a broken tool: why it is one
            headers["X-Map-Note"] = quote(utf8_text(facts["note"]))
        return Response(png, media_type="image/png", headers=headers)

    @app.get("/models/{name}/report", response_class=HTMLResponse,
             summary="A bundle's one-file HTML report")
    async def report(name: str):
        try:
            path = store.bundle_path(name)
        except NotFound:
            if name.startswith(IMAGENET_PREFIX):
                with contextlib.suppress(NotFound):
                    await run_in_threadpool(store.imagenet_entry, name)
                    return error(404, f"{name} is an ImageNet classifier as Keras ships it: "
                                      "it has no training report (a trained bundle has one)")
            return bad_model(name)
        except Broken as exc:
            return error(500, str(exc))
        headers = {"Content-Security-Policy": REPORT_POLICY}
        page = path / "report.html"
        # a link out of the bundle's folder is not served (its target was: any file the
        # server could read); a link loop is no file (resolving it raised RuntimeError)
        if page.is_file() and (real := page.resolve()).parent == path.resolve():
            return FileResponse(real, media_type="text/html", headers=headers)
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

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc):
        """FastAPI's 422, without the ``input`` it echoes: for a file part sent with an empty
        file name that was the whole upload, as text (a 450 KB photo gave 2.6 MB of JSON)."""
        path = route_path(request)
        problem = query_problem(path, request.query_params.multi_items())
        if problem is not None:  # said first: the body's problem may be the same mistake
            return error(422, problem)
        said = [{k: v for k, v in e.items() if k not in ("input", "ctx", "url")}
                for e in exc.errors()]
        if path in FORMS:
            answer = body_problem(path, request.headers.get("content-type"), said, exc.body)
            if answer is not None:
                status, line = answer
                return error(status, line, **({"errors": said} if status == 422 else {}))
        return error(422, "invalid request: " + "; ".join(
            f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in said),
            errors=said)

    from fastapi.exception_handlers import http_exception_handler
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def refused_by_starlette(request, exc):
        """Starlette's form parser stops at 1000 files or fields with a 400 of its words,
        before the endpoint says its limit of MAX_FILES with a 413 (65 to 1000 files were a
        413, 1001 a 400)."""
        detail = str(exc.detail)
        if exc.status_code == 400 and detail.startswith("Too many files"):
            return error(413, f"too many files (over 1000); at most {MAX_FILES} per request")
        if exc.status_code == 400 and detail.startswith("Too many fields"):
            return error(413, f"too many form fields (over 1000); POST {request.url.path} "
                              "takes each of its fields once")
        return await http_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def internal_error(request, exc):
        """A bug (not a bad request, not a broken bundle): a JSON 500 like the others; the
        server's console gets the traceback."""
        return error(500, f"internal error ({type(exc).__name__}): "
                          f"{store.public(exc) or 'see the server console'}")

    app.add_middleware(BodyLimit, limit_mb=s.max_upload_mb)
    app.add_middleware(CutOffAnswer)  # outermost: it answers for everything inside
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

    from transfer import bundle

    s = settings.validated()
    app = create_app(s)
    store = app.state.store
    if not s.imagenet and (s.base, s.alpha) != (ServeSettings.base, ServeSettings.alpha):
        reporter.warn("--base and --alpha choose the ImageNet classifier that --imagenet makes "
                      "the default; without --imagenet they are ignored (the page offers every "
                      "ImageNet classifier whose weights are in the Keras cache)")
    sock = _bind(s.host, s.port)  # a port in use is said at once, not after TensorFlow loads
    try:
        # TensorFlow now, not in the model thread at the first request: while it loads, file
        # descriptor 2 is /dev/null (transfer.tf) and the import holds the interpreter, so a
        # Ctrl-C then lost its "stopping" line and a second one was not heard
        from transfer import tf  # noqa: F401
        if s.imagenet or s.model:  # the default asked for: loaded now, so a failure is one
            name = store.default_model()  # line at start-up, not a 500 on every request
            try:
                store.get(name)
            except TransferError as exc:
                raise TransferError(f"cannot serve {name}: "
                                    f"{getattr(exc, 'reason', None) or exc}") from None
    except BaseException:
        sock.close()
        raise
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_keep_alive=5, timeout_graceful_shutdown=GRACE_SECONDS)

    class Server(uvicorn.Server):
        """uvicorn's server without its signal handling: ``run`` installs its own (uvicorn
        raised the signal again after shutting down, so Ctrl-C ended as a KeyboardInterrupt
        inside the event loop, and a second Ctrl-C in a storm of tracebacks)."""

        @contextlib.contextmanager
        def capture_signals(self):
            yield

    server = Server(config)
    logging.getLogger("uvicorn.error").addFilter(_ShutdownLog(server, reporter))
    logging.getLogger(PARSER_LOG).addFilter(_ParserLog(server))
    if s.host.strip("[]") in ALL_INTERFACES:
        reporter.warn(f"listening on all interfaces ({s.host}): anyone who can reach this "
                      "machine can use the models; use --host 127.0.0.1 to keep it local")
    store.warn = reporter.warn  # a broken bundle is said on the console, once
    if not s.models_dir.is_dir():  # still served: bundles trained into it later are listed
        reporter.warn(f"no folder {s.models_dir} (a typo in --models-dir?): no bundle to "
                      "serve, " + ("only ImageNet classifiers" if store.imagenet_entries() else
                                   "and no ImageNet classifier is in the Keras cache (or use "
                                   "--imagenet)"))
    elif (s.models_dir / bundle.META).is_file():  # models/latest: only ImageNet's, unsaid
        named = s.models_dir  # "." (served from inside the bundle) has no name: its full path
        if named.name in ("", ".", ".."):
            named = Path(os.path.abspath(named))
        reporter.warn(f"{s.models_dir} is itself a bundle, not a folder of bundles: serve it "
                      f"with --models-dir {named.parent} --model {named.name}")
    elif not store.bundles() and not store.imagenet_entries():
        reporter.warn(f"no model to serve: {s.models_dir} holds no bundle (train one with "
                      "`transfer train`) and no ImageNet classifier is in the Keras cache "
                      "(or use --imagenet)")
    elif not s.imagenet and not store.bundles():  # the page offered ImageNet's, unsaid
        where = s.models_dir if s.models_dir.is_absolute() else (
            f"{s.models_dir} ({store.root})")
        reporter.warn(f"no usable bundle in {where}: the page offers ImageNet classifiers only "
                      "(train one with `transfer train`, or give the folder of your bundles "
                      "with --models-dir)")
    url = url_of(s.host, port)
    reporter.info(f"transfer serve: {url} (API docs {url}docs); Ctrl-C stops it")
    return server, sock, url


class _ShutdownLog(logging.Filter):
    """uvicorn's log while ``server`` stops: the requests the grace period cut off are one
    line of ours, not uvicorn's ERROR and a CancelledError traceback for each of them."""

    def __init__(self, server, reporter: Reporter):
        super().__init__()
        self.server, self.reporter = server, reporter

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.server.should_exit:
            return True
        if "timeout graceful shutdown exceeded" in str(record.msg):
            count = record.args[0] if isinstance(record.args, tuple) and record.args else "some"
            self.reporter.warn(f"{count} request(s) still in progress after "
                               f"{GRACE_SECONDS:g} s were cut off")
            return False
        cancelled = (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError)
                     ) or "CancelledError" in record.getMessage()  # the lifespan's, as text
        return not cancelled

    def remove(self) -> None:
        logging.getLogger("uvicorn.error").removeFilter(self)


PARSER_LOG = "python_multipart.multipart"  # the form parser's logger


class _ParserLog(logging.Filter):
    """The form parser's warning for each malformed upload ("Expected boundary character 45,
    got 103 at index 2"): its client gets a 400 already; the console does not repeat it."""

    def __init__(self, server):
        super().__init__()
        self.server = server

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    def remove(self) -> None:
        logging.getLogger(PARSER_LOG).removeFilter(self)


def _drop_shutdown_log(server) -> None:
    for name in ("uvicorn.error", PARSER_LOG):
        for item in list(logging.getLogger(name).filters):
            if isinstance(item, _ShutdownLog | _ParserLog) and item.server is server:
                item.remove()


def run(settings: ServeSettings, reporter: Reporter | None = None) -> int | None:
    """Serve the page and the API with uvicorn until Ctrl-C (or SIGTERM); returns then.

    The first signal stops taking connections and gives the requests in progress up to
    ``GRACE_SECONDS`` to finish (the ones still waiting for the model are dropped; a model call
    under way cannot be cut short, and is left to the process's exit); a second Ctrl-C stops at
    once. Signals are handled so only from the main thread; elsewhere the caller stops the
    server (``serving``).

    Args:
        settings: where the bundles are, the default model, host and port (port 0 picks a
            free one), upload limit, LRU size.
        reporter: where the URL and the warning for all-interfaces binding go.

    Returns:
        the signal that stopped the server (``signal.SIGINT`` or ``signal.SIGTERM``), or None.

    Raises:
        TransferError: a bad setting, or an address that cannot be bound (port in use).
    """
    import signal

    from transfer.errors import Terminated

    given(settings, ServeSettings, "run")
    reporter = reporter or Reporter()
    received: list[int] = []
    started: list = []  # the server, once it exists

    def on_signal(signum, frame):
        if not started:  # still starting (loading TensorFlow, the default model): stop now
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        server = started[0]
        received.append(signum)
        if len(received) == 1:
            server.should_exit = True
            reporter.info(f"transfer serve: stopping (requests in progress get up to "
                          f"{GRACE_SECONDS:g} s; Ctrl-C again stops now)")
        else:
            server.force_exit = True

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
                    if signal.getsignal(sig) is not signal.SIG_IGN}
    sock = server = None
    try:
        server, sock, url = _server(settings, reporter)
        started.append(server)
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        if sock is not None:
            sock.close()
        if server is not None:
            _drop_shutdown_log(server)
    if received:
        reporter.info("transfer serve: stopped")
        return received[0]
    return None


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
    given(settings, ServeSettings, "serving")
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
            _drop_shutdown_log(server)
            raise TransferError(f"the server at {url} did not start")
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
        _drop_shutdown_log(server)
