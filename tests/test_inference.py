"""transfer.inference without a model: which files a folder or a glob yields, and output
folders checked before any slow work. (Classifiers on real bundles: test_predict.py.)"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from PIL import features
from unwritable import unwritable_folder

from transfer import inference
from transfer.constants import IMAGE_SUFFIXES

READS_AVIF = features.check("avif")  # Pillow's own word, not the code's under test


def test_a_folder_yields_every_image_suffix_and_nothing_else(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    images = [folder / f"a{suffix}" for suffix in IMAGE_SUFFIXES]
    images += [folder / "sub" / "b.JPG"]  # suffixes in any case, subfolders recursed
    others = [folder / "notes.txt", folder / ".DS_Store", folder / "Thumbs.db",
              folder / "._a.jpg", folder / ".c.png", folder / "dog.gradcam.png",
              folder / ".hidden" / "d.jpg", folder / "model.keras",
              folder / "sub" / "augment-preview.png"]  # train --preview-augment's picture
    for path in images + others:
        path.write_bytes(b"x")
    assert len(IMAGE_SUFFIXES) == 12 + READS_AVIF  # .avif when this Pillow reads it
    assert inference.folder_images(folder) == sorted(images)
    rows = inference.gather([folder])
    assert [file for _, file, _ in rows] == sorted(images)
    assert all(error is None for _, _, error in rows)


def test_files_globs_and_their_errors(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    (tmp_path / "b.gradcam.png").write_bytes(b"x")  # explain's own picture: no photo
    (tmp_path / "c.png").symlink_to(tmp_path / "gone.png")  # broken: its row, failing when read
    (tmp_path / "empty").mkdir()
    rows = inference.gather([tmp_path / "a.jpg", str(tmp_path / "*.png"), tmp_path / "empty",
                             str(tmp_path / "none-*.jpg"), tmp_path / "missing.jpg"])
    assert rows == [
        (str(tmp_path / "a.jpg"), tmp_path / "a.jpg", None),
        (str(tmp_path / "b.png"), tmp_path / "b.png", None),
        (str(tmp_path / "c.png"), tmp_path / "c.png", None),
        (str(tmp_path / "empty"), None, "folder has no images"),
        (str(tmp_path / "none-*.jpg"), None, "no file matches this pattern"),
        (str(tmp_path / "missing.jpg"), tmp_path / "missing.jpg", None),  # fails when opened
    ]


def test_writable_folder_makes_it_or_names_it(tmp_path):
    made = inference.writable_folder(tmp_path / "a" / "b")
    assert made.is_dir() and list(made.iterdir()) == []
    with unwritable_folder(tmp_path / "locked") as locked:
        with pytest.raises(OSError) as caught:
            inference.writable_folder(locked)
        assert caught.value.filename == str(locked)
        with pytest.raises(OSError) as caught:
            inference.writable_folder(locked / "new" / "deeper")
        assert caught.value.filename.startswith(str(locked / "new"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as caught:
        inference.writable_folder(tmp_path / "file" / "sub")
    assert str(tmp_path / "file") in caught.value.filename


def test_importing_inference_loads_no_tensorflow():
    import subprocess

    code = ("import sys, transfer.inference, transfer.predict, transfer.evaluate, "
            "transfer.explain, transfer.export; print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


def test_a_glob_inside_a_folder_named_with_brackets(tmp_path):
    """"Urlaub [2023]/*.jpg": the folder's brackets are its name, not a character class."""
    folder = tmp_path / "Urlaub [2023]"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    (folder / "b.jpg").write_bytes(b"x")
    (tmp_path / "Urlaub 2").mkdir()  # what [2023] would match as a class: not taken instead
    (tmp_path / "Urlaub 2" / "c.jpg").write_bytes(b"x")
    rows = inference.gather([str(folder / "*.jpg")])
    assert [file for _, file, _ in rows] == [folder / "a.jpg", folder / "b.jpg"]
    assert inference.gather([str(tmp_path / "Urlaub [2023]x" / "*.jpg")])[0][2] == (
        "no file matches this pattern")
    (folder / "day 2").mkdir()
    (folder / "day 2" / "d.jpg").write_bytes(b"x")
    (tmp_path / "Urlaub 2" / "day 2").mkdir()
    (tmp_path / "Urlaub 2" / "day 2" / "e.jpg").write_bytes(b"x")
    deep = [file for _, file, _ in inference.gather([str(folder / "**" / "*.jpg")])]
    assert deep == [folder / "a.jpg", folder / "b.jpg", folder / "day 2" / "d.jpg"]
    # a pattern in the middle still matches: [ab] is a class where no such folder exists
    assert [file for _, file, _ in inference.gather([str(folder / "[ab].jpg")])] == [
        folder / "a.jpg", folder / "b.jpg"]


def test_a_folder_yields_linked_photos_and_sub_folders(tmp_path):
    """predict on a folder lists what train and fetch-data list: links followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.jpg").write_bytes(b"x")
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    (folder / "linked.jpg").symlink_to(outside / "x.jpg")
    (folder / "more").symlink_to(outside, target_is_directory=True)
    (folder / "__MACOSX").mkdir()
    (folder / "__MACOSX" / "a.jpg").write_bytes(b"x")
    (folder / "@eaDir" / "a.jpg").mkdir(parents=True)  # a Synology NAS's thumbnails of a.jpg
    (folder / "@eaDir" / "a.jpg" / "SYNOPHOTO_THUMB_M.jpg").write_bytes(b"x")
    (folder / "moved.jpg").symlink_to(outside / "gone.jpg")  # broken: listed, fails when read
    assert inference.folder_images(folder) == [folder / "a.jpg", folder / "linked.jpg",
                                               folder / "more" / "x.jpg", folder / "moved.jpg"]


def test_photos_in_formats_transfer_cannot_read_are_said_not_dropped(tmp_path):
    """An iPhone's .heic and a camera's raw files in a folder: error rows that say what to do,
    not a silent "2 image(s) classified" for 4 photos."""
    folder = tmp_path / "phone"
    folder.mkdir()
    for name in ("a.jpg", "b.png", "IMG_0001.HEIC", "DSC_2.nef", "._IMG_0001.HEIC"):
        (folder / name).write_bytes(b"x")
    rows = inference.gather([folder])
    assert [(file.name if file else None) for _, file, _ in rows] == ["a.jpg", "b.png", None,
                                                                      None]
    errors = {name.split("/")[-1]: error for name, _, error in rows if error}
    assert errors == {
        "DSC_2.nef": "camera raw is not a format transfer reads; convert them to JPEG (e.g. "
                     "export as JPEG from the photo app)",
        "IMG_0001.HEIC": "HEIC (an iPhone's photos) is not a format transfer reads; convert "
                         "them to JPEG (e.g. export as JPEG from the photo app)"}
    only_heic = tmp_path / "only"
    only_heic.mkdir()
    (only_heic / "x.heic").write_bytes(b"x")
    assert [error for _, _, error in inference.gather([only_heic])][0].startswith("HEIC")
    # named, or globbed: the same words (it was Pillow's "not an image")
    named = inference.gather([folder / "IMG_0001.HEIC", str(folder / "*.nef")])
    assert [error for _, _, error in named] == [errors["IMG_0001.HEIC"], errors["DSC_2.nef"]]
    assert [file for _, file, _ in named] == [None, None]  # error rows, never opened


def test_a_photo_named_as_a_format_transfer_cannot_read_is_read_when_pillow_opens_it(
        real_photos, tmp_path):
    """A JPEG named .heic (named, globbed or in a folder) was an error row, "HEIC (an
    iPhone's photos) is not a format transfer reads", and a genuine AVIF photo "AVIF is not a
    format transfer reads", though Pillow reads both: they are photos now, in their places
    among the folder's; a real HEIC still gets its reason."""
    from PIL import Image

    folder = tmp_path / "phone"
    folder.mkdir()
    jpeg = real_photos["cats"][0][1]
    (folder / "IMG_1.heic").write_bytes(jpeg)
    (folder / "b.jpg").write_bytes(jpeg)
    (folder / "IMG_3.HEIC").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic")
    if READS_AVIF:
        import io

        Image.open(io.BytesIO(jpeg)).save(folder / "c.avif")
    rows = inference.gather([folder])
    photos = ["IMG_1.heic", "b.jpg"] + (["c.avif"] if READS_AVIF else [])
    assert [file.name for _, file, _ in rows if file] == photos
    assert [(Path(name).name, error.split(" is not")[0]) for name, _, error in rows if error] \
        == [("IMG_3.HEIC", "HEIC (an iPhone's photos)")]
    named = inference.gather([folder / "IMG_1.heic", str(folder / "*.avif")])
    assert [(Path(name).name, error) for name, _, error in named] == [
        ("IMG_1.heic", None)] + ([("c.avif", None)] if READS_AVIF else [])


def test_a_quoted_glob_of_folders_is_those_folders(tmp_path):
    """``predict 'data/test/*'`` (quoted: the shell leaves the glob to transfer) matched only
    the class folders and said "no file matches this pattern", while the same folders given
    by the shell were recursed. A folder a glob matches is read as a named folder is."""
    for cls in ("cats", "dogs"):
        (tmp_path / "test" / cls).mkdir(parents=True)
        (tmp_path / "test" / cls / f"{cls}.1.jpg").write_bytes(b"x")
    (tmp_path / "test" / "notes.txt").write_text("mine")
    (tmp_path / "test" / "empty").mkdir()
    (tmp_path / "test" / "__MACOSX").mkdir()  # an unzipped archive's metadata: no photos
    (tmp_path / "test" / "__MACOSX" / "cats.2.jpg").write_bytes(b"x")
    rows = inference.gather([str(tmp_path / "test" / "*")])
    assert rows == inference.gather([str(tmp_path / "test" / name)  # as the shell expands it
                                     for name in ("cats", "dogs", "empty", "notes.txt")])
    assert [(Path(name).name, error) for name, _, error in rows] == [
        ("cats.1.jpg", None), ("dogs.1.jpg", None), ("empty", "folder has no images"),
        ("notes.txt", None)]  # named: it fails when it is read, "not an image"


def test_a_recursive_glob_lists_each_photo_once(tmp_path):
    """``photos/**`` matches the folders and the files in them: each photo once."""
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    for name in ("a.jpg", "sub/b.jpg"):
        (tmp_path / "photos" / name).write_bytes(b"x")
    rows = inference.gather([str(tmp_path / "photos" / "**")])
    assert [Path(name).relative_to(tmp_path / "photos").as_posix() for name, _, _ in rows] == [
        "a.jpg", "sub/b.jpg"]


def test_a_folder_that_cannot_be_listed_is_a_row_not_left_out(tmp_path):
    """A sub-folder the walk cannot list (no permission; here a path longer than PATH_MAX,
    which stops root too) was skipped in silence: its photos vanished from the answers."""
    from unwritable import unlistable_folder

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"x")
    deep = unlistable_folder(photos / "deep")
    rows = inference.gather([photos])
    assert [(name, error) for name, _, error in rows] == [
        (str(photos / "a.jpg"), None),
        (str(photos / "deep" / deep), "cannot be read (File name too long)")]


def test_walk_refuses_a_folder_it_cannot_list_unless_asked_to_collect(tmp_path):
    from unwritable import unlistable_folder

    from transfer.errors import TransferError
    from transfer.files import walk

    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "c.jpg").write_bytes(b"x")
    deep = unlistable_folder(tmp_path / "cats" / "private")
    with pytest.raises(TransferError, match=r"cannot list the folder .*private/[n/]+ \(File name "
                                            r"too long\): the photos in it would be left out"):
        walk(tmp_path)
    unreadable: list = []
    files, _ = walk(tmp_path, unreadable=unreadable)
    assert "cats/c.jpg" in files
    assert [(rel, exc.strerror) for rel, exc in unreadable] == [
        (f"cats/private/{deep}", "File name too long")]


def test_an_imagenet_fallback_that_fails_says_first_there_is_no_trained_model(
        real_photos, tmp_path, monkeypatch):
    """A notebook in project/notebooks/ (no models/latest there), offline: predict raised
    "ImageNet weights for InceptionV3 could not be downloaded" alone, the fallback to
    ImageNet mode said only to a reporter (silent by default). The error now says first that
    there is no trained model where it looked (the absolute path), then why the fallback
    failed. Before the download, a reporter is warned as without one (it was told in an info
    line of other words)."""
    from conftest import Recorder

    from transfer import bases
    from transfer.tf import keras  # TensorFlow imported quietly, before Keras's module

    inception = sys.modules[keras.applications.InceptionV3.__module__]
    from transfer.errors import TransferError
    from transfer.predict import predict

    spec = bases.get("inception")
    assert bases.cached_weights(spec, include_top=True) is None  # nothing to load offline
    monkeypatch.setattr(inception, "WEIGHTS_PATH", "http://127.0.0.1:9/inception_v3.h5")
    notebooks = tmp_path / "project" / "notebooks"
    notebooks.mkdir(parents=True)
    monkeypatch.chdir(notebooks)
    latest = Path(os.getcwd()) / "models" / "latest"
    recorder = Recorder()
    with pytest.raises(TransferError) as caught:
        inference.open_classifier(reporter=recorder)
    message = str(caught.value)
    assert message.startswith(f"no trained model at {latest} (train one with `transfer "
                              "train`, or pass --model DIR), and the ImageNet fallback to ")
    assert "ImageNet weights for InceptionV3 could not be downloaded" in message
    # said before the download starts (a bar of 92 MB with no word of why came first), as
    # the warning a fallback gives without a download (it was an info line of other words)
    assert recorder.warnings == [
        f"no trained model at {Path('models/latest')}; falling back to the ImageNet classifier "
        "of inception (train one with `transfer train`, or pass --model DIR), whose weights "
        "are downloaded first"]
    assert recorder.infos[:1] == ["Downloading data from http://127.0.0.1:9/inception_v3.h5"]
    photo = tmp_path / "new.jpg"
    photo.write_bytes(real_photos["dogs"][0][1])
    with pytest.raises(TransferError, match=f"^no trained model at {latest} "):
        predict([photo])


def test_a_library_predict_that_downloads_imagenet_weights_prints_nothing(real_photos,
                                                                          tmp_path):
    """README: a progress reporter is optional everywhere, silent by default. A first
    ImageNet predict from Python printed Keras's "Downloading data from ..." and its bar on
    standard error all the same; now nothing without a reporter, and the lines go to a
    reporter's ``info`` when one is given (the CLI's: tests/test_predict.py). A real HTTP
    server on 127.0.0.1 holds the genuine files; only Keras's URLs point at it."""
    import json
    import subprocess

    from conftest import require_asset
    from test_bases import _served

    weights = require_asset("keras/models/mobilenet_2_5_224_tf.h5")
    photo = tmp_path / "dog.jpg"
    photo.write_bytes(real_photos["dogs"][2][1])
    script = (
        "import json, sys\n"
        "import keras.src.applications.imagenet_utils as u, keras.src.applications.mobilenet "
        "as m\n"
        "m.BASE_WEIGHT_PATH = sys.argv[1]\n"
        "u.CLASS_INDEX_PATH = sys.argv[1] + 'imagenet_class_index.json'\n"
        "from transfer.predict import predict\n"
        "from transfer.progress import Reporter\n"
        "class Recorder(Reporter):\n"
        "    infos = []\n"
        "    def info(self, message): self.infos.append(message)\n"
        "told = Recorder() if sys.argv[3] == 'reporter' else None\n"
        "result = predict([sys.argv[2]], imagenet=True, base='mobilenet', alpha=0.25, "
        "reporter=told)\n"
        "print(json.dumps({'label': result.items[0].label, 'infos': Recorder.infos}))\n")
    with _served(weights.parent) as url:
        def run(how: str, home: str):
            done = subprocess.run(
                [sys.executable, "-c", script, url, str(photo), how],
                env={**os.environ, "KERAS_HOME": str(tmp_path / home)}, capture_output=True,
                text=True, timeout=300, cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout), done.stderr

        silent, silent_err = run("none", "home-silent")
        told, told_err = run("reporter", "home-told")
    assert "Downloading" not in silent_err and "Downloading" not in told_err
    assert silent["infos"] == [] and silent["label"] == told["label"]
    assert f"Downloading data from {url}mobilenet_2_5_224_tf.h5" in told["infos"]
    assert f"Downloading data from {url}imagenet_class_index.json" in told["infos"]
    for home in ("home-silent", "home-told"):
        assert sorted(p.name for p in (tmp_path / home / "models").iterdir()) == [
            "imagenet_class_index.json", "mobilenet_2_5_224_tf.h5"]
