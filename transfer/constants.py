"""Facts about files that several commands share: which suffixes are images, which names to skip.

One home, so that `fetch-data`, `train`, `evaluate`, `predict` and `serve` never disagree about
what counts as an image.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import unicodedata
from pathlib import Path, PurePath


def pillow_reads_avif() -> bool:
    """Whether the installed Pillow decodes AVIF (its wheels do since 11.2: ``PIL._avif``,
    what ``PIL.features.check("avif")`` imports, here without loading ``PIL.Image``: 2 ms)."""
    try:
        importlib.import_module("PIL._avif")
    except ImportError:  # an older Pillow, or one built without libavif
        return False
    return True


READS_AVIF = pillow_reads_avif()
RAW = "camera raw"
# Every suffix the one image reader (transfer.images, Pillow) opens.
# .jfif and .jpe are JPEGs too (.jfif is what browsers on Windows save a photo as); .avif
# when this Pillow decodes it (an AVIF photo was refused by its name while Pillow read it).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif",
                  ".tiff", ".ppm", ".pgm") + ((".avif",) if READS_AVIF else ())
# Photo formats people have but the reader does not take: skipped, and said, never silently.
# Only by their names: a file so named that Pillow opens (a JPEG renamed .heic) is a photo
# (``unread_file``).
UNREAD_PHOTOS = {".heic": "HEIC (an iPhone's photos)", ".heif": "HEIF",
                 **({} if READS_AVIF else {".avif": "AVIF"}),
                 **{s: RAW for s in (".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf",
                                     ".rw2")}}
UNREAD_HINT = "convert them to JPEG (e.g. export as JPEG from the photo app)"


def and_list(names: list[str], word: str = "and") -> str:
    """``a``, ``a and b``, ``a, b and c`` (or ``word`` for "and"): a list in a message."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {word} {names[-1]}"


def unread_line(kind: str) -> str:
    """Why a photo of ``kind`` (``UNREAD_PHOTOS``' words) gets no answer, in the one wording
    every command uses."""
    return f"{kind} is not a format transfer reads; {UNREAD_HINT}"
# What `transfer explain` writes next to an image; never a training photo.
GRADCAM_SUFFIX = ".gradcam.png"
# What `train --preview-augment` writes into the data folder; never a photo either.
PREVIEW_PNG = "augment-preview.png"
# System files that sit in photo folders and are never images: ignored silently.
SYSTEM_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db"})
# Folders never looked into (macOS zips carry resource forks in __MACOSX/; a Synology NAS
# keeps its thumbnails of every photo in @eaDir/, which a folder copied off it brings along).
IGNORED_FOLDERS = frozenset({"__macosx", "@eadir"})
# The names of a data folder's splits, in any case: fetch-data writes train/ and validate/;
# downloads name them otherwise. A test/ is held out, never trained on.
TRAIN_FOLDERS = ("train", "training")
VALIDATE_FOLDERS = ("validate", "validation", "val", "valid")
TEST_FOLDERS = ("test", "testing")


def _base(name: str) -> str:
    """The last part of ``name`` (PurePath's ``name``; plain strings for plain names, which
    is every call of a scan over thousands of files)."""
    return PurePath(name).name if "/" in name or os.sep in name else name


def is_hidden_or_system(name: str) -> bool:
    """True for hidden files (``.x``, macOS's ``._x``) and known system files."""
    name = _base(name)
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def is_browser_metadata(name: str) -> bool:
    """True for what a file browser writes beside your files and makes again at will (known
    system files, macOS's ``._x`` resource forks): never a file of yours."""
    name = _base(name)
    return name.startswith("._") or name.lower() in SYSTEM_FILES


def is_ignored_folder(name: str) -> bool:
    """True for the folders no command looks into: hidden and system ones, ``__MACOSX``."""
    return is_hidden_or_system(name) or _base(name).lower() in IGNORED_FOLDERS


# What `transfer compare` writes beside its bundles (settings checks them, compare writes them,
# report recognises a comparison by the first).
COMPARE_JSON = "compare.json"
COMPARE_PNG = "compare.png"


def gradcam_png(image) -> Path:
    """Where ``transfer explain`` puts the Grad-CAM picture of ``image`` by default: beside it,
    ``<stem>.gradcam.png`` (``gradcam_name``)."""
    return Path(image).with_name(gradcam_name(Path(image).stem))


NAME_MAX_BYTES = 255  # a file name's limit in Linux's file systems (ext4, xfs, btrfs), in bytes


def gradcam_name(stem: str) -> str:
    """``<stem>.gradcam.png``; a stem too long for that to fit NAME_MAX_BYTES (a photo named
    with 248 bytes, legal, made explain fail with "File name too long") cut at a character,
    with a tag of the whole stem, so that two long names cut alike stay apart."""
    name = stem + GRADCAM_SUFFIX
    if len(os.fsencode(name)) <= NAME_MAX_BYTES:
        return name
    tag = "~" + hashlib.sha256(os.fsencode(stem)).hexdigest()[:8]
    while stem and len(os.fsencode(stem + tag + GRADCAM_SUFFIX)) > NAME_MAX_BYTES:
        stem = stem[:-1]
    return stem + tag + GRADCAM_SUFFIX


def is_own_picture(name: str) -> bool:
    """True for the tool's own pictures, never photos: a Grad-CAM heatmap (``transfer
    explain``) or an augmentation preview (``train --preview-augment``)."""
    base = _base(name)
    return base.endswith(GRADCAM_SUFFIX) or base == PREVIEW_PNG


def is_image_name(name: str) -> bool:
    """True when ``name`` has an image suffix and is neither hidden, a system file, nor one of
    the tool's own pictures."""
    base = _base(name)
    return (os.path.splitext(base)[1].lower() in IMAGE_SUFFIXES
            and not is_hidden_or_system(base) and not is_own_picture(base))


def unread_photo(name: str) -> str | None:
    """The kind of photo ``name`` is when the reader does not take it (HEIC, raw), else None."""
    base = _base(name)
    if is_hidden_or_system(base):
        return None
    return UNREAD_PHOTOS.get(os.path.splitext(base)[1].lower())


def unread_file(path, data=None) -> str | None:
    """The kind of photo the file at ``path`` is when the reader cannot take it: its name says
    a format Pillow does not read (``unread_photo``) and Pillow cannot identify its bytes
    either (for a raw name: as anything but the TIFF a raw file's header is); None for every
    other file. A JPEG renamed .heic is a photo (it was refused by its name); a real HEIC, or
    a missing or unreadable file of that name, is the HEIC it says.
    What every listing of photos asks of a file ``unread_photo`` names (cheap: a header read,
    only for those files). ``data``: the file's bytes, or a binary stream of them, when they
    are not on disk at ``path`` (an upload: its name is the client's; a zip member)."""
    kind = unread_photo(os.fspath(path))
    if kind is None:
        return None
    from transfer.images import header_format

    found = header_format(Path(path) if data is None else data)
    # a camera's raw file is a TIFF by its header (DNG, CR2, NEF, ARW): Pillow would read
    # the small preview stored first, not the photo
    if found is None or (kind == RAW and found == "TIFF"):
        return kind
    return None


def unread_summary(names: list[str]) -> str:
    """"3 .heic files (HEIC (an iPhone's photos))" for the unread photos among ``names``."""
    kinds: dict[str, int] = {}
    for name in names:
        if unread_photo(name):
            suffix = os.path.splitext(_base(name))[1].lower()
            kinds[suffix] = kinds.get(suffix, 0) + 1
    return ", ".join(f"{n} {suffix} file{'' if n == 1 else 's'} ({UNREAD_PHOTOS[suffix]})"
                     for suffix, n in sorted(kinds.items()))


def same_but_case(names) -> list[str] | None:
    """The first names among ``names`` that differ only in case (or in how an accent is
    encoded: NFC), sorted; None when there are none. Such class folders are refused."""
    by_key: dict[str, list[str]] = {}
    for name in names:
        by_key.setdefault(unicodedata.normalize("NFC", name).casefold(), []).append(name)
    return next((sorted(same) for same in by_key.values() if len(same) > 1), None)


def class_folders_clash(where, same: list[str]) -> str:
    """The refusal of the class folders ``same_but_case`` found in ``where`` (fetch-data's
    archive, train's --data-dir), saying how they differ: "in case", or, for "café" composed
    and decomposed (printed alike), "in how their accents are stored (Unicode NFC and NFD)"
    (it said "in case" for both)."""
    forms = {unicodedata.normalize("NFC", name) for name in same}
    if len(forms) == 1:
        how = "in how their accents are stored (Unicode NFC and NFD)"
    elif len({name.casefold() for name in same}) == 1:
        how = "in case"
    else:
        how = "in case and in how their accents are stored (Unicode NFC and NFD)"
    return (f"{where}: the class folders {' and '.join(same)} differ only {how}; rename or "
            "merge them")


# A class with fewer images than this is warned about by fetch-data and train.
FEW_IMAGES = 10


def few_images_warning(sizes: dict[str, int], what: str = "images") -> str | None:
    """The one warning about the classes of ``sizes`` (images per class) under FEW_IMAGES
    (learnt and measured poorly), however many they are; None when there are none."""
    few = {name: n for name, n in sizes.items() if n < FEW_IMAGES}
    if len(few) == 1:
        (name, n), = few.items()
        return (f"class {name} has only {n} {what if n != 1 else what[:-1]} (fewer than "
                f"{FEW_IMAGES}): too few to learn it well or to measure it; add photos if you can")
    if few:
        listed = ", ".join(f"{name} ({n})" for name, n in few.items())
        return (f"{len(few)} classes have fewer than {FEW_IMAGES} {what}: too few to learn them "
                f"well or to measure them; add photos if you can: {listed}")
    return None


# how a fraction split orders each class before cutting it (datasets.stable_order): recorded as
# meta.json's data.split_order (train's in-memory split) and manifest.json's split.order
STABLE_ORDER = "name-hash"
