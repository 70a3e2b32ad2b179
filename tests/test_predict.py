"""transfer predict: a real bundle on other real photos, output schemas, bad inputs, tampered
bundles, and ImageNet mode with the genuine MobileNet-0.25 classifier."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import require_asset, split_images, text_as_jpg, truncated
from PIL import Image
from typer.testing import CliRunner
from unwritable import names_path, unwritable_folder

from transfer import bundle, images, inference, predict
from transfer.cli import app
from transfer.errors import TransferError
from transfer.settings import PredictSettings

runner = CliRunner()


def test_predicts_held_out_photos_with_the_bundles_classes(trained_bundle, small_split):
    test_set = split_images(small_split / "test")  # 20 + 20 photos training never saw
    result = predict.predict([small_split / "test"], model=trained_bundle.bundle)
    assert result.mode == "bundle" and result.class_names == ["cats", "dogs"]
    assert [i.file for i in result.items] == [str(p) for p, _ in test_set]
    assert result.failed == 0
    for item in result.items:
        assert item.label in ("cats", "dogs")
        assert sum(item.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert item.probability == max(item.probabilities.values())
        assert item.image["mode"] == "RGB" and item.image["width"] > 50
    accuracy = np.mean([i.label == cls for i, (_, cls) in zip(result.items, test_set,
                                                               strict=True)])
    assert accuracy >= 0.75, accuracy
    model, meta = bundle.load(trained_bundle.bundle)  # resized as meta.json says (Pillow)
    assert meta["preprocessing"]["resize"] == "pil"
    size = meta["image_size"]
    pixels = images.rgb_array(images.open_image(test_set[0][0], size), size, "pil")
    p_dog = float(model.predict(pixels[None], verbose=0)[0, 0])
    assert result.items[0].probabilities["dogs"] == pytest.approx(p_dog, abs=1e-6)
    # batching does not change anything
    single = predict.predict([small_split / "test"], model=trained_bundle.bundle, batch_size=1)
    for a, b in zip(result.items, single.items, strict=True):
        assert a.label == b.label and a.probability == pytest.approx(b.probability, abs=1e-5)


def test_json_and_csv_schemas(trained_bundle, small_split, tmp_path):
    files = [str(p) for p, _ in split_images(small_split / "test", 3)]
    model = str(trained_bundle.bundle)
    result = runner.invoke(app, ["predict", *files, "--model", model, "--format", "json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"mode", "model", "base", "class_names", "fallback", "failed",
                            "engine", "predictions"}
    assert payload["class_names"] == ["cats", "dogs"] and payload["failed"] == 0
    # six images: auto keeps TensorFlow (converting would cost more than it saves)
    assert payload["engine"]["requested"] == "auto" and payload["engine"]["name"] == "tf"
    assert payload["engine"]["images"] == 6 and "fewer than" in payload["engine"]["fallback"]
    assert payload["engine"]["batch_size"] == 32  # what TensorFlow ran (it said 8)
    assert len(payload["predictions"]) == 6
    for row in payload["predictions"]:
        assert set(row) == {"file", "label", "probability", "top", "probabilities", "image",
                            "error"}
        assert row["top"][0] == {"label": row["label"], "probability": row["probability"]}

    out = tmp_path / "predictions.csv"
    result = runner.invoke(app, ["predict", *files, "--model", model, "--top", "2",
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == ["file", "label", "probability", "label_2", "probability_2",
                             "p(cats)", "p(dogs)", "error"]
    assert [r["file"] for r in rows] == files
    for r in rows:
        assert float(r["p(cats)"]) + float(r["p(dogs)"]) == pytest.approx(1)
        assert r["label_2"] != r["label"] and r["error"] == ""
        for rank in ("", "_2"):  # each rank's number is the one in its class's p() column
            assert r["probability" + rank] == r[f"p({r['label' + rank]})"], r
    again = runner.invoke(app, ["predict", *files, "--model", model, "--output", str(out)])
    assert again.exit_code == 1 and "--force" in again.output
    table = runner.invoke(app, ["predict", files[0], "--model", model])
    assert table.exit_code == 0 and "p(cats)" in table.stdout and "p(dogs)" in table.stdout
    # the table's numbers: probability, p(cats), p(dogs); the label's column holds the first
    shown = re.findall(r"(?<![\w.])[01]\.\d{4}(?![\w.])", table.stdout)
    label = payload["predictions"][0]["label"]
    assert len(shown) == 3 and shown[1 + ["cats", "dogs"].index(label)] == shown[0], table.stdout


def test_an_output_whose_name_says_another_format_is_written_as_asked_and_said(
        trained_bundle, small_split, tmp_path):
    """``--output predictions.xlsx`` wrote the terminal's box-drawn table into a file a
    spreadsheet cannot open, and ``--output o.csv --format json`` JSON, both without a word."""
    photo = str(split_images(small_split / "test", 1)[0][0])
    model = str(trained_bundle.bundle)
    said = {}
    for name, more in (("predictions.xlsx", []), ("o.csv", ["--format", "json"]),
                       ("p.csv", []), ("p.txt", [])):
        result = runner.invoke(app, ["predict", photo, "--model", model, "--output",
                                     str(tmp_path / name), *more])
        assert result.exit_code == 0, result.output
        said[name] = [line for line in result.stderr.splitlines() if "warning" in line]
    assert said == {
        "predictions.xlsx": [f"warning: writing the table, as text, into {tmp_path}/"
                             "predictions.xlsx: predict writes CSV into a .csv file and JSON "
                             "into a .json file (or give --format csv)"],
        "o.csv": [f"warning: writing json into {tmp_path}/o.csv, as --format says (its name "
                  "says csv)"],
        "p.csv": [], "p.txt": []}
    assert json.loads((tmp_path / "o.csv").read_text())["predictions"][0]["file"] == photo


def test_the_library_writes_output_as_the_cli_does(trained_bundle, small_split, tmp_path):
    """predict(..., output="p.json") took the output, checked it would not overwrite, and
    wrote nothing: only the CLI wrote it. The library now writes JSON or CSV itself, the
    CLI's file is the same, and the table (drawn by the CLI) is refused before any work."""
    files = [str(p) for p, _ in split_images(small_split / "test", 2)]
    model = trained_bundle.bundle
    result = predict.predict(files, model=model, output=tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text()) == json.loads(result.render("json"))
    predict.predict(files, model=model, output=tmp_path / "p.txt", format="csv")
    assert (tmp_path / "p.txt").read_text() == result.render("csv")
    with pytest.raises(TransferError, match="already exists; use --force"):
        predict.predict(files, model=model, output=tmp_path / "p.json")
    with pytest.raises(TransferError, match="the table is drawn by the CLI"):
        predict.predict(files, model=model, output=tmp_path / "p.table")
    assert not (tmp_path / "p.table").exists()
    # --force onto one of the photos (named, or in a folder named) replaced it by the table
    photo = tmp_path / "mine.jpg"
    photo.write_bytes(Path(files[0]).read_bytes())
    for named in ([str(photo)], [str(tmp_path)]):
        with pytest.raises(TransferError, match="is one of the photos to classify"):
            predict.predict(named, model=model, output=photo, format="csv", force=True)
    # the CLI's table (the default format for photo.jpg) was written by the CLI itself,
    # unchecked; without --force the refusal advised --force; a HEIC photo is a photo too
    heic = tmp_path / "IMG_1.HEIC"
    heic.write_bytes(b"ftypheic")
    for target in (photo, heic):
        for force in (["--force"], []):
            cli = runner.invoke(app, ["predict", str(tmp_path), "--model", str(model),
                                      "--output", str(target), *force])
            assert cli.exit_code == 1 and "is one of the photos to classify" in cli.output
            assert "use --force" not in cli.output
    assert photo.read_bytes() == Path(files[0]).read_bytes() and heic.read_bytes() == b"ftypheic"
    # two links to one photo (a class folder of links) are two names: two rows
    farm = tmp_path / "farm"
    farm.mkdir()
    (farm / "a.jpg").symlink_to(photo)
    (farm / "b.jpg").symlink_to(photo)
    linked = predict.predict([str(farm), str(farm / "a.jpg")], model=model)
    assert sorted(Path(i.file).name for i in linked.items) == ["a.jpg", "b.jpg"]
    cli = runner.invoke(app, ["predict", *files, "--model", str(model), "--output",
                              str(tmp_path / "cli.json")])
    assert cli.exit_code == 0 and f"wrote {tmp_path / 'cli.json'}" in cli.stderr
    written = json.loads((tmp_path / "cli.json").read_text())  # its engine's timing aside
    assert written["predictions"] == json.loads(result.render("json"))["predictions"]
    table = runner.invoke(app, ["predict", *files, "--model", str(model), "--output",
                                str(tmp_path / "cli.txt")])
    assert table.exit_code == 0 and "p(cats)" in (tmp_path / "cli.txt").read_text()


def test_the_json_of_a_diverged_model_is_strict_json():
    """A model whose training diverged answers NaN: predict --format json wrote NaN (no JSON
    for a browser) and serve's /api/predict was a 500 for every request ("Out of range
    float values are not JSON compliant"). Such a number is null."""
    nan = float("nan")
    item = predict.Prediction("a.png", "0", nan, [{"label": "0", "probability": nan}],
                              {"0": nan, "1": nan})
    text = predict.Predictions("bundle", "m", "mnist-cnn", ["0", "1"], [item]).to_json()

    def refuse(constant):
        raise ValueError(constant)

    row = json.loads(text, parse_constant=refuse)["predictions"][0]
    assert row["probability"] is None and row["probabilities"] == {"0": None, "1": None}
    assert row["top"] == [{"label": "0", "probability": None}]


def test_csv_columns_stay_apart_when_classes_are_numbers():
    """Classes named 1, 10, 2, 9 with --top 3: the second best's column and class 2's column
    are two columns, each read back with its own value."""
    names = ["1", "10", "2", "9"]
    probs = {"1": 0.05, "10": 0.7, "2": 0.2, "9": 0.05}
    top = [{"label": n, "probability": probs[n]} for n in ("10", "2", "1")]
    item = predict.Prediction("a.jpg", "10", 0.7, top, probs)
    text = predict.Predictions("bundle", "m", "mobilenet", names, [item]).to_csv()
    header = text.splitlines()[0].split(",")
    assert len(header) == len(set(header)) == 3 + 2 * 2 + 4 + 1
    row = next(csv.DictReader(io.StringIO(text)))
    assert (row["label_2"], row["probability_2"], row["label_3"]) == ("2", "0.200000", "1")
    assert {n: float(row[f"p({n})"]) for n in names} == probs


def test_top_k_of_many_classes_is_best_first():
    classifier = inference.Classifier()
    classifier.class_names = ["a", "b", "c", "d"]
    ranked = classifier.ranked(np.array([[0.1, 0.4, 0.3, 0.2], [0.5, 0.05, 0.15, 0.3]]), 3)
    assert [[t["label"] for t in row] for row in ranked] == [["b", "c", "d"], ["a", "d", "c"]]
    # two classes tied for the top (17 classes: numpy's default sort is then not stable):
    # the first, as argmax takes it in evaluate, explain and serve (it gave the second)
    classifier.class_names = [f"c{i}" for i in range(17)]
    tied = np.arange(17) / 1000
    tied[2] = tied[3] = 0.5
    assert classifier.ranked(tied[None], 2)[0][0]["label"] == "c2" == f"c{tied.argmax()}"


def test_a_diverged_models_answers_are_error_rows(trained_bundle, small_split, tmp_path):
    """A bundle whose training diverged (saved with a warning) answers NaN: predict named the
    first class for every photo, at probability nan. Each row is now an error saying why."""
    from conftest import diverged_copy

    broken = diverged_copy(trained_bundle.bundle, tmp_path / "diverged")
    photos = [str(p) for p, _ in split_images(small_split / "test", 1)]
    result = predict.predict(photos, model=broken)
    assert [(i.label, i.error) for i in result.items] == [(None, predict.NOT_NUMBERS)] * 2
    rows = json.loads(result.to_json())["predictions"]
    assert [r["label"] for r in rows] == [None, None]


def test_bad_inputs_get_error_rows_and_the_rest_is_predicted(trained_bundle, real_photos,
                                                            tmp_path):
    good = real_photos["dogs"][5][1]
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(good)
    (folder / "text.jpg").write_bytes(text_as_jpg())
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "cut.jpg").write_bytes(truncated(good))
    source = Image.open(io.BytesIO(good))
    source.convert("CMYK").save(folder / "cmyk.jpg")
    source.convert("RGBA").save(folder / "rgba.png")
    Image.new("RGB", (1, 1)).save(folder / "pixel.png")
    (tmp_path / "empty").mkdir()
    args = [str(folder), str(tmp_path / "missing.jpg"), str(tmp_path / "empty"),
            str(tmp_path / "nothing-*.png"), str(tmp_path / "inputs" / "g*.jpg")]
    result = predict.predict(args, model=trained_bundle.bundle)
    by_file = {i.file.replace(str(tmp_path) + "/", ""): i for i in result.items}
    errors = {name: item.error for name, item in by_file.items() if item.error}
    assert errors == {
        "inputs/text.jpg": "not an image (Pillow cannot identify it)",
        "inputs/zero.jpg": "empty file (0 bytes)",
        "inputs/cut.jpg": errors.get("inputs/cut.jpg"),
        "inputs/pixel.png": "image is 1x1 px; too small to classify (at least 8x8)",
        "missing.jpg": "no such file",
        "empty": "folder has no images",
        "nothing-*.png": "no file matches this pattern",
    }
    assert "truncated" in errors["inputs/cut.jpg"]
    assert result.failed == 7
    # the usable ones are predicted, CMYK and RGBA included, close to the original photo
    p_good = by_file["inputs/good.jpg"].probabilities["dogs"]
    for name in ("inputs/cmyk.jpg", "inputs/rgba.png"):
        assert by_file[name].error is None
        assert by_file[name].probabilities["dogs"] == pytest.approx(p_good, abs=0.1)
    # named by the folder and by the glob: one row (it was two, and counted twice)
    assert sum(i.file.endswith("good.jpg") for i in result.items) == 1
    cli = runner.invoke(app, ["predict", *args, str(folder / "good.jpg"), "--model",
                              str(trained_bundle.bundle)])
    assert cli.exit_code == 1
    assert "7 of 10 input(s) failed" in cli.output and "Traceback" not in cli.output
    twice = predict.predict([good, good], model=trained_bundle.bundle)  # in memory: each its own
    assert [i.file for i in twice.items] == ["image 1", "image 2"]


def test_an_input_named_twice_is_one_row_errors_too(trained_bundle, real_photos, tmp_path):
    """`predict img/* img/emptydir` (emptydir in img) gave "folder has no images" twice, and
    a HEIC photo named and found in its folder two error rows, though each file is taken
    once (as a photo named twice is): one row each."""
    img = tmp_path / "img"
    (img / "emptydir").mkdir(parents=True)
    (img / "cat.jpg").write_bytes(real_photos["cats"][0][1])
    (img / "IMG_9.HEIC").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic")
    result = predict.predict([str(img / "*"), img / "emptydir", str(img / "emptydir") + "/",
                              img / "IMG_9.HEIC", img, str(tmp_path / "none-*.jpg"),
                              str(tmp_path / "none-*.jpg")], model=trained_bundle.bundle)
    rows = [(Path(item.file).name, (item.error or "").split(" is not")[0].split(":")[0])
            for item in result.items]
    assert rows == [("IMG_9.HEIC", "HEIC (an iPhone's photos)"), ("cat.jpg", ""),
                    ("emptydir", "folder has no images"),
                    ("none-*.jpg", "no file matches this pattern")], rows
    assert result.failed == 3


def test_tampered_and_missing_bundles_are_clear_errors(trained_bundle, tmp_path, real_photos):
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(real_photos["cats"][0][1])

    def tampered(name, edit):
        copy = tmp_path / name
        shutil.copytree(trained_bundle.bundle, copy)
        meta_path = copy / "meta.json"
        edit(meta_path)
        return copy

    def meta_edit(**changes):
        def edit(path):
            meta = json.loads(path.read_text())
            meta.update(changes)
            path.write_text(json.dumps(meta))
        return edit

    cases = {
        tampered("classes", meta_edit(class_names=["a", "b", "c"])): "3 classes but the model",
        tampered("size", meta_edit(image_size=150)): "input 150x150x3",
        tampered("nometa", lambda p: p.unlink()): "has no meta.json",
        tampered("garbled", lambda p: p.write_text("{not json")): "not valid JSON",
        tampered("keys", lambda p: p.write_text("{}")): "lacks 'schema_version'",
        tampered("future", meta_edit(schema_version=99)): "upgrade transfer",
        tmp_path / "nowhere": "no model bundle at",
    }
    for folder, message in cases.items():
        with pytest.raises(TransferError, match=message):
            predict.predict([photo], model=folder)
        result = runner.invoke(app, ["predict", str(photo), "--model", str(folder)])
        assert result.exit_code == 1 and "Traceback" not in result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), result.output
        assert message in lines[0], result.output
    # a photo named wrong is said with the model's error, not only after the model is fixed
    # (ImageNet weights offline: a 92 MB download first, then "no such file")
    with pytest.raises(TransferError) as raised:
        predict.predict([photo, tmp_path / "elephnat.jpg"], model=tmp_path / "size")
    assert "input 150x150x3" in str(raised.value)
    assert str(raised.value).endswith(". Besides, 1 of the 2 images named cannot be read: "
                                      f"{tmp_path / 'elephnat.jpg'}: no such file")


def test_unsafe_model_file_is_refused(trained_bundle, tmp_path):
    """A bundle whose model holds a Lambda layer (arbitrary code) is refused: safe_mode."""
    from transfer.tf import keras

    copy = tmp_path / "lambda"
    shutil.copytree(trained_bundle.bundle, copy)
    inputs = keras.Input((224, 224, 3))
    x = keras.layers.Lambda(lambda t: t * 1.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x)).save(copy / "model.keras")
    with pytest.raises(TransferError, match="cannot load"):
        bundle.load(copy)


# --------------------------------------------------------------------------- ImageNet mode

DOGS = range(151, 269)  # ImageNet class indices of dog breeds
CATS = range(281, 294)  # domestic and wild cats


def _index(synset: str) -> int:
    path = require_asset("keras/models/imagenet_class_index.json")
    table = {v[0]: int(k) for k, v in json.loads(path.read_text()).items()}
    return table[synset]


def test_imagenet_mode_genuine_weights_on_kaggle_photos(real_photos, tmp_path):
    require_asset("keras/models/mobilenet_2_5_224_tf.h5")
    files = []
    for cls in ("cats", "dogs"):
        for name, data in real_photos[cls][:20]:
            (tmp_path / name).write_bytes(data)
            files.append(tmp_path / name)
    result = predict.predict(files, imagenet=True, base="mobilenet", alpha=0.25)
    assert result.mode == "imagenet" and result.failed == 0
    assert result.model == "MobileNet alpha 0.25 (ImageNet)"
    hits = {"cat": 0, "dog": 0}
    top1_cat = {"cat": 0, "dog": 0}
    for item in result.items:
        assert len(item.top) == 3 and item.probabilities is None
        probs = [t["probability"] for t in item.top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        kind = "cat" if "cat." in item.file else "dog"
        ids = [_index(t["synset"]) for t in item.top]
        wanted = CATS if kind == "cat" else DOGS
        hits[kind] += any(i in wanted for i in ids)
        top1_cat[kind] += ids[0] in CATS
    assert hits["dog"] >= 18, hits  # a dog breed in the top 3 of nearly every dog photo
    assert hits["cat"] >= 11, hits  # MobileNet-0.25 is the smallest ImageNet net there is
    assert top1_cat["cat"] >= 7 and top1_cat["dog"] <= 1, top1_cat


def test_imagenet_cli_and_fallback_without_a_bundle(real_photos, tmp_path, monkeypatch):
    require_asset("keras/models/mobilenet_2_5_224_tf.h5")
    photo = tmp_path / "dog.jpg"
    photo.write_bytes(real_photos["dogs"][2][1])
    monkeypatch.chdir(tmp_path)  # no models/latest here
    result = runner.invoke(app, ["predict", str(photo), "--base", "mobilenet", "--alpha",
                                 "0.25", "--format", "json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["mode"] == "imagenet" and "no trained model" in payload["fallback"]
    assert "no trained model at models/latest" in result.stderr
    assert len(payload["predictions"][0]["top"]) == 3
    assert _index(payload["predictions"][0]["top"][0]["synset"]) in DOGS
    table = runner.invoke(app, ["predict", str(photo), "--imagenet", "--base", "mobilenet",
                                "--alpha", "0.25", "--top", "5"])
    assert table.exit_code == 0 and "next 4" in table.stdout
    assert payload["predictions"][0]["top"][2]["label"] in table.stdout
    # models/latest left pointing at a bundle moved away: said, not "no trained model" and
    # ImageNet's classes for the user's cats and dogs
    (tmp_path / "models").mkdir()
    (tmp_path / "models/latest").symlink_to("cats-dogs-old")
    gone = runner.invoke(app, ["predict", str(photo), "--base", "mobilenet", "--alpha", "0.25"])
    assert gone.exit_code == 1 and gone.stderr.strip() == (
        "error: models/latest points at cats-dogs-old, which is missing (moved or deleted?); "
        "pass --model DIR, or train again")


def test_a_first_imagenet_predict_downloads_its_weights_and_stdout_stays_json(real_photos,
                                                                             tmp_path):
    """The user's first `predict --format json` with no weights cached: Keras downloads the
    classifier weights and the class index, saying "Downloading data from ..." and drawing a
    progress bar on standard output, before the JSON. A real HTTP server on 127.0.0.1 holds
    the genuine files; only the URLs Keras downloads from point at it (no internet here)."""
    import functools
    import subprocess
    import sys
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    served = require_asset("keras/models/mobilenet_2_5_224_tf.h5").parent
    photo = tmp_path / "dog.jpg"
    photo.write_bytes(real_photos["dogs"][2][1])
    home = tmp_path / "keras-home"
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    script = (
        "import sys\n"
        "import keras.src.applications.imagenet_utils as u, keras.src.applications.mobilenet as m\n"
        f"m.BASE_WEIGHT_PATH = {url!r}\n"
        f"u.CLASS_INDEX_PATH = {url + 'imagenet_class_index.json'!r}\n"
        "from transfer.cli import main\n"
        "sys.argv = ['transfer', *sys.argv[1:]]\n"
        "main()\n")
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, "predict", str(photo), "--imagenet", "--base",
             "mobilenet", "--alpha", "0.25", "--format", "json"],
            env={**os.environ, "KERAS_HOME": str(home)}, capture_output=True, text=True,
            timeout=300, cwd=tmp_path)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)  # nothing but the JSON
    assert _index(payload["predictions"][0]["top"][0]["synset"]) in DOGS
    assert f"Downloading data from {url}mobilenet_2_5_224_tf.h5" in done.stderr
    assert f"Downloading data from {url}imagenet_class_index.json" in done.stderr
    assert sorted(p.name for p in (home / "models").iterdir()) == [
        "imagenet_class_index.json", "mobilenet_2_5_224_tf.h5"]


def test_imagenet_mode_without_its_class_index_offline_fails_before_classifying(real_photos,
                                                                                tmp_path):
    """KERAS_HOME holding the weights but not imagenet_class_index.json, offline: every image
    was classified first, then "cannot read Keras's ImageNet class index". The index is read
    when the classifier is made: the error comes first, says where to put the file and where
    it is downloaded from; with the file put there, the same command answers."""
    import subprocess
    import sys

    weights = require_asset("keras/models/mobilenet_2_5_224_tf.h5")
    index = require_asset("keras/models/imagenet_class_index.json")
    home = tmp_path / "keras-home"
    (home / "models").mkdir(parents=True)
    (home / "models" / weights.name).symlink_to(weights.resolve())
    photos = []
    for name, data in real_photos["dogs"][:3]:
        (tmp_path / name).write_bytes(data)
        photos.append(str(tmp_path / name))
    script = (
        "import json, sys\n"
        "import keras.src.applications.imagenet_utils as u\n"
        "u.CLASS_INDEX_PATH = 'http://127.0.0.1:9/imagenet_class_index.json'  # offline\n"
        "from transfer import predict\n"
        "from transfer.errors import TransferError\n"
        "classified = []\n"
        "real = predict.classify_files\n"
        "predict.classify_files = lambda *a, **k: classified.append(1) or real(*a, **k)\n"
        "try:\n"
        "    result = predict.predict(sys.argv[1:], imagenet=True, base='mobilenet', "
        "alpha=0.25)\n"
        "    print(json.dumps([item.label for item in result.items]))\n"
        "except TransferError as exc:\n"
        "    print(json.dumps({'error': str(exc), 'classified': len(classified)}))\n")

    def run():
        done = subprocess.run([sys.executable, "-c", script, *photos],
                              env={**os.environ, "KERAS_HOME": str(home)},
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])

    failed = run()
    assert failed["classified"] == 0, failed  # nothing classified for nothing
    assert failed["error"].startswith("cannot read Keras's ImageNet class index")
    assert f"put imagenet_class_index.json into {home / 'models'} (KERAS_HOME)" in \
        failed["error"]
    assert failed["error"].endswith("from https://storage.googleapis.com/download."
                                    "tensorflow.org/data/imagenet_class_index.json")
    shutil.copy(index, home / "models")  # the way out it names
    labels = run()
    assert len(labels) == 3 and all(labels), labels


@pytest.mark.parametrize("base", ["inception", "vgg16"])
def test_imagenet_mode_other_bases_random_weights(base, real_photos, tmp_path):
    """Genuine InceptionV3/VGG16 weights are not on this machine: the same code path with
    random weights checks sizes, preprocessing and decoding."""
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(real_photos["cats"][1][1])
    classifier = inference.ImageNetClassifier(base, weights=None)
    assert classifier.model.input_shape[1:] == (classifier.spec.size,) * 2 + (3,)
    result = predict.predict([photo], classifier=classifier, top=4)
    assert len(result.items[0].top) == 4 and result.items[0].error is None
    assert result.items[0].top[0]["synset"].startswith("n")


def test_an_imagenet_classifier_leaves_the_callers_random_generators_alone():
    """Building the ImageNet classifier (predict's fallback, open_classifier, the server's
    ImageNet models) drew from Python's random, as loading a bundle did before: a program's
    seeded sequence changed with every classifier it opened."""
    import random

    random.seed(1)
    np.random.seed(1)
    expected = (random.random(), float(np.random.rand()))
    random.seed(1)
    np.random.seed(1)
    inference.ImageNetClassifier("mobilenet", 0.25, weights=None)
    assert (random.random(), float(np.random.rand())) == expected


def test_imagenet_errors(tmp_path):
    with pytest.raises(TransferError, match="scratch has no ImageNet classifier"):
        inference.ImageNetClassifier("scratch")
    with pytest.raises(TransferError, match="--alpha"):
        inference.ImageNetClassifier("mobilenet", alpha=0.3)
    with pytest.raises(TransferError, match="either --model or --imagenet"):
        predict.predict(["x.jpg"], model=tmp_path, imagenet=True)
    with pytest.raises(TransferError, match="at least one image"):
        predict.predict([], imagenet=True)
    # --invert was ignored in silence by the ImageNet classifier (a colour bundle refuses it)
    with pytest.raises(TransferError, match="digit models .* not to the ImageNet classifier"):
        predict.predict(["x.jpg"], imagenet=True, invert="yes")
    with pytest.raises(TransferError, match="digit models .* no trained model at "):
        predict.predict(["x.jpg"], models_dir=tmp_path, invert="no")


def test_base_or_alpha_without_imagenet_are_refused_for_a_bundle(trained_bundle, real_photos,
                                                                   tmp_path, monkeypatch):
    """With a bundle to use, `--alpha 0.25` said "--alpha applies to mobilenet only, not
    inception" (the bundle is a MobileNet; the user never chose inception) and `--base
    mobilenet` was ignored in silence: both now say what they choose and how to mean it."""
    bundle = trained_bundle.bundle
    (tmp_path / "x.jpg").write_bytes(real_photos["dogs"][2][1])
    for options, given, verb in (({"alpha": 0.25}, "--alpha", "chooses"),
                                 ({"base": "mobilenet"}, "--base", "chooses"),
                                 ({"base": "mobilenet", "alpha": 0.25}, "--base and --alpha",
                                  "choose")):
        with pytest.raises(TransferError) as info:
            predict.predict([tmp_path / "x.jpg"], model=bundle, **options)
        assert str(info.value) == (f"{given} {verb} the ImageNet classifier (with --imagenet); "
                                   f"the bundle {bundle} brings its own base: leave {given} "
                                   "out, or add --imagenet")
    monkeypatch.chdir(tmp_path)  # models/latest, as a user's folder has it
    (tmp_path / "models").mkdir()
    (tmp_path / "models/latest").symlink_to(bundle)
    result = runner.invoke(app, ["predict", "x.jpg", "--alpha", "0.25"])
    assert result.exit_code == 1 and result.stderr.strip() == (
        "error: --alpha chooses the ImageNet classifier (with --imagenet); the bundle "
        "models/latest brings its own base: leave --alpha out, or add --imagenet")
    result = runner.invoke(app, ["predict", "x.jpg", "--alpha", "0.3"])  # no width at all
    assert result.exit_code == 2 and "--alpha for mobilenet must be one of" in result.stderr


# --------------------------------------------------------------------------- settings, reuse


def test_settings_object_and_keywords_are_the_same_call(trained_bundle, small_split):
    files = [p for p, _ in split_images(small_split / "test", 2)]
    by_keywords = predict.predict(files, model=trained_bundle.bundle, top=2)
    by_settings = predict.predict(PredictSettings(paths=files, model=trained_bundle.bundle,
                                                  top=2))

    def untimed(result):  # the engine's images/s is a measurement: it differs run to run
        payload = result.as_dict()
        payload["engine"] = {k: v for k, v in payload["engine"].items()
                             if k != "images_per_second"}
        return payload

    assert untimed(by_keywords) == untimed(by_settings)
    assert all(len(item.top) == 2 for item in by_settings.items)


def test_settings_are_checked_before_any_model_loads(tmp_path):
    nowhere = tmp_path / "no-bundle"  # would fail later, when loaded
    with pytest.raises(TransferError, match="--format must be one of table, json, csv"):
        predict.predict(["x.jpg"], model=nowhere, format="xml")
    with pytest.raises(TransferError, match="--batch-size must be at least 1"):
        predict.predict(["x.jpg"], model=nowhere, batch_size=0)
    with pytest.raises(TransferError, match="--top must be at least 1"):
        predict.predict(["x.jpg"], model=nowhere, top=0)
    with pytest.raises(TransferError, match="--engine must be one of auto, tf, tflite"):
        predict.predict(["x.jpg"], model=nowhere, engine="onnx")
    taken = tmp_path / "taken.csv"
    taken.write_text("keep")
    with pytest.raises(TransferError, match="already exists; use --force"):
        predict.predict(["x.jpg"], model=nowhere, output=taken)
    assert taken.read_text() == "keep"


def test_one_loaded_classifier_serves_many_calls(trained_bundle, small_split):
    """What a web server does: load once, classify files, bytes and arrays, from threads."""
    from concurrent.futures import ThreadPoolExecutor

    files = [p for p, _ in split_images(small_split / "test", 4)]
    classifier = inference.BundleClassifier(trained_bundle.bundle)
    reference = predict.predict(files, model=trained_bundle.bundle)
    expected = np.array([[i.probabilities["cats"], i.probabilities["dogs"]]
                         for i in reference.items])
    np.testing.assert_allclose(classifier.classify(files), expected, atol=1e-6)
    again = predict.predict(files, classifier=classifier)
    assert [i.label for i in again.items] == [i.label for i in reference.items]
    assert again.model == str(trained_bundle.bundle) and again.fallback is None
    with pytest.raises(TransferError, match="predict got a classifier and also model"):
        predict.predict(files, classifier=classifier, model="models/another")
    with pytest.raises(TransferError, match="predict got a classifier and also model"):
        predict.predict(PredictSettings(paths=files, model="models/another"),
                        classifier=classifier)
    assert predict.predict(files, classifier=classifier, base="inception").items  # a default
    from_bytes = classifier.classify([f.read_bytes() for f in files])
    arrays = np.stack([classifier.prepare(f)[0] for f in files])
    np.testing.assert_allclose(from_bytes, expected, atol=1e-6)
    np.testing.assert_allclose(classifier.classify(arrays), expected, atol=1e-6)
    np.testing.assert_allclose(classifier.classify(arrays, batch_size=3), expected, atol=1e-6)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: classifier.classify([files[i % len(files)]]),
                                range(16)))
    for i, probs in enumerate(results):
        np.testing.assert_allclose(probs[0], expected[i % len(files)], atol=1e-6)
    with pytest.raises(TransferError, match="not an image"):
        classifier.classify([b"not an image at all"])
    with open(files[0], "rb") as handle:  # an open file is one image (it was read by lines)
        np.testing.assert_allclose(classifier.classify(handle)[0], expected[0], atol=1e-6)
    for thing in (42, None):  # a bare TypeError ("'int' object is not iterable")
        with pytest.raises(TransferError, match=f"image 1: not an image: a {type(thing).__name__}"):
            classifier.classify(thing)



def test_a_classifier_that_is_not_one_is_one_line(trained_bundle, small_split):
    """predict(classifier="models/m") or open_classifier's whole pair failed with an
    AttributeError ('str' object has no attribute 'class_names')."""
    from transfer.inference import open_classifier

    photo = next((small_split / "validate/cats").iterdir())
    pair = open_classifier(model=trained_bundle.bundle)
    with pytest.raises(TransferError, match=r"^predict's classifier= takes a Classifier .* "
                                            r"not open_classifier's whole \(classifier, "
                                            r"fallback\) pair: pass its first item$"):
        predict.predict([photo], classifier=pair)
    with pytest.raises(TransferError, match=r"^predict's classifier= takes a Classifier .* "
                                            r"not '.*'$"):
        predict.predict([photo], classifier=str(trained_bundle.bundle))
    assert predict.predict([photo], classifier=pair[0]).items[0].error is None

def test_classify_holds_one_batch_of_prepared_images_at_a_time(trained_bundle, small_split,
                                                                monkeypatch):
    """classify(paths) prepared every image first (1 GB for a thousand 288 px photos); it now
    runs each batch as soon as it is full, with the same answers."""
    files = [p for p, _ in split_images(small_split / "test", 4)]
    classifier = inference.BundleClassifier(trained_bundle.bundle)
    expected = classifier.classify(files)
    prepared, seen_at_calls = [0], []
    real_prepare, real_probabilities = classifier.prepare, classifier.probabilities

    def counting_prepare(item):
        prepared[0] += 1
        return real_prepare(item)

    def recording_probabilities(batch):
        seen_at_calls.append((prepared[0], len(batch)))
        return real_probabilities(batch)

    monkeypatch.setattr(classifier, "prepare", counting_prepare)
    monkeypatch.setattr(classifier, "probabilities", recording_probabilities)
    got = classifier.classify(iter(files), batch_size=3)  # a generator works too
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert seen_at_calls == [(3, 3), (6, 3), (8, 2)]  # prepared so far, batch size


def test_photos_in_memory_are_read_as_their_files(trained_bundle, small_split):
    """A program holding its photos in memory (the bytes of a file, a Pillow image, a NumPy
    array of any size) gets what the files give; an array that is no photo (scaled to 0-1,
    two channels) is one clear TransferError, not a TensorFlow shape error or a wrong
    answer."""
    from PIL import Image

    files = [p for p, _ in split_images(small_split / "test", 2)]
    classifier = inference.BundleClassifier(trained_bundle.bundle)
    expected = classifier.classify(files)
    assert classifier.input_shape() != np.asarray(Image.open(files[0])).shape
    pictures = [Image.open(f) for f in files]
    np.testing.assert_allclose(classifier(pictures), expected, atol=1e-6)  # callable
    arrays = [np.asarray(p.convert("RGB")) for p in pictures]
    np.testing.assert_allclose(classifier.classify(arrays), expected, atol=1e-6)
    floats = [a.astype("float32") for a in arrays]
    np.testing.assert_allclose(classifier.classify(floats), expected, atol=1e-6)
    grey = np.asarray(pictures[0].convert("L"))
    assert classifier.classify(grey).shape == (1, 2)
    with pytest.raises(TransferError, match=r"image 1: .*0-1.*multiply by 255"):
        classifier.classify([arrays[0] / 255.0])
    with pytest.raises(TransferError, match=r"image 1: an array of shape \(5, 5, 2\) is no "
                                            "photo"):
        classifier.classify([np.zeros((5, 5, 2), "uint8")])
    with pytest.raises(TransferError, match=r"image 1: the array's pixels lie between -5 and 3: "
                                            "pixels 0-255 are expected"):  # not "lie in -5-3"
        classifier.classify([np.concatenate([np.full((5, 5, 2), -5.0),
                                             np.full((5, 5, 1), 3.0)], axis=-1)])
    result = predict.predict([files[0].read_bytes(), arrays[1], pictures[0], 7],
                             classifier=classifier)
    assert [i.file for i in result.items] == ["image 1", "image 2", "image 3", "image 4"]
    shown = [np.array([i.probabilities["cats"], i.probabilities["dogs"]])
             for i in result.items[:3]]
    np.testing.assert_allclose(shown, expected[[0, 1, 0]], atol=1e-6)
    assert result.items[1].image["width"] == arrays[1].shape[1]
    assert result.items[3].error.startswith("not an image: a int")
    assert predict.predict(arrays[0], classifier=classifier).items[0].file == "image 1"


def test_write_text_into_a_read_only_folder_names_the_folder(tmp_path):
    with unwritable_folder(tmp_path / "locked") as locked:
        with pytest.raises(OSError) as caught:
            predict.write_text(locked / "predictions.csv", "file,label\n")
        assert caught.value.filename == str(locked)
        with pytest.raises((TransferError, OSError)) as caught:
            predict.predict(["x.jpg"], model=tmp_path / "nowhere",
                            output=locked / "predictions.csv")
        assert names_path(caught.value, locked)
        assert list(locked.iterdir()) == []
    with pytest.raises(TransferError, match="already exists; use --force"):
        predict.write_text(tmp_path, "x")
    out = predict.write_text(tmp_path / "new" / "p.json", "{}\n")
    assert out.read_text() == "{}\n"
    assert [p.name for p in out.parent.iterdir()] == ["p.json"]  # no temporary left over
    os.link(out, out.with_name("keep.json"))  # a new file renamed over it, not rewritten in place
    predict.write_text(out, "[]\n", force=True)
    assert out.read_text() == "[]\n" and out.with_name("keep.json").read_text() == "{}\n"


def test_write_text_keeps_links_links_and_writes_into_pipes(tmp_path):
    """--output link.csv --force replaced the link by a file (its target kept the old rows);
    --output a-fifo --force (or /dev/null, as root) replaced the pipe or device by a file."""
    import threading

    real = tmp_path / "real.csv"
    real.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(real.name)
    predict.write_text(link, "new\n", force=True)
    assert link.is_symlink() and real.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "real.csv"]
    # a link to a file not made yet, in folders not made yet: written there (the error named
    # the hidden temporary file: "No such file or directory: .../.r.tmp-5bce98f7-...html")
    ahead = tmp_path / "ahead.csv"
    ahead.symlink_to(tmp_path / "later" / "sub" / "rows.csv")
    predict.write_text(ahead, "rows\n", force=True)
    assert (tmp_path / "later/sub/rows.csv").read_text() == "rows\n" and ahead.is_symlink()
    from transfer.files import replacing  # report's and explain's writer too

    page = tmp_path / "page.html"
    page.symlink_to(tmp_path / "pages" / "r.html")
    with replacing(page) as tmp:
        tmp.write_text("<p>page</p>")
    assert (tmp_path / "pages/r.html").read_text() == "<p>page</p>" and page.is_symlink()

    fifo = tmp_path / "rows.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    predict.write_text(fifo, "file,label\n")  # no --force needed: nothing is replaced
    reader.join(timeout=10)
    assert got == ["file,label\n"] and stat.S_ISFIFO(fifo.lstat().st_mode)


def test_predict_writes_into_a_pipe_or_device_without_force(trained_bundle, small_split,
                                                            tmp_path):
    """README: "a pipe or device such as /dev/stdout is written to"; the command's settings
    refused them first ("/dev/stdout already exists; use --force")."""
    import threading

    files = [str(p) for p, _ in split_images(small_split / "test", 1)]
    command = ["predict", *files, "--model", str(trained_bundle.bundle), "--format", "csv"]
    result = runner.invoke(app, [*command, "--output", os.devnull])
    assert result.exit_code == 0, result.output
    fifo = tmp_path / "rows.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    result = runner.invoke(app, [*command, "--output", str(fifo)])
    reader.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert got and got[0].startswith("file,label,probability") and len(got[0].splitlines()) == 3
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and [p.name for p in tmp_path.iterdir()] == [
        "rows.fifo"]


def test_output_dash_is_standard_output(trained_bundle, small_split, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = [str(p) for p, _ in split_images(small_split / "test", 1)]
    result = runner.invoke(app, ["predict", *files, "--model", str(trained_bundle.bundle),
                                 "--output", "-", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("file,label,probability") and list(tmp_path.iterdir()) == []


def test_a_link_loop_and_a_name_too_long_get_error_rows(trained_bundle, real_photos, tmp_path):
    """A name too long for the file system stopped the whole run ("error: File name too long",
    nothing classified); a link loop was "a broken link (to y.jpg, which does not exist)",
    although y.jpg is there. Each is now its own error row, and the rest is classified."""
    good = tmp_path / "good.jpg"
    good.write_bytes(real_photos["dogs"][5][1])
    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "x.jpg").symlink_to("y.jpg")
    (loop / "y.jpg").symlink_to("x.jpg")
    long = tmp_path / ("y" * 300 + ".jpg")
    result = predict.predict([str(good), str(loop / "x.jpg"), str(long), str(loop)],
                             model=trained_bundle.bundle)
    assert [(i.file, i.error) for i in result.items] == [
        (str(good), None),
        (str(loop / "x.jpg"), "a symbolic link loop (it leads back to itself)"),
        (str(long), "cannot be read (File name too long)"),  # the folder's x.jpg: named
        (str(loop / "y.jpg"), "a symbolic link loop (it leads back to itself)")]  # already
    assert result.items[0].label == "dogs"


def test_a_glob_gives_broken_links_and_loops_their_rows_as_a_folder_does(
        trained_bundle, real_photos, tmp_path):
    """`predict 'mix/*'` dropped a broken link and a link loop (exit 0, no word) that
    `predict mix` gives error rows, and `'mix/loop*'` said "no file matches this pattern"
    although `ls` lists two files. The glob now gives them the folder's rows."""
    mix = tmp_path / "mix"
    mix.mkdir()
    (mix / "ok.jpg").write_bytes(real_photos["dogs"][5][1])
    (mix / "broken.jpg").symlink_to("nowhere.jpg")
    (mix / "loop1.jpg").symlink_to("loop2.jpg")
    (mix / "loop2.jpg").symlink_to("loop1.jpg")
    (mix / "notes.txt").symlink_to("gone.txt")  # no photo's name: passed over, as in the folder
    (mix / "2024").symlink_to("usb/2024")  # a folder's name: a folder that cannot be listed
    folder = {(Path(i.file).name, i.error) for i in
              predict.predict([str(mix)], model=trained_bundle.bundle).items}
    globbed = {(Path(i.file).name, i.error) for i in
               predict.predict([str(mix / "*")], model=trained_bundle.bundle).items}
    assert globbed == folder == {
        ("ok.jpg", None),
        ("broken.jpg", "a broken link (to nowhere.jpg, which does not exist)"),
        ("loop1.jpg", "a symbolic link loop (it leads back to itself)"),
        ("loop2.jpg", "a symbolic link loop (it leads back to itself)"),
        ("2024", "cannot be read (a link to usb/2024, which leads nowhere: a drive not "
                 "mounted, a folder moved, or a loop)")}
    loops = predict.predict([str(mix / "loop*")], model=trained_bundle.bundle).items
    assert [(Path(i.file).name, i.error) for i in loops] == [
        ("loop1.jpg", "a symbolic link loop (it leads back to itself)"),
        ("loop2.jpg", "a symbolic link loop (it leads back to itself)")]


def test_output_dev_stdout_sent_to_a_file_is_written_through_the_stream(trained_bundle,
                                                                        real_photos, tmp_path):
    """`predict x.jpg --output /dev/stdout > preds.csv`: /dev/stdout is then a file, so it was
    refused ("already exists; use --force"), and with --force under `>> log.csv` the log was
    replaced by the predictions. It is now standard output wherever the shell sent it: no
    refusal, and `>>` appends."""
    import subprocess
    import sys

    photo = tmp_path / "dog.jpg"
    photo.write_bytes(real_photos["dogs"][5][1])
    # a name that is not UTF-8 goes out as its bytes, as into a file, under a strict UTF-8
    # stdout too (the first version of this change raised UnicodeEncodeError there), with
    # --output /dev/stdout (appended to a log) and without --output alike
    latin = os.fsencode(tmp_path) + b"/caf\xe9.jpg"
    with open(latin, "wb") as stream:
        stream.write(real_photos["dogs"][5][1])
    strict = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    log = tmp_path / "log.csv"
    log.write_text("old line 1\n")
    with open(log, "a") as appended:
        done = subprocess.run([sys.executable, "-m", "transfer", "predict", str(photo),
                               os.fsdecode(latin), "--model", str(trained_bundle.bundle),
                               "--output", "/dev/stdout", "--format", "csv"], stdout=appended,
                              stderr=subprocess.PIPE, text=True, errors="replace",
                              timeout=120, env=strict)
    assert done.returncode == 0, done.stderr
    lines = log.read_bytes().splitlines()
    assert lines[0] == b"old line 1" and lines[1].startswith(b"file,label,probability")
    assert lines[2].startswith(os.fsencode(f"{photo},dogs,")), lines
    assert lines[3].startswith(latin + b",dogs,") and len(lines) == 4, lines
    done = subprocess.run([sys.executable, "-m", "transfer", "predict", os.fsdecode(latin),
                           "--model", str(trained_bundle.bundle), "--format", "csv"],
                          capture_output=True, timeout=120, env=strict)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout.splitlines()[1].startswith(latin + b",dogs,"), done.stdout
    # a file named as itself is a file: `--output preds.csv >> preds.csv` is refused as any
    # existing --output (it appended a second CSV to the first)
    preds = tmp_path / "preds.csv"
    preds.write_text("file,label\n")
    with open(preds, "a") as appended:
        done = subprocess.run([sys.executable, "-m", "transfer", "predict", str(photo),
                               "--model", str(trained_bundle.bundle), "--output", str(preds)],
                              stdout=appended, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 1 and "already exists; use --force" in done.stderr, done.stderr
    assert preds.read_text() == "file,label\n"


def test_names_with_terminal_controls_are_printed_as_escapes(trained_bundle, real_photos,
                                                             tmp_path):
    """A file named with ESC [2J (from a zip, anyone's folder) went to the terminal raw: it
    cleared the screen or recoloured it; a newline in a name split its table row in two. The
    table, error rows and error lines now write them as escapes; the JSON keeps the name."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "\x1b[2Jclear.jpg").write_bytes(real_photos["dogs"][5][1])
    (folder / "two\nlines.jpg").write_bytes(real_photos["cats"][5][1])
    (folder / "bad\rname.jpg").write_bytes(b"not a photo")
    result = runner.invoke(app, ["predict", str(folder), "--model", str(trained_bundle.bundle)],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 1, result.output  # the file that is not a photo
    assert "\x1b" not in result.output and "\r" not in result.output
    rows = [line for line in result.output.splitlines() if ".jpg" in line]
    assert len(rows) == 3, result.output
    assert any("\\x1b[2Jclear.jpg" in row and "dogs" in row for row in rows)
    assert any("two\\nlines.jpg" in row and "cats" in row for row in rows)
    assert any("bad\\rname.jpg" in row and "error:" in row for row in rows)
    as_json = runner.invoke(app, ["predict", str(folder / "\x1b[2Jclear.jpg"), "--model",
                                  str(trained_bundle.bundle), "--format", "json"])
    assert json.loads(as_json.stdout)["predictions"][0]["file"] == str(folder / "\x1b[2Jclear.jpg")
    missing = runner.invoke(app, ["evaluate", "--model", str(trained_bundle.bundle),
                                  "--data-dir", str(tmp_path / "\x1b]0;owned\x07")])
    assert missing.exit_code == 1 and "\x1b" not in missing.output and "\x07" not in missing.output
    assert "\\x1b]0;owned\\x07" in missing.output
