"""Reading a zip or a folder of photos safely: nothing is ever extracted blindly.

A zip is opened, every member is checked (no absolute path, no ``..``, no symbolic link) before
any is read, and each image is read into memory only after its size is known to be sane (at
most ``MAX_IMAGE_BYTES`` uncompressed, no absurd compression ratio). Three layouts are
recognised (`sort_into_classes`):

- ``kaggle``: Kaggle's ``train/cat.12.jpg`` names (cats and dogs; a ``test1/`` folder of
  unlabelled photos beside them is ignored);
- ``folders``: Microsoft's PetImages, ``PetImages/Cat/12.jpg`` and ``PetImages/Dog/7.jpg``
  (cats and dogs);
- ``class-folders``: any folder of class folders, read as ``train`` reads it: each folder at
  the top is a class and holds its images at any depth (``daisy/1.jpg``, ``daisy/2023/2.jpg``);
  a lone wrapping folder is stepped into (``photos/2024/daisy/1.jpg``), and split folders
  (``train/cats``, ``validation/cats``) are merged by class.

Hidden and system files and folders (``.DS_Store``, ``Thumbs.db``, ``._x``, ``__MACOSX/``)
are ignored silently, as are files without an image suffix. A file named as a format the reader
does not take (``.heic``, a camera's raw suffix) is a photo when Pillow opens it (a JPEG renamed
``.heic``), as every command lists it (``constants.unread_file``; a zip member by its first
bytes, ``ImageSource.opens``); the others are left out and said. ``check_image`` decodes a
photo fully with Pillow and says, in words, why one is unusable.

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
import unicodedata
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath

from transfer.constants import (
    RAW,
    READS_AVIF,
    TEST_FOLDERS,
    TRAIN_FOLDERS,
    UNREAD_HINT,
    VALIDATE_FOLDERS,
    class_folders_clash,
    is_image_name,
    same_but_case,
    unread_file,
    unread_photo,
    unread_summary,
)
from transfer.constants import is_ignored_folder as _ignored_folder
from transfer.errors import TransferError
from transfer.files import sha256_file, walk

CLASSES = ("cats", "dogs")
# The image formats (Pillow's names) a split may hold: every format of the suffixes the one
# reader (transfer.images, used by training, evaluate, predict and serve) accepts
# (constants.IMAGE_SUFFIXES; MPO is the JPEG that many cameras and phones write, PPM covers
# .ppm and .pgm; AVIF when this Pillow decodes it, as .avif is then an image suffix: an AVIF
# photo was skipped here while train read it). Other images are skipped, and listed, with
# IMAGE_FORMAT_LATER's reason.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM",
                             *(("AVIF",) if READS_AVIF else ())})
DECODABLE_FORMATS = ALLOWED_FORMATS  # the former name
IMAGE_FORMAT_LATER = "format {format} is not readable by the training pipelines yet"
# The layouts (see the module docstring); the first two are the cats and dogs of the tour.
KAGGLE, PETIMAGES, CLASS_FOLDERS = "kaggle", "folders", "class-folders"
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
# PetImages's own folder names: only these (exactly) make the cats/dogs "folders" layout; a
# user's cats/ and dogs/ folders are class folders like any other.
_PETIMAGES_FOLDERS = {"Cat": "cats", "Dog": "dogs"}
_PETIMAGES_ROOT = "PetImages"
# The Kaggle competition's unlabelled photos (test1.zip unpacks to test1/1.jpg ...).
_KAGGLE_UNLABELLED = "test1"
# Pillow puts the file object into some messages ("cannot identify image file <_io.BytesIO
# object at 0x7f...>"): meaningless to a user, so it is cut out.
_OBJECT_REPR = re.compile(r"\s*<[^<>]*? object at 0x[0-9a-fA-F]+>")


class SkipMember(Exception):
    """One archive member cannot be used; the message is the skip reason shown to the user.
    ``identified``: its header is an image's all the same (train's cheap probe takes it), so
    it keeps its place in a fraction split's cut, as train's own split of the folder keeps it."""

    def __init__(self, reason: str, identified: bool = False):
        super().__init__(reason)
        self.identified = identified


# An oversized zip member is probed through the zip's seekable stream up to this size (a
# TIFF's directory may be at its end: read up to there); a larger one by its first bytes only.
PROBE_WHOLE_BYTES = 1 << 30
HEADER_BYTES = 1 << 20  # enough of a file for Pillow to identify it (a JPEG's EXIF included)


def header_identified(source) -> bool:
    """True when ``source`` (a path, a seekable binary file, or a file's first bytes) passes
    train's header probe (``images.check_header``, which ``pipelines.probe_all`` runs)."""
    from transfer import images

    try:
        images.check_header(source)
    except Exception:  # ImageError; or a damaged zip member read through its stream (zlib)
        return False
    return True


def classify(path: str, named_photo: bool = False) -> str | None:
    """The class (cats/dogs) of an archive path, from Kaggle names or PetImages folders.
    ``named_photo``: the file is a photo though its name says a format the reader does not
    take (a JPEG renamed cat.3.heic: ``ImageSource.opens``)."""
    pure = PurePosixPath(path.replace("\\", "/"))
    if not (named_photo or is_image_name(pure.name)):
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
        from PIL import UnidentifiedImageError

        from transfer.bases import MAX_SIZE
        from transfer.images import decode_whole

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # every pixel decoded (truncated and corrupt files caught), as train's reader
            # decodes it at its largest size
            image_format, (width, height) = decode_whole(io.BytesIO(data), MAX_SIZE)
    except UnidentifiedImageError:
        from transfer.constants import unread_line
        from transfer.images import unread_kind

        kind = unread_kind(data)  # an iPhone's photo renamed .jpg: said as the reader says it
        if kind:
            return unread_line(kind)
        return "not a decodable image (not a format Pillow recognises)"
    except Exception as exc:  # Pillow raises many kinds: all mean "not a usable image"
        return f"not a decodable image ({_readable(exc)})"
    if image_format not in ALLOWED_FORMATS:
        return IMAGE_FORMAT_LATER.format(format=image_format)
    if width < 1 or height < 1:
        return "empty image"
    from transfer.images import too_small  # the one reader's limit: train would skip it

    return too_small(width, height)


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
    notes: list = []  # what candidates() left out on purpose (a held-out test/), said once

    def candidates(self) -> dict[str, list[str]]:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        """The bytes of ``name``; raises SkipMember with a readable reason when unusable."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def unread(self) -> list[str]:
        """Photos in a format the reader does not take (HEIC, camera raw): left out, said. A
        file so named that Pillow opens (a JPEG renamed .heic) is a photo (``opens``)."""
        return [name for name in self.names() if unread_photo(name)
                and not _in_ignored_folder(_posix(name)) and not self.opens(name)]

    def opens(self, name: str) -> bool:
        """True when ``name``, named as a format the reader does not take (``unread_photo``),
        holds a photo Pillow reads all the same (a JPEG renamed .heic): train, evaluate and
        predict read it (``constants.unread_file``), so it is a photo here too. Asked of
        those files only, once each."""
        known = vars(self).setdefault("_opens", {})  # this source's answers, by name
        if name not in known:
            known[name] = self._unread_kind(name) is None
        return known[name]

    def _unread_kind(self, name: str) -> str | None:
        """``constants.unread_file`` of ``name``: the format it is when the reader cannot
        take it, None when Pillow opens it."""
        return unread_photo(name)

    def names(self) -> list[str]:
        return []

    def close(self) -> None:
        pass


class ZipImages(ImageSource):
    """A zip, refused as a whole if any member is unsafe; members are read one at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as exc:
            if isinstance(exc, UnicodeDecodeError):  # flagged UTF-8, a name that is not
                raise TransferError(f"{self.path} is not a readable zip archive (a member's "
                                    "name is marked UTF-8 but is not; make the zip again)"
                                    ) from None
            if _tar_like(self.path):
                raise TransferError(
                    f"{self.path} is a tar archive: fetch-data reads zip archives and folders; "
                    f"unpack it (tar xf {self.path}) and give the folder to --archive") from None
            raise TransferError(f"{self.path} is not a readable zip archive (not a zip, or "
                                "truncated)") from exc
        try:
            for info in self.zip.infolist():
                check_member_safe(self.path, info)
        except BaseException:
            self.zip.close()
            raise
        self.infos: dict[str, zipfile.ZipInfo] = {}
        self.repeated: list[str] = []  # names two members share (a zip appended to)
        for info in self.zip.infolist():
            name = member_name(info)
            other = self.infos.get(name)
            if other is not None and other.filename != info.filename:
                self.zip.close()
                raise TransferError(
                    f"{self.path} holds two members whose names differ only in how their "
                    f"accents are stored (Unicode NFC and NFD): {other.filename!r} and "
                    f"{info.filename!r}; one would hide the other: rename one and zip again")
            if other is not None and not info.is_dir():
                self.repeated.append(name)
            self.infos[name] = info  # the same name twice: the last one, as unzip keeps it

    def candidates(self) -> dict[str, list[str]]:
        self.notes = []
        self.layout, found = sort_into_classes(
            [name for name, i in self.infos.items() if not i.is_dir()],
            [name for name, i in self.infos.items() if i.is_dir()], str(self.path), self.notes,
            opens=self.opens)
        if self.repeated:  # one of them was dropped without a word
            n = len(self.repeated)
            self.notes.append(
                f"{self.path} holds {n} member name{'s' if n > 1 else ''} twice ("
                f"{', '.join(self.repeated[:3])}{' ...' if n > 3 else ''}): the last member "
                "of each name is used, as unzip keeps it")
        return found

    def names(self) -> list[str]:
        return [name for name, i in self.infos.items() if not i.is_dir()]

    def image_names(self) -> list[str]:
        """The members with an image name (outside hidden folders), whatever their layout."""
        return [name for name, i in self.infos.items()
                if not i.is_dir() and _is_photo(_posix(name), name, self.opens)]

    def _unread_kind(self, name: str) -> str | None:
        """``constants.unread_file`` of a member, by what Pillow reads of its stream (the
        header of most formats: a few bytes of a real HEIC, a JPEG's up to its first scan),
        never the whole member: a zip member is decompressed from its start at each seek. A
        raw name with a TIFF header is the raw file it says unread (a TIFF's directory may
        lie at its end); an oversized or suspicious member is peeked at by its first
        HEADER_BYTES only; a member that cannot be read is the format its name says."""
        kind = unread_photo(name)
        if kind is None:
            return None
        info = self.infos[name]
        ratio = info.file_size / max(info.compress_size, 1)
        try:
            with self.zip.open(info) as member:
                if kind == RAW and member.read(4) in (b"II*\0", b"MM\0*"):
                    return kind
                member.seek(0)
                whole = info.file_size <= PROBE_WHOLE_BYTES and (
                    info.file_size <= RATIO_CHECK_FROM or ratio <= MAX_COMPRESSION_RATIO)
                return unread_file(name, member if whole else member.read(HEADER_BYTES))
        except Exception:  # BadZipFile, zlib.error, an encrypted member: unread, as named
            return kind

    def inner_zips(self) -> list[zipfile.ZipInfo]:
        return [i for i in self.zip.infolist()
                if i.filename.lower().endswith(".zip") and not i.is_dir()]

    def read(self, name: str) -> bytes:
        info = self.infos[name]
        problem = size_problem(info.file_size, info.compress_size)
        if problem:
            try:
                ratio = info.file_size / max(info.compress_size, 1)
                whole = info.file_size <= PROBE_WHOLE_BYTES and ratio <= MAX_COMPRESSION_RATIO
                with self.zip.open(info) as member:  # a zip bomb: its first bytes only
                    known = header_identified(member if whole
                                              else member.read(HEADER_BYTES))
            except Exception:  # a damaged member: no place kept
                known = False
            raise SkipMember(problem, identified=known)
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


def member_name(info: zipfile.ZipInfo) -> str:
    """A member's name as its maker wrote it. Zips from macOS's Finder (and many tools) store
    UTF-8 names without the flag that says so, which zipfile then reads as cp437
    ("chats e╠üte╠ü"): such a name is decoded as UTF-8 when it is valid UTF-8. NFC
    form, so that macOS's decomposed accents make the same class name as typed ones."""
    name = info.filename
    if not info.flag_bits & 0x800:
        with contextlib.suppress(UnicodeError):
            name = name.encode("cp437").decode("utf-8")
    return unicodedata.normalize("NFC", name)


class FolderImages(ImageSource):
    """A folder of photos (any layout); symbolic links are followed, as ``train`` follows
    them in the same folder (``files.walk``: no loops)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._files: list[str] | None = None  # the last scan's files

    def _scan(self) -> tuple[list[str], list[str]]:
        """(files, folders) under the root, relative, in POSIX form; hidden and system
        folders are left out."""
        return walk(self.root, skip_folder=_ignored_folder)

    def names(self) -> list[str]:
        return self._files if self._files is not None else self._scan()[0]

    def candidates(self) -> dict[str, list[str]]:
        files, folders = self._scan()
        self._files = files  # names() after candidates() walks no second time
        self.notes = []
        self.layout, found = sort_into_classes(files, folders, str(self.root), self.notes,
                                               root_name=self.root.resolve().name,
                                               opens=self.opens)
        return found

    def _unread_kind(self, name: str) -> str | None:
        return unread_file(self.root / name)  # its header, as train and predict read it

    def read(self, name: str) -> bytes:
        path = self.root / name
        try:
            problem = size_problem(path.stat().st_size)
            if problem:  # train's own probe of the file, its end included (a TIFF's directory)
                raise SkipMember(problem, identified=header_identified(path))
            return path.read_bytes()
        except OSError as exc:
            if path.is_symlink() and not path.exists():  # as the image reader says it
                raise SkipMember(f"a broken link (to {os.readlink(path)}, which does not "
                                 "exist)") from exc
            raise SkipMember(f"unreadable ({exc.strerror or _readable(exc)})") from exc

    def fingerprint(self) -> str:
        return self.identify()[0]

    def identify(self, known: dict[str, str] | None = None) -> tuple[str, str]:
        """(fingerprint, stamps) of the photos: the fingerprint is a digest of their names and
        contents (``FOLDER_CONTENTS``: the same photos copied, or touched, keep it), the
        stamps one of their names, sizes and modification times (``FOLDER_STAMPS``, what
        earlier versions recorded as the fingerprint). ``known`` maps stamps to the
        fingerprint an earlier run found for them: while the stamps are those, the photos are
        not read again (a folder of 25,000 photos is 1 GB to hash)."""
        found = self.candidates()
        stamps = _digest(self.root, found,
                         lambda path: "{0.st_size}:{0.st_mtime_ns}".format(path.stat()))
        if known and known.get(FOLDER_STAMPS + stamps):
            return known[FOLDER_STAMPS + stamps], FOLDER_STAMPS + stamps
        contents = _digest(self.root, found,
                           lambda path: f"{path.stat().st_size}:{sha256_file(path)}")
        return FOLDER_CONTENTS + contents, FOLDER_STAMPS + stamps


# A folder's fingerprint: its photos' names and contents. Earlier versions recorded their
# names, sizes and modification times, which `touch` or `cp -r` changed though the photos
# were the same; the manifest keeps those stamps beside the fingerprint, to skip reading the
# photos again while they stay the same.
FOLDER_CONTENTS = "folder-sha256:"
FOLDER_STAMPS = "folder:"


def _digest(root: Path, found: dict[str, list[str]], stamp: Callable[[Path], str]) -> str:
    """A digest of ``class/name:stamp(root / name)`` for every photo of ``found``, in order."""
    digest = hashlib.sha256()
    for cls, names in found.items():
        for name in names:
            try:
                mark = stamp(root / name)
            except OSError:  # a broken link: skipped when read, said then
                mark = "missing"
            # a name that is not UTF-8 (a Latin-1 USB stick's "d\xe9.jpg") as its bytes
            digest.update(f"{cls}/{name}:{mark}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


# --------------------------------------------------------------------------- layouts

EXPECTED_LAYOUTS = ("expected one folder per class holding its images, e.g. daisy/1.jpg and "
                    "roses/2.jpg; or Kaggle's train/cat.N.jpg; or PetImages/Cat/N.jpg")


def sort_into_classes(files: Iterable[str], folders: Iterable[str] = (),
                      where: str = "the archive", notes: list | None = None,
                      root_name: str = "", opens: Callable[[str], bool] | None = None,
                      ) -> tuple[str, dict[str, list[str]]]:
    """The layout of an archive and its images by class: (layout, {class: [file, ...]}).

    ``files`` are the archive's file paths (zip member names, or paths relative to a folder),
    ``folders`` its folders (empty ones included: an empty class folder is refused). Classes
    come sorted by name (cats and dogs, both present, for the two cats/dogs layouts), files
    sorted by path. Hidden and system files and folders, and files without an image suffix,
    are left out silently. ``opens(file)`` (``ImageSource.opens``) says whether a file named
    as a format the reader does not take (.heic, raw) is a photo all the same (a JPEG renamed
    .heic); without it, none is.

    Kaggle's ``cat.N.jpg`` names give the class only while they all lie in one folder (Kaggle's
    ``train/``): once a user has sorted them into folders, the folders say the class (a
    mislabelled dog moved into ``cats/`` is a cat). Class folders as ``train`` reads them
    (`class_folders`).

    Raises:
        TransferError: no image at all; images at the top (or in a folder that also holds
            class folders) beside class folders; a Kaggle cat.N/dog.N folder beside class
            folders; class folders whose names differ only in case; a class folder without
            images. One line each, naming the folders.
    """
    paths = {_posix(f): f for f in files}
    images = sorted((p for p in paths if _is_photo(p, paths[p], opens)), key=_parts)
    named = {p for p in images if not _is_candidate(p)}  # photos named as HEIC or raw
    unread = [p for p in paths if unread_photo(p) and p not in named]
    if not images:
        held = unread_summary([p for p in unread if not _in_ignored_folder(p)])
        if held:
            raise TransferError(f"no images transfer can read in {where}: it holds {held}; "
                                f"{UNREAD_HINT}")
        raise TransferError(f"no images in {where} ({EXPECTED_LAYOUTS})")
    kaggle = [p for p in images if _KAGGLE_NAME.match(_name(p))]
    others = [p for p in images if not _KAGGLE_NAME.match(_name(p))]
    if kaggle:
        others = [p for p in others if _folder_name(p) != _KAGGLE_UNLABELLED]
    kaggle_folders = {_parent(p) for p in kaggle}
    # unsorted: one folder (Kaggle's train/), or split folders each holding cats and dogs
    one_folder = len(kaggle_folders) <= 1 or all(
        is_split_name(_name(f)) and {_name(p).split(".")[0].lower() for p in kaggle
                                     if _parent(p) == f} == {"cat", "dog"}
        for f in kaggle_folders)
    # Microsoft's download: PetImages/Cat and PetImages/Dog (a user's own Cat/ and Dog/ are
    # class folders like any other, named as the user named them)
    petimages = all(_folder_name(p) in _PETIMAGES_FOLDERS and (
        _name(_parent(_parent(p))) or root_name) == _PETIMAGES_ROOT for p in others)
    if one_folder and petimages:
        found = {cls: [paths[p] for p in kaggle + others if classify(p, p in named) == cls]
                 for cls in CLASSES}
        return (PETIMAGES if others else KAGGLE), found
    # a models folder (or a comparison's, or one bundle) given as the photos: each bundle a
    # "class" of its pictures (train refuses it as its --data-dir; fetch-data split it)
    bundles = sorted({_parent(p) for p in paths if _name(p) == "meta.json"
                      and "/".join([*_parts(_parent(p)), "model.keras"]) in paths})
    if "" in bundles:  # one bundle itself
        raise TransferError(f"{where} is a model bundle (what transfer train writes), not a "
                            "folder of class folders of photos; give --archive the folder of "
                            "class folders")
    if bundles:
        from transfer.bundle import bundles_as_photos

        raise bundles_as_photos(where, [_name(b) for b in bundles], "--archive")
    known = [*(_posix(f) for f in folders), *(_parent(p) for p in paths)]
    classes = class_folders(images, known, where, kaggle_folder=one_folder and bool(kaggle),
                            notes=notes, unread=unread)
    return CLASS_FOLDERS, {cls: [paths[p] for p in names] for cls, names in classes.items()}


# Folders that hold a split, not a class: a download's train/ and validation/ (cats_and_dogs_
# filtered, most Kaggle data sets) has its class folders one level down. A test/ is held out.
SPLIT_FOLDERS = frozenset({*TRAIN_FOLDERS, *VALIDATE_FOLDERS, *TEST_FOLDERS})
HELD_OUT = frozenset(TEST_FOLDERS)


def is_split_name(name: str) -> bool:
    """True for train/, Validation/, VAL/ ...: the names downloads give their splits."""
    return name.lower() in SPLIT_FOLDERS


def class_folders(images: list[str], folders: list[str], where: str,
                  kaggle_folder: bool = False, notes: list | None = None,
                  unread: list[str] = ()) -> dict[str, list[str]]:
    """{class: [image, ...]} of images laid out in class folders, as ``train`` reads a folder:
    every folder at the top is a class, and the images in its sub-folders belong to it
    (``daisy/2023/1.jpg`` is a daisy). Two exceptions, for downloads: a lone folder wrapping
    everything is stepped into (``flower_photos/daisy/1.jpg``, at any depth), and top folders
    that are all split names (``train/``, ``validation/``, ``test/``) hold the class folders,
    which are then merged by name (``train/cats`` and ``validation/cats`` are one class); a
    ``test/`` beside them is a held-out test set, left out with a line in ``notes``. Split
    folders beside class folders are refused. A split name is a class when the folder holds
    its photos itself (a vehicle classifier's ``train/``).

    ``folders`` are every folder known (empty ones too). ``kaggle_folder``: Kaggle's cat.N and
    dog.N names all lie in one folder, which must then not sit beside class folders.
    ``unread``: the photos in formats the reader does not take, named when a class has none
    other."""
    known = set()
    for folder in set(folders):
        parts = _parts(folder)
        if parts and not any(_ignored_folder(part) for part in parts):
            known.update("/".join(parts[:n]) for n in range(1, len(parts) + 1))
    holding: dict[str, list[str]] = {}
    for path in images:
        holding.setdefault(_parent(path), []).append(path)
    if "" in holding:
        raise TransferError(
            f"{where} has images at the top, in no class folder ({_some(holding[''])}): put "
            "each class's images in a folder named after the class, e.g. daisy/1.jpg")
    if kaggle_folder:
        for folder in sorted(holding):
            kinds = {_name(p).split(".")[0].lower() for p in holding[folder]
                     if _KAGGLE_NAME.match(_name(p))}
            if kinds == {"cat", "dog"}:
                rest = sorted({_name(f) for f in holding if f != folder})
                raise TransferError(
                    f"{where} mixes layouts: {folder}/ holds Kaggle's cat.N and dog.N photos, "
                    f"beside class folders ({_some(rest)}); give fetch-data one layout")

    kids: dict[str, list[str]] = {}
    for folder in sorted(known):
        kids.setdefault(_parent(folder), []).append(folder)

    def children(parent: str) -> list[str]:
        return kids.get(parent, [])

    def inside(folder: str, path: str) -> bool:
        return path.startswith(folder + "/")

    root = ""
    while len(children(root)) == 1:  # a wrapper: step in, unless it holds images itself
        only = children(root)[0]
        if only in holding:
            below = sorted(f for f in holding if inside(only, f))
            if below:
                raise TransferError(
                    f"{where}: {only}/ holds images and also the class folder {below[0]}/; "
                    f"move the images of {only}/ into a class folder of their own")
            break
        root = only
    tops = children(root)
    splits = [t for t in tops if is_split_name(_name(t)) and children(t)]
    if not any(_name(t).lower() in TRAIN_FOLDERS for t in splits):
        splits = []  # valid/ and invalid/, or test/ and prod/: classes, not splits
    others = [_name(t) for t in tops if t not in splits and _name(t).lower() not in HELD_OUT]
    if splits and others:
        raise TransferError(
            f"{where} mixes layouts: {', '.join(_name(t) + '/' for t in splits)} "
            f"hold{'s' if len(splits) == 1 else ''} class folders, beside the class folder"
            f"{'' if len(others) == 1 else 's'} {', '.join(o + '/' for o in others)}; give "
            "fetch-data one layout: the class folders at the top, or only split folders")
    if splits:  # a download's train/ and validation/: the class folders are one level down
        for top in tops:
            if _name(top).lower() in HELD_OUT:
                if notes is not None:
                    use = (f"transfer evaluate --data-dir {Path(where) / top}"
                           if os.path.isdir(where) else "unpack it for transfer evaluate")
                    notes.append(f"{top}/ left out: a test set is held out, not split again "
                                 f"({use})")
            elif top in holding:
                raise TransferError(
                    f"{where}: {top}/ holds images in no class folder ({_some(holding[top])});"
                    " a split folder holds one folder per class: move them into one, or "
                    "remove them")
        tops = [c for top in splits if _name(top).lower() not in HELD_OUT
                for c in children(top)]
        if not tops:
            raise TransferError(f"{where}: only a held-out test set ({', '.join(splits)}); "
                                "give fetch-data the photos to train on")
    depth = len(_parts(tops[0])) if tops else 0  # every top is this deep
    under: dict[str, list[str]] = {}
    for path in images:  # one pass, not one per class: zips hold tens of thousands
        under.setdefault("/".join(_parts(path)[:depth]), []).append(path)
    classes: dict[str, list[str]] = {}
    for top in tops:
        classes.setdefault(_name(top), []).extend(under.get(top, []))
    empty = [top for top in tops if not classes[_name(top)]]  # after merging split halves
    same = same_but_case(classes)
    if same:
        raise TransferError(class_folders_clash(where, same))
    if empty:
        one = len(empty) == 1
        held = unread_summary([p for p in unread if "/".join(_parts(p)[:depth]) in empty])
        raise TransferError(
            f"{where}: the class folder{'' if one else 's'} {_some(empty)} "
            f"hold{'s' if one else ''} no images" + (
                f" transfer can read ({held}); {UNREAD_HINT}" if held else
                f"; every class needs images: add some, or remove the folder"
                f"{'' if one else 's'}"))
    return {cls: sorted(classes[cls], key=_parts)
            for cls in sorted(classes)}


def _parts(path: str) -> list[str]:
    """A POSIX relative path's parts ("a//b/./c/" -> a, b, c): PurePosixPath's, as strings
    (a zip of 25,000 photos would spend seconds building Path objects)."""
    return [part for part in path.split("/") if part and part != "."]


def _name(path: str) -> str:
    parts = _parts(path)
    return parts[-1] if parts else ""


def member_file_name(member: str) -> str:
    """The file name of an archive member ("cats\\cat.0.jpg" from a Windows zip: cat.0.jpg)."""
    return _name(_posix(member))


def _posix(name: str) -> str:
    return name.replace("\\", "/")


def _parent(path: str) -> str:
    return "/".join(_parts(path)[:-1])


def _folder_name(path: str) -> str:
    return _name(_parent(path))


def _in_ignored_folder(path: str) -> bool:
    return any(_ignored_folder(part) for part in _parts(path)[:-1])


def _is_candidate(path: str) -> bool:
    return is_image_name(_name(path)) and not _in_ignored_folder(path)


def _is_photo(path: str, name: str, opens: Callable[[str], bool] | None) -> bool:
    """A candidate by its name (``path``, POSIX), or a file named as HEIC or raw that
    ``opens(name)`` says Pillow reads (a JPEG renamed .heic)."""
    return _is_candidate(path) or bool(
        opens and unread_photo(path) and not _in_ignored_folder(path) and opens(name))


def _some(names: list[str], shown: int = 3) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


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
    """SHA-256 of a zip, or a digest of the names and contents of a folder's photos."""
    return identify(archive)[0]


def identify(archive: Path, known: dict[str, str] | None = None,
             ) -> tuple[str, str | None, str | None]:
    """(fingerprint, stamps, layout) of ``archive``: a zip's SHA-256 (no stamps, its layout
    not looked at: None); a folder's as ``FolderImages.identify`` finds them (``known``: the
    stamps and fingerprint of an earlier run), and its layout."""
    archive = Path(archive)
    if not archive.is_dir():
        return sha256_file(archive), None, None
    images = FolderImages(archive)
    found, stamps = images.identify(known)
    return found, stamps, images.layout


UNWRAPPED = "unwrapped"  # the folder of the cache that holds the zips unwrapped from others


@contextlib.contextmanager
def open_images(archive: Path, cache: Path) -> Iterator[ImageSource]:
    """The photos of ``archive`` (a zip or a folder). A zip that holds no photos but wraps
    another zip (the competition's download wraps ``train.zip``) is unwrapped into
    ``cache/unwrapped/`` (kept for the next split of it)."""
    archive = Path(archive)
    if archive.is_dir():
        yield FolderImages(archive)
        return
    if not archive.is_file():
        raise TransferError(f"archive not found: {archive}")
    images = ZipImages(archive)
    try:
        inner = images.inner_zips()
        if not images.image_names() and inner:
            member = next((i for i in inner if PurePosixPath(i.filename).name == "train.zip"),
                          inner[0])
            unpacked = _unwrap(images, member, archive, Path(cache) / UNWRAPPED)
            images.close()
            try:
                images = ZipImages(unpacked)
            except TransferError as exc:  # name the user's archive, not our copy of its part
                unpacked.unlink(missing_ok=True)
                raise TransferError(f"the {member.filename} inside {archive} is not a readable "
                                    "zip archive (not a zip, or truncated)") from exc
        yield images
    finally:
        images.close()


def _tar_like(path: Path) -> bool:
    """True for a tar archive (plain or compressed: ``.tgz``, ``.tar.gz``...), by its content."""
    import tarfile

    try:
        return tarfile.is_tarfile(path)
    except (OSError, tarfile.TarError):
        return False


def _unwrap(images: ZipImages, member: zipfile.ZipInfo, archive: Path, cache: Path) -> Path:
    if member.file_size > MAX_INNER_ZIP_BYTES:
        raise TransferError(f"refusing {archive}: its {member.filename} would be "
                            f"{member.file_size / (1 << 30):.1f} GiB uncompressed")
    ratio = member.file_size / max(member.compress_size, 1)
    if member.file_size > RATIO_CHECK_FROM and ratio > MAX_COMPRESSION_RATIO:
        raise TransferError(f"refusing {archive}: its {member.filename} is compressed "
                            f"{ratio:.0f}:1, which looks like a zip bomb")
    cache.mkdir(parents=True, exist_ok=True)
    # named by the inner zip's CRC-32 and size too: another archive of the same name (a
    # changed download, another competition's train.zip) never reuses this one's copy
    name = PurePosixPath(member.filename).name
    unpacked = cache / f"{archive.stem}-{member.CRC:08x}{member.file_size:x}-{name}"
    if not unpacked.exists():
        part = unpacked.with_name(unpacked.name + ".part")
        try:
            with images.zip.open(member) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(part, unpacked)
        except OSError:  # the disk: said as the CLI says any
            raise
        except Exception as exc:  # the zip's part: a bad CRC, Deflate64 (Windows), encrypted
            raise TransferError(f"the {member.filename} inside {archive} cannot be read "
                                f"({exc}); download {archive.name} again, or unzip it and "
                                f"give the {name} inside as --archive") from exc
        finally:
            part.unlink(missing_ok=True)
        earlier = re.compile(rf"{re.escape(archive.stem)}-([0-9a-f]{{9,}}-)?{re.escape(name)}")
        for stale in cache.iterdir():  # the copies of earlier versions of that archive
            if stale != unpacked and earlier.fullmatch(stale.name) and stale.is_file():
                stale.unlink(missing_ok=True)
    return unpacked
