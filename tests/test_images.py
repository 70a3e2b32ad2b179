"""Reading user images into a model's input: the same pixels as training, every Pillow kind,
clear reasons for unusable files, and the MNIST-style digit fitting."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    missing,
    progressive_claiming,
    require_asset,
    split_images,
    text_as_jpg,
    truncated,
)
from PIL import Image, ImageDraw, features

from transfer import images
from transfer.errors import TransferError

READS_AVIF = features.check("avif")  # Pillow's own word, not the code's under test


@pytest.fixture(scope="module")
def photo(real_photos, tmp_path_factory):
    """A real Kaggle dog photo on disk."""
    path = tmp_path_factory.mktemp("photo") / "dog.jpg"
    path.write_bytes(real_photos["dogs"][3][1])
    return path


def test_same_pixels_as_the_generator_pipeline(tiny_split):
    """ImageDataGenerator reads with Keras's load_img (Pillow, bilinear): identical arrays."""
    from tensorflow.keras.preprocessing.image import img_to_array, load_img

    for path, _ in split_images(tiny_split / "validate", 4):
        ours = images.rgb_array(images.open_image(path), 96)
        keras_pixels = img_to_array(load_img(path, target_size=(96, 96),
                                             interpolation="bilinear"))
        np.testing.assert_array_equal(ours, keras_pixels)


def test_same_pixels_as_the_tfdata_pipeline(tiny_split):
    """image_dataset_from_directory decodes with TF and resizes with tf.image.resize."""
    from transfer.tf import keras

    data = keras.utils.image_dataset_from_directory(
        str(tiny_split / "validate"), image_size=(64, 64), batch_size=100, shuffle=False,
        interpolation="bilinear", verbose=False)
    batch = next(iter(data))[0].numpy()
    files = [p for p, _ in split_images(tiny_split / "validate")]
    assert len(files) == len(batch) == 12
    ours = np.stack([images.rgb_array(images.open_image(p), 64, "tf") for p in files])
    # Pillow's and TF's JPEG decoders may round a few pixels differently, nothing more
    assert np.mean(np.abs(ours - batch)) < 1.0
    assert images.resize_method({"pipeline": "tfdata"}) == "tf"
    assert images.resize_method({"pipeline": "generator"}) == "pil"
    # what predict feeds such a bundle (no preprocessing.resize recorded): these pixels
    for path, pixels in zip(files[:2], ours, strict=False):
        old_tfdata, _ = images.model_input(path, {"image_size": 64, "pipeline": "tfdata"})
        np.testing.assert_array_equal(old_tfdata, pixels)
        assert not np.array_equal(old_tfdata, images.model_input(path, {"image_size": 64})[0])


def test_every_pillow_kind_becomes_rgb(photo, tmp_path):
    upright = images.rgb_array(images.open_image(photo), 64)
    source = Image.open(photo)

    cmyk = tmp_path / "cmyk.jpg"
    source.convert("CMYK").save(cmyk, quality=95)
    assert Image.open(cmyk).mode == "CMYK"
    assert np.mean(np.abs(images.rgb_array(images.open_image(cmyk), 64) - upright)) < 6

    # EXIF orientation 6: stored rotated, displayed upright; we see it upright
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "rotated.jpg"
    source.transpose(Image.Transpose.ROTATE_90).save(rotated, exif=exif, quality=95)
    opened = images.open_image(rotated)
    assert opened.size == source.size
    assert np.mean(np.abs(images.rgb_array(opened, 64) - upright)) < 6

    gray = tmp_path / "gray.png"
    source.convert("L").save(gray)
    array = images.rgb_array(images.open_image(gray), 64)
    assert array.shape == (64, 64, 3) and np.array_equal(array[..., 0], array[..., 2])
    # the photo's own grey levels (its luminance), not some other grey
    luminance = upright @ np.array([0.299, 0.587, 0.114], "float32")
    assert np.mean(np.abs(array[..., 0] - luminance)) < 2
    # the same 8-bit grey levels in a 32-bit integer TIFF (Pillow's mode "I"): as they are
    wide_grey = tmp_path / "grey32.tif"
    Image.fromarray(np.asarray(Image.open(gray)).astype("int32")).save(wide_grey)
    assert Image.open(wide_grey).mode == "I"
    np.testing.assert_array_equal(images.rgb_array(images.open_image(wide_grey), 64), array)

    palette = tmp_path / "palette.png"
    source.convert("P").save(palette)
    array = images.rgb_array(images.open_image(palette), 64)
    assert array.shape == (64, 64, 3)
    assert np.mean(np.abs(array - upright)) < 6  # the palette's colours, not its indices

    # transparency composites onto white: a fully transparent pixel is white
    rgba = source.convert("RGBA")
    alpha = Image.new("L", rgba.size, 255)
    alpha.paste(0, (0, 0, rgba.size[0] // 2, rgba.size[1]))
    rgba.putalpha(alpha)
    rgba_path = tmp_path / "rgba.png"
    rgba.save(rgba_path)
    array = images.rgb_array(images.open_image(rgba_path), 64)
    assert np.all(array[:, :20] == 255)
    assert np.mean(np.abs(array[:, 40:] - upright[:, 40:])) < 2
    # grey with alpha (LA) too: its transparent half white, its opaque half the photo's grey
    grey_alpha = tmp_path / "la.png"
    rgba.convert("LA").save(grey_alpha)
    array = images.rgb_array(images.open_image(grey_alpha), 64)
    assert np.all(array[:, :20] == 255)
    assert np.mean(np.abs(array[:, 40:, 0] - luminance[:, 40:])) < 2
    # one colour marked transparent (a grey or RGB PNG's tRNS): it read as that colour
    # (black), where a browser shows white
    for mode, key in (("L", 0), ("RGB", (0, 0, 0))):
        keyed = np.full((64, 64) if mode == "L" else (64, 64, 3), 90, "uint8")
        keyed[:, :32] = 0
        path = tmp_path / f"keyed-{mode}.png"
        Image.fromarray(keyed, mode).save(path, transparency=key)
        array = images.rgb_array(images.open_image(path), 64)
        assert np.all(array[:, :28] == 255) and np.all(array[:, 36:] == 90), mode

    wide = tmp_path / "sixteen.png"
    Image.fromarray(np.full((20, 20), 65535 // 2, dtype=np.uint16)).save(wide)
    assert abs(float(images.rgb_array(images.open_image(wide), 16).mean()) - 127.5) < 1


# the first bytes of an iPhone's HEIC photo (an ISO base media file: its "ftyp" box), then junk
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(range(256)) * 8


@pytest.mark.parametrize("name, content, reason", [
    ("text.jpg", text_as_jpg(), "not an image"),
    ("zero.jpg", b"", "empty file"),
    ("one.png", (1, 1), "1x1 px"),
    ("thin.png", (300, 7), "300x7 px; too small"),  # one side under 8 px is enough
    # an iPhone photo by its header, whatever its name (an upload, a photo renamed .jpg)
    ("IMG_0001.jpg", HEIC, r"^HEIC \(an iPhone's photos\) is not a format transfer reads; "
                           "convert them to JPEG"),
    # an AVIF header on junk: broken when Pillow reads AVIF, else a format it cannot read
    ("photo.jpg", HEIC.replace(b"heic", b"avif"),
     r"^corrupt or truncated image \(an AVIF" if READS_AVIF
     else "^AVIF is not a format transfer reads"),
])
def test_unusable_files_say_why(tmp_path, name, content, reason):
    path = tmp_path / name
    if isinstance(content, tuple):
        Image.new("RGB", content, (255, 0, 0)).save(path)
    else:
        path.write_bytes(content)
    with pytest.raises(images.ImageError, match=reason):
        images.open_image(path)
    with pytest.raises(images.ImageError, match=reason):  # the same reason for uploads
        images.open_image(path.read_bytes())
    with path.open("rb") as stream, pytest.raises(images.ImageError, match=reason):
        images.open_image(stream)


def test_a_photo_pillow_reads_is_read_whatever_its_name(photo, tmp_path):
    """A genuine AVIF photo was refused as "AVIF is not a format transfer reads" though the
    installed Pillow reads it (the same bytes named .jpg classified fine), and a JPEG named
    .heic as "HEIC (an iPhone's photos)": refused by the name before trying. Pillow decides:
    the refusal is for a file it cannot open (a real HEIC, a camera's raw file)."""
    if not READS_AVIF:
        missing("this Pillow was built without AVIF (the PyPI wheels have it)")
    from transfer.constants import IMAGE_SUFFIXES, is_image_name, unread_file

    with Image.open(photo) as original:
        original.save(tmp_path / "dog.avif", quality=90)
        pixels = np.asarray(original.convert("RGB"), "float32")
    assert ".avif" in IMAGE_SUFFIXES and is_image_name("IMG_2.AVIF")  # listed as photos
    avif = images.open_image(tmp_path / "dog.avif")
    assert avif.format == "AVIF" and avif.size == (pixels.shape[1], pixels.shape[0])
    assert np.mean(np.abs(np.asarray(avif.convert("RGB"), "float32") - pixels)) < 6  # lossy
    assert unread_file(tmp_path / "dog.avif") is None
    renamed = tmp_path / "IMG_1.heic"
    renamed.write_bytes(photo.read_bytes())
    assert unread_file(renamed) is None
    np.testing.assert_array_equal(images.model_input(renamed, {"image_size": 64})[0],
                                  images.model_input(photo, {"image_size": 64})[0])
    # what Pillow cannot open keeps its name's reason: an iPhone's HEIC, a raw file (a TIFF
    # by its header: Pillow would read its small preview)
    (tmp_path / "IMG_2.HEIC").write_bytes(HEIC)
    (tmp_path / "DSC_3.nef").write_bytes(b"II*\0" + bytes(200))
    Image.open(photo).save(tmp_path / "DSC_4.dng", format="TIFF")
    assert [unread_file(tmp_path / name) for name in ("IMG_2.HEIC", "DSC_3.nef", "DSC_4.dng",
                                                      "missing.heic")] == [
        "HEIC (an iPhone's photos)", "camera raw", "camera raw", "HEIC (an iPhone's photos)"]
    with pytest.raises(images.ImageError, match=r"^HEIC \(an iPhone's photos\) is not a format"):
        images.open_image(tmp_path / "IMG_2.HEIC")
    # a raw file Pillow identifies by its TIFF header but cannot decode: its name's reason too
    Image.open(photo).save(tmp_path / "whole.tif", format="TIFF")
    (tmp_path / "DSC_5.nef").write_bytes(truncated((tmp_path / "whole.tif").read_bytes()))
    for name in ("DSC_3.nef", "DSC_5.nef"):
        with pytest.raises(images.ImageError,
                           match="^camera raw is not a format transfer reads"):
            images.open_image(tmp_path / name)


def test_bytes_and_file_objects_read_as_the_file(photo, tmp_path):
    """An upload (bytes or a binary file object) gives the very pixels of the file on disk,
    EXIF rotation included."""
    import io

    meta = {"image_size": 64, "channels": 3}
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "rotated.jpg"
    Image.open(photo).transpose(Image.Transpose.ROTATE_90).save(rotated, exif=exif)
    for path in (photo, rotated):  # the second stored turned, with EXIF orientation 6
        from_path, notes = images.model_input(path, meta)
        data = path.read_bytes()
        with open(path, "rb") as handle:
            for source in (data, bytearray(data), io.BytesIO(data), handle):
                array, same_notes = images.model_input(source, meta)
                np.testing.assert_array_equal(array, from_path)
                assert same_notes == notes
    with open(rotated, "rb") as handle:
        assert images.open_image(handle).size == images.open_image(rotated).size == \
            Image.open(photo).size
    data = photo.read_bytes()
    with pytest.raises(images.ImageError, match="truncated"):
        images.open_image(truncated(data))


def test_a_stream_already_read_is_read_from_its_start_as_pillow_does(photo):
    """A file object read once already (to hash or save it), or classified once, is the same
    photo from its start, as ``Image.open`` reads it: it was refused as "empty file (0
    bytes)". Its position is kept; a stream with no byte at all is still said empty."""
    import io

    meta = {"image_size": 64, "channels": 3}
    from_path, notes = images.model_input(photo, meta)
    data = photo.read_bytes()
    stream = io.BytesIO(data)
    for at in (0, len(data), 10, len(data) + 1000):  # 0 again: the second read of one stream
        stream.seek(at)
        array, same_notes = images.model_input(stream, meta)
        np.testing.assert_array_equal(array, from_path)
        assert same_notes == notes
    stream.seek(7)
    assert images.open_image(stream).size == Image.open(photo).size
    for empty in (io.BytesIO(), io.BytesIO(b"")):
        with pytest.raises(images.ImageError, match=r"^empty file \(0 bytes\)$"):
            images.open_image(empty)
    kept = io.BytesIO(data)
    kept.seek(5)
    images._readable(kept)
    assert kept.tell() == 5


def test_predict_and_classify_read_a_stream_again_and_one_read_before(trained_bundle, photo):
    """The library's way (an upload's stream given twice, or read once to hash it first):
    each gives the photo's own probabilities; they were an error row "empty file (0 bytes)"
    and, from ``classify``, an exception."""
    import io

    from transfer.inference import BundleClassifier
    from transfer.predict import predict

    data = photo.read_bytes()
    stream, read_once = io.BytesIO(data), io.BytesIO(data)
    read_once.read()
    first, again, after_read = predict([photo, stream, stream, read_once],
                                       model=trained_bundle.bundle).items[1:]
    by_path = predict([photo], model=trained_bundle.bundle).items[0]
    for item in (first, again, after_read):
        assert item.error is None and item.label == by_path.label
        assert item.probability == pytest.approx(by_path.probability, abs=1e-6)
    classifier = BundleClassifier(trained_bundle.bundle)
    np.testing.assert_allclose(classifier.classify(read_once), classifier.classify(photo),
                               atol=1e-6)


def test_one_stream_given_many_times_in_one_predict_is_the_same_photo_each_time(
        trained_bundle, photo):
    """The same open stream many times in one list (a large PNG, decoded in several reads):
    its photo each time; the threads that decode ahead read it at once, each moving it under
    the others, and gave "corrupt or truncated image" rows."""
    import io

    from transfer.predict import predict

    with Image.open(photo) as original:
        large = original.convert("RGB").resize((2400, 2400))
    stream = io.BytesIO()
    large.save(stream, "PNG")
    alone = predict([io.BytesIO(stream.getvalue())], model=trained_bundle.bundle).items[0]
    items = predict([stream] * 12, model=trained_bundle.bundle).items
    assert [item.error for item in items] == [None] * 12
    for item in items:
        assert item.label == alone.label
        assert item.probability == pytest.approx(alone.probability, abs=1e-6)


def test_truncated_missing_and_folder(photo, tmp_path):
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(truncated(photo.read_bytes()))
    with pytest.raises(images.ImageError, match="truncated"):
        images.open_image(cut)
    with pytest.raises(images.ImageError, match="no such file"):
        images.open_image(tmp_path / "missing.jpg")
    with pytest.raises(images.ImageError, match="folder"):
        images.open_image(tmp_path)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "eight.png")  # the smallest read
    assert images.open_image(tmp_path / "eight.png").size == (8, 8)


@pytest.fixture(scope="module")
def test_digits():
    from transfer import mnist

    return mnist.load("mnist", require_asset("data/mnist"))[1]


def test_digit_polarity_and_fitting(test_digits):
    x, _ = test_digits
    for digit in x[:20]:
        light_on_dark = Image.fromarray(digit)
        dark_on_light = Image.fromarray(255 - digit)
        a, inverted_a = images.digit_array(light_on_dark)
        b, inverted_b = images.digit_array(dark_on_light)
        assert (inverted_a, inverted_b) == (False, True)
        np.testing.assert_array_equal(a, b)
        assert a.shape == (28, 28, 1)
        # MNIST digits are already boxed and centred: fitting changes them little
        assert np.corrcoef(a.reshape(-1), digit.reshape(-1).astype(float))[0, 1] > 0.85
    with pytest.raises(images.ImageError, match="no digit found.*--invert no"):
        images.digit_array(Image.fromarray(x[0]), invert="yes")  # the wrong polarity
    with pytest.raises(images.ImageError, match="no digit found"):
        images.digit_array(Image.new("L", (40, 40), 200))
    with pytest.raises(TransferError, match="--invert"):
        images.digit_array(Image.fromarray(x[0]), invert="maybe")


def test_a_digit_drawn_on_a_transparent_background_is_found_whatever_its_ink(test_digits):
    """White ink on a transparent background (a tablet's PNG) was set on white like a photo's
    transparency: a blank page, "no digit found" whatever --invert said. Either ink is now
    read as the same digit, as a plain grey image of it is."""
    x, _ = test_digits
    for digit in x[:10]:
        plain, _ = images.digit_array(Image.fromarray(digit))
        for ink in (255, 0):
            drawn = np.zeros((28, 28, 4), "uint8")
            drawn[..., :3] = ink
            drawn[..., 3] = digit  # the stroke's coverage: opaque on the ink, clear elsewhere
            fitted, inverted = images.digit_array(Image.fromarray(drawn, "RGBA"))
            assert inverted == (ink == 0)
            np.testing.assert_allclose(fitted, plain, atol=2)
    # dark ink on opaque white paper whose margins are clear (a cropped scan): the margins
    # are paper too, as when every transparency was white
    # (and light ink on dark paper: the margins are that dark paper)
    for grey, inverted_paper in ((255 - x[0], True), (x[0], False)):
        paper = np.zeros((48, 48, 4), "uint8")
        paper[10:38, 10:38, :3] = np.stack([grey] * 3, -1)
        paper[10:38, 10:38, 3] = 255
        fitted, inverted = images.digit_array(Image.fromarray(paper, "RGBA"))
        assert inverted == inverted_paper
        np.testing.assert_allclose(fitted, images.digit_array(Image.fromarray(x[0]))[0],
                                   atol=2)
    # however thin its ink (a 3 px "1" on 200 px of paper: 0.4% of the opaque pixels)
    page = np.zeros((240, 240, 4), "uint8")
    page[20:220, 20:220] = 255
    page[60:180, 118:121, :3] = 0
    fitted, inverted = images.digit_array(Image.fromarray(page, "RGBA"))
    assert inverted and fitted[..., 0].max() == 255 and fitted[0].max() == 0
    # a straight stroke alone fills its box, but is one tone: ink, not paper
    stroke = np.zeros((60, 60, 4), "uint8")
    stroke[10:50, 28:32] = 255
    fitted, inverted = images.digit_array(Image.fromarray(stroke, "RGBA"))
    assert not inverted and fitted[..., 0].max() == 255
    # an opaque RGBA image is read as before: its alpha changes nothing
    opaque = np.dstack([np.stack([255 - x[0]] * 3, -1), np.full((28, 28), 255, "uint8")])
    np.testing.assert_array_equal(images.digit_array(Image.fromarray(opaque, "RGBA"))[0],
                                  images.digit_array(Image.fromarray(255 - x[0]))[0])


def test_digit_on_a_photo_of_paper_is_found_and_centred(test_digits):
    x, _ = test_digits
    rng = np.random.default_rng(0)
    digit = np.asarray(Image.fromarray(x[1]).resize((120, 120), Image.BICUBIC), float) / 255
    paper = np.full((240, 320), 210.0) + np.linspace(-20, 20, 320)[None] + rng.normal(0, 4,
                                                                                   (240, 320))
    paper[20:140, 180:300] = paper[20:140, 180:300] * (1 - digit) + 40 * digit  # off-centre
    photo = Image.fromarray(np.stack([paper] * 3, -1).clip(0, 255).astype("uint8"))
    fitted, inverted = images.digit_array(photo)
    assert inverted
    ink = fitted[..., 0] > 60
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in range(17, 22)  # 20x20 box
    mass = fitted[..., 0] / fitted.sum()
    centre = ((mass.sum(1) * np.arange(28)).sum(), (mass.sum(0) * np.arange(28)).sum())
    assert abs(centre[0] - 14) < 1.5 and abs(centre[1] - 14) < 1.5
    assert fitted[0].max() == 0 and fitted[-1].max() == 0  # paper texture gone


def test_model_input_follows_the_meta(photo, test_digits, tmp_path):
    colour, notes = images.model_input(photo, {"image_size": 40, "channels": 3})
    assert colour.shape == (40, 40, 3) and notes["mode"] == "RGB"
    digit_path = tmp_path / "digit.png"
    Image.fromarray(255 - test_digits[0][0]).save(digit_path)
    meta = {"image_size": 28, "channels": 1,
            "preprocessing": {"invert": "auto", "fit": "mnist-box"}}
    array, notes = images.model_input(digit_path, meta)
    assert array.shape == (28, 28, 1) and notes["inverted"] is True
    # without MNIST's fitting: the image itself, inverted and no more (28 px already)
    plain = {"image_size": 28, "channels": 1, "preprocessing": {"invert": "auto"}}
    np.testing.assert_array_equal(images.model_input(digit_path, plain)[0][..., 0],
                                  test_digits[0][0])
    with pytest.raises(images.ImageError, match="no digit found"):
        images.model_input(digit_path, meta, invert="no")  # dark ink on white, kept as is


def test_an_animated_image_gives_its_first_frame(tmp_path):
    first = Image.new("RGB", (40, 30), (200, 30, 30))
    second = Image.new("RGB", (40, 30), (30, 30, 200))
    path = tmp_path / "moving.gif"
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 2
    array = images.rgb_array(images.open_image(path), 16)
    assert np.abs(array - np.asarray(first.resize((16, 16)), dtype="float32")).max() <= 8
    assert array[..., 0].mean() > 150 and array[..., 2].mean() < 80


def test_exif_orientation_is_applied_before_training_or_inference_sees_pixels(tmp_path):
    """A lossless PNG stored rotated with EXIF orientation 6 reads exactly as the upright one,
    in the training reader and in predict's."""
    from transfer.pipelines import read_rgb

    rng = np.random.default_rng(0)
    upright = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype="uint8"))
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "stored.png", exif=exif)
    np.testing.assert_array_equal(read_rgb(tmp_path / "stored.png", 24),
                                  read_rgb(tmp_path / "upright.png", 24))
    meta = {"image_size": 24, "channels": 3, "preprocessing": {"resize": "pil"}}
    np.testing.assert_array_equal(images.model_input(tmp_path / "stored.png", meta)[0],
                                  read_rgb(tmp_path / "upright.png", 24).astype("float32"))


def malformed_exif(orientation: int) -> bytes:
    """An EXIF block with ``orientation`` and an XResolution stored as text (type ASCII, not
    RATIONAL), as some cameras and editors write it: Pillow parses it, cannot write it back."""
    import struct

    entries = [struct.pack("<HHI4s", 0x0112, 3, 1, struct.pack("<H", orientation) + b"\0\0"),
               struct.pack("<HHI4s", 0x011A, 2, 3, b"72\0\0")]
    ifd = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    return b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd


def test_a_photo_with_a_malformed_exif_tag_is_still_turned_upright(tmp_path):
    """Orientation 6 beside a malformed tag: Pillow's exif_transpose raised TypeError writing
    the EXIF back, and predict, evaluate, explain and train stopped on a traceback. The photo
    is turned as its orientation says, its pixels those of the same photo with a clean EXIF;
    an EXIF block that cannot be parsed at all reads the photo as stored."""
    from PIL import ImageOps

    from transfer.pipelines import read_rgb

    rng = np.random.default_rng(0)
    stored = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype="uint8"))
    clean = Image.Exif()
    clean[0x0112] = 6
    stored.save(tmp_path / "clean.png", exif=clean)
    stored.save(tmp_path / "odd.png", exif=malformed_exif(6))
    with Image.open(tmp_path / "odd.png") as odd, pytest.raises(TypeError):
        ImageOps.exif_transpose(odd)  # what the reader called
    turned = images.open_image(tmp_path / "odd.png")
    assert turned.size == (30, 50) and "exif" not in turned.info
    assert not turned.getexif().get(0x0112)  # nothing left to turn it twice
    np.testing.assert_array_equal(read_rgb(tmp_path / "odd.png", 24),
                                  read_rgb(tmp_path / "clean.png", 24))
    upright = images.open_image(tmp_path / "clean.png")
    assert upright.size == (30, 50)
    np.testing.assert_array_equal(np.asarray(turned), np.asarray(upright))
    for orientation in (2, 3, 4, 5, 7, 8):  # every other turn and flip, as Pillow does it
        clean[0x0112] = orientation
        stored.save(tmp_path / "clean.png", exif=clean)
        stored.save(tmp_path / "odd.png", exif=malformed_exif(orientation))
        with Image.open(tmp_path / "clean.png") as opened:
            pillows = np.asarray(ImageOps.exif_transpose(opened))
        for name in ("clean.png", "odd.png"):
            np.testing.assert_array_equal(np.asarray(images.open_image(tmp_path / name)),
                                          pillows, err_msg=f"{name}, orientation {orientation}")
    # an IFD offset past the end (Pillow reads no tag), a header that is no TIFF's (Pillow's
    # getexif raises SyntaxError)
    for garbled in (b"Exif\0\0II*\0\xff\xff\xff\x7f", b"Exif\0\0XX*\0\x08\0\0\0"):
        stored.save(tmp_path / "garbled.png", exif=garbled)
        np.testing.assert_array_equal(np.asarray(images.open_image(tmp_path / "garbled.png")),
                                      np.asarray(stored))


def test_predict_reads_a_photo_with_a_malformed_exif_tag(trained_bundle, photo, tmp_path):
    """The command a user runs: the photo is classified, no traceback, exit 0; the same
    probabilities as the photo stored upright with a clean EXIF."""
    from typer.testing import CliRunner

    from transfer.cli import app

    with Image.open(photo) as original:
        pixels = original.convert("RGB")
    turned = pixels.transpose(Image.Transpose.ROTATE_90)  # stored a quarter turned
    turned.save(tmp_path / "odd.png", exif=malformed_exif(6))
    pixels.save(tmp_path / "plain.png")
    result = CliRunner().invoke(app, ["predict", "--model", str(trained_bundle.bundle),
                                      "--format", "json", str(tmp_path / "odd.png"),
                                      str(tmp_path / "plain.png")])
    assert result.exit_code == 0, result.output
    import json

    odd, plain = json.loads(result.stdout)["predictions"]
    assert odd["file"].endswith("odd.png") and plain["file"].endswith("plain.png")
    assert odd["probability"] == pytest.approx(plain["probability"], abs=1e-6)


def test_a_large_jpeg_decodes_small_in_draft_mode_for_every_reader(photo, tmp_path):
    """A phone-sized JPEG (a real photo enlarged to 2000 x 1500, stored turned a quarter with
    EXIF orientation 6) is decoded at half scale for 224 px, still at least 448 px, in
    training's reader and predict's alike; its pixels stay close to a whole decode's; notes
    and ``full_size`` give the file's upright size; smaller photos decode whole."""
    from transfer.pipelines import read_rgb

    with Image.open(photo) as small:
        big = small.convert("RGB").resize((2000, 1500), Image.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6
    big.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", quality=95,
                                                   exif=exif)
    drafted = images.open_image(tmp_path / "phone.jpg", 224)
    assert drafted.size == (1000, 750)  # 1500 // 448 = 3: the largest scale not above it, 2
    assert images.open_image(tmp_path / "phone.jpg", 96).size == (500, 375)  # 1500 // 192 = 7
    assert images.full_size(drafted) == (2000, 1500)
    whole = images.open_image(tmp_path / "phone.jpg")
    assert whole.size == (2000, 1500) and images.full_size(whole) == (2000, 1500)
    ours = read_rgb(tmp_path / "phone.jpg", 224).astype("float32")
    full = images.rgb_array(whole, 224)
    assert np.abs(ours - full).mean() < 1.0  # DCT scaling, then the same bilinear resize
    meta = {"image_size": 224, "channels": 3, "preprocessing": {"resize": "pil"}}
    array, notes = images.model_input(tmp_path / "phone.jpg", meta)
    np.testing.assert_array_equal(array, ours)  # predict reads what training read
    assert (notes["width"], notes["height"]) == (2000, 1500)
    # the Kaggle photo itself (under 896 px a side) decodes whole: draft mode changes nothing
    with Image.open(photo) as small:
        assert min(small.size) < 896
    np.testing.assert_array_equal(read_rgb(photo, 224),
                                  images.rgb_array(images.open_image(photo), 224))


def enlarged(photo: Path, path: Path, size: tuple[int, int], fmt: str = "JPEG") -> Path:
    """The real photo at ``photo`` stored at ``size`` (a phone's, or more) as ``fmt``."""
    with Image.open(photo) as small:
        small.convert("RGB").resize(size, Image.BILINEAR).save(path, fmt)
    return path


def test_a_jpeg_is_checked_for_bombs_at_the_size_draft_mode_decodes(photo, tmp_path,
                                                                  monkeypatch):
    """Pillow's limit (an error over twice MAX_IMAGE_PIXELS) is on the pixels decoded: a JPEG
    read for a model decodes in draft mode, so it passes when its drafted size does, in every
    reader (training's, predict's, the header probe, bytes, file objects, streams); a whole
    decode and a PNG, which has no draft mode, are refused as before. Scaled down: the limit
    lowered so that 2000 x 1500 is over twice it and its half-scale draft is under it."""
    import io

    from transfer.pipelines import read_rgb

    jpeg = enlarged(photo, tmp_path / "phone.jpg", (2000, 1500))
    png = enlarged(photo, tmp_path / "phone.png", (2000, 1500), "PNG")
    unlimited = read_rgb(jpeg, 224)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 800_000)  # refused over 1.6 MP
    np.testing.assert_array_equal(read_rgb(jpeg, 224), unlimited)  # decoded at 1000 x 750
    images.check_header(jpeg)
    meta = {"image_size": 224, "channels": 3, "preprocessing": {"resize": "pil"}}
    class Stream:  # a file object that cannot seek (a pipe, a socket's file)
        def __init__(self, data):
            self.data = io.BytesIO(data)

        def read(self, n=-1):
            return self.data.read(n)

    read_once = io.BytesIO(jpeg.read_bytes())
    read_once.read()  # an upload hashed first: read from its start all the same
    for source in (jpeg, jpeg.read_bytes(), io.BytesIO(jpeg.read_bytes()),
                   Stream(jpeg.read_bytes()), read_once):
        array, notes = images.model_input(source, meta)
        np.testing.assert_array_equal(array, unlimited.astype("float32"))
        assert (notes["width"], notes["height"]) == (2000, 1500)
    assert images.picture(jpeg, 160).shape == (120, 160, 3)  # thumbnails draft too
    for refused in (lambda: images.open_image(jpeg), lambda: images.open_image(png, 224),
                    lambda: images.check_header(png), lambda: images.open_image(jpeg, 800)):
        with pytest.raises(images.ImageError, match="too large to decode safely"):
            refused()  # whole; no draft mode; a draft still over the limit (2000 x 1500)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_200_000)  # 3 MP: over twice it, as Pillow
    for refused in (lambda: images.open_image(png, 224), lambda: images.open_image(jpeg, 800)):
        with pytest.raises(images.ImageError, match="too large to decode safely"):
            refused()  # Pillow's own check, and ours on a draft: the same limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500_000)  # warns over 0.5 MP (750,000 here)
    with pytest.warns(Image.DecompressionBombWarning):
        images.open_image(jpeg, 224)


def test_a_progressive_jpeg_is_checked_for_bombs_at_its_stored_size(photo, tmp_path):
    """Draft mode does not shrink what a progressive JPEG costs (libjpeg keeps every scan's
    coefficients of the whole image): a 5 KB file saying 24000 x 24000 took 1.7 GB to read
    for 224 px. It is refused before decoding, as Pillow refuses any image over its limit; a
    progressive photo of an ordinary size reads as its baseline twin does."""
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(progressive_claiming(photo.read_bytes(), (24000, 24000)))
    with pytest.raises(images.ImageError, match="too large to decode safely"):
        images.open_image(huge, 224)
    progressive = tmp_path / "progressive.jpg"
    with Image.open(photo) as opened:
        opened.save(progressive, "JPEG", progressive=True, quality=95)
        opened.save(tmp_path / "baseline.jpg", "JPEG", quality=95)
    meta = {"image_size": 224, "channels": 3, "preprocessing": {"resize": "pil"}}
    array, _ = images.model_input(progressive, meta)
    twin, _ = images.model_input(tmp_path / "baseline.jpg", meta)
    assert np.abs(array - twin).max() <= 2.0  # the same decoder, another order of scans


def test_a_200_megapixel_phone_photo_is_read_at_draft_scale(photo, tmp_path):
    """Samsung's 200 MP mode stores 16320 x 12240 (199.8 megapixels): over Pillow's limit of
    179, so Image.open refuses it, although read for 224 px it decodes at 1/8 scale, 2040 x
    1530. It is read, with its own size in the notes; decoded whole it is still refused."""
    big = enlarged(photo, tmp_path / "200mp.jpg", (16320, 12240))
    images.check_header(big)
    meta = {"image_size": 224, "channels": 3, "preprocessing": {"resize": "pil"}}
    array, notes = images.model_input(big, meta)
    assert array.shape == (224, 224, 3) and (notes["width"], notes["height"]) == (16320, 12240)
    assert images.open_image(big, 224).size == (2040, 1530)
    small = images.rgb_array(images.open_image(photo), 224).astype("float32")
    assert np.abs(array - small).mean() < 3.0  # the same dog, up and down again
    with pytest.raises(images.ImageError, match="too large to decode safely"):
        images.open_image(big)


def test_bundles_record_how_training_resized(tmp_path):
    assert images.resize_method({"pipeline": "tfdata",
                                 "preprocessing": {"resize": "pil"}}) == "pil"
    assert images.resize_method({"pipeline": "tfdata"}) == "tf"  # bundles from before
    assert images.resize_method({"pipeline": "generator", "preprocessing": {}}) == "pil"


def test_check_header_refuses_what_is_not_an_image_without_decoding(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_bytes(text_as_jpg())
    cut = tmp_path / "cut.png"
    buffer = tmp_path / "whole.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer)
    cut.write_bytes(truncated(buffer.read_bytes()))
    os.mkfifo(tmp_path / "pipe.jpg")  # said for what it is (it was "empty file (0 bytes)")
    for name, reason in (("empty.jpg", "empty file (0 bytes)"),
                         ("pipe.jpg", "not a regular file (a pipe, socket or device)"),
                         ("text.jpg", "not an image (Pillow cannot identify it)"),
                         ("missing.jpg", "no such file")):
        with pytest.raises(images.ImageError) as caught:
            images.check_header(tmp_path / name)
        assert str(caught.value) == reason
    images.check_header(cut)  # the header is fine: only decoding finds the cut
    with pytest.raises(images.ImageError, match="corrupt or truncated image"):
        images.open_image(cut)


def test_a_very_large_photo_in_the_cli_decodes_without_pillows_raw_warning(tmp_path,
                                                                         monkeypatch, capsys):
    """89-179 megapixels (a panorama): Pillow warns of a decompression bomb on stderr. The CLI
    (quiet.configure) decodes it quietly; the library leaves a program's warning filters
    alone, even with reads on several threads (catch_warnings there leaked a filter).
    Scaled down here: the limit lowered to 1,000 pixels."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from transfer import quiet

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "panorama.png"
    Image.new("RGB", (40, 40), (20, 180, 40)).save(path)  # 1,600 pixels: over, not twice over
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        with ThreadPoolExecutor(4) as pool:
            shapes = list(pool.map(lambda _: images.picture(path, 32).shape, range(32)))
        assert shapes == [(32, 32, 3)] * 32
        assert warnings.filters == before  # nothing left behind
        assert any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)
        caught.clear()
        for name in ("TF_CPP_MIN_LOG_LEVEL", "ABSL_MIN_LOG_LEVEL", "GRPC_VERBOSITY"):
            monkeypatch.setenv(name, os.environ.get(name, "3"))
        capsys.readouterr()
        quiet.configure(verbose=False)  # what the CLI does first
        assert images.picture(path, 32).shape == (32, 32, 3)
        # configure shows warnings on stderr, one line each (no longer into ``caught``): none
        assert "exceeds limit" not in capsys.readouterr().err
    assert [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)] == []


def test_a_damaged_exif_block_prints_no_python_warning(trained_bundle, tmp_path):
    """A tag pointing past the end of its EXIF block: Pillow warned "Tag data larger than
    file" (or "Truncated File Read") on stderr, two lines naming its source file. The photo
    is read and classified; the command prints no warning of Python's."""
    import struct
    import subprocess
    import sys

    entries = [struct.pack("<HHII", 0x010E, 2, 100, 4000)]  # 100 characters beyond the end
    ifd = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    Image.new("RGB", (64, 64), (9, 99, 199)).save(
        tmp_path / "odd.jpg", exif=b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd)
    with pytest.warns(UserWarning), Image.open(tmp_path / "odd.jpg") as odd:
        odd.getexif()  # what Pillow says of it, to a program
    done = subprocess.run([sys.executable, "-m", "transfer", "predict", "--model",
                           str(trained_bundle.bundle), "--format", "json",
                           str(tmp_path / "odd.jpg")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    import json

    (row,) = json.loads(done.stdout)["predictions"]
    assert row["error"] is None and row["label"] in ("cats", "dogs")
    # nor as the CLI's own one-line "warning: Tag data larger than file" (Python's warnings
    # are shown that way: a check for "Warning" and ".py:" let it through)
    assert "warning" not in done.stderr.lower() and "Tag data" not in done.stderr, done.stderr


def test_the_clis_other_python_warnings_are_one_line(capsys, monkeypatch):
    """A warning no filter silences reads as the CLI's own: one line, no source path."""
    import warnings

    from transfer import quiet

    for name in ("TF_CPP_MIN_LOG_LEVEL", "ABSL_MIN_LOG_LEVEL", "GRPC_VERBOSITY"):
        monkeypatch.setenv(name, os.environ.get(name, "3"))
    with warnings.catch_warnings():  # restores the filters and showwarning
        quiet.configure(verbose=False)
        warnings.warn("a fact worth a line", RuntimeWarning, stacklevel=1)
    assert capsys.readouterr().err == "warning: a fact worth a line\n"


def test_a_large_16_bit_scan_is_read_in_bands_with_the_same_pixels(tmp_path, monkeypatch):
    """16-bit and float grey images become 8-bit by their own range: the same pixels as the
    whole-image formula, band by band (a 12000 x 9000 scan held three float64 copies of
    itself, 2.6 GB, and a folder of them read on 8 threads ran out of memory)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    for mode, values in (("I;16", rng.integers(0, 65536, (1500, 2000), dtype="uint16")),
                         ("F", rng.random((300, 200), dtype="float32") * 4000)):
        image = Image.fromarray(values)
        assert image.mode == mode
        whole = np.asarray(image, dtype="float64")
        top = max(float(whole.max()), 1.0) if mode == "F" else 65535.0
        expected = np.clip(whole / top * 255.0, 0, 255).astype("uint8")
        monkeypatch.setattr(images, "HIGH_BIT_ROWS_PIXELS", 7 * values.shape[1] + 3)
        tracemalloc.start()
        got = np.asarray(images.to_rgb(image).convert("L"))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        np.testing.assert_array_equal(got, expected)
        if mode == "I;16":  # 3 M pixels: 24 MB a float64 copy; the uint16 copy and the result 9
            assert peak < 16 * 2**20, peak


def test_a_12_bit_scan_in_a_16_bit_file_keeps_its_grey_levels(tmp_path):
    """A real photo as 12-bit data (0-4080) in a 16-bit PNG and TIFF, as medical and
    microscope scans are stored, was divided by 65535: 16 grey levels, nearly black. It is
    scaled from 4095, within a level of the 8-bit photo, the same for training's reader
    (pipelines.read_rgb) and predict's (model_input); full 16-bit data still from 65535."""
    from transfer import pipelines

    flowers = require_asset("data/flowers/daisy")
    with Image.open(sorted(flowers.iterdir())[0]) as photo:
        grey = np.asarray(photo.convert("L"))
    Image.fromarray(grey).save(tmp_path / "eight.png")
    Image.fromarray(grey.astype("uint16") * 16).save(tmp_path / "twelve.png")  # 0-4080
    Image.fromarray(grey.astype("uint16") * 16).save(tmp_path / "twelve.tif")
    Image.fromarray(grey.astype("uint16") * 257).save(tmp_path / "sixteen.png")  # 0-65535
    eight = np.asarray(images.to_rgb(images.open_image(tmp_path / "eight.png")), "int16")
    for name in ("twelve.png", "twelve.tif", "sixteen.png"):
        with Image.open(tmp_path / name) as deep:
            assert deep.mode.startswith("I;16"), deep.mode
        read = np.asarray(images.to_rgb(images.open_image(tmp_path / name)), "int16")
        assert np.abs(read - eight).max() <= 1, name
        assert len(np.unique(read)) >= len(np.unique(grey)) - 1, name
        np.testing.assert_array_equal(
            pipelines.read_rgb(tmp_path / name, 96),
            images.model_input(tmp_path / name, {"image_size": 96})[0].astype("uint8"))
        # the same scan as an array in memory (predict(array), classify): as its file (a
        # uint16 array was divided by 257 whatever its range: the 12-bit one 16 times darker)
        with Image.open(tmp_path / name) as deep:
            array = np.asarray(deep)
        np.testing.assert_array_equal(
            images.model_input(array, {"image_size": 96})[0],
            images.model_input(tmp_path / name, {"image_size": 96})[0])
    assert images.high_bit_top("I;16", 4095) == 4095 and images.high_bit_top("I;16", 4096) == 65535
    # the same scan in a big-endian TIFF (Motorola byte order: Pillow's mode "I;16B")
    Image.fromarray((grey.astype("uint16") * 16).astype(">u2")).save(tmp_path / "twelve-mm.tif")
    with Image.open(tmp_path / "twelve-mm.tif") as deep:
        assert deep.mode == "I;16B", deep.mode
    np.testing.assert_array_equal(
        images.model_input(tmp_path / "twelve-mm.tif", {"image_size": 96})[0],
        images.model_input(tmp_path / "twelve.tif", {"image_size": 96})[0])


def test_photos_in_memory_of_every_kind_read_as_their_files(tmp_path):
    """A transparent palette image opened with Pillow is composited onto white as its file is
    (TIFF would drop its transparency); 16-bit grey arrays are 0-65535; booleans and a Pillow
    image whose file was closed are one ImageError, not a black picture or an AssertionError."""
    import io

    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    buffer = io.BytesIO()
    palette.save(buffer, "PNG", transparency=0)
    data = buffer.getvalue()
    from_file = np.asarray(images.to_rgb(images.open_image(data)))
    opened = np.asarray(images.to_rgb(images.open_image(Image.open(io.BytesIO(data)))))
    assert (from_file == 255).all() and (opened == from_file).all()
    # a photo stored turned, with EXIF orientation 6, opened with Pillow (not turned): upright
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), "uint8"))
    stored.save(tmp_path / "turned.png", exif=exif)
    with Image.open(tmp_path / "turned.png") as turned:
        np.testing.assert_array_equal(np.asarray(images.open_image(turned)),
                                      np.asarray(images.open_image(tmp_path / "turned.png")))
    # colour pixels as 16-bit (x 257) or as floats a little off their levels: the 8-bit photo
    colour = np.random.default_rng(1).integers(0, 256, (16, 16, 3), "uint8")
    eight = np.asarray(images.open_image(colour))
    for same in (colour.astype("uint16") * 257, np.clip(colour - 0.4, 0, None)):
        np.testing.assert_array_equal(np.asarray(images.open_image(same)), eight)
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype("uint16")  # 0-65520
    grey = np.asarray(images.open_image(ramp).convert("L"))
    assert grey.max() == round(65520 / 257) and grey.min() == 0
    with pytest.raises(images.ImageError, match="an array of bool is no photo"):
        images.open_image(np.ones((20, 20), bool))
    # the same pixels in the other byte order (NumPy's view of a big-endian 16-bit TIFF) read
    # the same: they were refused, "pixels lie between 0 and 3.277e+04"
    for native in (ramp, colour.astype("uint16") * 257):
        swapped = native.astype(native.dtype.newbyteorder(">" if native.dtype.isnative and
                                                          np.little_endian else "<"))
        assert not swapped.dtype.isnative
        np.testing.assert_array_equal(np.asarray(images.open_image(swapped)),
                                      np.asarray(images.open_image(native)))
    # a refused array's range is its own (the lower bound said 0 whatever the pixels were)
    with pytest.raises(images.ImageError, match="pixels lie between 300 and 400:"):
        images.open_image(np.linspace(300, 400, 256).reshape(16, 16))
    path = tmp_path / "a.png"
    Image.new("RGB", (20, 20), "red").save(path)
    with Image.open(path) as closed:
        pass
    with pytest.raises(images.ImageError, match="cannot be read .*closed before use"):
        images.open_image(closed)


def test_a_huge_jpeg_for_a_digit_model_is_drafted_not_decoded_whole(tmp_path):
    """A 12000 x 12000 JPEG of a page with one stroke (1.7 MB) sent to a digit bundle was
    decoded whole and turned into float copies: 3.3 GB of memory in serve for one upload. It
    is now read in draft mode (at least 1024 px a side), and the stroke is still found."""
    import subprocess
    import sys

    from PIL import ImageDraw

    page = Image.new("L", (12000, 12000), 255)
    ImageDraw.Draw(page).rectangle([5000, 3000, 7000, 9000], fill=0)
    page.save(tmp_path / "page.jpg", quality=50)
    del page
    script = (
        "import resource, sys\n"
        "from transfer import images\n"
        "meta = {'channels': 1, 'image_size': 28, 'preprocessing': {'mode': 'scale', "
        "'invert': 'auto', 'fit': 'mnist-box'}}\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "array, notes = images.model_input(sys.argv[1], meta)\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(grown, notes['width'], notes['inverted'], int((array > 128).sum()))\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "page.jpg")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    grown_kb, width, inverted, ink = done.stdout.split()
    assert int(grown_kb) < 300 * 1024, f"{int(grown_kb) // 1024} MB"  # whole: about 3 GB
    assert (width, inverted) == ("12000", "True") and int(ink) > 20  # the bar, light on dark


def _on_paper(digit: np.ndarray, paper: np.ndarray) -> Image.Image:
    """An MNIST digit written in blue-black ink, 300 px high, in the middle of ``paper``."""
    strokes = np.asarray(Image.fromarray(digit).resize((300, 300), Image.BICUBIC),
                         np.float32) / 255
    cover = np.zeros(paper.shape[:2], np.float32)
    cover[250:550, 250:550] = strokes
    ink = np.array([30, 30, 60], np.float32)
    rgb = paper * (1 - cover[..., None]) + ink * cover[..., None]
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def test_a_digit_photo_with_a_desk_or_a_shadow_at_its_edge_reads_as_the_clean_one(test_digits):
    """A 10 px strip of desk along one edge, a shadow in a corner, a sheet lying on a desk:
    the strip was read as a tall "1" beside a shrunken digit, the shadow as a blob, the sheet
    as the ink (confident wrong digits, and --invert did not help the first two). Each now
    gives the input the clean photo gives."""
    x, _ = test_digits
    clean = np.full((800, 800, 3), (235, 232, 225), np.float32)
    edge = clean.copy()
    edge[:, 790:] = (70, 55, 45)
    rows, cols = np.mgrid[0:800, 0:800]
    shadow = clean * (1 - 0.55 * np.exp(-((rows - 800) ** 2 + cols ** 2) / (2 * 220.0 ** 2))
                      )[..., None]
    desk = np.full((800, 800, 3), (70, 55, 45), np.float32)
    desk[100:700, 100:700] = (235, 232, 225)
    for digit in x[:9]:
        reference, inverted = images.digit_array(_on_paper(digit, clean))
        assert inverted
        for paper in (edge, shadow, desk):
            array, inverted = images.digit_array(_on_paper(digit, paper))
            assert inverted
            assert np.corrcoef(array.ravel(), reference.ravel())[0, 1] > 0.95


def test_no_digit_at_all_gives_no_hint_that_cannot_help(test_digits):
    """A blank page said "(it was inverted; try --invert no)", which fails the same way."""
    x, _ = test_digits
    for blank in (Image.new("L", (100, 100), 200), Image.new("L", (100, 100), 30)):
        for invert in ("auto", "yes", "no"):
            with pytest.raises(images.ImageError) as info:
                images.digit_array(blank, invert=invert)
            assert str(info.value) == ("no digit found: the image is uniform once its "
                                       "background is removed")
    with pytest.raises(images.ImageError, match=r"\(try --invert yes\)$"):
        images.digit_array(Image.fromarray(255 - x[0]), invert="no")


def test_a_tight_crop_keeps_a_stroke_at_its_edge_and_its_polarity():
    """Reviewing the edge rule: a 5's flag drawn apart along the top of serve's canvas was
    dropped as "a desk" (a 6 was read), and a thick 1 cropped tight on grainy paper was read
    in the wrong polarity (its paper margins: a hollow frame, a 0)."""
    canvas = Image.new("RGB", (280, 280), "black")
    pen = ImageDraw.Draw(canvas)
    pen.line([(95, 6), (230, 6)], fill="white", width=22)  # the flag, touching the top
    pen.line([(90, 40), (80, 130)], fill="white", width=22)
    pen.arc([(60, 100), (230, 265)], start=-130, end=140, fill="white", width=22)
    five, inverted = images.digit_array(canvas)
    assert not inverted and five[4:7].max() > 200  # the flag's row, still there

    grain = np.random.default_rng(0).normal(0, 4, (200, 60))
    # 30 px of 60, and 36: a bar filling its sheet enough to look like paper itself, whose
    # margins, in the other polarity, are the hollow frame
    for left, right in ((15, 45), (12, 48)):
        page = np.full((200, 60), 225.0) + grain
        page[10:190, left:right] = 40 + grain[10:190, left:right]
        one, inverted = images.digit_array(
            Image.fromarray(np.clip(page, 0, 255).astype("uint8")))
        assert inverted, (left, right)
        columns = one[..., 0].sum(axis=0)
        assert columns[13:15].min() > 0.5 * columns.max()  # a solid bar in the middle, no frame


def test_strokes_off_the_edge_are_not_a_desk_and_a_sheet_corner_is():
    """Reviewing the edge rule (drawn as the review drew them): a thick 1 running off the top
    and bottom beside an ink blot, a 7 whose bar is cut by the crop, a 1 and a 4 drawn off the
    edge of serve's canvas were each dropped in part as "a desk" (read 0, 1, 0, 2); a 0 on a
    sheet whose corner shows the desk along two sides read its hole as the ink (an 8). Each
    reads now as it does with a margin of paper around it (or without the desk)."""
    from PIL import ImageFont

    def one_blot():
        img = Image.new("L", (120, 300), 250)
        pen = ImageDraw.Draw(img)
        pen.line([(60, 0), (60, 299)], fill=20, width=22)
        pen.ellipse([8, 138, 32, 162], fill=20)
        return img

    def seven_tight():
        img = Image.new("L", (200, 240), 250)
        pen = ImageDraw.Draw(img)
        pen.rectangle([30, 0, 170, 14], fill=20)
        pen.line([(160, 22), (80, 230)], fill=20, width=14)
        return img

    def seven_joined_beside_a_blot():  # the bar along the top and the stroke one region:
        img = Image.new("L", (200, 240), 250)  # it fills little of its box, unlike a desk
        pen = ImageDraw.Draw(img)
        pen.rectangle([30, 0, 170, 14], fill=20)
        pen.line([(165, 5), (80, 230)], fill=20, width=14)
        pen.ellipse([8, 150, 40, 182], fill=20)
        return img

    def canvas(strokes):  # serve's page: 280 x 280, white pen 22 px, round caps
        img = Image.new("L", (280, 280), 0)
        pen = ImageDraw.Draw(img)
        for points in strokes:
            pen.line(points, fill=255, width=22, joint="curve")
            for x, y in (points[0], points[-1]):
                pen.ellipse([x - 11, y - 11, x + 11, y + 11], fill=255)
        return img

    def with_margin(img):
        paper = 250 if img.getpixel((1, img.height // 2)) > 127 else 0
        framed = Image.new("L", (img.width + 80, img.height + 80), paper)
        framed.paste(img, (40, 40))
        return framed

    def similar(a, b) -> float:
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    for img in (one_blot(), seven_tight(), seven_joined_beside_a_blot(),
                canvas([[(150, -20), (150, 300)], [(95, 75), (125, 45)]]),
                canvas([[(190, -20), (190, 300)], [(100, 20), (60, 170), (165, 170)]])):
        cut, _ = images.digit_array(img)
        whole, _ = images.digit_array(with_margin(img))
        assert similar(cut, whole) > 0.9

    import matplotlib

    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"),
                              160)

    def sheet(desk: bool):
        img = Image.new("RGB", (300, 300), (250, 250, 248))
        pen = ImageDraw.Draw(img)
        if desk:
            pen.rectangle([0, 0, 299, 29], fill=(95, 65, 45))
            pen.rectangle([0, 0, 29, 299], fill=(95, 65, 45))
        pen.text((165, 165), "0", fill=(25, 25, 30), font=font, anchor="mm")
        return img

    clean, _ = images.digit_array(sheet(False))
    cornered, inverted = images.digit_array(sheet(True))
    assert inverted and similar(cornered, clean) > 0.95


@pytest.mark.parametrize("size", [(3200, 2400), (4000, 300), (300, 4000), (900, 900)])
def test_drafted_size_is_what_open_image_decodes(photo, size):
    """``drafted_size`` says, from the header alone, how many pixels ``open_image(.., side)``
    decodes (serve refuses an upload by it): draft mode's scale is the smaller side's ratio, so
    a long narrow photo is drafted little (counting 1/8 of each side let a 65000 x 2040 JPEG
    through to a 133-megapixel decode). Without a side, or for a PNG, the whole image; for a
    progressive JPEG the whole image too, which its decoding holds however small its output
    (as the decompression-bomb check counts it)."""
    import io

    with Image.open(photo) as small:
        big = small.convert("RGB").resize(size)
    for kind, options in (("baseline", {}), ("progressive", {"progressive": True}),
                          ("png", None)):
        stored = io.BytesIO()
        big.save(stored, "PNG") if options is None else big.save(stored, "JPEG", **options)
        data = stored.getvalue()
        for side in (64, 224, None):
            with Image.open(io.BytesIO(data)) as header:
                said = images.drafted_size(header, side)
            decoded = images.open_image(data, side).size
            if kind == "progressive":
                assert said == size, (side, said)
            else:
                assert said == decoded, (kind, side, said, decoded)
            if side is None or kind == "png":
                assert said == size, (kind, side)
    assert images.drafted_size(Image.new("RGB", (8, 8)), 224) == (8, 8)
