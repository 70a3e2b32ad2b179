"""Reading a zip or a folder of cat and dog photos safely: nothing is ever extracted blindly.

A zip is opened, every member is checked (no absolute path, no ``..``, no symbolic link) before
any is read, and each image is read into memory only after its size is known to be sane (at
most ``MAX_IMAGE_BYTES`` uncompressed, no absurd compression ratio). Both the Kaggle layout
(``train/cat.12.jpg``) and Microsoft's PetImages layout (``PetImages/Cat/12.jpg``) are
recognised. ``check_image`` decodes a photo fully with Pillow and says, in words, why one is
unusable.

No TensorFlow here: this module only needs Pillow (imported lazily) and the standard library.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import stat
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from transfer.constants import is_image_name
from transfer.errors import TransferError
from transfer.files import sha256_file

CLASSES = ("cats", "dogs")
# What TensorFlow's decode_image and Keras's loaders read, so both pipelines can use the split.
DECODABLE_FORMATS = {"JPEG", "PNG", "BMP", "GIF"}
# A photo is a few MiB at most; anything larger is not one of ours (and is not read into memory).
MAX_IMAGE_BYTES = 64 << 20
# Photos barely compress (JPEG ~1:1, BMP a few :1); a zip bomb reaches ~1000:1. Checked on
# members larger than RATIO_CHECK_FROM, so a tiny flat image may compress well.
MAX_COMPRESSION_RATIO = 200
RATIO_CHECK_FROM = 1 << 20
# A wrapped train.zip (the Kaggle competition's download) is copied to the cache up to this size.
MAX_INNER_ZIP_BYTES = 8 << 30

_KAGGLE_NAME = re.compile(r"^(cat|dog)\.\d+\.[a-z]+$", re.IGNORECASE)
_FOLDER_CLASS = {"cat": "cats", "cats": "cats", "dog": "dogs", "dogs": "dogs"}
# Pillow puts the file object into some messages ("cannot identify image file <_io.BytesIO
# object at 0x7f...>"): meaningless to a user, so it is cut out.
_OBJECT_REPR = re.compile(r"\s*<[^<>]*? object at 0x[0-9a-fA-F]+>")


class SkipMember(Exception):
    """One archive member cannot be used; the message is the skip reason shown to the user."""


def classify(path: str) -> str | None:
    """The class (cats/dogs) of an archive path, from Kaggle names or PetImages folders."""
    pure = PurePosixPath(path.replace("\\", "/"))
    if not is_image_name(pure.name):
        return None
    if _KAGGLE_NAME.match(pure.name):
        return pure.name.split(".")[0].lower() + "s"
    if len(pure.parts) >= 2:
        return _FOLDER_CLASS.get(pure.parts[-2].lower())
    return None


def check_image(data: bytes) -> str | None:
    """None when ``data`` is an image Pillow fully decodes in a format TF reads; else why not."""
    if not data:
        return "zero-byte file"
    try:
        from PIL import Image, UnidentifiedImageError

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                image_format = image.format
                image.load()  # decodes every pixel: catches truncated and corrupt files
                width, height = image.size
    except UnidentifiedImageError:
        return "not a decodable image (not a format Pillow recognises)"
    except Exception as exc:  # Pillow raises many kinds: all mean "not a usable image"
        return f"not a decodable image ({_readable(exc)})"
    if image_format not in DECODABLE_FORMATS:
        return f"unsupported image format {image_format}"
    if width < 1 or height < 1:
        return "empty image"
    return None


def _readable(exc: BaseException) -> str:
    text = _OBJECT_REPR.sub("", str(exc)).strip().rstrip(":").strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def size_problem(size: int, compressed: int | None = None) -> str | None:
    """Why a member of ``size`` bytes (``compressed`` in the zip) is not read, or None."""
    if size > MAX_IMAGE_BYTES:
        return (f"too large for a photo ({size / (1 << 20):.0f} MiB uncompressed; "
                f"the limit is {MAX_IMAGE_BYTES >> 20} MiB)")
    if compressed is not None and size > RATIO_CHECK_FROM:
        ratio = size / max(compressed, 1)
        if ratio > MAX_COMPRESSION_RATIO:
            return (f"compressed {ratio:.0f}:1 (photos barely compress; more than "
                    f"{MAX_COMPRESSION_RATIO}:1 looks like a zip bomb)")
    return None


# --------------------------------------------------------------------------- image sources


class ImageSource:
    """Where candidate photos are read from: ``candidates()`` by class, ``read(name)`` bytes."""

    layout = "unknown"

    def candidates(self) -> dict[str, list[str]]:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        """The bytes of ``name``; raises SkipMember with a readable reason when unusable."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ZipImages(ImageSource):
    """A zip, refused as a whole if any member is unsafe; members are read one at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise TransferError(f"{self.path} is not a readable zip archive (not a zip, or "
                                "truncated)") from exc
        try:
            for info in self.zip.infolist():
                check_member_safe(self.path, info)
        except BaseException:
            self.zip.close()
            raise

    def candidates(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {c: [] for c in CLASSES}
        for info in self.zip.infolist():
            if not info.is_dir():
                cls = classify(info.filename)
                if cls:
                    found[cls].append(info.filename)
        self.layout = layout_of(found)
        return found

    def inner_zips(self) -> list[zipfile.ZipInfo]:
        return [i for i in self.zip.infolist()
                if i.filename.lower().endswith(".zip") and not i.is_dir()]

    def read(self, name: str) -> bytes:
        info = self.zip.getinfo(name)
        problem = size_problem(info.file_size, info.compress_size)
        if problem:
            raise SkipMember(problem)
        try:
            with self.zip.open(info) as member:
                # zipfile stops at the declared size; read one byte more to notice a liar.
                data = member.read(MAX_IMAGE_BYTES + 1)
        except Exception as exc:  # BadZipFile (bad CRC), zlib.error, EOFError: a damaged member
            raise SkipMember(f"unreadable in the archive ({_readable(exc)})") from exc
        if len(data) > MAX_IMAGE_BYTES:
            raise SkipMember(size_problem(len(data)) or "too large for a photo")
        return data

    def fingerprint(self) -> str:
        return sha256_file(self.path)

    def close(self) -> None:
        self.zip.close()


class FolderImages(ImageSource):
    """A folder of photos (either layout); symbolic links are ignored, never followed."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _files(self) -> Iterator[Path]:
        for folder, dirs, files in os.walk(self.root, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                path = Path(folder) / name
                if not path.is_symlink():
                    yield path

    def candidates(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {c: [] for c in CLASSES}
        for path in self._files():
            rel = path.relative_to(self.root).as_posix()
            cls = classify(rel)
            if cls:
                found[cls].append(rel)
        for names in found.values():
            names.sort(key=lambda rel: PurePosixPath(rel).parts)
        self.layout = layout_of(found)
        return found

    def read(self, name: str) -> bytes:
        path = self.root / name
        try:
            problem = size_problem(path.stat().st_size)
            if problem:
                raise SkipMember(problem)
            return path.read_bytes()
        except OSError as exc:
            raise SkipMember(f"unreadable ({exc.strerror or _readable(exc)})") from exc

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for cls, names in self.candidates().items():
            for name in names:
                st = (self.root / name).stat()
                digest.update(f"{cls}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return "folder:" + digest.hexdigest()


def layout_of(found: dict[str, list[str]]) -> str:
    """"kaggle" when every candidate is named cat.N / dog.N, else "folders"."""
    names = [n for ns in found.values() for n in ns]
    if names and all(_KAGGLE_NAME.match(PurePosixPath(n).name) for n in names):
        return "kaggle"
    return "folders"


def check_member_safe(archive: Path, info: zipfile.ZipInfo) -> None:
    """Refuse the whole archive for a member with an absolute path, a ``..`` or a symlink."""
    name = info.filename
    pure = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise TransferError(f"refusing {archive}: member {name!r} has an absolute path")
    if ".." in pure.parts:
        raise TransferError(f"refusing {archive}: member {name!r} escapes the target folder")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise TransferError(f"refusing {archive}: member {name!r} is a symbolic link")


def fingerprint(archive: Path) -> str:
    """SHA-256 of a zip, or a digest of names, sizes and times of a folder's photos."""
    archive = Path(archive)
    return FolderImages(archive).fingerprint() if archive.is_dir() else sha256_file(archive)


@contextlib.contextmanager
def open_images(archive: Path, cache: Path) -> Iterator[ImageSource]:
    """The photos of ``archive`` (a zip or a folder). A zip that holds no photos but wraps
    another zip (the competition's download wraps ``train.zip``) is unwrapped into ``cache``."""
    archive = Path(archive)
    if archive.is_dir():
        yield FolderImages(archive)
        return
    if not archive.is_file():
        raise TransferError(f"archive not found: {archive}")
    images = ZipImages(archive)
    try:
        found = images.candidates()
        inner = images.inner_zips()
        if not any(found.values()) and inner:
            member = next((i for i in inner if PurePosixPath(i.filename).name == "train.zip"),
                          inner[0])
            unpacked = _unwrap(images, member, archive, cache)
            images.close()
            images = ZipImages(unpacked)
        yield images
    finally:
        images.close()


def _unwrap(images: ZipImages, member: zipfile.ZipInfo, archive: Path, cache: Path) -> Path:
    if member.file_size > MAX_INNER_ZIP_BYTES:
        raise TransferError(f"refusing {archive}: its {member.filename} would be "
                            f"{member.file_size / (1 << 30):.1f} GiB uncompressed")
    ratio = member.file_size / max(member.compress_size, 1)
    if member.file_size > RATIO_CHECK_FROM and ratio > MAX_COMPRESSION_RATIO:
        raise TransferError(f"refusing {archive}: its {member.filename} is compressed "
                            f"{ratio:.0f}:1, which looks like a zip bomb")
    cache.mkdir(parents=True, exist_ok=True)
    unpacked = cache / f"{archive.stem}-{PurePosixPath(member.filename).name}"
    if not unpacked.exists():
        part = unpacked.with_name(unpacked.name + ".part")
        try:
            with images.zip.open(member) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(part, unpacked)
        finally:
            part.unlink(missing_ok=True)
    return unpacked
