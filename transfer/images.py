"""Reading one image file into the input a bundle's model expects.

Every command that feeds a user's image to a model (predict, evaluate, explain, export's check)
goes through here, and what "the model's input" means comes from the bundle's ``meta.json``:

- colour bundles (``channels`` 3): any Pillow-readable image -> RGB pixels 0-255, resized to
  ``image_size`` the way training resized (Pillow bilinear for the ``generator`` pipeline,
  ``tf.image.resize`` bilinear for ``tfdata``). The model holds its own preprocessing.
- digit bundles (``channels`` 1, ``transfer mnist``): grayscale, inverted when the digit is
  dark on a light background (``invert``: auto|yes|no), background lifted off, then fitted
  the way MNIST was made: the digit's bounding box scaled into 20x20 and centred by mass in
  28x28.

Conversions: EXIF orientation is applied (phone photos); transparency (RGBA, LA, palette with
a transparent colour) is composited onto white; CMYK, palette, 1-bit and 16-bit grayscale are
converted (12-bit data in a 16-bit file scaled from 4095: ``high_bit_top``); an animated
image gives its first frame. A file that cannot be used raises ``ImageError`` with the reason.

Training reads through the same steps (``transfer.pipelines.read_rgb``: ``open_image`` with
JPEG draft mode at the size, then Pillow's bilinear resize, for both pipelines and the feature
pass), so one image gives the same pixels in training and in every command. Bundles trained
before that with the tfdata pipeline record no ``preprocessing.resize`` and keep
``tf.image.resize`` (and a whole decode).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import sys
from pathlib import Path

import numpy as np

from transfer.errors import TransferError
from transfer.settings import INVERT

MIN_SIDE = 8  # pixels; smaller images carry nothing a classifier can use


def too_small(width: int, height: int) -> str | None:
    """Why an image of this size is not classified (under MIN_SIDE on a side), or None."""
    if min(width, height) < MIN_SIDE:
        return (f"image is {width}x{height} px; too small to classify (at least "
                f"{MIN_SIDE}x{MIN_SIDE})")
    return None


MNIST_BOX = 20  # MNIST digits fill a 20x20 box centred by mass in 28x28
DIGIT_DRAFT = 512  # a photo of a digit is read at twice this a side at least (draft mode)


class ImageError(TransferError):
    """This file cannot be used as an image (the message says why)."""


def open_image(source, size: int | None = None):
    """The decoded, upright Pillow image in ``source`` (a path, the file's bytes, or a binary
    file object such as an upload), or ImageError.

    ``size``: the square size the pixels are read for. A JPEG at least four times that on
    both sides is then decoded at 1/2, 1/4 or 1/8 scale, never below twice ``size`` (Pillow's
    draft mode: the JPEG decoder's own DCT scaling), and the resize to ``size`` does the rest:
    a phone's 4000 x 3000 photo read for 224 px decodes at 1000 x 750, about 6x faster, and
    its pixels differ from a whole decode's by 0.15 of 255 on average (0.42 when drafting down
    to the size itself: the resize's own antialiasing is what keeps them close). Smaller
    photos (the Kaggle cats and dogs, 500 px at most) decode whole. ``full_size(image)`` is
    the file's own (upright) size either way."""
    with _pillow_errors(source), _opened(_readable(source), drafted=bool(size)) as image:
        width, height = image.size
        if size:
            _draft(image, size)
        image.load()
        loaded = image.size
        image = upright(image)
        if image.size != loaded:  # its EXIF orientation turned it a quarter
            width, height = height, width
    problem = too_small(width, height)
    if problem:
        raise ImageError(problem)
    image.info["full_size"] = (width, height)
    return image


def upright(image):
    """``image`` turned as its EXIF orientation says (Pillow's ``exif_transpose``), the tag then
    dropped from its metadata; ``image`` itself when nothing is to be turned (no copy).

    A photo whose EXIF has a malformed tag (XResolution stored as text, as some cameras and
    editors write it) cannot have its EXIF written back, which ``exif_transpose`` does: such a
    photo is turned all the same and its EXIF left out. An EXIF block that cannot be parsed
    at all says no orientation: the photo is read as stored."""
    from PIL import ExifTags, Image, ImageOps

    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # an EXIF Pillow cannot parse
        return image
    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}.get(orientation)
    if method is None:
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a tag it cannot write back
        turned = image.transpose(method)
        for key in ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp"):
            turned.info.pop(key, None)  # nothing left to turn it a second time
        return turned


JPEG_MAGIC = b"\xff\xd8\xff"


def _opened(readable, drafted: bool = False):
    """Pillow's ``Image.open`` of ``readable`` (what ``_readable`` gave), with its check
    against decompression bombs (Pillow's ``MAX_IMAGE_PIXELS``: an error over twice it, 179
    megapixels by default) on the stored size, except for a JPEG when ``drafted``: its caller
    draft-decodes it, at 1/2 to 1/8 scale, and checks that size (``_bomb_check``). So a
    200-megapixel phone photo (16320 x 12240, Samsung's 200 MP mode), refused by
    ``Image.open`` itself, is read for a model at 2040 x 1530, while a PNG of that size,
    decoded whole, is still refused."""
    from PIL import Image, JpegImagePlugin

    if not drafted:
        return Image.open(readable)
    if hasattr(readable, "read"):
        try:
            readable.seek(0)  # as Image.open does
        except (AttributeError, OSError, ValueError):  # a stream: read whole, as Image.open does
            import io

            readable = io.BytesIO(readable.read())
        is_jpeg = readable.read(3) == JPEG_MAGIC
        readable.seek(0)
    else:
        with open(readable, "rb") as stream:
            is_jpeg = stream.read(3) == JPEG_MAGIC
    if not is_jpeg:
        return Image.open(readable)
    # the factory Image.open itself calls for a JPEG (a multi-picture file becomes an MPO),
    # without its bomb check on the stored size; a path is opened and closed by the image
    return JpegImagePlugin.jpeg_factory(readable if hasattr(readable, "read")
                                        else os.fspath(readable))


def _draft(image, size: int) -> None:
    """A JPEG opened by ``_opened(drafted=True)`` set to decode at 1/2, 1/4 or 1/8 scale, never
    below twice ``size`` (a no-op for other formats), and checked against decompression bombs
    on what will be decoded, not on the stored size."""
    stored = image.size
    image.draft("RGB", (2 * int(size), 2 * int(size)))
    if image.format in ("JPEG", "MPO"):
        # a progressive JPEG is no smaller in draft mode: libjpeg keeps every scan's
        # coefficients of the whole image (1.7 GB for a 5 KB file saying 24000 x 24000)
        _bomb_check(stored if image.info.get("progressive") else image.size)


def _bomb_check(size: tuple[int, int]) -> None:
    """Pillow's own check (its public limit, its warning and error classes) on the pixels about
    to be decoded."""
    import warnings

    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    pixels = max(1, size[0]) * max(1, size[1])
    if limit is None or pixels <= limit:
        return
    message = f"Image size ({pixels} pixels) exceeds limit of {{}} pixels, could be " \
              "decompression bomb DOS attack."
    if pixels > 2 * limit:
        raise Image.DecompressionBombError(message.format(2 * limit))
    warnings.warn(message.format(limit), Image.DecompressionBombWarning, stacklevel=3)


def full_size(image) -> tuple[int, int]:
    """(width, height) of the upright image as stored in its file, before any draft-mode
    reduction of ``open_image``."""
    return tuple(image.info.get("full_size", image.size))


def notes_of(image) -> dict:
    """What predict reports of an opened image: the file's upright size and its mode."""
    width, height = full_size(image)
    return {"width": width, "height": height, "mode": image.mode}


# ISO base media "ftyp" brands of the photos Pillow cannot read (bytes 8-12 of the file)
UNREAD_BRANDS = {**dict.fromkeys((b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis",
                                  b"mif1", b"msf1"), ".heic"),
                 **dict.fromkeys((b"avif", b"avis"), ".avif")}


def unread_kind(source) -> str | None:
    """"HEIC (an iPhone's photos)" (or "AVIF", when this Pillow does not read it) when
    ``source`` (a path, bytes or a seekable file) holds such a photo by its first bytes,
    whatever it is named (an upload, a photo renamed .jpg); else None."""
    from transfer.constants import UNREAD_PHOTOS

    suffix = _brand_suffix(source)
    return UNREAD_PHOTOS.get(suffix) if suffix else None  # AVIF: none when Pillow reads it


def _brand_suffix(source) -> str | None:
    """".heic" or ".avif" when ``source`` (a path, bytes or a seekable file) is such an ISO
    base media file by its "ftyp" box, else None."""
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            head = bytes(source[:12])
        elif hasattr(source, "read") and hasattr(source, "seek"):
            at = source.tell()
            source.seek(0)
            head = source.read(12)
            source.seek(at)
        elif isinstance(source, str | os.PathLike):
            with open(source, "rb") as stream:
                head = stream.read(12)
        else:
            return None
    except (OSError, ValueError):
        return None
    return UNREAD_BRANDS.get(head[8:12]) if head[4:8] == b"ftyp" else None


@contextlib.contextmanager
def _pillow_errors(source=None):
    """Pillow's many exceptions as one ImageError saying why, in words (``source``: what was
    opened, to say which format an unidentified one is when it can tell)."""
    from PIL import Image, UnidentifiedImageError

    from transfer.constants import unread_line

    try:
        yield
    except UnidentifiedImageError:
        kind = unread_kind(source) if source is not None else None
        if kind or _named_unread(source):
            raise ImageError(unread_line(kind or _named_unread(source))) from None
        if source is not None and _brand_suffix(source) == ".avif":  # and Pillow reads AVIF
            raise ImageError("corrupt or truncated image (an AVIF that Pillow, which reads "
                             "AVIF, cannot decode)") from None
        raise ImageError("not an image (Pillow cannot identify it)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"too large to decode safely ({exc})") from None
    except OSError as exc:
        if exc.errno is not None:  # the file system's (no access...), not the decoder's
            raise ImageError(f"cannot be read ({exc.strerror})") from None
        _raise_named_unread(source)
        raise ImageError(f"corrupt or truncated image ({exc})") from None
    except NotImplementedError as exc:  # a variant of a format Pillow knows but cannot decode
        _raise_named_unread(source)
        raise ImageError(f"a kind of image Pillow cannot decode ({exc})") from None
    except (SyntaxError, ValueError, EOFError, struct.error) as exc:
        _raise_named_unread(source)
        raise ImageError(f"corrupt or truncated image ({exc or type(exc).__name__})") from None


def _named_unread(source) -> str | None:
    """The format a path's name says when the reader does not take it (HEIC, camera raw), or
    None: said when Pillow could not use the file (a file so named that it reads is read)."""
    from transfer.constants import unread_photo

    return unread_photo(os.fspath(source)) if isinstance(source, str | os.PathLike) else None


def _raise_named_unread(source) -> None:
    """ImageError in ``unread_line``'s words when Pillow failed on a file named as a format the
    reader does not take (a camera's raw file, a TIFF by its header that does not decode)."""
    from transfer.constants import unread_line

    kind = _named_unread(source)
    if kind:
        raise ImageError(unread_line(kind)) from None


LINK_LOOP = "a symbolic link loop (it leads back to itself)"  # what the reader says of one


def existing_file(path) -> Path:
    """``path`` as a Path, or ImageError when it is missing, a folder or empty."""
    path = Path(path)
    try:
        found = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(LINK_LOOP) from None
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):  # no access, a name too long...
            raise ImageError(f"cannot be read ({exc.strerror})") from None
        if path.is_symlink():
            target = os.readlink(path)
            raise ImageError(f"a broken link (to {target}, which does not exist)") from None
        raise ImageError("no such file") from None
    if stat.S_ISDIR(found.st_mode):
        raise ImageError("is a folder")
    if not stat.S_ISREG(found.st_mode):  # reading a pipe would wait for a writer
        raise ImageError("not a regular file (a pipe, socket or device)")
    if found.st_size == 0:
        raise ImageError("empty file (0 bytes)")
    return path


def _readable(source):
    """What Pillow opens: a path (checked: missing, a folder, empty), bytes, a file, or a
    photo already in memory (a Pillow image or a NumPy array, ``in_memory``)."""
    import io

    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise ImageError("empty file (0 bytes)")
        return io.BytesIO(bytes(source))
    if isinstance(source, np.ndarray) or is_pillow_image(source):
        return in_memory(source)
    if hasattr(source, "read"):
        if _holds_nothing(source):  # said as an empty file is
            raise ImageError("empty file (0 bytes)")
        return source
    if isinstance(source, str | os.PathLike):
        return existing_file(source)
    raise ImageError(f"not an image: a {type(source).__name__} (give a path, the file's "
                     "bytes, a Pillow image or an array of 0-255 pixels)")


def _holds_nothing(stream) -> bool:
    """Whether ``stream`` has no byte from its start, where ``Image.open`` reads it whatever
    the position (a stream read once already, to hash or save it, is the photo still); its
    position kept as it was. A stream that cannot seek (a pipe) is left to Pillow."""
    try:
        at = stream.tell()
        stream.seek(0)
        first = stream.read(1)
        stream.seek(at)
    except (AttributeError, OSError, ValueError):
        return False
    return not first


def is_pillow_image(source) -> bool:
    image_module = sys.modules.get("PIL.Image")  # not loaded: no Pillow image can exist
    return image_module is not None and isinstance(source, image_module.Image)


def is_one_image(source) -> bool:
    """Whether ``source`` is one image (a path, a file's bytes, an open binary file, a Pillow
    image, an array) rather than a list of them: what ``classify`` and ``predict`` take either
    way (an open file was iterated line by line)."""
    return isinstance(source, str | os.PathLike | bytes | bytearray | memoryview
                      | np.ndarray) or is_pillow_image(source) or hasattr(source, "read")


def one_or_many(inputs):
    """``inputs`` as an iterable of images: one image (``is_one_image``) or a thing that is
    no collection (42, None: refused later as "not an image") in a list of one; a list, a
    tuple or a generator as it is (not consumed)."""
    return [inputs] if is_one_image(inputs) or not hasattr(inputs, "__iter__") else inputs


def refuse_scaled(array: np.ndarray) -> None:
    """ImageError for a float array whose values all lie in 0-1: scaled pixels, whose 0.8
    would be read as almost black."""
    if array.dtype.kind == "f":
        high = float(np.max(array, initial=0))
        if 0 < high <= 1.0:
            raise ImageError(f"the array's pixels lie in 0-{high:.3g}: pixels 0-255 are "
                             "expected (multiply by 255)")


ARRAY_SHAPES = "H x W (grey), H x W x 1, H x W x 3 (RGB) or H x W x 4 (RGBA)"


def in_memory(photo):
    """A photo in memory (a Pillow image, or a NumPy array shaped ``ARRAY_SHAPES``: uint8 or
    floats of pixels 0-255, or uint16 of 16-bit pixels, grey ones scaled as their file would
    be: ``high_bit_top``) as a file the one reader
    opens: an uncompressed TIFF in memory, lossless, EXIF kept (an upright phone photo stays
    upright, a Pillow image opened without ``exif_transpose`` is turned as the file would
    be); a palette with a transparent colour becomes RGBA first (TIFF would drop it). Floats
    are rounded; an array whose values all lie in 0-1 is refused (scaled pixels, whose 0.8
    would be read as almost black), as are booleans."""
    import io

    from PIL import Image

    if isinstance(photo, np.ndarray):
        array = photo[..., 0] if photo.ndim == 3 and photo.shape[-1] == 1 else photo
        if not array.dtype.isnative:  # a big-endian 16-bit TIFF as NumPy gives it
            array = array.astype(array.dtype.newbyteorder("="))
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise ImageError(f"an array of shape {photo.shape} is no photo; expected "
                             f"{ARRAY_SHAPES}, pixels 0-255")
        if array.dtype.kind not in "uif":
            raise ImageError(f"an array of {array.dtype} is no photo; expected pixels "
                             "0-255 (uint8 or floats)")
        if array.dtype == np.uint16 and array.ndim == 2:  # 16-bit grey: read as its file
            # is (a 16-bit TIFF in memory; ``high_bit_top``: a 12-bit scan from 4095, 16 bits
            # from 65535: it was divided by 257 always, a 12-bit scan 16 times darker than
            # the same scan's file)
            image, exif = Image.fromarray(array), None
        else:
            values = array.astype("float64")
            if array.dtype == np.uint16:  # 16-bit colour, from 65535
                values = values / 257.0
            if not np.isfinite(values).all():
                raise ImageError("the array holds NaN or infinite values")
            refuse_scaled(array)
            low, high = ((float(values.min()), float(values.max())) if values.size
                         else (0.0, 0.0))
            if low < 0 or high > 255:
                raise ImageError(f"the array's pixels lie between {low:.4g} and {high:.4g}: "
                                 "pixels 0-255 are expected")
            image, exif = Image.fromarray(np.rint(values).astype("uint8")), None
    else:
        image = photo
    buffer = io.BytesIO()
    try:
        if not isinstance(photo, np.ndarray):
            exif = image.getexif()
            if image.mode in ("P", "PA") and ("transparency" in image.info
                                              or image.mode == "PA"):
                image = image.convert("RGBA")
        with _pillow_errors():
            if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I",
                                  "F"):
                image = image.convert("RGBA" if "A" in image.mode else "RGB")
            image.save(buffer, "TIFF", **({"exif": exif} if exif else {}))
    except ImageError:
        raise
    except Exception as exc:  # a Pillow image whose file was closed: AssertionError, ...
        raise ImageError(f"the Pillow image cannot be read ({type(exc).__name__}: {exc}; "
                         "closed before use?)") from None
    buffer.seek(0)
    return buffer


def check_header(source) -> None:
    """ImageError when ``source`` (a path or bytes) is not an image even by its header (no
    such file, zero bytes, not a format Pillow identifies); cheap: no pixel is decoded, so a
    truncated or corrupt image passes here and fails in ``open_image``."""

    with _pillow_errors(source), _opened(_readable(source), drafted=True):
        pass  # a JPEG is decoded in draft mode by every read that probes it first


def header_format(source) -> str | None:
    """The format Pillow names ``source`` (a path or bytes) by its header ("JPEG", "AVIF"),
    or None when Pillow cannot open it (no such file, zero bytes, a format it does not know:
    ``check_header``'s refusals). No pixel is decoded."""
    try:
        with _pillow_errors(), _opened(_readable(source), drafted=True) as image:
            return image.format
    except ImageError:
        return None


def decode_whole(readable, largest: int) -> tuple[str | None, tuple[int, int]]:
    """Decode every pixel of ``readable`` (a path or binary file object) as ``open_image``
    would for a ``size`` of ``largest`` (a JPEG many times larger is decoded at its reduced
    scale); its format and stored size. Pillow's exceptions are raised as they come: a
    truncated or corrupt file, a decompression bomb. What fetch-data checks each photo with,
    so that it keeps what train can read (a 200-megapixel phone photo among them)."""
    with _opened(readable, drafted=True) as image:
        image_format, stored = image.format, image.size
        _draft(image, largest)
        image.load()
    return image_format, stored


def _has_alpha(image) -> bool:
    """Transparency: an alpha channel, or one colour marked transparent (a palette's, or a
    grey or RGB PNG's tRNS colour: its pixels read as that colour, black mostly, where a
    browser shows white)."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info)


HIGH_BIT_ROWS_PIXELS = 2**20  # pixels scaled at a time: 8 MB of float64, whatever the image


TWELVE_BIT = 4095  # the largest value of 12-bit data (medical and microscope scans)


def high_bit_top(mode: str, high: float) -> float:
    """The value a grey image of ``mode`` whose largest value is ``high`` is scaled from to
    255 (``_from_high_bit_depth``): a float image by its own largest value; an integer one
    within 0-255 in a 32-bit image ("I": a PGM of 8-bit values) as it is; data that fits 12
    bits (at most 4095: a 12-bit scan, which medical and microscope cameras store in 16-bit
    PNG and TIFF) from 4095; a 16-bit image from 65535. A 12-bit scan divided by 65535 kept
    16 grey levels of 4096, nearly black. Decided by each image alone, and the same for
    every command (one reader): a 16-bit photo darker than 4095 everywhere (1/16 of full
    brightness) is brightened as if it were 12-bit."""
    if mode == "F":
        return max(float(high), 1.0)
    if mode == "I" and high <= 255:
        return 255.0
    return float(TWELVE_BIT) if high <= TWELVE_BIT else 65535.0


def _from_high_bit_depth(image):
    """16/32-bit integer or float grayscale -> 8-bit, scaled from the top its values say
    (``high_bit_top``: 4095 for 12-bit data, 65535 for 16-bit, a float image's own largest
    value). A band of rows at a time: a 12000 x 9000 16-bit scan took three float64 copies
    of itself (2.6 GB)."""
    from PIL import Image

    array = np.asarray(image)  # at its own width (uint16, int32, float32)
    top = high_bit_top(image.mode, float(array.max(initial=0)))
    out = np.empty(array.shape, "uint8")
    rows = max(1, HIGH_BIT_ROWS_PIXELS // max(1, array.shape[1]))
    for start in range(0, array.shape[0], rows):
        band = array[start:start + rows].astype("float64")
        out[start:start + rows] = np.clip(band / top * 255.0, 0, 255).astype("uint8")
    return Image.fromarray(out, "L")


def picture(source, side: int) -> np.ndarray:
    """A photo as people look at it, for pictures (Grad-CAM PNGs): upright RGB uint8, its
    longest side at most ``side``. A phone photo is decoded in draft mode (1/2 to 1/8 scale,
    both sides still at least ``side``), so a 48-megapixel photo never sits in memory whole."""
    from PIL import Image

    image = to_rgb(open_image(source, side // 2))
    scale = side / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.size[0] * scale)),
                              max(1, round(image.size[1] * scale))), Image.BILINEAR)
    return np.asarray(image)


def to_rgb(image):
    """An 8-bit RGB Pillow image: alpha composited onto white, other modes converted."""
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        image = _from_high_bit_depth(image)
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def rgb_array(image, size: int, resize: str = "pil") -> np.ndarray:
    """(size, size, 3) float32 RGB pixels 0-255, as a colour bundle's model takes them."""
    if resize == "tf":  # keras.utils.image_dataset_from_directory: tf.image.resize, bilinear
        from transfer.tf import tf

        resized = tf.image.resize(np.asarray(to_rgb(image), dtype="float32"), (size, size),
                                  method="bilinear")
        return np.asarray(resized, dtype="float32")
    return rgb_pixels(image, size).astype("float32")


def rgb_pixels(image, size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB: ``rgb_array``'s Pillow route without its float32 copy (the
    readers of the feature pass: 2.32 ms a photo at 288 px against 2.54 with that copy)."""
    from PIL import Image

    rgb = to_rgb(image)
    if rgb.size != (size, size):  # ImageDataGenerator's load_img: Pillow bilinear
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.array(rgb)  # writable (asarray would be a read-only view of Pillow's bytes)


def digit_array(image, invert: str = "auto", fit: bool = True) -> tuple[np.ndarray, bool]:
    """((28, 28, 1) float32 grayscale 0-255, light digit on dark; whether it was inverted)."""
    from PIL import Image

    if invert not in INVERT:
        raise TransferError(f"--invert must be one of {', '.join(INVERT)}, not {invert!r}")
    gray = _digit_gray(image)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    inverted = invert == "yes" or (invert == "auto" and float(np.median(border)) > 127.5)
    if not fit:
        small = Image.fromarray((255.0 - gray if inverted else gray).astype("uint8")).resize(
            (28, 28), Image.BILINEAR)
        return np.asarray(small, dtype="float32")[..., None], inverted
    found = _digit_ink(255.0 - gray if inverted else gray)
    if invert == "auto" and (found is None or _paper_like(found[1])):
        # the border said the other polarity: paper on a darker desk, whose sheet would be
        # the "ink"; the other polarity is taken when it finds a digit there
        other = _digit_ink(gray if inverted else 255.0 - gray)
        if other is not None and _strokes(other[1]):
            found, inverted = other, not inverted
    if found is None:
        # --invert yes or no asked for the polarity that finds nothing: the other one is said
        hint = ""
        if invert != "auto" and _digit_ink(gray if inverted else 255.0 - gray) is not None:
            hint = " (it was inverted; try --invert no)" if inverted else " (try --invert yes)"
        raise ImageError("no digit found: the image is uniform once its background is removed"
                         + hint)
    gray, ink = found
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    crop = gray[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = crop.shape
    scale = MNIST_BOX / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    box = np.asarray(Image.fromarray(crop.astype("float32"), "F").resize(
        (new_w, new_h), Image.LANCZOS if scale < 1 else Image.BILINEAR), dtype="float32")
    box = np.clip(box, 0, 255)
    canvas = np.zeros((28, 28), "float32")
    total = float(box.sum())
    cy = float((box.sum(axis=1) * np.arange(new_h)).sum() / total) if total else new_h / 2
    cx = float((box.sum(axis=0) * np.arange(new_w)).sum() / total) if total else new_w / 2
    top = int(np.clip(round(14 - cy), 0, 28 - new_h))
    left = int(np.clip(round(14 - cx), 0, 28 - new_w))
    canvas[top:top + new_h, left:left + new_w] = box
    return canvas[..., None], inverted


def _digit_ink(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(grey levels 0-255 with the background removed and the ink stretched, the digit's ink
    mask) of ``gray``, a light digit on a darker background; None when nothing stands out."""
    original = gray
    border = float(np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])))
    # lift the background (paper is rarely pure white) and stretch the ink to 0-255
    gray = np.clip(gray - border, 0, None)
    peak = float(gray.max())
    if peak <= 0:
        return None
    gray *= 255.0 / peak
    gray[gray < 0.15 * 255] = 0  # paper texture, shadows, JPEG noise
    ink = gray > 0.35 * 255
    kept = _without_edges(ink)
    # a desk, a shadow, a sheet's edge along the border is neither the digit nor its
    # background, which is the paper around the digit (a sheet on a desk: not the desk's)
    rows, cols = np.flatnonzero(kept.any(axis=1)), np.flatnonzero(kept.any(axis=0))
    margin = max(2, (rows[-1] - rows[0] + cols[-1] - cols[0]) // 20)
    near = (slice(max(0, rows[0] - margin), rows[-1] + margin + 1),
            slice(max(0, cols[0] - margin), cols[-1] + margin + 1))
    paper = original[near][~ink[near]]
    background = min(border, float(np.median(paper))) if paper.size else border
    if kept is ink and background > border - 8:  # the border's paper is the digit's
        return gray, kept
    gray = np.zeros_like(original)
    gray[near] = np.clip(original[near] - background, 0, None)
    gray[~kept & ink] = 0
    gray = np.clip(gray * (255.0 / float(gray[kept].max())), 0, 255)
    gray[gray < 0.15 * 255] = 0
    # the digit's whole strokes against its own paper: the regions of ink that hold the
    # strokes found against the border's level (their cores, when the desk set that level)
    from scipy import ndimage

    labels, _ = ndimage.label(gray > 0.35 * 255, structure=np.ones((3, 3)))
    whole = np.isin(labels, np.unique(labels[kept & (labels > 0)]))
    gray[~whole & (labels > 0)] = 0
    return gray, whole | kept


def _without_edges(ink: np.ndarray) -> np.ndarray:
    """``ink`` without the regions that lie along the image's border (a strip of desk, a
    shadow in a corner, a sheet's edge) when a digit stands clear of them: regions touching
    the border along a quarter of one side or more, filling half their box at least (strokes
    fill far less; a stroke that runs off the edge meets it for its width only) and standing
    clear of the digit (a tenth of the side away: a 5's flag drawn apart at the top of a
    tight crop is its own), dropped when the regions touching no
    border weigh a twentieth of the largest of them at least. A digit that touches the border
    itself (a tight crop) has no such rival away from the edges: ``ink`` is returned as it
    is."""
    from scipy import ndimage

    labels, n = ndimage.label(ink, structure=np.ones((3, 3)))
    if n < 2:
        return ink
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    contact = np.bincount(edge, minlength=n + 1)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    contact[0] = sizes[0] = 0
    inner = contact == 0
    inner[0] = False
    # along a quarter of one side at least: a strip of desk, a shadow; a stroke that runs off
    # the edge (a 1 from top to bottom) meets it for its width only
    h, w = ink.shape
    along = np.max([np.bincount(side, minlength=n + 1) / length for side, length in (
        (labels[0], w), (labels[-1], w), (labels[:, 0], h), (labels[:, -1], h))], axis=0) >= 0.25
    along[0] = False
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if along[label] and box is not None:
            area = (box[0].stop - box[0].start) * (box[1].stop - box[1].start)
            along[label] = sizes[label] >= 0.5 * area  # filled: a desk, a shadow
    if not inner.any() or not along.any():
        return ink
    digit = sizes[inner][sizes[inner] >= 0.02 * sizes[inner].max()].sum()
    if digit < max(4, 0.0005 * ink.size) or digit < 0.05 * sizes[along].max():
        return ink  # specks, or a part of a digit cropped tight (a 7's bar): all of it kept
    # how far each region along the border lies from the regions away from it
    away = ndimage.distance_transform_edt(~inner[labels])
    for label in np.flatnonzero(along):
        along[label] = float(away[labels == label].min()) >= 0.1 * min(ink.shape)
    if not along.any():
        return ink
    return ink & ~along[labels]


def _strokes(ink: np.ndarray) -> bool:
    """True when ``ink`` looks like a digit's strokes: not a filled sheet, not running along
    most of the border (the paper's margins around a thick 1 cropped tight), and mostly one
    piece (the grain of the paper, in the wrong polarity, is thousands of specks)."""
    from scipy import ndimage

    edge = np.concatenate([ink[0], ink[-1], ink[:, 0], ink[:, -1]])
    if _paper_like(ink) or float(edge.mean()) >= 0.5:
        return False
    labels, n = ndimage.label(ink, structure=np.ones((3, 3)))
    return n > 0 and np.bincount(labels.ravel())[1:].max() >= 0.25 * float(ink.sum())


def _paper_like(ink: np.ndarray) -> bool:
    """True when ``ink`` is a filled sheet, not strokes: what a light page on a darker desk
    gives when the border (the desk) says light ink on dark."""
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    return (h >= 0.6 * ink.shape[0] and w >= 0.6 * ink.shape[1]
            and float(ink.sum()) / (h * w) >= 0.8)


def _digit_gray(image) -> np.ndarray:
    """A digit's grey levels 0-255 (float32). A drawing on a transparent background (a
    tablet's or a web page's PNG) is set on the background its ink stands out from: white ink
    on black (on white, as a photo's transparency is, it vanished), dark ink on white."""
    if not _has_alpha(image):
        return np.asarray(to_rgb(image).convert("L"), dtype="float32")
    rgba = np.asarray(image.convert("RGBA"), dtype="float32")
    alpha = rgba[..., 3] / 255.0
    lightness = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], "float32")  # as convert("L")
    solid = alpha > 0.5
    opaque = lightness[solid]
    rows, cols = np.flatnonzero(solid.any(axis=1)), np.flatnonzero(solid.any(axis=0))
    box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1) if opaque.size else 1
    dark = float(np.mean(opaque < 127.5)) if opaque.size else 0.0
    if opaque.size / box > 0.8 and 0 < dark < 1:  # a filled shape of two tones: paper with
        # its ink (a scan with clear margins), however thin the ink: the paper's colour
        background = 255.0 if float(np.median(opaque)) > 127.5 else 0.0
    else:  # strokes: the ink alone is opaque, set on the background it stands out from
        background = 0.0 if opaque.size and float(np.mean(opaque)) > 127.5 else 255.0
    return np.round(lightness * alpha + background * (1 - alpha)).astype("float32")


def resize_method(meta: dict) -> str:
    """How training resized this bundle's images: the bundle says so (``preprocessing.resize``:
    "pil" since training reads through this module); older bundles: "tf" for the tfdata
    pipeline (image_dataset_from_directory), else "pil"."""
    recorded = (meta.get("preprocessing") or {}).get("resize")
    if recorded in ("pil", "tf"):
        return recorded
    return "tf" if meta.get("pipeline") == "tfdata" else "pil"


def draft_side(meta: dict) -> int | None:
    """The size ``model_input`` reads a photo for (``open_image``'s ``size``): the model's for
    a colour bundle resized by Pillow (draft mode at it), DIGIT_DRAFT for a digit bundle (a
    digit is found in a photo decoded at twice that a side at least: a 12000 px JPEG of a page
    was decoded whole, 3 GB for one 1.7 MB upload to serve), None for the "tf" resize (decoded
    whole)."""
    if meta.get("channels", 3) == 1:
        return DIGIT_DRAFT
    return int(meta["image_size"]) if resize_method(meta) == "pil" else None


def drafted_size(image, size: int | None) -> tuple[int, int]:
    """The pixels ``open_image(.., size)`` decodes of the opened, not yet decoded ``image``:
    a baseline JPEG's at the scale draft mode picks (Pillow's rule: the smaller side's ratio,
    so a long narrow photo is drafted little), else its stored size (a progressive JPEG's
    decoding holds every coefficient of the whole image, whatever the scale of its output).
    Nothing is decoded."""
    if not size or image.format not in ("JPEG", "MPO") or image.info.get("progressive"):
        return image.size
    scale = min(image.size[0] // (2 * int(size)), image.size[1] // (2 * int(size)))
    s = next(s for s in (8, 4, 2, 1) if scale >= s or s == 1)
    return (image.size[0] + s - 1) // s, (image.size[1] + s - 1) // s


def model_input(source, meta: dict, invert: str | None = None) -> tuple[np.ndarray, dict]:
    """(the array the bundle's model takes for the image in ``source``, notes about it);
    ``source`` is what ``open_image`` takes: a path, bytes or a binary file object."""
    colour = meta.get("channels", 3) != 1
    method = resize_method(meta)
    # colour pixels resized by Pillow are read as training read them: draft mode at the size
    image = open_image(source, draft_side(meta))
    notes = notes_of(image)
    if not colour:
        prep = meta.get("preprocessing", {})
        array, inverted = digit_array(image, invert or prep.get("invert", "auto"),
                                      fit=prep.get("fit") == "mnist-box")
        notes["inverted"] = inverted
        return array, notes
    return rgb_array(image, int(meta["image_size"]), method), notes
