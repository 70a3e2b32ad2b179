"""transfer explain: Grad-CAM on the real bundle checked against a Grad-CAM computed here
independently (plain TensorFlow on a sub-model of the saved model), for a chosen class, for a
five-class model, for every registered base, and its errors."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner
from unwritable import names_path, unwritable_folder

from transfer import bases, bundle, explain, images, plots
from transfer.cli import app
from transfer.errors import TransferError
from transfer.settings import Augment, ExplainSettings
from transfer.training import HParams, train

runner = CliRunner()
LAST_CONV = "conv_pw_13_relu"  # MobileNet's last convolutional feature maps (7x7 at 224 px)


def independent_gradcam(model_file, photo, size: int, class_index: int) -> tuple:
    """Grad-CAM written from the paper, sharing no code with transfer.explain: the saved model
    opened with plain Keras, the photo read with Pillow and preprocessed as MobileNet wants
    (x / 127.5 - 1), a sub-model from the base's input to LAST_CONV, and the head
    (GlobalAveragePooling -> Dropout, inactive -> Dense "predictions") applied by hand so that
    the class score is the logit. Returns (heatmap scaled to max 1, probabilities, raw cam)."""
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(model_file, compile=False)
    base = next(layer for layer in model.layers if isinstance(layer, keras.Model)
                and any(inner.name == LAST_CONV for inner in layer.layers))
    conv_model = keras.Model(base.inputs, base.get_layer(LAST_CONV).output)
    with Image.open(photo) as picture:
        pixels = np.asarray(picture.convert("RGB").resize((size, size), Image.BILINEAR),
                            dtype="float32")
    x = tf.constant(pixels[None] / 127.5 - 1.0)
    dense = model.get_layer("predictions")
    with tf.GradientTape() as tape:
        conv = conv_model(x, training=False)
        tape.watch(conv)
        logits = tf.matmul(tf.reduce_mean(conv, axis=(1, 2)), dense.kernel) + dense.bias
        if logits.shape[-1] == 1:  # sigmoid: class 1's score is the logit, class 0's minus it
            score = logits[:, 0] if class_index == 1 else -logits[:, 0]
        else:
            score = logits[:, class_index]
    grads = tape.gradient(score, conv)
    alphas = tf.reduce_mean(grads, axis=(1, 2))  # one weight per feature map
    cam = tf.nn.relu(tf.reduce_sum(conv * alphas[:, None, None, :], axis=-1))[0].numpy()
    if logits.shape[-1] == 1:
        p = tf.sigmoid(logits)[0, 0].numpy()
        probs = np.array([1 - p, p])
    else:
        probs = tf.nn.softmax(logits)[0].numpy()
    # the hand-made forward pass is the saved model's own function
    np.testing.assert_allclose(np.asarray(model(pixels[None], training=False))[0],
                               probs if logits.shape[-1] > 1 else probs[1:], atol=1e-5)
    # for a GlobalAveragePooling head the gradient is the Dense weight / (h*w) everywhere:
    # a closed form to hold the tape to
    w = dense.kernel.numpy()[:, 0] * (1 if class_index == 1 else -1) \
        if logits.shape[-1] == 1 else dense.kernel.numpy()[:, class_index]
    closed = np.maximum(conv[0].numpy() @ w, 0) / (cam.shape[0] * cam.shape[1])
    np.testing.assert_allclose(cam, closed, rtol=1e-4, atol=1e-6)
    return cam / cam.max(), probs, cam


def assert_non_trivial(heatmap: np.ndarray, cells: int = 3) -> None:
    """Not all zero, not constant, not a single hot spot: a map that points somewhere (the
    map of the class a photo is NOT of may rest on fewer cells: ``cells`` 2)."""
    assert heatmap.max() == pytest.approx(1.0) and heatmap.min() >= 0
    assert heatmap.std() > 0.05
    assert cells <= np.count_nonzero(heatmap > 0.05) < heatmap.size


@pytest.fixture()
def dog_photo(real_photos, tmp_path):
    path = tmp_path / "dog.jpg"
    path.write_bytes(real_photos["dogs"][7][1])
    return path


def test_gradcam_matches_an_independent_computation(trained_bundle, dog_photo, tmp_path):
    """Genuine MobileNet-0.25 bundle, a real dog photo: transfer's map is the independent
    Grad-CAM's, cell by cell, for the predicted class and for the other one (--class)."""
    model_file = trained_bundle.bundle / bundle.MODEL
    result = explain.explain(dog_photo, model=trained_bundle.bundle)
    assert result.label == "dogs" and result.class_index == 1
    expected, probs, _ = independent_gradcam(model_file, dog_photo, 224, 1)
    assert result.probabilities == pytest.approx({"cats": probs[0], "dogs": probs[1]},
                                                 abs=1e-5)
    assert result.heatmap.shape == expected.shape == (7, 7)
    assert_non_trivial(result.heatmap)
    np.testing.assert_allclose(result.heatmap, expected, atol=1e-4)

    cats = explain.explain(dog_photo, model=trained_bundle.bundle, class_name="cats",
                           write=False)
    expected_cats, _, _ = independent_gradcam(model_file, dog_photo, 224, 0)
    assert cats.label == "cats" and cats.class_index == 0 and cats.png is None
    assert_non_trivial(cats.heatmap, cells=2)
    np.testing.assert_allclose(cats.heatmap, expected_cats, atol=1e-4)
    # one sigmoid logit: where the evidence is for dogs it is against cats, and back
    assert np.all(np.minimum(cats.heatmap, result.heatmap) == 0)


def test_gradcam_of_every_class_of_a_five_class_model(trained_bundle, dog_photo, tmp_path):
    """A softmax model: the bundle's genuine MobileNet features under a new five-class Dense
    head (seeded), saved as a bundle; each --class gets its own map, equal to the
    independent one."""
    import keras

    copy = tmp_path / "five"
    shutil.copytree(trained_bundle.bundle, copy)
    names = ["ant", "bee", "cafe\u0301", "dog", "chi\udce9ns"]  # NFD; not UTF-8
    meta = json.loads((copy / bundle.META).read_text())
    meta["class_names"] = names
    (copy / bundle.META).write_text(json.dumps(meta))
    source = keras.saving.load_model(trained_bundle.bundle / bundle.MODEL, compile=False)
    head = keras.layers.Dense(5, activation="softmax", name="predictions",
                              kernel_initializer=keras.initializers.GlorotNormal(seed=5),
                              bias_initializer=keras.initializers.RandomNormal(seed=6))
    five = keras.Model(source.inputs, head(source.get_layer("dropout").output))
    five.save(copy / bundle.MODEL)
    maps = {}
    for index, name in enumerate(names):
        result = explain.explain(ExplainSettings(image=dog_photo, model=copy, class_name=name),
                                 write=False)
        expected, probs, _ = independent_gradcam(copy / bundle.MODEL, dog_photo, 224, index)
        assert result.label == name and result.class_index == index
        assert result.probabilities == pytest.approx(dict(zip(names, probs, strict=True)),
                                                     abs=1e-5)
        assert_non_trivial(result.heatmap)
        np.testing.assert_allclose(result.heatmap, expected, atol=1e-4)
        maps[name] = result.heatmap
    predicted = explain.explain(dog_photo, model=copy, write=False)
    assert predicted.label == max(predicted.probabilities, key=predicted.probabilities.get)
    np.testing.assert_array_equal(predicted.heatmap, maps[predicted.label])
    assert len({m.round(3).tobytes() for m in maps.values()}) == 5  # five different maps
    # a class named as typed elsewhere: "café" composed (NFC), the Latin-1 name as the API
    # and the tables show it; they were "unknown class", listing a name that looked the same
    for typed, index in (("caf\u00e9", 2), ("chi\ufffdns", 4)):
        result = explain.explain(ExplainSettings(image=dog_photo, model=copy, class_name=typed),
                                 write=False)
        assert result.class_index == index and result.label == names[index]
    assert explain.named_class(names, "Dog") == 3  # as typed, one class meant
    with pytest.raises(TransferError, match="unknown class 'Horse'"):
        explain.named_class(names, "Horse")


def test_gradcam_on_a_real_photo(trained_bundle, dog_photo, tmp_path):
    result = explain.explain(dog_photo, model=trained_bundle.bundle)
    assert result.png == tmp_path / "dog.gradcam.png"
    assert result.layer == bases.get("mobilenet").last_conv == LAST_CONV
    assert result.label == max(result.probabilities, key=result.probabilities.get)
    with Image.open(result.png) as picture:
        assert picture.format == "PNG" and picture.width == 800
        drawn = np.asarray(picture.convert("RGB"), dtype="int16")
    # image | overlay: the heatmap tints the right panel (an overlay left untinted passed)
    tint = np.abs(drawn[:, :400].mean(axis=(0, 1)) - drawn[:, 400:].mean(axis=(0, 1))).max()
    assert tint > 5, tint  # 18 with the heatmap, 0.3 without
    # the probabilities are the bundle model's own
    model, meta = bundle.load(trained_bundle.bundle)
    array, _ = images.model_input(dog_photo, meta)
    p_dog = float(model.predict(array[None], verbose=0)[0, 0])
    assert result.probabilities["dogs"] == pytest.approx(p_dog, abs=1e-5)
    # the other class has its own, different map
    other = "cats" if result.label == "dogs" else "dogs"
    second = explain.explain(dog_photo, model=trained_bundle.bundle, class_name=other,
                             output=tmp_path / "other.png")
    assert second.label == other and not np.allclose(second.heatmap, result.heatmap)
    with pytest.raises(TransferError, match="already exists; use --force"):
        explain.explain(dog_photo, model=trained_bundle.bundle)
    # the photo itself as the output: refused even with --force (it was replaced by its
    # picture); and a photo another photo's picture would replace before it is read
    twin = tmp_path / "twin"
    twin.mkdir()
    victim = twin / "victim.png"
    with Image.open(dog_photo) as photo:
        photo.save(victim)
    before = victim.read_bytes()
    with pytest.raises(TransferError, match="is the image being explained: it is not replaced"):
        explain.explain(victim, model=trained_bundle.bundle, output=victim, force=True)
    said = runner.invoke(app, ["explain", str(victim), "--model", str(trained_bundle.bundle),
                               "--output", str(victim), "--force"])
    assert said.exit_code == 1 and "is the image being explained" in said.output
    shutil.copyfile(dog_photo, twin / "pic.png")
    shutil.copyfile(dog_photo, twin / "pic.gradcam.png")  # the user's photo, named so
    # `explain --force photos/*` again (the shell expands the glob): the earlier run's
    # pictures are this run's outputs, left out and said (they were overwritten before they
    # were read, then explained as photos)
    from conftest import Recorder

    recorder = Recorder()
    done = explain.explain_all(ExplainSettings(images=[twin / "pic.png",
                                                       twin / "pic.gradcam.png"],
                                               model=trained_bundle.bundle, force=True),
                               reporter=recorder)
    assert [d.image for d in done] == [str(twin / "pic.png")] and done[0].error is None
    assert recorder.warnings == [
        f"left out: 1 Grad-CAM picture of an earlier run named among the images "
        f"({twin / 'pic.gradcam.png'}): this run writes it again"]
    assert victim.read_bytes() == before
    with Image.open(twin / "pic.gradcam.png") as picture:
        assert picture.width == 800  # pic.png's picture
    # a strip of a photo (10 x 3000 px) makes a picture of bounded height, letterboxed (it
    # was 800 x 102,460 px, 4 GB of memory); a wide one keeps room for its title
    with Image.open(dog_photo) as photo:
        photo.convert("RGB").resize((10, 3000)).save(twin / "strip.png")
        photo.convert("RGB").resize((3000, 60)).save(twin / "band.png")
    for name, tallest in (("strip", 900), ("band", 220)):
        made = explain.explain(twin / f"{name}.png", model=trained_bundle.bundle)
        with Image.open(made.png) as picture:
            assert picture.width == 800 and 150 < picture.height <= tallest, picture.size
    with pytest.raises(TransferError, match="unknown class 'horses'"):
        explain.explain(dog_photo, model=trained_bundle.bundle, class_name="horses",
                        write=False)
    with pytest.raises(TransferError, match="--invert applies to digit models"):
        explain.explain(dog_photo, model=trained_bundle.bundle, invert="yes", write=False)
    # a classifier decides the model: another model given too is refused, as predict
    # refuses it (it was ignored, and the other bundle's classes explained)
    from transfer.inference import BundleClassifier

    held = BundleClassifier(trained_bundle.bundle)
    assert explain.explain(dog_photo, model=trained_bundle.bundle, classifier=held,
                           write=False).label == result.label  # its own bundle: fine
    with pytest.raises(TransferError, match="got a classifier and also model"):
        explain.explain(dog_photo, model=tmp_path / "another", classifier=held, write=False)
    # what is not a loaded bundle is one line saying what to pass (AttributeErrors: 'tuple'
    # object / 'ImageNetClassifier' object has no attribute 'meta')
    from transfer.inference import ImageNetClassifier, open_classifier

    pair = open_classifier(model=trained_bundle.bundle)
    for wrong, said in ((pair, r"not open_classifier's whole \(classifier, fallback\) pair: "
                               r"pass its first item"),
                        (ImageNetClassifier("mobilenet", 0.25, weights=None),
                         r"not the classifier of MobileNet alpha 0.25 \(ImageNet\), which is "
                         r"not a trained bundle"),
                        (str(trained_bundle.bundle), r"not '.*'$")):
        with pytest.raises(TransferError, match=r"^explain's classifier= takes a "
                           r"BundleClassifier \(as open_classifier\(model=...\) gives it "
                           r"first\), " + said):
            explain.explain(dog_photo, classifier=wrong, write=False)


def test_a_phone_photo_is_shown_drafted_and_upright(trained_bundle, dog_photo, tmp_path,
                                                    monkeypatch):
    """A 12-megapixel phone JPEG stored sideways (EXIF orientation 6): the PNG shows it
    upright at SHOWN_SIDE, decoded in draft mode, never whole (a 48 MP photo took 2.5 GB)."""
    with Image.open(dog_photo) as small:
        big = small.convert("RGB").resize((4000, 3000), Image.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6
    phone = tmp_path / "phone.jpg"
    big.transpose(Image.Transpose.ROTATE_90).save(phone, "JPEG", quality=90, exif=exif)
    decoded, drawn = [], []
    real_open, real_draw = images.open_image, explain.plots.gradcam
    monkeypatch.setattr(images, "open_image", lambda source, size=None: decoded.append(
        real_open(source, size).size) or real_open(source, size))
    monkeypatch.setattr(explain.plots, "gradcam", lambda image, *a, **k: drawn.append(
        np.asarray(image).shape) or real_draw(image, *a, **k))
    result = explain.explain(phone, model=trained_bundle.bundle)
    assert drawn == [(explain.SHOWN_SIDE * 3 // 4, explain.SHOWN_SIDE, 3)]  # upright: landscape
    assert decoded and max(max(size) for size in decoded) <= 4000 // 2  # drafted, never whole
    with Image.open(result.png) as picture:
        assert picture.format == "PNG" and picture.width == 800


def test_read_only_output_folder_is_named(trained_bundle, dog_photo, tmp_path):
    (tmp_path / "locked").mkdir()
    inside = tmp_path / "locked" / "dog.jpg"  # the default PNG goes beside the image
    shutil.copy(dog_photo, inside)
    with unwritable_folder(tmp_path / "locked") as locked:
        for output in (locked / "h.png", None):
            with pytest.raises((TransferError, OSError)) as caught:
                explain.explain(inside, model=trained_bundle.bundle, output=output)
            assert names_path(caught.value, locked)
        assert [p.name for p in locked.iterdir()] == ["dog.jpg"]
        # without --output the error names the picture it would write, not an --output the
        # user never gave (it said "--output .../dog.jpg", then "--output .../dog.gradcam.png")
        png = locked / "dog.gradcam.png"
        with pytest.raises(TransferError) as caught:
            explain.explain(inside, model=trained_bundle.bundle)
        assert str(caught.value).startswith(f"{png}: cannot write in {locked}")
        (row,) = explain.explain_all(ExplainSettings(images=[inside], model=trained_bundle.bundle))
        assert row.error.startswith(f"{png}: cannot write in {locked}")


def test_gradcam_cli(trained_bundle, dog_photo, tmp_path):
    out = tmp_path / "pictures" / "heat.png"
    result = runner.invoke(app, ["explain", str(dog_photo), "--model",
                                 str(trained_bundle.bundle), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "conv_pw_13_relu" in result.output and out.exists()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"text")
    result = runner.invoke(app, ["explain", str(bad), "--model", str(trained_bundle.bundle)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "not an image" in lines[0], \
        result.output


def test_a_heic_photo_alone_gets_the_heic_reason(trained_bundle, dog_photo, tmp_path):
    """As predict and a folder of them say it: a real HEIC was 'not an image', now the HEIC
    reason; a JPEG renamed .heic, which Pillow reads (constants.unread_file), is explained
    as the very same photo named .jpg, its Grad-CAM picture beside it."""
    folder = tmp_path / "phone"
    folder.mkdir()
    (folder / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    with pytest.raises(TransferError, match=r"HEIC \(an iPhone's photos\) is not a format "
                       r"transfer reads; convert them to JPEG"):
        explain.explain(folder / "IMG_0001.HEIC", model=trained_bundle.bundle)
    (folder / "renamed.heic").write_bytes(dog_photo.read_bytes())
    renamed = explain.explain(folder / "renamed.heic", model=trained_bundle.bundle)
    as_jpeg = explain.explain(dog_photo, model=trained_bundle.bundle, write=False)
    assert renamed.png == folder / "renamed.gradcam.png" and renamed.label == as_jpeg.label
    np.testing.assert_allclose(renamed.heatmap, as_jpeg.heatmap, atol=1e-5)
    with Image.open(renamed.png) as picture:
        assert picture.format == "PNG" and picture.width > picture.height  # image | overlay
    assert sorted(p.name for p in folder.iterdir()) == ["IMG_0001.HEIC", "renamed.gradcam.png",
                                                        "renamed.heic"]


def test_gradcam_pictures_in_a_data_folder_are_left_out(tiny_split, dog_photo, tmp_path):
    """explain writes <photo>.gradcam.png beside the photo: the next train and evaluate on
    that folder leave the picture out (it is no photo of the class) and run as before."""
    import shutil

    from transfer.evaluate import evaluate

    data = tmp_path / "data"
    shutil.copytree(tiny_split, data)
    for split in ("train", "validate"):
        photo = next((data / split / "dogs").iterdir())
        shutil.copy(dog_photo, photo.with_name(photo.stem + ".gradcam.png"))
    result = train(HParams(data_dir=data, base="scratch", image_size=32, epochs=1,
                           models_dir=tmp_path / "models"))
    counts = result.meta["data"]["counts"]
    assert counts == {"train": {"cats": 12, "dogs": 12}, "validate": {"cats": 6, "dogs": 6}}
    assert evaluate(result.bundle).report["images"] == 12


@pytest.mark.parametrize("name", [n for n in bases.BASES])
def test_gradcam_for_every_registered_base(name, tiny_split, dog_photo, tmp_path):
    """Each base's last convolutional layer (from the registry) is found inside the saved
    bundle and traced; random weights keep it fast (genuine ones are tested above)."""
    spec = bases.get(name)
    result = train(HParams(data_dir=tiny_split, base=name, weights="none",
                           image_size=max(spec.min_size, 64 if name != "inception" else 75),
                           epochs=1, augment=Augment(enabled=False), feature_cache=False,
                           models_dir=tmp_path / "models", output=tmp_path / name))
    model, meta = bundle.load(result.bundle)
    assert explain.target_layer(model, meta) == spec.last_conv
    heat = explain.explain(dog_photo, model=result.bundle, write=False)
    assert heat.layer == spec.last_conv
    assert heat.heatmap.ndim == 2 and np.all(np.isfinite(heat.heatmap))
    assert 0 <= heat.heatmap.min() and heat.heatmap.max() <= 1
    # the map is over the named layer's own feature maps (its spatial size)
    inner = next((layer for layer in model.layers if hasattr(layer, "layers")
                  and spec.last_conv in [i.name for i in layer.layers]), model)
    assert heat.heatmap.shape == tuple(inner.get_layer(spec.last_conv).output.shape[1:3])


def test_a_folder_given_as_the_image_is_named_as_a_folder(tmp_path):
    folder = tmp_path / "chats été"
    folder.mkdir()
    with pytest.raises(TransferError, match=r"chats été is a folder; explain takes one image "
                                            r"file \(explain_all and the command line take "
                                            r"folders\)"):
        explain.explain(folder, model=tmp_path, write=False)


def test_many_images_in_one_run(trained_bundle, small_split, tmp_path):
    """transfer explain with a file, a folder, a glob and a missing name: each heatmap the one
    explain() gives for that image alone, the PNGs in --output (a folder's images keep their
    place below it), the missing name one error line and exit code 1; a second run refuses,
    before any work, to replace the PNGs without --force."""
    test = tmp_path / "mine"  # two photos of each class, as a user's folder holds them
    for name in ("cats", "dogs"):
        (test / name).mkdir(parents=True)
        for photo in sorted((small_split / "test" / name).iterdir())[:2]:
            shutil.copy(photo, test / name / photo.name)
    cat = sorted((small_split / "test/cats").iterdir())[2]
    globbed = sorted((test / "dogs").glob("dog.1*.jpg"))
    out = tmp_path / "gradcam"
    args = ["explain", str(cat), str(test), str(test / "dogs" / "dog.1*.jpg"),
            str(tmp_path / "missing.jpg"), "--model", str(trained_bundle.bundle), "--output",
            str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    in_folder = sorted(p.relative_to(test) for p in test.rglob("*.jpg"))
    # the glob's matches are in the folder too: each image is explained once
    assert globbed and sorted(p.relative_to(out) for p in out.rglob("*.png")) == sorted(
        [Path(f"{cat.stem}.gradcam.png")]
        + [p.with_name(f"{p.stem}.gradcam.png") for p in in_folder])
    said = " ".join(result.output.split())
    assert f"{tmp_path / 'missing.jpg'}: no such file" in said
    assert f"wrote {1 + len(in_folder)} Grad-CAM pictures in {out}; 1 image failed" in said
    rows = explain.explain_all(ExplainSettings(images=[str(test / "dogs")],
                                               model=trained_bundle.bundle,
                                               output=tmp_path / "lib"))
    assert [r.error for r in rows] == [None] * len(rows) and rows
    first = sorted((test / "dogs").iterdir())[0]
    alone = explain.explain(first, model=trained_bundle.bundle, write=False)
    mine = next(r.explanation for r in rows if r.image == str(first))
    assert mine.png == tmp_path / "lib" / f"{first.stem}.gradcam.png"
    np.testing.assert_allclose(mine.heatmap, alone.heatmap, atol=1e-5)
    assert mine.probabilities == pytest.approx(alone.probabilities, abs=1e-6)
    before = sorted(p.stat().st_mtime_ns for p in out.rglob("*.png"))
    again = runner.invoke(app, args[:3] + args[5:])
    n = len(list(out.rglob("*.gradcam.png")))
    assert again.exit_code == 1 and f"(and {n - 1} more) already exist; use --force" in " ".join(
        again.output.split()), again.output
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("*.png")) == before
    # beside the photos (no --output), a photo and its screenshot of one name: each picture
    # at the name planned for it (both went to IMG_1.gradcam.png, replacing one of the
    # user's there without --force)
    pair = tmp_path / "pair"
    pair.mkdir()
    shutil.copy(cat, pair / "IMG_1.JPG")
    Image.open(cat).save(pair / "IMG_1.PNG")
    (pair / "IMG_1.gradcam.png").write_bytes(b"the user's own")
    rows = explain.explain_all(ExplainSettings(images=[str(pair)], model=trained_bundle.bundle))
    assert [r.explanation.png.name for r in rows] == ["IMG_1.JPG.gradcam.png",
                                                      "IMG_1.PNG.gradcam.png"]
    assert (pair / "IMG_1.gradcam.png").read_bytes() == b"the user's own"
    assert sorted(p.name for p in pair.iterdir()) == [
        "IMG_1.JPG", "IMG_1.JPG.gradcam.png", "IMG_1.PNG", "IMG_1.PNG.gradcam.png",
        "IMG_1.gradcam.png"]


def test_one_image_that_cannot_be_read_is_said_as_predict_says_it(tmp_path):
    """A pipe (which exists) and a broken link were both "no such image file"."""
    import os

    os.mkfifo(tmp_path / "f.jpg")
    (tmp_path / "broken.jpg").symlink_to("nothere.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name, reason in (("f.jpg", "not a regular file (a pipe, socket or device)"),
                         ("broken.jpg", "a broken link (to nothere.jpg, which does not exist)"),
                         ("empty.jpg", "empty file (0 bytes)"), ("missing.jpg", "no such file")):
        with pytest.raises(TransferError) as info:
            ExplainSettings(image=tmp_path / name).validated()
        assert str(info.value) == f"{tmp_path / name}: {reason}"


def test_where_many_pictures_go(tmp_path, monkeypatch):
    """explain's placing of pictures, without a model: a glob keeps each match's place below
    its fixed folders (numbered files in every class do not collide), earlier heatmaps are not
    taken for photos, an image named twice is explained once, and a single image's --output
    without .png is a folder."""
    from conftest import png_bytes

    photos = tmp_path / "photos"
    for name in ("cats", "dogs"):
        (photos / name).mkdir(parents=True)
        (photos / name / "00000.png").write_bytes(png_bytes())
    (photos / "cats" / "00000.gradcam.png").write_bytes(png_bytes())  # an earlier heatmap
    out = tmp_path / "out"
    rows = explain.outputs_of([str(photos / "*" / "*.png"), str(photos / "cats"),
                               str(photos / "cats" / "00000.png")], out)
    assert [(png.relative_to(out).as_posix()) for _, _, png, _ in rows] == [
        "cats/00000.gradcam.png", "dogs/00000.gradcam.png"]
    beside = explain.outputs_of([str(photos / "cats"), str(photos / "cats" / "00000.png")],
                                None)
    assert [png for _, _, png, _ in beside] == [photos / "cats" / "00000.gradcam.png"]
    with pytest.raises(TransferError, match="would both write .*; explain them in two runs, "
                                            "or without --output"):
        explain.outputs_of([str(photos / "cats" / "00000.png"),
                            str(photos / "dogs" / "00000.png")], out)
    # a pair in one folder, one name but the extension (a photo and its screenshot): the whole
    # folder was refused ("explain them in two runs"); the second keeps its extension
    (photos / "cats" / "00000.jpg").write_bytes(png_bytes())
    for where in (out, None):
        pictures = [png for _, _, png, _ in explain.outputs_of([str(photos / "cats")], where)]
        assert pictures == [(where or photos / "cats") / "00000.jpg.gradcam.png",
                            (where or photos / "cats") / "00000.png.gradcam.png"]
        named = [png.name for _, _, png, _ in explain.outputs_of(  # whichever comes first
            [str(photos / "cats" / "00000.png"), str(photos / "cats" / "00000.jpg")], where)]
        assert named == ["00000.png.gradcam.png", "00000.jpg.gradcam.png"]
    one = ExplainSettings(image=photos / "dogs" / "00000.png", output=tmp_path / "why").validated()
    assert one.output == tmp_path / "why" / "00000.gradcam.png"
    assert one.validated().output == one.output
    with pytest.raises(TransferError, match="names a file; with several images"):
        ExplainSettings(images=[str(photos)], output=tmp_path / "why.png").validated()
    assert ExplainSettings(images=str(photos)).validated().images == [str(photos)]
    with pytest.raises(TransferError, match="explain_all takes images"):
        explain.explain_all(ExplainSettings(image=photos / "dogs" / "00000.png"))
    with pytest.raises(TransferError, match="explain takes one image"):
        explain.explain(ExplainSettings(images=[str(photos)]))
    for photo in (png_bytes(), np.zeros((8, 8, 3), "uint8")):  # one line, not a TypeError
        with pytest.raises(TransferError, match="^explain takes the path of an image file, "
                                                "not a (bytes|ndarray) .predict takes photos"):
            explain.explain(photo, model=tmp_path / "models/none", write=False)


def test_link_loops_and_names_that_are_not_utf8_are_rows_not_tracebacks(trained_bundle,
                                                                        dog_photo, tmp_path):
    """A folder holding a link loop ended explain with a RuntimeError from resolve(); a file
    named in Latin-1 (an old camera's "caf\\xe9.jpg") with a TypeError from the picture's
    title. The loop is an error row, the Latin-1 photo is explained like any other."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(dog_photo, folder / "dog.jpg")
    latin1 = Path(os.fsdecode(bytes(folder) + b"/caf\xe9.jpg"))
    shutil.copy(dog_photo, latin1)
    (folder / "x.jpg").symlink_to("y.jpg")
    (folder / "y.jpg").symlink_to("x.jpg")
    rows = explain.explain_all(ExplainSettings(images=[str(folder)],
                                               model=trained_bundle.bundle,
                                               output=tmp_path / "out"))
    by_name = {Path(r.image).name: r for r in rows}
    assert sorted(by_name) == sorted(["dog.jpg", latin1.name, "x.jpg", "y.jpg"])
    assert by_name["x.jpg"].error == by_name["y.jpg"].error == (
        "a symbolic link loop (it leads back to itself)")
    assert by_name["dog.jpg"].error is None and by_name[latin1.name].error is None
    np.testing.assert_allclose(by_name[latin1.name].explanation.heatmap,
                               by_name["dog.jpg"].explanation.heatmap, atol=1e-6)
    assert (tmp_path / "out" / f"{latin1.stem}.gradcam.png").is_file()


def test_grad_cams_of_a_batch_are_each_photos_own(trained_bundle, real_photos, tmp_path):
    """gradcams (one forward and one backward pass for several photos, as the report draws
    them) gives each photo the map, probabilities and class that gradcam gives it alone,
    with the classes asked or predicted per photo; the maps differ from photo to photo."""
    classifier = explain.BundleClassifier(trained_bundle.bundle)
    paths = []
    for i, (name, data) in enumerate(real_photos["cats"][:2] + real_photos["dogs"][:2]):
        paths.append(tmp_path / f"{i}-{name}")
        paths[-1].write_bytes(data)
    arrays = np.stack([classifier.prepare(p)[0] for p in paths])
    asked = [None, 1, 0, None]
    maps, layer = explain.gradcams(classifier.model, classifier.meta, arrays, asked)
    assert layer == LAST_CONV and len(maps) == 4
    for path, array, wanted, (heatmap, probs, index) in zip(paths, arrays, asked, maps,
                                                             strict=True):
        alone, alone_probs, alone_index, _ = explain.gradcam(classifier.model, classifier.meta,
                                                             array, wanted)
        assert index == alone_index == (wanted if wanted is not None else int(probs.argmax()))
        np.testing.assert_allclose(probs, alone_probs, atol=1e-5)
        np.testing.assert_allclose(heatmap, alone, atol=1e-4)
        # and the paper's Grad-CAM, computed apart from transfer, photo by photo
        expected, expected_probs, _ = independent_gradcam(
            trained_bundle.bundle / bundle.MODEL, path, 224, index)
        np.testing.assert_allclose(probs, expected_probs, atol=1e-4)
        np.testing.assert_allclose(heatmap, expected, atol=1e-3)
    assert min(np.abs(maps[0][0] - m[0]).max() for m in maps[1:]) > 0.05


def test_photos_with_names_near_the_limit_get_their_pictures(trained_bundle, dog_photo,
                                                             tmp_path):
    """A photo named with 248 bytes (82 Chinese characters, legal) failed with "File name too
    long": its .gradcam.png is 256. The picture's name is now cut to fit, with a tag of the
    whole name, so that two long names alike but for their ends get a picture each."""
    folder = tmp_path / "long"
    folder.mkdir()
    names = ["長" * 81 + "1.jpg", "長" * 81 + "2.jpg"]
    for name in names:
        shutil.copy(dog_photo, folder / name)
    rows = explain.explain_all(ExplainSettings(images=[str(folder)],
                                               model=trained_bundle.bundle))
    assert [r.error for r in rows] == [None, None]
    pictures = sorted(p.name for p in folder.iterdir() if p.name.endswith(".gradcam.png"))
    assert len(pictures) == 2 and all(len(os.fsencode(p)) <= 255 for p in pictures)
    assert pictures[0] != pictures[1] and all(p.startswith("長" * 40) for p in pictures)


def test_a_class_typed_otherwise_is_found_by_the_cli_as_by_serve():
    """`transfer explain --class Cats` for a bundle's `cats` was "unknown class 'Cats'" while
    serve's /api/explain found it: one function (named_class) answers both now, with the
    nearest names for an unknown one and the candidates when several are meant."""
    from transfer.explain import named_class

    names = ["cats", "dogs", "golden_retriever", "café"]
    assert named_class(names, "Cats") == 0 and named_class(names, " DOGS ") == 1
    assert named_class(names, "Golden Retriever") == 2
    assert named_class(names, "cafe\u0301") == 3  # NFD, as a Mac names the folder
    assert named_class(names, None) is None
    with pytest.raises(TransferError) as info:
        named_class(names, "kats")
    assert str(info.value) == ("unknown class 'kats'; the model's classes are cats, dogs, "
                               "golden_retriever, café (the nearest: cats)")
    with pytest.raises(TransferError, match=r"^class 'CATS' could be 'Cats' or 'cats'"):
        named_class(["Cats", "cats"], "CATS")


def test_an_empty_map_says_so_in_its_picture(trained_bundle, dog_photo, real_photos, tmp_path,
                                             monkeypatch):
    """`explain --class X` where no region raises X's score: the terminal said "the map is
    empty", but the PNG was a uniform tint whose title gave no hint (one image, and each of a
    folder's). The bundle's head made all-positive: every region raises dogs' logit, so none
    raises cats' (the sigmoid's negative class): cats' map is empty on any photo."""
    import keras

    copy = tmp_path / "positive"
    shutil.copytree(trained_bundle.bundle, copy)
    model = keras.saving.load_model(copy / bundle.MODEL, compile=False)
    head = model.get_layer("predictions")
    kernel, bias = head.get_weights()
    head.set_weights([np.abs(kernel), bias])
    model.save(copy / bundle.MODEL)
    real = plots.save
    kept = []

    def keeping(fig, path, dpi=100):  # the figures drawn, kept to read their titles
        real(fig, path, dpi)
        kept.append(fig)

    monkeypatch.setattr(plots, "save", keeping)
    empty = "cats: empty map \u2014 no region raises this class's score"
    cats = explain.explain(dog_photo, model=copy, class_name="cats",
                           output=tmp_path / "cats.png")
    dogs = explain.explain(dog_photo, model=copy, class_name="dogs",
                           output=tmp_path / "dogs.png")
    assert cats.heatmap.max() == 0 and dogs.heatmap.max() > 0
    titles = [" ".join(fig._suptitle.get_text().split()) for fig in kept]
    assert titles[0].endswith(f"Grad-CAM of cats at {LAST_CONV} {empty}"), titles[0]
    assert "empty" not in titles[1] and titles[1].endswith(f"Grad-CAM of dogs at {LAST_CONV}")
    # a folder's images, each its own picture
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, data in real_photos["cats"][:2] + real_photos["dogs"][:1]:
        (folder / name).write_bytes(data)
    kept.clear()
    rows = explain.explain_all(ExplainSettings(images=[str(folder)], model=copy,
                                               class_name="cats", output=tmp_path / "out"))
    assert [r.error for r in rows] == [None] * 3 and len(kept) == 3
    assert all(" ".join(fig._suptitle.get_text().split()).endswith(empty) for fig in kept)


def test_a_diverged_model_explains_nothing(trained_bundle, dog_photo, real_photos, tmp_path):
    """A bundle whose training diverged (its outputs NaN): explain said "predicted cats nan"
    (NaN's argmax), drew a map of nothing and exited 0, where predict gives error rows and
    evaluate refuses. Each photo is an error saying why, no picture, exit code 1; serve's
    /api/explain is a 500 naming the model, as its /api/predict."""
    from conftest import diverged_copy
    from fastapi.testclient import TestClient

    from transfer import serve
    from transfer.errors import NOT_NUMBERS_FOR_IT
    from transfer.settings import ServeSettings

    models = tmp_path / "models"
    broken = diverged_copy(trained_bundle.bundle, models / "diverged")
    with pytest.raises(TransferError, match="^" + re.escape(f"{dog_photo}: {NOT_NUMBERS_FOR_IT}")):
        explain.explain(dog_photo, model=broken, output=tmp_path / "one.png")
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, data in real_photos["cats"][:2]:
        (folder / name).write_bytes(data)
    done = runner.invoke(app, ["explain", str(folder), "--model", str(broken), "--output",
                               str(tmp_path / "out")])
    assert done.exit_code == 1, done.output
    said = " ".join(done.stderr.split())  # as wrapped on the test's terminal, joined
    assert said.count(NOT_NUMBERS_FOR_IT) == 2 and "predicted" not in done.output
    assert not (tmp_path / "one.png").exists() and not list(tmp_path.glob("out/*.png"))
    with TestClient(serve.create_app(ServeSettings(models_dir=models))) as client:
        answer = client.post("/api/explain", files={"file": dog_photo.read_bytes()},
                             data={"model": "diverged"})
    assert answer.status_code == 500, answer.text
    assert answer.json()["detail"] == ("cannot use model 'diverged': its outputs are not "
                                       "numbers (NaN or infinite): its training diverged; "
                                       "train it again with a lower --learning-rate")
