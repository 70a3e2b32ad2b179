"""transfer serve: the HTTP API on the real trained bundle and real photos it never saw.

FastAPI's TestClient for the API's details; a real uvicorn server on a free 127.0.0.1 port for
what a real server matters for (50 concurrent requests, a streamed upload over the limit).
The photos are Kaggle's with numbers >= 1100, which no fixture trains on.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import Recorder, progressive_claiming, require_asset
from fastapi.testclient import TestClient
from PIL import Image

from transfer import serve
from transfer.errors import TransferError
from transfer.report import GENERATOR
from transfer.settings import ServeSettings

UNSEEN = range(1100, 1110)  # Kaggle numbers no fixture trains on (they take < 1000)
DOG_BREEDS = range(151, 269)  # ImageNet class indices of the dog breeds


@pytest.fixture(scope="module")
def unseen(kaggle_zip) -> dict[str, list[tuple[str, bytes]]]:
    """10 cat and 10 dog photos (name, bytes) that no bundle was trained or validated on."""
    with zipfile.ZipFile(kaggle_zip) as archive:
        return {cls + "s": [(f"{cls}.{n}.jpg", archive.read(f"train/{cls}.{n}.jpg"))
                            for n in UNSEEN] for cls in ("cat", "dog")}


@pytest.fixture(scope="module")
def models_dir(trained_bundle, tmp_path_factory) -> Path:
    """models/cats-dogs (a copy of the trained bundle), models/latest -> cats-dogs, and
    models/escape: a symbolic link to a bundle outside the models folder."""
    root = tmp_path_factory.mktemp("serve")
    models = root / "models"
    models.mkdir()
    shutil.copytree(trained_bundle.bundle, models / "cats-dogs")
    os.symlink("cats-dogs", models / "latest")
    shutil.copytree(trained_bundle.bundle, root / "outside")
    os.symlink(root / "outside", models / "escape")
    (models / "not-a-bundle").mkdir()
    return models


@pytest.fixture(scope="module")
def client(models_dir):
    with TestClient(serve.create_app(ServeSettings(models_dir=models_dir))) as c:
        yield c


def files_field(*items: tuple[str, bytes]) -> list:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def test_a_bundle_named_with_a_trailing_slash_is_that_bundle(models_dir):
    """`transfer serve --model cats-dogs/` (a shell's tab completion adds the slash) was "no
    bundle of that name"; the path models/cats-dogs/ already worked."""
    for name in ("cats-dogs/", "cats-dogs//", str(models_dir / "cats-dogs") + "/"):
        settings = ServeSettings(models_dir=models_dir, model=name).validated()
        assert settings.model == "cats-dogs"
        serve.create_app(settings)  # the default model found at start
    # ./cats-dogs, as a shell's tab completion in the models folder writes it: "--model
    # ./cats-dogs: no bundle of that name in ." (Path drops the "./")
    with contextlib.chdir(models_dir):
        for name in ("./cats-dogs", "./cats-dogs/", "../" + models_dir.name + "/cats-dogs"):
            settings = ServeSettings(models_dir=".", model=name).validated()
            assert settings.model == "cats-dogs", name
            serve.create_app(settings)


def test_health_and_models(client, trained_bundle):
    health = client.get("/api/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    listed = client.get("/api/models").json()
    assert listed["default"] == "cats-dogs"  # what latest points at
    bundles = {m["name"]: m for m in listed["models"] if m["kind"] == "bundle"}
    assert set(bundles) == {"cats-dogs"}  # latest is not listed twice; escape leaves the folder
    entry = bundles["cats-dogs"]
    assert entry["classes"] == ["cats", "dogs"] and entry["base"] == "mobilenet"
    assert entry["accuracy"] == pytest.approx(trained_bundle.meta["metrics"]["val_accuracy"])
    assert entry["digits"] is False and entry["report"] == "/models/cats-dogs/report"
    # the ImageNet classifier whose weights (with the top) are in the Keras cache
    imagenet = [m for m in listed["models"] if m["kind"] == "imagenet"]
    assert "imagenet:mobilenet-0.25" in {m["name"] for m in imagenet}
    docs = client.get("/docs")  # Swagger UI from the installed package, not a CDN
    assert docs.status_code == 200 and "cdn." not in docs.text
    script = client.get("/docs-assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and "SwaggerUIBundle" in script.text
    assert "/api/predict" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and 'id="file-input"' in page.text
    assert "Content-Security-Policy" in page.headers
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


def test_unseen_photos_come_back_with_their_class(client, unseen, trained_bundle, tmp_path):
    photos = unseen["cats"][:4] + unseen["dogs"][:4]
    response = client.post("/api/predict", files=files_field(*photos), data={"top": "2"})
    assert response.status_code == 200, response.text
    answer = response.json()
    labels = [p["label"] for p in answer["predictions"]]
    assert [p["file"] for p in answer["predictions"]] == [name for name, _ in photos]
    assert labels[0] == "cats"  # cat.1100.jpg, a cat the bundle never saw
    assert sum(label == "cats" for label in labels[:4]) >= 3
    assert sum(label == "dogs" for label in labels[4:]) >= 3
    assert answer["server_seconds"] > 0 and answer["failed"] == 0
    # the same JSON as `transfer predict --format json` on the same files
    from transfer.predict import predict

    for name, data in photos:
        (tmp_path / name).write_bytes(data)
    expected = json.loads(predict([str(tmp_path / n) for n, _ in photos],
                                  model=trained_bundle.bundle, top=2).render("json"))
    for item in expected["predictions"]:
        item["file"] = Path(item["file"]).name
    got = {k: v for k, v in answer.items() if k != "server_seconds"}
    assert set(got) == set(expected)
    for mine, theirs in zip(got["predictions"], expected["predictions"], strict=True):
        assert set(mine) == set(theirs)
        assert mine["label"] == theirs["label"] and mine["image"] == theirs["image"]
        assert mine["probability"] == pytest.approx(theirs["probability"], abs=1e-5)
        # the top classes asked for and every class's probability too (top=1 in the server's
        # call of predict passed the checks above)
        assert [t["label"] for t in mine["top"]] == [t["label"] for t in theirs["top"]]
        assert len(mine["top"]) == 2
        assert [t["probability"] for t in mine["top"]] == pytest.approx(
            [t["probability"] for t in theirs["top"]], abs=1e-5)
        assert mine["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-5)
    for key in ("mode", "base", "fallback", "failed"):
        assert got[key] == expected[key], key
    assert got["class_names"] == expected["class_names"] == ["cats", "dogs"]
    assert got["model"] == "cats-dogs"  # its name on the server, not a path


def test_a_text_file_is_415_naming_it_and_the_server_keeps_serving(client, unseen):
    response = client.post("/api/predict", files=files_field(("notes.txt", b"just text\n" * 20)))
    assert response.status_code == 415
    body = response.json()
    assert "notes.txt" in body["detail"] and body["errors"][0]["file"] == "notes.txt"
    assert "not an image" in body["errors"][0]["error"]
    empty = client.post("/api/predict", files=files_field(("empty.jpg", b"")))
    assert empty.status_code == 415 and "empty.jpg" in empty.json()["detail"]
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(range(256)) * 8
    phone = client.post("/api/predict", files=files_field(("IMG_0001.HEIC", heic)))
    assert phone.status_code == 415 and phone.json()["errors"][0]["error"].startswith(
        "HEIC (an iPhone's photos) is not a format transfer reads; convert them to JPEG")
    assert client.get("/api/health").status_code == 200
    again = client.post("/api/predict", files=files_field(unseen["cats"][0]))
    assert again.status_code == 200 and again.json()["predictions"][0]["label"] == "cats"
    # a JPEG uploaded under a HEIC name is read, as predict reads it (the server looked for a
    # file of that name in its own folder, found none and refused it as a HEIC)
    renamed = client.post("/api/predict", files=files_field(("IMG_0002.HEIC",
                                                             unseen["cats"][0][1])))
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["predictions"][0]["label"] == "cats"


def test_one_bad_file_among_good_ones_gets_its_own_error(client, unseen):
    truncated = unseen["dogs"][1][1][:3000]
    items = (unseen["cats"][0], ("notes.txt", b"text, not a photo\n"),
             ("half.jpg", truncated), unseen["dogs"][0])
    response = client.post("/api/predict", files=files_field(*items))
    assert response.status_code == 200
    rows = response.json()["predictions"]
    assert [r["file"] for r in rows] == ["cat.1100.jpg", "notes.txt", "half.jpg", "dog.1100.jpg"]
    assert rows[0]["label"] == "cats" and rows[0]["error"] is None
    assert rows[1]["label"] is None and "not an image" in rows[1]["error"]
    assert rows[2]["label"] is None  # the JPEG cut at 3,000 bytes: its own error, no class
    assert rows[2]["error"].startswith("corrupt or truncated image")
    assert rows[3]["label"] in ("cats", "dogs") and rows[3]["error"] is None
    assert response.json()["failed"] == 2


def test_bad_form_fields(client, unseen):
    assert client.post("/api/predict", files=files_field(unseen["cats"][0]),
                       data={"top": "0"}).status_code == 422
    assert client.post("/api/predict", files=files_field(unseen["cats"][0]),
                       data={"invert": "maybe"}).status_code == 422
    assert client.post("/api/predict").status_code == 422  # no files


def test_upload_over_the_limit_is_413(models_dir, unseen):
    settings = ServeSettings(models_dir=models_dir, max_upload_mb=0.005)  # about 5 kB
    big = max((data for _, data in unseen["cats"]), key=len)
    assert len(big) > 6000
    with TestClient(serve.create_app(settings)) as c:
        response = c.post("/api/predict", files=files_field(("big.jpg", big)))
        assert response.status_code == 413 and response.json()["detail"] == (
            "upload too large: the limit is 0.005 MiB (5,242 bytes) per request "
            "(--max-upload-mb)")
        assert c.get("/api/health").status_code == 200


@pytest.mark.parametrize("name", ["..", "../outside", "escape", "not-a-bundle", "missing",
                                  "/etc", ".", "cats-dogs/../../outside", ".hidden"])
def test_model_names_that_leave_the_folder_are_404(client, unseen, name, models_dir):
    response = client.post("/api/predict", files=files_field(unseen["cats"][0]),
                           data={"model": name})
    assert response.status_code == 404, response.text
    assert "no model named" in response.json()["detail"]
    explained = client.post("/api/explain", files={"file": unseen["cats"][0]},
                            data={"model": name})
    assert explained.status_code == 404


def test_report_route(client, models_dir):
    from urllib.parse import quote

    page = client.get("/models/cats-dogs/report")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "cats" in page.text and "dogs" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for bad in ("%2e%2e", "escape", "not-a-bundle", quote(str(models_dir.parent / "outside"),
                                                           safe="")):
        assert client.get(f"/models/{bad}/report").status_code == 404, bad
    written = models_dir / "cats-dogs" / "report.html"
    original = written.read_bytes()  # the one train wrote, served as it is
    assert page.content == original
    secret = models_dir.parent / "secret.txt"
    secret.write_text("<html><body>not the bundle's</body></html>")
    try:
        written.write_text("<html><body>kept</body></html>")
        assert client.get("/models/cats-dogs/report").text.endswith("kept</body></html>")
        # none: rendered on the fly, nothing written into the bundle
        written.unlink()
        rendered = client.get("/models/cats-dogs/report")
        assert rendered.status_code == 200 and GENERATOR in rendered.text
        assert "cats" in rendered.text and not written.exists()
        # a report.html linking out of the bundle's folder is not served (rendered instead):
        # the file it named was
        written.symlink_to(secret)
        linked = client.get("/models/cats-dogs/report")
        assert linked.status_code == 200 and "not the bundle's" not in linked.text
        assert GENERATOR in linked.text
        written.unlink()
        written.symlink_to(written.name)  # a link to itself: rendered, not a 500
        looped = client.get("/models/cats-dogs/report")
        assert looped.status_code == 200 and GENERATOR in looped.text
    finally:
        written.unlink(missing_ok=True)
        written.write_bytes(original)


def test_explain_returns_a_png(client, unseen):
    photo = unseen["dogs"][0]
    response = client.post("/api/explain", files={"file": photo})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-label"] in ("cats", "dogs")
    assert 0 <= float(response.headers["x-probability"]) <= 1
    assert response.headers["x-layer"] == "conv_pw_13_relu"
    with Image.open(io.BytesIO(response.content)) as pair, \
            Image.open(io.BytesIO(photo[1])) as original:
        assert pair.format == "PNG" and pair.width > pair.height
        assert pair.height == round(original.height * min(1, serve.SHOWN_SIDE /
                                                            max(original.size)))
    overlay = client.post("/api/explain", files={"file": photo},
                          data={"view": "overlay", "class_name": "cats"})
    assert overlay.status_code == 200 and overlay.headers["x-label"] == "cats"
    # the class explained and its probability are predict's: the top class by default, the
    # one asked for otherwise (a header giving the top class's probability, or explaining
    # the first class always, passed the range checks above)
    (row,) = client.post("/api/predict", files=files_field(photo)).json()["predictions"]
    assert response.headers["x-label"] == row["label"]
    assert float(response.headers["x-probability"]) == pytest.approx(row["probability"],
                                                                     abs=1e-5)
    p_cats = float(overlay.headers["x-probability"])
    p_dogs = float(client.post("/api/explain", files={"file": photo},
                               data={"class_name": "dogs"}).headers["x-probability"])
    assert p_cats + p_dogs == pytest.approx(1.0, abs=1e-5)
    assert max(p_cats, p_dogs) == pytest.approx(row["probability"], abs=1e-5)
    with Image.open(io.BytesIO(overlay.content)) as picture:
        array = np.asarray(picture)
        assert picture.width < pair.width and array.std() > 10
    bad = client.post("/api/explain", files={"file": ("notes.txt", b"text\n" * 9)})
    assert bad.status_code == 415 and "notes.txt" in bad.json()["detail"]
    unknown = client.post("/api/explain", files={"file": photo}, data={"class_name": "horses"})
    assert unknown.status_code == 422 and "horses" in unknown.json()["detail"]


def test_models_are_loaded_once_and_kept_in_an_lru(models_dir, unseen, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for name in ("a", "b"):
        shutil.copytree(models_dir / "cats-dogs", models / name)
    photo = files_field(unseen["cats"][0])
    for size, loads in ((1, 3), (2, 2)):
        app = serve.create_app(ServeSettings(models_dir=models, cache_size=size))
        with TestClient(app) as c:
            for name in ("a", "b", "a", "a"):
                assert c.post("/api/predict", files=photo, data={"model": name}).status_code \
                    == 200
            assert app.state.store.loads == loads


def test_imagenet_classifiers_of_one_base_are_cached_side_by_side(tmp_path, monkeypatch):
    """imagenet:mobilenet-0.25 and imagenet:mobilenet-0.5 asked for in turn: each load threw
    the other out of the cache (taken for an older model of the same bundle folder), so every
    request loaded a model again."""
    from transfer import inference

    monkeypatch.setattr(inference, "ImageNetClassifier",
                        lambda base, alpha: ("a classifier", base, alpha))
    store = serve.ModelStore(ServeSettings(models_dir=tmp_path, cache_size=4))
    entries = [serve.ImageNetEntry(serve.imagenet_name("mobilenet", alpha), "mobilenet", alpha,
                                   f"MobileNet alpha {alpha:g} (ImageNet)")
               for alpha in (0.25, 0.5)]
    monkeypatch.setattr(store, "imagenet_entries", lambda: entries)
    for _ in range(3):
        for entry in entries:
            assert store.get(entry.name) == ("a classifier", "mobilenet", entry.alpha)
    assert store.loads == 2


def test_a_malformed_form_is_a_400_and_no_console_line(models_dir, caplog):
    """Any client could fill the server's console with the form parser's warnings ("Expected
    boundary character 45, got 103 at index 2"), one a malformed request; the client's 400
    says it. The filter goes with the server."""
    import logging

    caplog.set_level(logging.WARNING)
    with serve.serving(ServeSettings(models_dir=models_dir, port=0)) as url:
        with httpx.Client(timeout=30) as http:
            for _ in range(3):
                response = http.post(url + "api/predict", content=b"garbage", headers={
                    "Content-Type": "multipart/form-data; boundary=xx"})
                assert response.status_code == 400
    assert not [r for r in caplog.records if r.name.startswith("python_multipart")], \
        caplog.records
    assert not logging.getLogger(serve.PARSER_LOG).filters


def test_a_relative_models_folder_stays_the_one_given_after_a_chdir(models_dir, unseen,
                                                                    monkeypatch, tmp_path):
    """A notebook serving `models` (relative), then changing its working directory: the page
    listed no bundle and answered a cat with ImageNet's classes. The folder is the one the
    call named, wherever the program goes next."""
    monkeypatch.chdir(models_dir.parent)
    app = serve.create_app(ServeSettings(models_dir="models"))
    monkeypatch.chdir(tmp_path)
    with TestClient(app) as c:
        listed = c.get("/api/models").json()
        assert "cats-dogs" in [m["name"] for m in listed["models"]], listed
        assert listed["default"] == "cats-dogs", listed
        answer = c.post("/api/predict", files=files_field(unseen["cats"][0])).json()
        assert answer["mode"] == "bundle" and answer["predictions"][0]["label"] == "cats", answer


def test_class_names_that_are_not_utf8_are_served_with_a_replacement_mark(trained_bundle,
                                                                         unseen, tmp_path):
    """A bundle trained on a Latin-1 folder ("chi\\xe9ns", a surrogate in Python), in a
    folder so named: every answer naming it was a 500 (UnicodeEncodeError), /api/models
    included. The names now go out with a replacement mark, as the console shows them, and
    those names find the bundle and explain the class."""
    from urllib.parse import unquote

    models = tmp_path / "models"
    latin = models / "l\udce9at"  # the bundle's folder is not UTF-8 either
    shutil.copytree(trained_bundle.bundle, latin)
    meta_path = latin / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["class_names"] = ["cats", "chi\udce9ns"]
    meta_path.write_text(json.dumps(meta))  # as the bundle writes it: \udce9 escaped
    with TestClient(serve.create_app(ServeSettings(models_dir=models))) as c:
        listed = c.get("/api/models")
        assert listed.status_code == 200, listed.text
        entry = listed.json()["models"][0]
        assert entry["classes"] == ["cats", "chi\ufffdns"] and entry["name"] == "l\ufffdat"
        # the name listed is the name that works (it was listed, then 404 for every request)
        assert c.get(entry["report"]).status_code == 200
        answer = c.post("/api/predict", files=files_field(unseen["dogs"][0]),
                        data={"model": entry["name"]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["label"] == "chi\ufffdns"
        picture = c.post("/api/explain", files={"file": unseen["dogs"][0]},
                         data={"class_name": "chi\ufffdns"})
        assert picture.status_code == 200, picture.text
        assert unquote(picture.headers["X-Label"]) == "chi\ufffdns"


def test_one_app_served_twice_answers_both_times(models_dir, unseen):
    """A restarted server (or a second TestClient) on the same app: the model thread that
    shutdown closed runs again, instead of a 503 on every request."""
    app = serve.create_app(ServeSettings(models_dir=models_dir))
    photo = files_field(unseen["cats"][0])
    for _ in range(2):
        with TestClient(app) as c:
            answer = c.post("/api/predict", files=photo)
            assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == \
                "cats"
    app.state.worker._thread.join(timeout=30)
    assert not app.state.worker._thread.is_alive()  # closed again at the second shutdown


def test_fifty_concurrent_requests_on_a_real_server(models_dir, unseen):
    photos = unseen["cats"] + unseen["dogs"]
    with serve.serving(ServeSettings(models_dir=models_dir, port=0)) as url:
        assert url.startswith("http://127.0.0.1:")

        def one(i):
            name, data = photos[i % len(photos)]
            with httpx.Client(timeout=120) as http:
                answer = http.post(url + "api/predict",
                                   files={"files": (name, data, "image/jpeg")})
            return answer.status_code, answer.json()

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(50)))
        assert [status for status, _ in answers] == [200] * 50
        labels = [body["predictions"][0]["label"] for _, body in answers]
        assert all(label in ("cats", "dogs") for label in labels)
        # the same photo gets the same answer whatever else was queued with it
        by_photo: dict[int, set] = {}
        for i, (_, body) in enumerate(answers):
            by_photo.setdefault(i % len(photos), set()).add(
                round(body["predictions"][0]["probability"], 4))
        assert all(len(values) == 1 for values in by_photo.values())
        with httpx.Client(timeout=60) as http:
            health = http.get(url + "api/health").json()
        assert health["status"] == "ok" and health["requests"] == 50
        assert health["model_calls"] < 50  # requests waiting together shared a batch


def test_streamed_upload_over_the_limit_on_a_real_server(models_dir):
    boundary = "transferboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            "filename=\"big.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body(size: int = 64 * 32768):  # 2 MB in all, or ``size`` bytes of file
        yield head
        for start in range(0, size, 32768):
            yield b"\xff" * min(32768, size - start)
        yield tail

    limit = int(0.5 * 2**20)  # bytes of body, the multipart framing counted
    with serve.serving(ServeSettings(models_dir=models_dir, port=0, max_upload_mb=0.5)) as url:
        with httpx.Client(timeout=60) as http:
            response = http.post(url + "api/predict", content=body(), headers={
                "content-type": f"multipart/form-data; boundary={boundary}"})
            assert response.status_code == 413
            assert http.get(url + "api/health").status_code == 200
            # streamed (no Content-Length), counted to the byte: the limit itself is read
            # (and refused as no image), one byte more is the 413
            statuses = [http.post(url + "api/predict", content=body(size), headers={
                "content-type": f"multipart/form-data; boundary={boundary}"}).status_code
                for size in (limit - len(head) - len(tail), limit + 1 - len(head) - len(tail))]
            assert statuses == [415, 413]


def test_too_many_files_or_fields_are_a_413_saying_the_limit(client):
    """At most MAX_FILES photos a request: 65 to 1000 files were its 413; from 1001 Starlette's
    form parser stopped first with a 400 of its own words ("Too many files. Maximum number of
    files is 1000."), and 1001 fields alike."""
    at_most = client.post("/api/predict", files=[("files", (f"{i}.jpg", b"x", "image/jpeg"))
                                                 for i in range(serve.MAX_FILES)])
    assert at_most.status_code == 415  # MAX_FILES is taken: each file read (none an image)
    assert len(at_most.json()["errors"]) == serve.MAX_FILES
    for n, said in ((serve.MAX_FILES + 1, f"too many files ({serve.MAX_FILES + 1}); "),
                    (1001, "too many files (over 1000); ")):
        answer = client.post("/api/predict", files=[("files", (f"{i}.jpg", b"x", "image/jpeg"))
                                                    for i in range(n)])
        assert answer.status_code == 413
        assert answer.json()["detail"] == f"{said}at most {serve.MAX_FILES} per request"
    fields = client.post("/api/predict", files=[("files", ("a.jpg", b"x", "image/jpeg"))] + [
        (f"f{i}", (None, "1")) for i in range(1001)])
    assert fields.status_code == 413 and fields.json()["detail"] == (
        "too many form fields (over 1000); POST /api/predict takes each of its fields once")
    assert client.get("/api/nosuch").status_code == 404  # Starlette's other refusals as before


def _raw_upload(url: str, framing: str, megabytes: int) -> tuple[bytes, str | None]:
    """POST ``megabytes`` of multipart body over a plain socket, as curl or a browser sends
    it (``framing``: "chunked", "length", or "expect": a length and Expect: 100-continue),
    then read the answer: (what the server said, the error sending met or None)."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    head = (b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")
    piece, pieces, tail = b"\xff" * 65536, megabytes * 16, b"\r\n--b--\r\n"
    length = len(head) + len(piece) * pieces + len(tail)
    lines = [f"POST {where.path}api/predict HTTP/1.1", f"Host: {where.netloc}",
             "Content-Type: multipart/form-data; boundary=b"]
    lines += (["Transfer-Encoding: chunked"] if framing == "chunked" else
              [f"Content-Length: {length}"] + (["Expect: 100-continue"]
                                                 if framing == "expect" else []))
    said, error = b"", None
    with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            if framing == "expect":  # curl waits (up to 1 s) for the server's word first
                sock.settimeout(5)
                said = sock.recv(65536)
                if said.startswith(b"HTTP/1.1 413"):
                    return said + _read_rest(sock), None
            for part in [head] + [piece] * pieces + [tail]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part) if framing == "chunked"
                             else part)
            if framing == "chunked":
                sock.sendall(b"0\r\n\r\n")
        except OSError as exc:
            error = type(exc).__name__
        try:
            said += _read_rest(sock)
        except OSError as exc:
            error = error or type(exc).__name__
    return said, error


def _read_rest(sock) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("framing", ["chunked", "length", "expect"])
def test_an_upload_over_the_limit_gets_its_413_not_a_reset(models_dir, framing, monkeypatch):
    """curl -H "Transfer-Encoding: chunked" -F files=@big.bin printed "Connection reset by
    peer": the server answered 413 and closed while curl was still sending. The body is now
    read and dropped first (bounded), so the client reads the 413; a client that waits for
    100 Continue gets the 413 at once and sends nothing."""
    settings = ServeSettings(models_dir=models_dir, port=0, max_upload_mb=0.5)
    with serve.serving(settings) as url:
        said, error = _raw_upload(url, framing, 40)  # 40 MB: far past the socket buffers
        assert error is None, (error, said[:200])
        assert said.startswith(b"HTTP/1.1 413"), said[:200]
        assert b"the limit is 0.5 MiB (524,288 bytes) per request" in said
        with httpx.Client(timeout=30) as http:
            assert http.get(url + "api/health").status_code == 200
        from urllib.parse import urlsplit

        where, limit = urlsplit(url), int(settings.max_upload_mb * 2**20)

        def asking(length: int, expect: bool) -> bytes:
            """What the server first says to a request of ``length`` bytes whose body does
            not come (a client waiting for 100 Continue, or one gone quiet)."""
            lines = [f"POST {where.path}api/predict HTTP/1.1", f"Host: {where.netloc}",
                     "Content-Type: multipart/form-data; boundary=b",
                     f"Content-Length: {length}"] + (["Expect: 100-continue"] if expect else [])
            with socket.create_connection((where.hostname, where.port), timeout=5) as sock:
                sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
                return sock.recv(65536)

        if framing == "expect":
            # by its Content-Length, to the byte: one byte over is refused before it is sent,
            # the limit itself is asked for
            assert asking(limit + 1, True).startswith(b"HTTP/1.1 413")
            assert asking(limit, True).startswith(b"HTTP/1.1 100 ")
        else:
            # what is drained is bounded: past DRAIN_MB the server stops reading and closes
            # on the client still sending (which then meets the reset the drain spares others)
            monkeypatch.setattr(serve, "DRAIN_MB", 1)
            said, error = _raw_upload(url, framing, 40)
            assert error is not None, said[:200]
            # and past DRAIN_SECONDS: a client gone quiet gets its 413, not a wait without end
            monkeypatch.setattr(serve, "DRAIN_SECONDS", 0.5)
            assert asking(40 * 2**20, False).startswith(b"HTTP/1.1 413")


def test_binding_all_interfaces_warns(models_dir, monkeypatch):
    real_bind = serve._bind
    monkeypatch.setattr(serve, "_bind", lambda host, port: real_bind("127.0.0.1", 0))
    recorder = Recorder()
    with serve.serving(ServeSettings(models_dir=models_dir, host="0.0.0.0", port=0),
                       recorder):
        pass
    assert any("all interfaces" in w for w in recorder.warnings)
    quiet = Recorder()
    with serve.serving(ServeSettings(models_dir=models_dir, port=0), quiet) as url:
        assert httpx.get(url + "api/health", timeout=30).status_code == 200
    assert quiet.warnings == []
    assert quiet.infos == [f"transfer serve: {url} (API docs {url}docs); Ctrl-C stops it"]
    assert serve.url_of("::", 80) == "http://[::1]:80/"
    assert serve.url_of("0.0.0.0", 8000) == "http://127.0.0.1:8000/"


def test_a_port_in_use_is_one_clear_error(models_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(TransferError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve.run(ServeSettings(models_dir=models_dir, port=port))


def test_bad_settings_fail_before_anything_starts(tmp_path):
    with pytest.raises(TransferError, match="--model"):
        serve.create_app(ServeSettings(models_dir=tmp_path, model="../x"))
    with pytest.raises(TransferError, match="--max-upload-mb"):
        serve.create_app(ServeSettings(models_dir=tmp_path, max_upload_mb=0))
    with pytest.raises(TransferError, match="--port must be a whole number, not '8000'"):
        serve.create_app(ServeSettings(models_dir=tmp_path, port="8000"))
    with pytest.raises(TransferError, match="--model nothing: no bundle of that name"):
        serve.create_app(ServeSettings(models_dir=tmp_path, model="nothing"))
    recorder = Recorder()
    with serve.serving(ServeSettings(models_dir=tmp_path / "empty", port=0), recorder) as url:
        listed = httpx.get(url + "api/models", timeout=30).json()
        # no bundle: the ImageNet classifiers whose weights are here, the default one of them
        # (a list of none passed)
        assert "imagenet:mobilenet-0.25" in [m["name"] for m in listed["models"]]
        assert listed["default"] == "imagenet:mobilenet-0.25"
        assert all(m["kind"] == "imagenet" for m in listed["models"])



def test_a_broken_bundle_is_said_not_taken_for_a_missing_one(models_dir, unseen, tmp_path):
    """A garbled meta.json or a cut-short model.keras: the request naming it is a 500 with the
    reason (from predict and explain alike, not a 404 "no model named"), the console says it
    once, the page lists neither the first nor defaults to it, and --model names the reason
    at start-up. --model also takes the path other commands take, inside --models-dir."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("a-garbled", "b-cut", "c-good"):
        shutil.copytree(models_dir / "cats-dogs", models / name)
    (models / "a-garbled/meta.json").write_text("{garbled", encoding="utf-8")
    shutil.copytree(models_dir / "cats-dogs", models / "d-null")
    (models / "d-null/meta.json").write_text("null", encoding="utf-8")  # JSON, no object
    with open(models / "b-cut/model.keras", "r+b") as model:
        model.truncate(5000)
    said: list[str] = []
    app = serve.create_app(ServeSettings(models_dir=models))
    app.state.store.warn = said.append
    photo = files_field(unseen["cats"][0])
    with TestClient(app) as c:
        listed = c.get("/api/models").json()
        assert not {"a-garbled", "d-null"} & {m["name"] for m in listed["models"]}
        assert listed["default"] == "b-cut"  # its meta.json is whole: found out when loaded
        for name, reason in (("a-garbled", "meta.json is not valid JSON"),
                             ("b-cut", "is not a Keras model archive")):
            answer = c.post("/api/predict", files=photo, data={"model": name})
            assert answer.status_code == 500 and reason in answer.json()["detail"]
            assert answer.json()["detail"].startswith(f"model {name!r} cannot be used: ")
            explained = c.post("/api/explain", files=[("file", unseen["cats"][0])],
                               data={"model": name})
            assert explained.status_code == 500 and reason in explained.json()["detail"]
        assert c.post("/api/predict", files=photo, data={"model": "c-good"}).status_code == 200
        # once b-cut failed to load, the page no longer lists it nor defaults to it (every
        # photo dropped failed until the user picked another model) ...
        listed = c.get("/api/models").json()
        assert listed["default"] == "c-good" and "b-cut" not in {m["name"] for m in
                                                                 listed["models"]}
        # ... until its model.keras changes (repaired, retrained)
        shutil.copyfile(models / "c-good/model.keras", models / "b-cut/model.keras")
        assert c.get("/api/models").json()["default"] == "b-cut"
        assert c.post("/api/predict", files=photo, data={"model": "b-cut"}).status_code == 200
    assert len(said) == 3 and all("not a usable bundle" in line for line in said)
    assert "a-garbled" in said[0] and "d-null" in said[1] and "b-cut" in said[2]
    with pytest.raises(TransferError, match=r"--model a-garbled: model 'a-garbled' cannot be "
                                            r"used: .*not valid JSON"):
        serve.create_app(ServeSettings(models_dir=models, model="a-garbled"))
    # a damaged model.keras asked for as --model: found when it is loaded at start-up, and
    # said with its reason (it read "cannot serve b-cut: None")
    shutil.copyfile(models / "a-garbled/model.keras", models / "b-cut/model.keras")
    with open(models / "b-cut/model.keras", "r+b") as model:
        model.truncate(5000)
    with pytest.raises(TransferError, match=r"^cannot serve b-cut: model 'b-cut' cannot be "
                                            r"used: .*is not a Keras model archive"):
        with serve.serving(ServeSettings(models_dir=models, model="b-cut", port=0)):
            pass
    by_path = serve.create_app(ServeSettings(models_dir=models, model=str(models / "c-good")))
    assert by_path.state.settings.model == "c-good"
    with pytest.raises(TransferError, match=r"not a bundle directly inside --models-dir .*: "
                                            r"serve it with --models-dir .* --model cats-dogs"):
        serve.create_app(ServeSettings(models_dir=models, model=str(models_dir / "cats-dogs")))


def test_an_imagenet_default_whose_weights_cannot_be_had_stops_at_start_up(tmp_path,
                                                                           monkeypatch):
    """serve --imagenet --alpha 0.5 offline (weights not cached): one error line at start-up
    naming the file, instead of a server whose every answer is a 500."""
    from test_bases import offline

    offline(monkeypatch)
    settings = ServeSettings(models_dir=tmp_path, imagenet=True, base="mobilenet", alpha=0.5,
                             port=0)
    with pytest.raises(TransferError, match=r"cannot serve imagenet:mobilenet-0.5: ImageNet "
                                            r"weights .*mobilenet_5_0_224_tf.h5"):
        with serve.serving(settings):
            pass


def test_a_missing_models_folder_is_named_at_start_up(tmp_path, monkeypatch):
    """A mistyped --models-dir still serves the ImageNet classifiers, but says so at once;
    an empty folder that exists starts quietly when --imagenet asked for ImageNet (without
    it, an empty folder is said too: test_browser's test_an_empty_models_folder_...)."""
    require_asset("keras/models/mobilenet_2_5_224_tf.h5")  # the default is loaded at start
    typo = tmp_path / "modles"
    recorder = Recorder()
    with serve.serving(ServeSettings(models_dir=typo, imagenet=True, alpha=0.25, port=0),
                       recorder) as url:
        listed = httpx.get(url + "api/models", timeout=30).json()
    assert listed["default"] == "imagenet:mobilenet-0.25" and listed["models"]
    assert all(m["kind"] == "imagenet" for m in listed["models"])
    assert recorder.warnings == [f"no folder {typo} (a typo in --models-dir?): no bundle to "
                                 "serve, only ImageNet classifiers"]
    assert not typo.exists()  # serving creates nothing

    empty = tmp_path / "models"
    empty.mkdir()
    quiet = Recorder()
    with serve.serving(ServeSettings(models_dir=empty, imagenet=True, alpha=0.25, port=0),
                       quiet):
        pass
    assert quiet.warnings == []

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # no ImageNet classifier either
    bare = Recorder()
    with serve.serving(ServeSettings(models_dir=typo, port=0), bare):
        pass
    assert bare.warnings == [f"no folder {typo} (a typo in --models-dir?): no bundle to serve, "
                             "and no ImageNet classifier is in the Keras cache (or use "
                             "--imagenet)"]


def test_a_bundle_given_as_the_models_folder_is_said(models_dir, tmp_path, monkeypatch):
    """`serve --models-dir models/latest` (the bundle, not its folder) served the ImageNet
    classifier without a word: a cat came back a Siberian husky."""
    require_asset("keras/models/mobilenet_2_5_224_tf.h5")
    recorder = Recorder()
    with serve.serving(ServeSettings(models_dir=models_dir / "latest", port=0), recorder):
        pass
    assert recorder.warnings == [f"{models_dir / 'latest'} is itself a bundle, not a folder of "
                                 f"bundles: serve it with --models-dir {models_dir} --model "
                                 "latest"]
    inside = Recorder()  # served from inside the bundle: "--model " and no name was the advice
    monkeypatch.chdir(models_dir / "cats-dogs")
    with serve.serving(ServeSettings(models_dir=Path("."), port=0), inside):
        pass
    assert inside.warnings == [f". is itself a bundle, not a folder of bundles: serve it with "
                               f"--models-dir {models_dir} --model cats-dogs"]


def test_imagenet_mode_gives_a_dog_a_dog_breed(unseen, mobilenet_weights, tmp_path):
    require_asset("keras/models/mobilenet_2_5_224_tf.h5")
    index = json.loads(require_asset("keras/models/imagenet_class_index.json").read_text())
    synset_index = {synset: int(i) for i, (synset, _) in index.items()}
    settings = ServeSettings(models_dir=tmp_path / "none", imagenet=True, base="mobilenet",
                             alpha=0.25)
    with TestClient(serve.create_app(settings)) as c:
        listed = c.get("/api/models").json()
        assert listed["default"] == "imagenet:mobilenet-0.25"
        dogs = unseen["dogs"][:5]
        response = c.post("/api/predict", files=files_field(*dogs))
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["mode"] == "imagenet" and "alpha 0.25" in answer["title"]
        assert answer["model"] == "imagenet:mobilenet-0.25"  # the name a client sends back
        firsts = [synset_index[p["top"][0]["synset"]] for p in answer["predictions"]]
        assert sum(i in DOG_BREEDS for i in firsts) >= 3, [p["label"] for p in
                                                            answer["predictions"]]
        assert all(len(p["top"]) == 3 for p in answer["predictions"])
        picture = c.post("/api/explain", files={"file": dogs[0]})
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
        assert picture.headers["x-layer"] == "conv_pw_13_relu"
        assert picture.headers["x-label"] == answer["predictions"][0]["label"]
        # "crane" is two ImageNet classes (the bird, the machine): named by synset, each is
        # reachable; the label alone was always the bird
        for synset in ("n02012849", "n03126707"):
            crane = c.post("/api/explain", files={"file": dogs[0]}, data={"class_name": synset})
            assert crane.status_code == 200 and crane.headers["x-label"] == "crane"
            assert int(crane.headers["x-class-index"]) == synset_index[synset]
        twice = c.post("/api/explain", files={"file": dogs[0]}, data={"class_name": "crane"})
        assert twice.status_code == 422 and twice.json()["detail"] == (
            "ImageNet has 2 classes named 'crane' (n02012849, n03126707): give the synset")


def test_the_shown_picture_of_a_phone_photo_is_drafted_and_upright(unseen, monkeypatch):
    """The explain PNG's picture of a phone-sized JPEG (a real photo enlarged to 3200 x 2400,
    stored turned a quarter with EXIF orientation 6) decodes in draft mode, at 1/4 scale, and
    comes out upright, 384 px on its longest side, close to the picture of a whole decode."""
    from transfer import images

    with Image.open(io.BytesIO(unseen["cats"][1][1])) as small:
        big = small.convert("RGB").resize((3200, 2400), Image.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = io.BytesIO()
    big.transpose(Image.Transpose.ROTATE_90).save(stored, "JPEG", quality=95, exif=exif)
    data = stored.getvalue()
    assert images.open_image(data, serve.SHOWN_SIDE // 2).size == (800, 600)  # 2400 // 384 = 6
    decoded, real_to_rgb = [], images.to_rgb  # what the picture was made from: the draft (a
    # whole decode passed the checks below, the draft being checked on open_image alone)
    monkeypatch.setattr(images, "to_rgb", lambda image: decoded.append(image.size) or
                        real_to_rgb(image))
    shown = serve._shown_picture(type("Imagenet", (), {"mode": "imagenet"})(), data, None)
    assert decoded == [(800, 600)]
    monkeypatch.undo()
    assert shown.shape == (288, 384, 3)
    whole = images.to_rgb(images.open_image(data)).resize((384, 288), Image.BILINEAR)
    assert np.abs(shown.astype("float32") - np.asarray(whole, "float32")).mean() < 1.0


def test_a_meta_json_with_fields_of_the_wrong_type_is_a_broken_bundle(models_dir, unseen,
                                                                       tmp_path):
    """Valid JSON, but a field of the wrong type (a hand edit): left out of the list (which
    still answers for the good ones), a JSON 500 naming the field and no server path, and a
    server that starts; before, /api/models was a plain 500 for everyone and serve crashed."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(models_dir / "cats-dogs", models / "good")
    cases = {"m-metrics": ("metrics", [1]), "m-classes": ("class_names", 5),
             "m-prep": ("preprocessing", 5)}
    for name, (key, value) in cases.items():
        shutil.copytree(models_dir / "cats-dogs", models / name)
        meta = json.loads((models / name / "meta.json").read_text())
        meta[key] = value
        (models / name / "meta.json").write_text(json.dumps(meta))
    said = Recorder()
    with serve.serving(ServeSettings(models_dir=models, port=0), said) as url:
        with httpx.Client(timeout=120) as http:
            listed = http.get(url + "api/models")
            assert listed.status_code == 200
            assert [m["name"] for m in listed.json()["models"] if m["kind"] == "bundle"] == [
                "good"]
            for name, (key, _) in cases.items():
                answer = http.post(url + "api/predict", data={"model": name},
                                   files={"files": unseen["cats"][0]})
                assert answer.status_code == 500
                detail = answer.json()["detail"]
                assert detail.startswith(f"model {name!r} cannot be used: {name}/meta.json: "
                                         f"{key} must be"), detail
                assert str(tmp_path) not in detail  # the server's paths stay on its console
    assert sorted(w.split(": not a usable bundle")[0] for w in said.warnings) == sorted(
        str(models / name) for name in cases)


def test_health_lists_loaded_models_by_name_and_forgets_replaced_ones(models_dir, unseen,
                                                                      tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(models_dir / "cats-dogs", models / "race")
    photo = files_field(unseen["cats"][0])
    with TestClient(serve.create_app(ServeSettings(models_dir=models))) as c:
        assert c.post("/api/predict", files=photo, data={"model": "race"}).status_code == 200
        assert c.get("/api/health").json()["loaded"] == ["race"]
        model = models / "race/model.keras"
        os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 10**9))
        assert c.get("/api/health").json()["loaded"] == []  # retrained: the old copy is gone
        assert c.post("/api/predict", files=photo, data={"model": "race"}).status_code == 200
        assert c.get("/api/health").json()["loaded"] == ["race"]
        # its meta.json edited (the classes renamed): the copy in memory answered with the
        # old names while /api/models listed the new ones
        meta_path = models / "race/meta.json"
        meta = json.loads(meta_path.read_text())
        assert meta["class_names"] == ["cats", "dogs"]
        meta_path.write_text(json.dumps({**meta, "class_names": ["Cat", "Dog"]}))
        os.utime(meta_path, ns=(meta_path.stat().st_atime_ns,
                                meta_path.stat().st_mtime_ns + 10**9))
        answer = c.post("/api/predict", files=photo, data={"model": "race"}).json()
        assert answer["class_names"] == ["Cat", "Dog"]
        assert answer["predictions"][0]["label"] == "Cat"
        shutil.rmtree(models / "race")
        assert c.get("/api/health").json()["loaded"] == []


def test_a_bundle_grad_cam_cannot_trace_is_a_500_not_a_bad_request(models_dir, unseen,
                                                                   tmp_path):
    """A bundle whose model has no convolutional layer (here: flatten and a Dense) cannot be
    explained whatever is asked: the server's fault, a 500 naming the model, where it was a
    422 as if the request were wrong. Its predictions are still answered."""
    from transfer.tf import keras

    models = tmp_path / "models"
    shutil.copytree(models_dir / "cats-dogs", models / "flat")
    size = json.loads((models / "flat/meta.json").read_text())["image_size"]
    inputs = keras.Input((size, size, 3))
    flat = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="predictions")(
        keras.layers.Flatten()(inputs)))
    (models / "flat/model.keras").unlink()
    flat.save(models / "flat/model.keras")
    with TestClient(serve.create_app(ServeSettings(models_dir=models))) as c:
        answer = c.post("/api/explain", files={"file": unseen["cats"][0]},
                        data={"model": "flat"})
        assert answer.status_code == 500, answer.text
        assert answer.json()["detail"] == ("model 'flat' cannot be explained: no convolutional "
                                           "layer found for Grad-CAM in this model")
        assert c.post("/api/predict", files=files_field(unseen["cats"][0]),
                      data={"model": "flat"}).status_code == 200


def test_validation_errors_do_not_echo_the_upload(client, unseen):
    """A file part with an empty file name is not a file to FastAPI: its 422 quoted the
    whole upload back as text."""
    name, data = unseen["cats"][0]
    answer = client.post("/api/predict", files=[("files", ("", data, "image/jpeg"))])
    assert answer.status_code == 422
    assert len(answer.content) < 1000 and answer.json()["detail"].startswith(
        "files must be file uploads")
    assert "input" not in answer.json()["errors"][0]


def test_explain_takes_one_file_and_a_link_is_listed_once(client, unseen, models_dir):
    two = [("file", unseen["cats"][0]), ("file", unseen["dogs"][0])]
    answer = client.post("/api/explain", files=two)
    assert answer.status_code == 422 and "one file per request: 2" in answer.json()["detail"]
    os.symlink("cats-dogs", models_dir / "alias")
    try:
        names = [m["name"] for m in client.get("/api/models").json()["models"]
                 if m["kind"] == "bundle"]
        assert names == ["cats-dogs"]  # not "alias" too, as "latest" is not
        assert client.post("/api/predict", files=files_field(unseen["cats"][0]),
                           data={"model": "alias"}).status_code == 200  # still served
        loaded = client.get("/api/health").json()["loaded"]
        assert loaded, "the model predict just used is in memory"  # (an empty list passed)
        for name in loaded:  # names the API takes
            assert client.post("/api/predict", files=files_field(unseen["cats"][0]),
                               data={"model": name}).status_code == 200, name
    finally:
        (models_dir / "alias").unlink()


def test_an_app_answers_without_a_lifespan_and_starts_no_thread_unused(models_dir, unseen):
    """create_app starts no model thread (an app made and dropped leaves none behind); a
    TestClient outside a ``with`` block, after one inside it ended, still gets answers."""
    import threading

    before = sum(t.name == "transfer-model" for t in threading.enumerate())
    apps = [serve.create_app(ServeSettings(models_dir=models_dir)) for _ in range(3)]
    assert sum(t.name == "transfer-model" for t in threading.enumerate()) == before
    app = apps[0]
    photo = files_field(unseen["dogs"][0])
    with TestClient(app) as c:
        assert c.post("/api/predict", files=photo).status_code == 200
    answer = TestClient(app).post("/api/predict", files=photo)
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "dogs"


def slow_predictions(monkeypatch, seconds: float) -> list:
    """predict_uploads, ``seconds`` slower per call; returns the list of calls' sizes."""
    calls: list = []
    real = serve.predict_uploads

    def slow(store, uploads, *args):
        calls.append(len(uploads))
        import time

        time.sleep(seconds)
        return real(store, uploads, *args)

    monkeypatch.setattr(serve, "predict_uploads", slow)
    return calls


def test_requests_whose_client_left_are_not_run(models_dir, unseen, monkeypatch):
    """Clients that time out while the model thread is busy: their requests are dropped from
    the queue, not run for nobody (a retrying client multiplied the work)."""
    import time

    calls = slow_predictions(monkeypatch, 2.0)
    with serve.serving(ServeSettings(models_dir=models_dir, port=0)) as url:

        def impatient(top):
            with httpx.Client(timeout=0.8) as http:
                try:
                    http.post(url + "api/predict", data={"top": str(top)},
                              files={"files": unseen["cats"][0]})
                except httpx.TimeoutException:
                    return "gone"
            return "answered"

        with ThreadPoolExecutor(6) as pool:  # distinct top: six jobs, never one batch
            outcomes = list(pool.map(impatient, range(1, 7)))
        assert outcomes == ["gone"] * 6
        deadline = time.monotonic() + 30
        with httpx.Client(timeout=30) as http:
            while http.get(url + "api/health").json()["queued"] and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2.5)  # a call under way when they left finishes
            health = http.get(url + "api/health").json()
    assert health["queued"] == 0
    assert health["requests"] <= 2 and len(calls) <= 2, (health, calls)


def test_a_request_that_fails_does_not_fail_the_others_merged_with_it(models_dir, unseen,
                                                                      monkeypatch):
    """Requests waiting for the model are answered in one batch. One whose upload made the
    batch fail (a DDS texture Pillow cannot decode raised NotImplementedError) failed every
    request merged with it, another user's good photo included: each is now run again alone,
    and only the one at fault fails."""
    import time

    real, calls = serve.predict_uploads, []

    def flaky(store, uploads, *args):
        calls.append(len(uploads))
        if len(calls) == 1:
            time.sleep(2.0)  # busy: the next two requests wait together
        if any(upload.data == b"BOOM" for upload in uploads):
            raise RuntimeError("an unexpected failure on one upload")
        return real(store, uploads, *args)

    monkeypatch.setattr(serve, "predict_uploads", flaky)
    with serve.serving(ServeSettings(models_dir=models_dir, port=0)) as url:

        def post(item, top):
            with httpx.Client(timeout=60) as http:
                return http.post(url + "api/predict", data={"top": str(top)},
                                 files={"files": item})

        with ThreadPoolExecutor(3) as pool:
            busy = pool.submit(post, unseen["dogs"][0], 2)
            time.sleep(0.5)
            good = pool.submit(post, unseen["cats"][0], 1)
            bad = pool.submit(post, ("texture.jpg", b"BOOM"), 1)
            answers = busy.result(), good.result(), bad.result()
    assert calls[:2] == [1, 2], calls  # the two were merged, then run again one by one
    assert answers[0].status_code == answers[1].status_code == 200
    assert answers[1].json()["predictions"][0]["label"] == "cats"
    assert answers[2].status_code == 500 and "RuntimeError" in answers[2].text


def test_a_merged_requests_engine_counts_its_own_photos(models_dir, unseen, monkeypatch):
    """Requests merged into one pass each got the pass's `engine` as their own: a request of
    one photo said `images: 4` (another user's three counted in). Each now counts its own and
    `engine.merged` says the pass was shared."""
    import time

    real, calls = serve.predict_uploads, []

    def slow_first(store, uploads, *args):
        calls.append(len(uploads))
        if len(calls) == 1:
            time.sleep(2.0)  # busy: the next two requests wait together
        return real(store, uploads, *args)

    monkeypatch.setattr(serve, "predict_uploads", slow_first)
    with serve.serving(ServeSettings(models_dir=models_dir, port=0)) as url:

        def post(items):
            with httpx.Client(timeout=60) as http:
                return http.post(url + "api/predict", files=[("files", i) for i in items])

        with ThreadPoolExecutor(3) as pool:
            busy = pool.submit(post, unseen["dogs"][:1])
            time.sleep(0.5)
            one = pool.submit(post, unseen["cats"][:1])
            time.sleep(0.2)
            three = pool.submit(post, unseen["dogs"][1:4])
            answers = [f.result().json() for f in (busy, one, three)]
    assert calls == [1, 4], calls
    assert answers[0]["engine"]["images"] == 1 and "merged" not in answers[0]["engine"]
    for answer, size in zip(answers[1:], (1, 3), strict=True):
        assert len(answer["predictions"]) == answer["engine"]["images"] == size
        assert answer["engine"]["merged"] == {"requests": 2, "images": 4}


def test_an_image_kind_pillow_cannot_decode_is_that_files_error(client, unseen):
    """A DDS texture in a 16-bit float format (DXGI 10): Pillow identifies it, then raises
    NotImplementedError, which was no ImageError: a 500 for the whole request (the good photo
    beside it too) and a traceback in predict."""
    import struct

    side = 64
    header = (struct.pack("<4s7I44s", b"DDS ", 124, 0x100F, side, side, side * 8, 0, 1,
                          b"\0" * 44)
              + struct.pack("<2I4s5I", 32, 4, b"DX10", 0, 0, 0, 0, 0)
              + struct.pack("<5I", 0x1000, 0, 0, 0, 0) + struct.pack("<5I", 10, 3, 0, 1, 0))
    texture = ("hdr.dds", header + b"\0" * (side * side * 8))
    response = client.post("/api/predict", files=files_field(texture, unseen["cats"][0]))
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    assert rows[0]["label"] is None and "a kind of image Pillow cannot decode" in rows[0]["error"]
    assert rows[1]["label"] == "cats"
    assert client.post("/api/explain", files={"file": texture}).status_code == 415


def test_the_queue_holds_a_bounded_number_of_bytes(models_dir, unseen, monkeypatch):
    """Requests waiting for the model keep their uploads in memory: past MAX_PENDING_MB of
    them, 503 (the count limit alone let 256 requests of 20 MB wait)."""
    calls = slow_predictions(monkeypatch, 3.0)  # all eight are in while the first runs
    photo = unseen["dogs"][0]
    monkeypatch.setattr(serve, "MAX_PENDING_MB", 2.5 * len(photo[1]) / 2**20)
    with serve.serving(ServeSettings(models_dir=models_dir, port=0)) as url:

        def one(top):
            with httpx.Client(timeout=120) as http:
                return http.post(url + "api/predict", data={"top": str(1 + top % 2)},
                                 files={"files": photo}).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(one, range(8)))
    # those in the model's first batch (the ones that came before it started: one or
    # more), two waiting (2.5 photos' worth), the others turned away: not a third waiting
    # (the bytes it would bring, not only those held, count)
    assert statuses.count(200) == calls[0] + 2 and statuses.count(503) >= 3, (statuses, calls)


def test_the_queue_holds_a_bounded_number_of_requests_and_batches(models_dir, unseen,
                                                                  monkeypatch):
    """At most MAX_PENDING requests wait (more get 503), and a merged batch holds at most
    MAX_BATCH_FILES images: here 2 and 3, with requests of two photos each, so no two of
    them share a model call."""
    calls = slow_predictions(monkeypatch, 2.5)  # all seven are in while the first runs
    monkeypatch.setattr(serve, "MAX_PENDING", 2)
    monkeypatch.setattr(serve, "MAX_BATCH_FILES", 3)
    two = [("files", unseen["dogs"][0]), ("files", unseen["cats"][0])]
    with serve.serving(ServeSettings(models_dir=models_dir, port=0)) as url:

        def one(_):
            with httpx.Client(timeout=120) as http:
                response = http.post(url + "api/predict", files=two)
            return response.status_code, len(response.json().get("predictions", []))

        with ThreadPoolExecutor(7) as pool:
            answers = list(pool.map(one, range(7)))
    # one in the model, two waiting, four turned away; every answered request got its two
    assert sorted(answers) == [(200, 2)] * 3 + [(503, 0)] * 4, answers
    assert calls == [2, 2, 2], calls


def started_server(models: Path, tmp_path: Path):
    """`transfer serve` in a real process (Ctrl-C as in a terminal), on a free port: the
    process, its URL's port and a list its stderr lines are added to as they come."""
    import re
    import signal
    import subprocess
    import sys
    import threading
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "transfer", "serve", "--models-dir", str(models), "--port", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    deadline = time.monotonic() + 120
    while not any("Ctrl-C stops it" in line for line in lines):
        assert proc.poll() is None and time.monotonic() < deadline, lines
        time.sleep(0.05)
    port = int(re.search(r"127\.0\.0\.1:(\d+)/", "".join(lines)).group(1))
    return proc, port, lines


@pytest.mark.parametrize("signals", [("SIGINT",), ("SIGTERM",), ("SIGINT", "SIGINT")])
def test_serve_stops_in_bounded_time_with_an_upload_stalled(models_dir, tmp_path, signals):
    """A client that sent half an upload and went quiet held `transfer serve` after Ctrl-C or
    SIGTERM until it closed (a `docker stop` then ended in SIGKILL); a second Ctrl-C spilled
    hundreds of lines of tracebacks and aborted. Now: the requests in progress get
    GRACE_SECONDS, the exit code is 130 or 143, one `stopped` line; twice Ctrl-C at once."""
    import signal
    import time

    proc, port, lines = started_server(models_dir, tmp_path)
    stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        stalled.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: multipart/form-data; boundary=b\r\n"
                        b"Content-Length: 100000\r\n\r\n--b\r\n")  # and then nothing
        time.sleep(0.5)
        sent = time.monotonic()
        for i, name in enumerate(signals):
            if i:
                time.sleep(0.5)
            proc.send_signal(getattr(signal, name))
        try:
            proc.wait(timeout=serve.GRACE_SECONDS + 20)
        except subprocess_timeout():
            pytest.fail(f"still serving {serve.GRACE_SECONDS + 20:g} s after {signals}: "
                        f"{''.join(lines)}")
        took = time.monotonic() - sent
        stalled.settimeout(5)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := stalled.recv(65536):
                answer += chunk
    finally:
        stalled.close()
        proc.kill()
        proc.wait(timeout=30)
    time.sleep(0.2)  # the reader thread's last lines
    err = "".join(lines)
    assert proc.returncode == (143 if signals[0] == "SIGTERM" else 130), err
    assert "Traceback" not in err and "stopping (requests in progress get up to" in err, err
    assert err.rstrip().splitlines()[-1] == "transfer serve: stopped", err
    if len(signals) == 2:  # the second Ctrl-C does not wait for the grace period
        assert took < serve.GRACE_SECONDS, (took, err)
    else:  # the request in progress was given its grace period, then cut off
        assert took >= serve.GRACE_SECONDS, (took, err)
        assert "1 request(s) still in progress after 8 s were cut off" in err, err
        # the request cut off is told so in JSON, as every answer is (it was a plain-text 500)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), answer
        assert json.loads(body)["detail"].startswith("the server stopped before this request")


def subprocess_timeout():
    import subprocess

    return subprocess.TimeoutExpired


def test_serve_stopped_while_it_starts_says_so(tmp_path, mobilenet_weights):
    """SIGTERM while `serve --imagenet` loads TensorFlow and its default model: the process
    was killed silently (exit -15); now `terminated`, exit 143, as every command."""
    import signal
    import sys
    import time

    proc = subprocess_popen([sys.executable, "-m", "transfer", "serve", "--imagenet", "--base",
                             "mobilenet", "--alpha", "0.25", "--port", "0",
                             "--models-dir", str(tmp_path)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not sigterm_caught(proc.pid):  # serve's own handler is in place
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "terminated" and "Traceback" not in err


def sigterm_caught(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM now (Linux: /proc/PID/status)."""
    import signal

    with open(f"/proc/{pid}/status") as status:
        caught = next(line for line in status if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def subprocess_popen(args, cwd):
    import subprocess

    return subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def test_photos_a_killed_server_left_in_the_temp_folder_are_removed_at_start(
        tmp_path, monkeypatch):
    """A request's uploads wait in a temporary folder named after the server's machine and
    process; a SIGKILL leaves them there. The next server removes those of processes that are
    gone, and nothing else: a live process's, another machine's, a name it did not make."""
    import subprocess
    import sys
    import tempfile

    from transfer import files

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        here = files.own_temp_folder_prefix("transfer-serve-").split("-")[2]
        made = {
            "dead": tmp_path / f"transfer-serve-{here}-{gone.pid}-abc",
            "alive": tmp_path / f"transfer-serve-{here}-{alive.pid}-abc",
            "elsewhere": tmp_path / f"transfer-serve-otherhost-{gone.pid}-abc",
            "old name": tmp_path / "transfer-serve-2pp4ybgc",
            "worker": tmp_path / f"transfer-worker-{here}-{gone.pid}-abc",
        }
        for folder in made.values():
            folder.mkdir()
            (folder / "0000.upload").write_bytes(b"a photo")
        serve.create_app(ServeSettings(models_dir=tmp_path / "models"))
        assert not made["dead"].exists()
        assert all(made[k].exists() for k in ("alive", "elsewhere", "old name", "worker"))
    finally:
        alive.kill()
        alive.wait()
    assert files.sweep_temp_folders("transfer-serve-") == [made["alive"]]


def test_a_link_loop_in_the_models_folder_is_passed_over(models_dir, tmp_path):
    """Two links naming each other in the models folder ended serve at start-up with a
    RuntimeError from resolve() (a loop made while serving: /api/models answered 500 for
    ever). The loop is not a bundle; the others are listed and served."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(models_dir / "cats-dogs", models / "cats-dogs")
    os.symlink("l2", models / "l1")
    os.symlink("l1", models / "l2")
    with TestClient(serve.create_app(ServeSettings(models_dir=models))) as c:
        listed = c.get("/api/models")
        assert listed.status_code == 200
        bundles = [m["name"] for m in listed.json()["models"]
                   if not m["name"].startswith(serve.IMAGENET_PREFIX)]
        assert bundles == ["cats-dogs"] and listed.json()["default"] == "cats-dogs"
        os.symlink("l4", models / "l3")
        os.symlink("l3", models / "l4")
        again = c.get("/api/models")
        assert again.status_code == 200 and [m["name"] for m in again.json()["models"]
                                             if m["name"] in ("l1", "l2", "l3", "l4")] == []
        assert c.post("/api/predict", files=files_field(("a.jpg", b"x")),
                      data={"model": "l1"}).status_code == 404


def test_the_default_through_a_link_is_the_bundle_the_server_was_asked_for(models_dir,
                                                                           tmp_path):
    """`serve --model models/latest`: /api/models said "latest", which the list leaves out
    (links are listed as their targets), so the page fell back to its first bundle and
    classified every photo with another model than the one asked for."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("a-first", "z-asked"):
        shutil.copytree(models_dir / "cats-dogs", models / name)
    os.symlink("z-asked", models / "latest")
    os.symlink("z-asked", models / "alias")
    for model in (str(models / "latest"), "latest", "alias", None):
        app = serve.create_app(ServeSettings(models_dir=models, model=model))
        with TestClient(app) as c:
            listed = c.get("/api/models").json()
        names = [m["name"] for m in listed["models"] if m["kind"] == "bundle"]
        assert listed["default"] == "z-asked" and names == ["a-first", "z-asked"], model


def test_uploads_the_cli_would_not_read_are_refused_by_serve_too(client, unseen):
    """A camera-raw file (by its name, as predict and explain refuse it) was classified by
    serve from its embedded preview; a one-colour PNG of 8001 x 8001 px (a small upload,
    64 megapixels to decode) was decoded whole. Each is now its own error row, the others
    answered; explain refuses each with a 415."""
    import io as io_module

    buffer = io_module.BytesIO()
    Image.new("L", (8001, 8001), 255).save(buffer, "PNG")
    large = buffer.getvalue()
    assert len(large) < 200_000  # the upload is small; its decode is not
    jpeg = unseen["cats"][0][1]
    buffer = io_module.BytesIO()  # a camera's raw file is a TIFF by its header (a DNG)
    Image.open(io_module.BytesIO(jpeg)).save(buffer, "TIFF")
    raw = buffer.getvalue()
    answer = client.post("/api/predict", files=files_field(
        ("IMG_0001.dng", raw), ("page.png", large), ("cat.jpg", jpeg)))
    assert answer.status_code == 200
    rows = {p["file"]: p["error"] for p in answer.json()["predictions"]}
    assert rows["IMG_0001.dng"].startswith("camera raw is not a format transfer reads")
    assert rows["page.png"].startswith("image is 8001x8001 px (64 megapixels); the server "
                                       "decodes at most 64 megapixels")
    assert rows["cat.jpg"] is None and answer.json()["failed"] == 2
    for name, data in (("IMG_0001.dng", raw), ("page.png", large)):
        explained = client.post("/api/explain", files=[("file", (name, data))])
        assert explained.status_code == 415 and explained.json()["errors"][0]["error"] == \
            rows[name]
    # a large photo as a JPEG is read in draft mode: still answered
    buffer = io_module.BytesIO()
    Image.open(io_module.BytesIO(jpeg)).convert("RGB").resize((9000, 7200)).save(
        buffer, "JPEG", quality=70)
    assert client.post("/api/predict", files=files_field(("big.jpg", buffer.getvalue()))
                       ).json()["predictions"][0]["label"] == "cats"


def test_an_imagenet_classifier_that_cannot_load_is_the_servers_fault(models_dir, unseen,
                                                                      tmp_path, monkeypatch):
    """Damaged ImageNet weights in the server's Keras cache: predict said 500 but explain 422
    (the client's mistake), and the console said nothing. Both are now a 500 with the reason,
    said once on the console; and a request with no model to use at all no longer says
    "no model named None"."""
    from keras.src.backend import config
    from test_bases import offline

    offline(monkeypatch)  # Keras would download the file again where it can
    home = tmp_path / "keras"
    (home / "models").mkdir(parents=True)
    (home / "models" / "mobilenet_2_5_224_tf.h5").write_bytes(b"not an HDF5 file" * 64)
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(config, "_KERAS_DIR", str(home))  # Keras reads it once, at import
    models = tmp_path / "models"
    models.mkdir()
    photo = unseen["dogs"][0]
    # offered unasked too: a request naming it was a 404 saying its weights are not in the
    # Keras cache, while a damaged file sat there
    for asked in ({}, {"imagenet": True, "base": "mobilenet", "alpha": 0.25}):
        said: list[str] = []
        app = serve.create_app(ServeSettings(models_dir=models, **asked))
        app.state.store.warn = said.append
        with TestClient(app) as c:
            assert c.get("/api/models").json()["default"] == "imagenet:mobilenet-0.25"
            for endpoint, field in (("/api/predict", "files"), ("/api/explain", "file")):
                answer = c.post(endpoint, files=[(field, photo)],
                                data={"model": "imagenet:mobilenet-0.25"})
                assert answer.status_code == 500, (endpoint, answer.text)
                detail = answer.json()["detail"]
                assert detail.startswith("model 'imagenet:mobilenet-0.25' cannot be used: ")
                assert "is not an HDF5 weights file" in detail and "delete it" in detail
            absent = c.post("/api/predict", files=[("files", photo)],
                            data={"model": "imagenet:vgg16"})
            assert absent.status_code == 404 and "Keras cache" in absent.json()["detail"]
            assert str(tmp_path) not in absent.json()["detail"]
        assert len(said) == 1 and said[0].startswith("imagenet:mobilenet-0.25: cannot be loaded")
    (home / "models" / "mobilenet_2_5_224_tf.h5").unlink()
    with TestClient(serve.create_app(ServeSettings(models_dir=models))) as c:
        nothing = c.post("/api/predict", files=[("files", photo)])
    assert nothing.status_code == 404 and "None" not in nothing.json()["detail"]
    assert nothing.json()["detail"].startswith("no model to use: the models folder holds no "
                                               "bundle")


def test_a_default_bundle_gone_while_serving_is_named(trained_bundle, unseen, tmp_path):
    """`serve --model mine`, then models/mine moved away: a request without a model was told
    "the models folder holds no bundle and no ImageNet classifier's weights are in the Keras
    cache", both false (another bundle is there). It now names the default that is gone."""
    models = tmp_path / "models"
    for name in ("mine", "other"):
        shutil.copytree(trained_bundle.bundle, models / name)
    photo = unseen["dogs"][0]
    with TestClient(serve.create_app(ServeSettings(models_dir=models, model="mine"))) as c:
        assert c.post("/api/predict", files=[("files", photo)]).status_code == 200
        (models / "mine").rename(tmp_path / "mine-away")
        for endpoint, field in (("/api/predict", "files"), ("/api/explain", "file")):
            gone = c.post(endpoint, files=[(field, photo)])
            assert gone.status_code == 404 and gone.json()["detail"] == (
                "the server's default model 'mine' is gone; name another in the request's "
                "model field (GET /api/models lists them)"), endpoint
        asked = c.post("/api/predict", files=[("files", photo)], data={"model": "other"})
        assert asked.status_code == 200 and asked.json()["predictions"][0]["error"] is None


def test_the_api_docs_say_what_predict_answers(client):
    """/docs showed /api/predict's answer as "string" and none of its error codes."""
    spec = client.get("/openapi.json").json()
    responses = spec["paths"]["/api/predict"]["post"]["responses"]
    assert {"200", "404", "413", "415", "422", "503"} <= set(responses)
    example = responses["200"]["content"]["application/json"]["example"]
    assert {"predictions", "class_names", "failed", "server_seconds"} <= set(example)


def test_a_port_in_use_is_said_before_the_default_model_loads(models_dir, monkeypatch):
    """A busy port was said only after TensorFlow's import and the default model's load."""
    loaded = []
    monkeypatch.setattr(serve.ModelStore, "get", lambda self, name: loaded.append(name))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(TransferError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve.run(ServeSettings(models_dir=models_dir, model="cats-dogs", port=port))
    assert loaded == []


def test_imagenet_options_serve_would_ignore_are_refused_or_said(models_dir):
    """--imagenet beside --model was ignored in silence (predict refuses the pair); --base or
    --alpha without --imagenet choose nothing."""
    with pytest.raises(TransferError, match=r"^give either --model or --imagenet, not both"):
        ServeSettings(models_dir=models_dir, model="cats-dogs", imagenet=True).validated()
    recorder = Recorder()
    with serve.serving(ServeSettings(models_dir=models_dir, alpha=0.25, port=0), recorder):
        pass
    assert [w for w in recorder.warnings if "--base and --alpha" in w] == [
        "--base and --alpha choose the ImageNet classifier that --imagenet makes the default; "
        "without --imagenet they are ignored (the page offers every ImageNet classifier whose "
        "weights are in the Keras cache)"]


def test_a_png_over_pillows_own_limit_gets_the_servers_line(client):
    """A PNG over Pillow's decompression-bomb limit (179 megapixels) was refused in Pillow's
    words, quoting its limit, not the server's 64 megapixels."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    def header(width: int, height: int) -> bytes:
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1,
                                                                 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\0" * 2501)) + chunk(b"IEND", b""))

    png = header(20000, 20000)
    line = serve.upload_problem(serve.Upload("huge.png", png), 224)
    assert line == ("image is 400 megapixels; the server decodes at most 64 megapixels of an "
                    "image that is not a baseline JPEG: scale it down, or save it as a JPEG")
    # under Pillow's error but over its warning (89 megapixels): the server's line, no warning
    # of Pillow's on the console; and the server's own limit, to the pixel
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        said = {size: serve.upload_problem(serve.Upload("big.png", header(*size)), 224)
                for size in ((10000, 10000), (8000, 8001), (8000, 8000))}
    limit = line.partition("; ")[2]
    assert said == {(10000, 10000): f"image is 10000x10000 px (100 megapixels); {limit}",
                    (8000, 8001): f"image is 8000x8001 px (64 megapixels); {limit}",
                    (8000, 8000): None}
    answer = client.post("/api/predict", files=files_field(("huge.png", png)))
    assert answer.status_code == 415 and answer.json()["errors"][0]["error"] == line


def test_a_progressive_jpeg_is_refused_by_its_header_as_a_png_is(client, unseen):
    """A JPEG was let through whatever its size, as draft mode decodes it small; a progressive
    one is decoded whole (libjpeg keeps the whole image's coefficients): a 5 KB upload whose
    header said 24000 x 24000 took 1.7 GB, and got a confident answer. Over 64 megapixels it is
    now refused by its header; a baseline JPEG saying the same size is still read in draft
    mode, and a progressive photo of an ordinary size is answered."""
    photo = unseen["cats"][0][1]
    huge = progressive_claiming(photo, (12000, 9000))
    assert len(huge) < 10_000
    line = serve.upload_problem(serve.Upload("big.jpg", huge), 224)
    assert line == ("image is 12000x9000 px (108 megapixels), a progressive JPEG, which is "
                    "decoded whole; the server decodes at most 64 megapixels of an image that "
                    "is not a baseline JPEG: scale it down, or save it as a baseline JPEG")
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(photo)) as opened:
        opened.save(buffer, "JPEG", progressive=True)
    assert Image.open(io.BytesIO(buffer.getvalue())).info.get("progressive")
    answer = client.post("/api/predict", files=files_field(
        ("big.jpg", huge), ("cat.jpg", buffer.getvalue())))
    rows = {p["file"]: p["error"] for p in answer.json()["predictions"]}
    assert answer.status_code == 200 and rows == {"big.jpg": line, "cat.jpg": None}
    explained = client.post("/api/explain", files=[("file", ("big.jpg", huge))])
    assert explained.status_code == 415 and explained.json()["errors"][0]["error"] == line
    # the same header on a baseline JPEG: Pillow's own check on the stored size is not applied
    # (a 200-megapixel phone photo is read at 1/8 scale), and neither is the server's
    baseline = bytearray(photo)
    at = 2
    while baseline[at + 1] != 0xC0:
        at += 2 + int.from_bytes(baseline[at + 2:at + 4], "big")
    baseline[at + 5:at + 9] = (12240).to_bytes(2, "big") + (16320).to_bytes(2, "big")
    assert serve.upload_problem(serve.Upload("phone.jpg", bytes(baseline)), 224) is None
    # ... unless what draft mode decodes is over the limit: a 17 KB JPEG saying 65000 x 65000
    # was decoded (at 1/8, the smallest scale) to 66 megapixels (265 MB) and answered
    baseline[at + 5:at + 9] = (65000).to_bytes(2, "big") * 2
    bomb = serve.Upload("bomb.jpg", bytes(baseline))
    assert serve.upload_problem(bomb, 224) == (
        "image is 65000x65000 px (4225 megapixels), decoded at 8125x8125 (66 megapixels) to "
        "read it for this model; the server decodes at most 64 megapixels: scale it down")
    baseline[at + 5:at + 9] = (64000).to_bytes(2, "big") * 2  # 64 megapixels at 1/8: read
    assert serve.upload_problem(serve.Upload("big.jpg", bytes(baseline)), 224) is None
    # draft mode scales by the smaller side's ratio: 65000 x 2040 read for 224 px decodes at
    # 1/4 (8 megapixels), for a digit bundle's 512 whole (133 megapixels, under Pillow's own
    # error limit), which counting 1/8 of each side let through
    baseline[at + 5:at + 9] = (2040).to_bytes(2, "big") + (65000).to_bytes(2, "big")
    narrow = serve.Upload("narrow.jpg", bytes(baseline))
    assert serve.upload_problem(narrow, 224) is None
    assert serve.upload_problem(narrow, 512).startswith(
        "image is 65000x2040 px (133 megapixels), decoded at 65000x2040 (133 megapixels)")
    assert serve.upload_problem(narrow, None) is not None  # the "tf" resize decodes it whole


def test_an_imagenet_classifiers_report_is_said_to_not_exist(client):
    """/models/imagenet:mobilenet-0.25/report said no such model, although it is offered."""
    answer = client.get("/models/imagenet:mobilenet-0.25/report")
    assert answer.status_code == 404
    assert answer.json()["detail"] == ("imagenet:mobilenet-0.25 is an ImageNet classifier as "
                                       "Keras ships it: it has no training report (a trained "
                                       "bundle has one)")
    assert "no model named" in client.get("/models/imagenet:vgg19/report").json()["detail"]


def test_fields_in_the_query_string_unknown_or_given_twice_are_refused(client, unseen):
    """`curl -F files=@cat.jpg ".../api/predict?model=nosuch&top=1"` was a 200 from the default
    model with 3 classes (the query was ignored), and `-F model=a -F model=b` used the last:
    both are one 422 line now, saying what to send instead."""
    photo = files_field(unseen["cats"][0])
    asked = client.post("/api/predict?model=nosuch&top=1", files=photo)
    assert asked.status_code == 422
    assert asked.json()["detail"] == (
        "model and top are form fields of the multipart body, not query parameters (curl "
        "-F model=nosuch -F top=1 -F files=@photo.jpg ...)")
    other = client.post("/api/predict?verbose=1", files=photo)
    assert other.status_code == 422 and other.json()["detail"] == (
        "POST /api/predict takes no query parameters (verbose); its fields (files, model, top, "
        "invert) are form fields of the multipart body")
    explained = client.post("/api/explain?class_name=cats", files={"file": unseen["cats"][0]})
    assert explained.status_code == 422 and explained.json()["detail"] == (
        "class_name is a form field of the multipart body, not a query parameter (curl -F "
        "class_name=cats -F file=@photo.jpg ...)")
    twice = client.post("/api/predict", files=photo + [("model", (None, "cats-dogs")),
                                                       ("model", (None, "nosuch"))])
    assert twice.status_code == 422 and twice.json()["detail"] == (
        "form field model given 2 times ('cats-dogs', 'nosuch'); give it once")
    views = client.post("/api/explain", files=[("file", unseen["cats"][0]),
                                               ("view", (None, "pair")),
                                               ("view", (None, "overlay"))])
    assert views.status_code == 422 and views.json()["detail"].startswith(
        "form field view given 2 times")
    # a field the endpoint does not take: `-F modle=... -F topp=1` was the default model's
    # answer with every class, `-F class=roses` the top class's Grad-CAM, 200 both
    misspelt = client.post("/api/predict", files=photo, data={"modle": "nosuch", "topp": "1"})
    assert misspelt.status_code == 422 and misspelt.json()["detail"] == (
        "form fields modle (did you mean model?) and topp (did you mean top?) are not taken by "
        "POST /api/predict; its fields are files, model, top, invert")
    wrong = client.post("/api/explain", files={"file": unseen["cats"][0]},
                        data={"class": "cats", "colour": "red"})
    assert wrong.status_code == 422 and wrong.json()["detail"] == (
        "form fields class (did you mean class_name?) and colour are not taken by POST "
        "/api/explain; its fields are file, model, class_name, view, invert")
    # the fields in the body, once each, as before
    once = client.post("/api/predict", files=photo, data={"model": "cats-dogs", "top": "1"})
    assert once.status_code == 200 and len(once.json()["predictions"][0]["top"]) == 1


def test_a_body_that_is_not_a_multipart_form_of_files_is_said_so(client, unseen):
    """A JSON body, a raw JPEG, `curl -d model=x` all got 422 "invalid request: body.files:
    Field required", and `-F files=hello` "Value error, Expected UploadFile, received: <class
    'str'>": the answer now says what the endpoint takes and how to send it."""
    name, data = unseen["cats"][0]
    for endpoint, field in (("predict", "files"), ("explain", "file")):
        url = f"/api/{endpoint}"
        for media, body in (("application/json", b'{"model": "cats-dogs"}'),
                            ("image/jpeg", data)):
            answer = client.post(url, content=body, headers={"Content-Type": media})
            assert answer.status_code == 415, answer.text
            assert answer.json()["detail"].startswith(
                f"POST {url} takes a multipart/form-data body, the " + (
                    "photos as file uploads " if field == "files" else "photo as a file upload "))
            assert answer.json()["detail"].endswith(
                f"in the field {field} (curl -F {field}=@photo.jpg), not {media}")
        typed = client.post(url, data={"model": "cats-dogs"})  # curl -d model=cats-dogs
        assert typed.status_code == 415 and typed.json()["detail"].endswith(
            "not application/x-www-form-urlencoded; curl -d sends a urlencoded form, -F a "
            "multipart one")
        text = client.post(url, files=[(field, (None, "hello"))])
        assert text.status_code == 422
        assert text.json()["detail"] == (
            f"{field} must be {'file uploads' if field == 'files' else 'a file upload'} (curl "
            f"-F {field}=@photo.jpg), not text (a form part without a file name is text)")
    misnamed = client.post("/api/predict", files={"file": (name, data)})
    assert misnamed.status_code == 422 and misnamed.json()["detail"] == (
        "no files: POST /api/predict takes the photos as file uploads in the form field files "
        "(curl -F files=@photo.jpg); this form has file")
    assert client.post("/api/predict").json()["detail"] == (
        "no files: POST /api/predict takes the photos as file uploads in the form field files "
        "(curl -F files=@photo.jpg)")
    assert client.post("/api/explain", files={"files": (name, data)}).json()["detail"] == (
        "no file: POST /api/explain takes the photo as a file upload in the form field file "
        "(curl -F file=@photo.jpg); this form has files")


def test_the_api_docs_say_what_explain_answers_as_it_answers(client, unseen):
    """/docs listed for /api/explain a 200 and FastAPI's 422 (``detail`` a list), while its
    422s have ``detail`` a string, its 404/413/415/500/503 were not listed, and the class the
    PNG shows (the X-Label ... headers) was said nowhere but serve.py's docstring."""
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for endpoint in ("predict", "explain"):
        responses = spec["paths"][f"/api/{endpoint}"]["post"]["responses"]
        assert {"200", "400", "404", "413", "415", "422", "500", "503"} <= set(responses)
        for status, answer in responses.items():
            if int(status) >= 400:
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                model = schemas[ref.rsplit("/", 1)[-1]]
                assert model["properties"]["detail"]["type"] == "string", (endpoint, status)
    explain = spec["paths"]["/api/explain"]["post"]["responses"]
    assert set(explain["200"]["content"]) == {"image/png"}
    headers = explain["200"]["headers"]
    assert {"X-Label", "X-Probability", "X-Class-Index", "X-Layer"} <= set(headers)
    assert "URL-quoted" in headers["X-Label"]["description"]
    photo = unseen["cats"][0]
    answers = [client.post("/api/explain", files={"file": photo}, data={"view": "side"}),
               client.post("/api/explain", files={"file": photo}, data={"model": "nosuch"}),
               client.post("/api/explain", files={"file": ("notes.txt", b"text\n" * 9)}),
               client.post("/api/explain", content=photo[1],
                           headers={"Content-Type": "image/jpeg"})]
    assert [a.status_code for a in answers] == [422, 404, 415, 415]
    for answer in answers:  # what the docs say: detail is one line
        assert isinstance(answer.json()["detail"], str) and str(answer.status_code) in explain
    shown = client.post("/api/explain", files={"file": photo})
    always = set(headers) - {"X-Map-Note"}  # that one only for a map of nothing
    assert shown.status_code == 200 and always <= {h.title() for h in shown.headers}


def test_a_tiny_probability_keeps_its_digits_in_x_probability(unseen, mobilenet_weights,
                                                              tmp_path):
    """X-Probability had 6 decimals: the least likely ImageNet class of a cat read
    0.000000. It is the float's every digit now, as /api/predict gives it."""
    require_asset("keras/models/mobilenet_2_5_224_tf.h5")
    settings = ServeSettings(models_dir=tmp_path / "none", imagenet=True, base="mobilenet",
                             alpha=0.25)
    photo = unseen["cats"][0]
    with TestClient(serve.create_app(settings)) as c:
        every = c.post("/api/predict", files=files_field(photo), data={"top": "1000"})
        assert every.status_code == 200, every.text
        ranked = every.json()["predictions"][0]["top"]
        least = ranked[-1]
        assert least["probability"] < 5e-7  # what 6 decimals showed as 0.000000
        picture = c.post("/api/explain", files={"file": photo},
                         data={"class_name": least["synset"]})
        assert picture.status_code == 200, picture.text
        shown = float(picture.headers["x-probability"])
        assert shown > 0 and shown == pytest.approx(least["probability"], rel=0.05)
        best = c.post("/api/explain", files={"file": photo})
        assert float(best.headers["x-probability"]) == pytest.approx(ranked[0]["probability"],
                                                                     rel=1e-3)


def test_a_class_typed_in_another_case_or_with_spaces_is_found_or_the_nearest_said(
        client, unseen, mobilenet_weights, tmp_path):
    """class_name=Tabby (ImageNet's `tabby`), `golden retriever`, or `Cats` for a bundle's
    `cats` were "unknown ... class" with no hint: typed otherwise, one class is found; when
    none is, the nearest labels are said; when several are, which."""
    from transfer.explain import named_class

    require_asset("keras/models/mobilenet_2_5_224_tf.h5")
    index = json.loads(require_asset("keras/models/imagenet_class_index.json").read_text())
    by_label: dict[str, list[int]] = {}
    for i, (_, label) in index.items():
        by_label.setdefault(label, []).append(int(i))
    photo = unseen["cats"][0]
    for typed, meant in (("Cats", "cats"), (" DOGS ", "dogs")):
        found = client.post("/api/explain", files={"file": photo}, data={"class_name": typed})
        assert found.status_code == 200 and found.headers["x-label"] == meant, found.text
    near = client.post("/api/explain", files={"file": photo}, data={"class_name": "kats"})
    assert near.status_code == 422 and near.json()["detail"] == (
        "unknown class 'kats'; the model's classes are cats, dogs (the nearest: cats)")
    with pytest.raises(TransferError, match=r"^class 'CATS' could be 'Cats' or 'cats': give it "
                                            r"as the model has it$"):
        named_class(["Cats", "cats", "dogs"], "CATS")
    settings = ServeSettings(models_dir=tmp_path / "none", imagenet=True, base="mobilenet",
                             alpha=0.25)
    with TestClient(serve.create_app(settings)) as c:
        for typed, meant in (("Tabby", "tabby"), ("golden retriever", "golden_retriever"),
                             ("TIGER CAT", "tiger_cat")):
            shown = c.post("/api/explain", files={"file": photo}, data={"class_name": typed})
            assert shown.status_code == 200, shown.text
            assert shown.headers["x-label"] == meant
            assert [int(shown.headers["x-class-index"])] == by_label[meant]
        unknown = c.post("/api/explain", files={"file": photo},
                         data={"class_name": "tabby cat"})
        assert unknown.status_code == 422
        detail = unknown.json()["detail"]
        assert detail.startswith("unknown ImageNet class 'tabby cat' (the nearest labels: "
                                 "tabby") and detail.endswith("or a WordNet synset (n02123045)")
        # ImageNet's "Cardigan" (the corgi) and "cardigan" (the sweater): typed otherwise,
        # both are meant; the synsets tell them apart
        both = c.post("/api/explain", files={"file": photo}, data={"class_name": "CARDIGAN"})
        synsets = sorted(index[str(i)][0] for label in ("Cardigan", "cardigan")
                         for i in by_label[label])
        assert both.status_code == 422 and both.json()["detail"] == (
            f"ImageNet has 2 classes named 'Cardigan' and 'cardigan' ({', '.join(synsets)}): "
            "give the synset")


def test_the_upload_limit_is_said_in_what_it_counts(models_dir, unseen):
    """--max-upload-mb counts MiB (2^20 bytes, as the page does) while the 413 said "MB":
    it says MiB and the bytes now, and /api/models gives the bytes. A request over the limit
    in MB (10^6) but not in MiB is taken."""
    photo = unseen["cats"][3]
    body = len(httpx.Request("POST", "http://127.0.0.1/api/predict",
                             files=files_field(photo)).read())
    limit_mb = round(body / 1e6 * 0.98, 6)  # body > limit_mb * 10^6, body < limit_mb * 2^20
    limit = int(limit_mb * 2**20)
    assert limit_mb * 1e6 < body < limit
    with TestClient(serve.create_app(ServeSettings(models_dir=models_dir,
                                                   max_upload_mb=limit_mb))) as c:
        assert c.get("/api/models").json()["max_upload_bytes"] == limit
        taken = c.post("/api/predict", files=files_field(photo))
        assert taken.status_code == 200, taken.text

        def padded(n: int) -> list:  # the photo with n bytes after its end (read as before)
            return files_field((photo[0], photo[1] + b"\0" * n))

        # the limit counts to the byte: a body of the limit exactly is taken, one more is not
        at = httpx.Request("POST", "http://127.0.0.1/api/predict", files=padded(limit - body))
        assert len(at.read()) == limit
        assert c.post("/api/predict", files=padded(limit - body)).status_code == 200
        over = c.post("/api/predict", files=padded(limit - body + 1))
        assert over.status_code == 413 and over.json()["detail"] == (
            f"upload too large: the limit is {limit_mb:g} MiB ({limit:,} bytes) per request "
            "(--max-upload-mb)")


def test_an_empty_map_is_said_in_a_header_and_documented(trained_bundle, unseen, tmp_path):
    """/api/explain of a class no region raises: the PNG is a uniform tint, which the page
    showed as "Grad-CAM of cats (where the model looked)" with nothing to see. X-Map-Note
    says why (only then), and /docs lists it. The bundle's head made all-positive: every
    region raises dogs' logit, so none raises cats' (the sigmoid's negative class)."""
    from urllib.parse import unquote

    import keras

    from transfer import bundle

    models = tmp_path / "models"
    shutil.copytree(trained_bundle.bundle, models / "positive")
    model = keras.saving.load_model(models / "positive" / bundle.MODEL, compile=False)
    head = model.get_layer("predictions")
    kernel, bias = head.get_weights()
    head.set_weights([np.abs(kernel), bias])
    model.save(models / "positive" / bundle.MODEL)
    with TestClient(serve.create_app(ServeSettings(models_dir=models))) as client:
        photo = unseen["dogs"][2]
        cats = client.post("/api/explain", files={"file": photo}, data={"class_name": "cats"})
        dogs = client.post("/api/explain", files={"file": photo}, data={"class_name": "dogs"})
        docs = client.get("/openapi.json").json()
    assert cats.status_code == dogs.status_code == 200, (cats.text, dogs.text)
    assert unquote(cats.headers["x-map-note"]) == (
        "cats: empty map \u2014 no region raises this class's score")
    assert "x-map-note" not in dogs.headers
    explained = docs["paths"]["/api/explain"]["post"]["responses"]["200"]["headers"]
    assert "only when the map shows nothing" in explained["X-Map-Note"]["description"]


def test_serve_given_a_file_of_a_bundle_names_the_bundle(models_dir):
    """`serve --model models/cats-dogs/model.keras` was told "(an exported model? ...)" of a
    bundle's own file: it names the bundle to give, as predict and evaluate do; an exported
    model elsewhere is said to be one."""
    inside = models_dir / "cats-dogs" / "model.keras"
    with pytest.raises(TransferError) as info:
        ServeSettings(models_dir=models_dir, model=str(inside)).validated()
    assert str(info.value) == (
        f"--model {inside} is a file, not a bundle folder (one holding meta.json and "
        f"model.keras): it is in the bundle {models_dir / 'cats-dogs'}; pass --model "
        f"{models_dir / 'cats-dogs'}")
    alone = models_dir.parent / "phone.tflite"
    alone.write_bytes(b"TFL3")
    with pytest.raises(TransferError, match="an exported model"):
        ServeSettings(models_dir=models_dir, model=str(alone)).validated()
    ServeSettings(models_dir=models_dir, model=str(models_dir / "cats-dogs")).validated()
