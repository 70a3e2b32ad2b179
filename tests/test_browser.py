"""The page of `transfer serve` in a real headless Chromium (Playwright), on a real uvicorn
server bound to a free 127.0.0.1 port: a genuine photo through the file input, a digit drawn
on the canvas, the webcam (Chromium's fake camera), the reports; no console errors anywhere.

The browser: ``TRANSFER_CHROMIUM``, else the system Chromium (``/usr/bin/chromium``, Debian's
``chromium`` package), else Playwright's own download (``python -m playwright install
chromium``). Outside CI a missing browser skips with the reason; under CI it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import missing, require_asset

from transfer import serve
from transfer.settings import ServeSettings

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
TIMEOUT_MS = 90_000  # one step of a test; the whole run stops by itself
DOG_BREEDS = range(151, 269)


def chromium_executable() -> str | None:
    for candidate in (os.environ.get("TRANSFER_CHROMIUM"), shutil.which("chromium"),
                      "/usr/bin/chromium", shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None  # then Playwright's own browser, if it was installed


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        missing("Playwright for Python is not installed (pip install playwright)")
    executable = chromium_executable()
    with sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=executable, args=ARGS, headless=True,
                                         timeout=TIMEOUT_MS)
        except Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            missing(f"no usable Chromium ({executable or 'Playwright download'}: {first}); "
                    "install Debian's chromium or run `python -m playwright install chromium`")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def photos(kaggle_zip, tmp_path_factory) -> dict[str, Path]:
    """A cat and a dog photo no bundle saw (Kaggle numbers >= 1100), as files."""
    folder = tmp_path_factory.mktemp("photos")
    with zipfile.ZipFile(kaggle_zip) as archive:
        for name in ("cat.1100.jpg", "dog.1100.jpg", "dog.1101.jpg"):
            (folder / name).write_bytes(archive.read(f"train/{name}"))
    return {"cat": folder / "cat.1100.jpg", "dog": folder / "dog.1100.jpg",
            "dog2": folder / "dog.1101.jpg"}


@pytest.fixture(scope="module")
def models_dir(trained_bundle, mnist_quick, tmp_path_factory) -> Path:
    """cats-dogs (the trained MobileNet bundle) and digits (a quick `transfer mnist` run)."""
    from transfer.report import write_report

    models = tmp_path_factory.mktemp("browser") / "models"
    models.mkdir()
    shutil.copytree(trained_bundle.bundle, models / "cats-dogs")
    write_report(models / "cats-dogs", gradcams=4)  # the test environment says 0
    shutil.copytree(mnist_quick[0].bundle, models / "digits")
    write_report(models / "digits")  # the copy's own name in its report
    return models


@pytest.fixture(scope="module")
def server(models_dir):
    with serve.serving(ServeSettings(models_dir=models_dir, port=0)) as url:
        yield url


class Watched:
    """A page whose console errors and uncaught exceptions are collected."""

    def __init__(self, browser):
        self.context = browser.new_context(viewport={"width": 1100, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error"
                     else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.requests: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))

    def close(self):
        self.context.close()


@pytest.fixture()
def watched(browser):
    w = Watched(browser)
    yield w
    w.close()


def open_page(w: Watched, url: str, model: str | None = None):
    page = w.page
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", state="attached")
    if model is not None:
        page.select_option("#model", model)
    return page


def wait_answer(page, count: int = 1):
    """The newest answered card, once ``count`` cards are answered (the page's policy forbids
    eval, so no wait_for_function: locators only)."""
    page.locator(".result[data-state=done]").nth(count - 1).wait_for(state="attached")
    return page.locator(".result[data-state=done]").first


def shown(p: float) -> str:
    """A probability as the page shows it: percent, never a rounded certainty."""
    if p >= 0.9995:
        return ">99.9%"
    if p < 0.0001:
        return "<0.01%"
    return f"{100 * p:.{2 if 100 * p < 0.1 else 1}f}%"


def test_a_genuine_photo_through_the_file_input(watched, server, photos):
    page = open_page(watched, server, "cats-dogs")
    assert page.locator("#digit").is_hidden()
    assert page.get_attribute("#report-link", "href") == "/models/cats-dogs/report"
    with page.expect_response("**/api/predict") as answer:
        page.set_input_files("#file-input", str(photos["cat"]))
    top = answer.value.json()["predictions"][0]["top"]
    result = wait_answer(page)
    assert result.get_attribute("data-label") == "cats"
    # the model's own probabilities, in percent (the cat's is not near 0 or 1: its digits)
    assert 0.001 < top[0]["probability"] < 0.9995, top
    assert result.locator(".label").inner_text() == f"cats {shown(top[0]['probability'])}"
    assert result.locator(".bar .value").all_inner_texts() == [
        shown(t["probability"]) for t in top]
    assert result.locator(".bar").count() == 2  # both classes, with their bars
    assert result.locator(".bar .name").all_inner_texts() == ["cats", "dogs"]  # top first
    assert "server time" in result.inner_text()
    page.wait_for_selector(".result img.gradcam")
    loaded = page.eval_on_selector(".result img.gradcam",
                                   "img => img.complete && img.naturalWidth > 0")
    assert loaded
    # the Grad-CAM of the class the card shows (not of the other one)
    assert result.locator(".gradcam-note").inner_text().startswith(
        "Grad-CAM of cats (where the model looked)"), result.inner_text()
    # several at once: one card each
    page.set_input_files("#file-input", [str(photos["dog"]), str(photos["dog2"])])
    wait_answer(page, 3)
    assert page.locator(".result").count() == 3
    assert watched.errors == []
    assert all(u.startswith(server) or u.startswith(("blob:", "data:"))
               for u in watched.requests)


def test_photos_larger_together_than_the_upload_limit_go_in_several_requests(
        watched, models_dir, photos, tmp_path):
    """Six phone photos of 4 MB are more than --max-upload-mb (20) in one request, though each
    is far below it: the page sends them in as many requests as it takes (here: three photos
    under a limit just above the largest), and a photo over the limit by itself is refused on
    its card without being sent."""
    import numpy as np
    from PIL import Image

    sizes = [photos[k].stat().st_size for k in ("cat", "dog", "dog2")]
    limit = max(sizes) + 12 * 1024
    assert sum(sizes) > limit  # one request could not hold them
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    big = tmp_path / "big.jpg"
    Image.fromarray(noise).save(big, quality=95)
    assert big.stat().st_size > limit
    settings = ServeSettings(models_dir=models_dir, port=0, max_upload_mb=limit / 2**20)
    notes = tmp_path / "notes.jpg"  # not a photo: its request says 1 failed
    notes.write_text("shopping list")
    with serve.serving(settings) as url:
        page = open_page(watched, url, "cats-dogs")
        page.set_input_files("#file-input",
                             [str(notes)] + [str(photos[k]) for k in ("cat", "dog", "dog2")])
        wait_answer(page, 3)
        labels = [page.locator(".result[data-state=done]").nth(i).get_attribute("data-label")
                  for i in range(3)]
        assert sorted(labels) == ["cats", "dogs", "dogs"]
        posts = [u for u in watched.requests if u.endswith("/api/predict")]
        assert len(posts) >= 2
        # the status line ends with what all the requests did, not the last one's answer
        from playwright.sync_api import expect

        expect(page.locator("#status")).to_have_text(
            f"cats-dogs: 3 classified, 1 failed (see their cards), in {len(posts)} requests",
            timeout=120_000)
        assert "error" in page.get_attribute("#status", "class")
        # in the order given, across the requests (each request's cards went on top)
        assert page.locator(".result h3").all_inner_texts() == [
            "notes.jpg", "cat.1100.jpg", "dog.1100.jpg", "dog.1101.jpg"]
        # each answer on its own photo's card (the text file's error on its card, not the
        # cat's answer: the photos of one request are not shifted or swapped)
        cards = page.locator(".result")
        assert [(cards.nth(i).get_attribute("data-state"), cards.nth(i).get_attribute(
            "data-label")) for i in range(4)] == [
            ("error", None), ("done", "cats"), ("done", "dogs"), ("done", "dogs")]
        # the text file's card: "no preview", not a broken-image icon
        notes_card = page.locator(".result", has=page.locator("h3", has_text="notes.jpg"))
        expect(notes_card.locator(".thumb.none")).to_have_text("no preview")
        assert "not an image" in notes_card.locator(".error").inner_text()  # why, in words
        page.set_input_files("#file-input", str(big))
        refused = page.locator(".result[data-state=error]").first
        refused.wait_for(state="attached")
        assert "too large" in refused.inner_text() and "--max-upload-mb" in refused.inner_text()
        assert [u for u in watched.requests if u.endswith("/api/predict")] == posts  # not sent
    assert watched.errors == []


DISPATCH = """([kind, bytes, name]) => {
  const data = new DataTransfer();
  data.items.add(new File([new Uint8Array(bytes)], name, { type: "image/jpeg" }));
  const event = kind === "drop"
    ? new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true })
    : new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true });
  (kind === "drop" ? document.getElementById("drop") : document).dispatchEvent(event);
}"""


def test_a_photo_dropped_or_pasted(watched, server, photos):
    page = open_page(watched, server, "cats-dogs")
    data = list(photos["cat"].read_bytes())
    # a name is text, shown as it is (not read as HTML: "<b>" is not bold)
    page.evaluate(DISPATCH, ["drop", data, "dropped <b>cat</b> & co.jpg"])
    first = wait_answer(page)
    assert first.locator("h3").inner_text() == "dropped <b>cat</b> & co.jpg"
    assert first.locator("h3 b").count() == 0
    assert first.get_attribute("data-label") == "cats"
    page.evaluate(DISPATCH, ["paste", data, "pasted.jpg"])
    second = wait_answer(page, 2)
    assert second.locator("h3").inner_text() == "pasted.jpg"
    assert second.get_attribute("data-label") == "cats"
    assert watched.errors == []


def test_a_digit_drawn_on_the_canvas(watched, server):
    page = open_page(watched, server, "digits")
    canvas = page.locator("#digit-canvas")
    canvas.wait_for(state="visible")
    box = canvas.bounding_box()
    x = box["x"] + box["width"] / 2
    page.mouse.move(x, box["y"] + box["height"] * 0.15)
    page.mouse.down()
    for i in range(1, 21):  # a vertical stroke: a one
        page.mouse.move(x + i * 0.5, box["y"] + box["height"] * (0.15 + 0.035 * i))
    page.mouse.up()
    page.click("#digit-classify")
    result = wait_answer(page)
    label = result.get_attribute("data-label")
    assert label in [str(d) for d in range(10)]
    assert label == "1", label
    assert result.locator(".bar").count() == 3  # top 3 of the ten digits
    page.wait_for_selector(".result img.gradcam")
    assert watched.errors == []


WATCH_CAMERA = """(() => {
  const devices = navigator.mediaDevices;
  const get = devices.getUserMedia.bind(devices);
  window.cameraStreams = [];
  devices.getUserMedia = async (wanted) => {
    const stream = await get(wanted);
    window.cameraStreams.push(stream);
    return stream;
  };
})()"""


def test_the_webcam_with_chromium_fake_camera(watched, server):
    watched.page.add_init_script(WATCH_CAMERA)  # the streams the page gets, to see them end
    page = open_page(watched, server, "cats-dogs")
    page.click("#webcam-start")
    page.wait_for_selector("#webcam[data-live='1']")
    page.click("#webcam-snap")
    result = wait_answer(page)
    assert result.get_attribute("data-label") in ("cats", "dogs")
    assert result.locator("h3").inner_text().startswith("webcam-")
    # the photo sent is the camera's picture (Chromium's fake camera draws a moving pattern),
    # not an empty canvas: its thumbnail is not one flat colour
    spread = result.locator("img.thumb").evaluate("""async img => {
      await img.decode();
      const c = document.createElement("canvas");
      c.width = img.naturalWidth;
      c.height = img.naturalHeight;
      const g = c.getContext("2d");
      g.drawImage(img, 0, 0);
      const d = g.getImageData(0, 0, c.width, c.height).data;
      let lo = 765, hi = 0;
      for (let i = 0; i < d.length; i += 4) {
        const v = d[i] + d[i + 1] + d[i + 2];
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
      return hi - lo;
    }""")
    assert spread > 100, spread
    page.click("#webcam-stop")
    assert page.locator("#webcam").is_hidden()
    # the camera itself is off (its light too), not only the video hidden
    assert page.evaluate("""window.cameraStreams.length === 1 && window.cameraStreams.every(
      (s) => s.getTracks().every((t) => t.readyState === "ended"))""")
    assert watched.errors == []


def test_reports_open_with_no_console_errors(watched, server, models_dir):
    page = watched.page
    for name in ("cats-dogs", "digits"):  # written by write_report; rendered on the fly
        response = page.goto(f"{server}models/{name}/report")
        assert response.status == 200
        assert page.locator("h1").inner_text() == name
        images = page.eval_on_selector_all(
            "img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
        assert images and all(images)
    # the file itself, opened from disk with every network request refused
    blocked: list[str] = []

    def guard(route):
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    watched.context.route("**/*", guard)
    page.goto((models_dir / "cats-dogs" / "report.html").as_uri())
    assert "cats" in page.locator(".classes").inner_text()
    assert page.locator("img.gradcam").count() >= 2
    assert all(page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth > 0)"))
    assert blocked == [] and watched.errors == []


def test_imagenet_default_shows_a_dog_breed_for_a_dog(watched, photos, mobilenet_weights,
                                                      tmp_path):
    require_asset("keras/models/mobilenet_2_5_224_tf.h5")
    index = json.loads(require_asset("keras/models/imagenet_class_index.json").read_text())
    breeds = {label for i, (_, label) in index.items() if int(i) in DOG_BREEDS}
    settings = ServeSettings(models_dir=tmp_path / "models", imagenet=True, base="mobilenet",
                             alpha=0.25, port=0)
    with serve.serving(settings) as url:
        page = open_page(watched, url)
        assert page.input_value("#model") == "imagenet:mobilenet-0.25"
        page.set_input_files("#file-input", str(photos["dog"]))
        result = wait_answer(page)
        label = result.get_attribute("data-label")
        assert label in breeds, label
        assert label.replace("_", " ") in result.locator(".label").inner_text()
        assert result.locator(".bar").count() == 3
        page.wait_for_selector(".result img.gradcam")
        # the Grad-CAM of the breed the card names, not of another class
        assert result.locator(".gradcam-note").inner_text().startswith(
            f"Grad-CAM of {label.replace('_', ' ')} (where"), result.inner_text()
    assert watched.errors == []


def test_api_docs_render_with_no_network(watched, server):
    """/docs is Swagger UI from the installed package: with every request off the server
    refused, it renders the operations of /openapi.json (FastAPI's own page needs a CDN)."""
    blocked: list[str] = []

    def guard(route):
        if route.request.url.startswith(server):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    watched.context.route("**/*", guard)
    page = watched.page
    assert page.goto(f"{server}docs").status == 200
    page.locator(".opblock-summary-path").first.wait_for()
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert {"/api/health", "/api/models", "/api/predict", "/api/explain"} <= {
        p.replace("\u200b", "").strip() for p in paths}
    assert "transfer serve" in page.locator(".info .title").inner_text()
    assert blocked == [] and watched.errors == []


def test_api_docs_try_it_out_sends_a_photo(watched, server, photos):
    """/docs's "Try it out" on POST /api/predict: a file picker for `files` (Swagger UI shows
    OpenAPI 3.1's contentMediaType arrays as text boxes unless they also say format binary)
    and fields that are not filled with placeholders the API refuses ("string", 0); Execute
    with a cat photo answers 200 with "cats"."""
    page = watched.page
    page.goto(f"{server}docs")
    block = page.locator(".opblock-post").filter(has_text="/api/predict").first
    block.locator(".opblock-summary").click()
    block.locator("button.try-out__btn").click()
    picker = block.locator("input[type=file]")  # the files array's first item
    picker.first.wait_for()
    assert picker.count() == 1
    picker.set_input_files(str(photos["cat"]))
    block.locator("button.execute").click()
    answer = block.locator(".live-responses-table tbody .response-col_status").first
    answer.wait_for()
    assert answer.inner_text().strip() == "200", block.locator(".live-responses-table"
                                                               ).inner_text()
    body = block.locator(".live-responses-table tbody .response-col_description pre").first
    assert json.loads(body.inner_text())["predictions"][0]["label"] == "cats"
    assert watched.errors == []


def test_a_report_of_many_classes_does_not_run_off_the_page(watched, tmp_path):
    """Twelve classes with long names: the confusion table ran past the right edge and the
    whole page scrolled sideways; now the table scrolls within its own box."""
    from transfer import metrics
    from transfer.report import write_report

    names = [f"a-rather-long-class-name-{i}" for i in range(12)]
    matrix = np.random.default_rng(0).integers(0, 5, (12, 12)) + np.eye(12, dtype=int) * 20
    rows = metrics.per_class(matrix, names)
    (tmp_path / "report.json").write_text(json.dumps({
        "kind": "transfer-evaluate", "model": "models/many", "data_dir": "data/validate",
        "images": int(matrix.sum()), "accuracy": float(np.trace(matrix) / matrix.sum()),
        "loss": 0.5, "per_class": rows, "macro_avg": metrics.macro_average(rows),
        "macro_f1": 0.8, "balanced_accuracy": 0.8, "roc_auc": None, "class_names": names,
        "confusion_matrix": matrix.tolist(), "skipped": [], "worst_mistakes": []}))
    page = watched.page
    page.goto(write_report(tmp_path, gradcams=0).as_uri())
    table = page.locator("table.confusion")
    assert table.count() == 1
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], width  # the page itself: no sideways scroll
    inner, room = page.evaluate("(() => { const box = document.querySelector('table.confusion')"
                                ".parentElement; return [box.scrollWidth, box.clientWidth]; })()")
    assert inner > room  # the table is wider than the page's column: it scrolls in its box
    assert watched.errors == []


def test_a_comparison_page_on_a_phone_does_not_run_off_the_page(watched, tmp_path):
    """The comparison's table (a column per class) was not in a scrolling box as the report's
    tables are: 360 px wide, the whole page scrolled sideways to about 1000 px."""
    from transfer import compare

    f1 = {f"a-rather-long-class-name-{i}": 0.8 for i in range(8)}
    row = {"val_accuracy": 0.9, "val_loss": 0.3, "seconds": 12.0, "parameters_trained": 1285,
           "bundle": "cmp/frozen", "per_class_f1": f1}
    folder = tmp_path / "cmp"
    folder.mkdir()
    (folder / "compare.json").write_text(json.dumps({
        "data_dir": "flowers", "base": "mobilenet", "alpha": 0.25, "seed": 42,
        "runs": {"scratch": row, "frozen": row}}))
    (folder / "report.html").write_text(compare.render_page(compare.read(folder), folder))
    page = watched.page
    page.set_viewport_size({"width": 360, "height": 800})
    page.goto((folder / "report.html").as_uri())
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, width
    inner, room = page.evaluate("(() => { const box = document.querySelector('table')"
                                ".parentElement; return [box.scrollWidth, box.clientWidth]; })()")
    assert inner > room  # the table scrolls in its own box
    assert watched.errors == []


LONG_CLASS = "dogs-" + "abcdefghij" * 9 + "xyz"  # 98 letters, no space to break at


@pytest.fixture(scope="module")
def phone_models(models_dir, tmp_path_factory) -> Path:
    """The cats-dogs bundle under a long name (as train names one), the same bundle whose
    second class has a 98-letter name (long-class), and a digit bundle whose last layer's
    weights are NaN: a model whose training diverged."""
    from transfer import bundle

    models = tmp_path_factory.mktemp("phone") / "models"
    models.mkdir()
    shutil.copytree(models_dir / "cats-dogs", models / "mobilenet-20261206-075807-cats-dogs")
    shutil.copytree(models_dir / "cats-dogs", models / "long-class")
    meta_file = models / "long-class" / bundle.META
    meta = json.loads(meta_file.read_text())
    meta["class_names"] = ["cats", LONG_CLASS]
    meta_file.write_text(json.dumps(meta))
    (models / "long-class" / "report.html").unlink(missing_ok=True)
    shutil.copytree(models_dir / "digits", models / "diverged")
    model, _ = bundle.load(models / "diverged")
    last = model.layers[-1]
    last.set_weights([np.full_like(w, np.nan) for w in last.get_weights()])
    model.save(models / "diverged" / "model.keras")
    (models / "diverged" / "report.html").unlink(missing_ok=True)
    return models


@pytest.fixture(scope="module")
def phone_server(phone_models):
    with serve.serving(ServeSettings(models_dir=phone_models, port=0)) as url:
        yield url


def test_the_page_on_a_phone_in_order_and_with_a_diverged_model(browser, phone_server, photos):
    """At 375 px: the page scrolled sideways (the model list as wide as its longest name) and
    each probability bar was 3 px wide; the photos of one batch were shown last first; a
    "classes shown" of 0 sent 3; the file input, moved off-screen, showed no keyboard focus;
    and a model answering NaN (null in JSON) threw in the page: the card stuck, the status
    line stuck on "classifying"."""
    from playwright.sync_api import expect

    w = Watched(browser)
    try:
        page = w.page
        page.set_viewport_size({"width": 375, "height": 800})
        page = open_page(w, phone_server, "mobilenet-20261206-075807-cats-dogs")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.fill("#top", "0")  # one class shown, not the default
        page.set_input_files("#file-input", [str(photos["cat"]), str(photos["dog"])])
        wait_answer(page, 2)
        titles = page.locator(".result h3").all_inner_texts()
        assert titles == ["cat.1100.jpg", "dog.1100.jpg"]  # the order they were given
        labels = [page.locator(".result").nth(i).get_attribute("data-label") for i in (0, 1)]
        assert labels == ["cats", "dogs"]  # each photo's own answer on its card
        bars = page.locator(".result .bar")
        assert bars.count() == 2  # one a card
        track = bars.first.locator(".track").bounding_box()
        assert track["width"] >= 40, track
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.focus("#file-input")
        outline = page.eval_on_selector("label[for=file-input]",
                                        "l => getComputedStyle(l).outlineStyle")
        assert outline != "none"
        page.select_option("#model", "diverged")
        page.set_input_files("#file-input", str(photos["dog2"]))
        # the model's fault, said (it was "n/a" under the first class's name; predict's rows
        # are errors now, and every photo failing was a 415 "no usable image")
        expect(page.locator("#status")).to_contain_text(
            "cannot use model 'diverged': its outputs are not numbers (NaN or infinite): its "
            "training diverged", timeout=TIMEOUT_MS)
        assert page.locator(".result[data-state=error]").count() == 1
        assert w.errors == [] or all("Failed to load resource" in e for e in w.errors), \
            w.errors
    finally:
        w.close()


def test_a_very_long_class_name_fits_a_phone(browser, phone_server, photos, tmp_path):
    """A bundle with a 98-letter class name made the page 815 px wide at 375 px: the model's
    line ("Classes: ...") did not break long words (only a card's title did). Every text from
    the server (class, file and model names, errors) now breaks anywhere; the name in a
    probability bar too (it was cut with an ellipsis)."""
    w = Watched(browser)
    try:
        page = w.page
        page.set_viewport_size({"width": 375, "height": 800})
        page = open_page(w, phone_server, "long-class")
        assert LONG_CLASS in page.locator("#model-info").inner_text()
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        dog = tmp_path / ("a-dog-photo-with-a-name-as-long-as-a-camera-gives-" * 2 + ".jpg")
        shutil.copy(photos["dog"], dog)
        page.set_input_files("#file-input", str(dog))
        result = wait_answer(page)
        assert result.get_attribute("data-label") == LONG_CLASS
        # the name in its bar is whole, wrapped (it was cut to ~12 letters and an ellipsis,
        # the rest in a tooltip a touch screen never shows)
        name = result.locator(".bar .name", has_text=LONG_CLASS[:20])
        assert name.evaluate("e => e.scrollWidth <= e.clientWidth && e.scrollHeight <= "
                             "e.clientHeight"), name.bounding_box()
        # and its bar is still a bar beside it (a name as wide as the card left it 0 px)
        track = result.locator(".bar", has=page.locator(".name", has_text=LONG_CLASS[:20])
                               ).locator(".track").bounding_box()
        assert track["width"] >= 40, track
        page.wait_for_selector(".result img.gradcam")  # its note names the class too
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        assert w.errors == []
    finally:
        w.close()


def test_a_model_deleted_after_the_page_loaded_is_said_in_words(watched, phone_server,
                                                                 phone_models, photos):
    """A bundle deleted after the page listed it stayed in the list, and choosing it said "no
    model named 'tmpcopy' in the models folder (GET /api/models lists them)": an API endpoint
    for a page user. The page now lists the models again and says the model is gone; then it
    chose the default model silently while saying "choose one": now none is chosen."""
    from playwright.sync_api import expect

    shutil.copytree(phone_models / "mobilenet-20261206-075807-cats-dogs",
                    phone_models / "tmpcopy")
    try:
        page = open_page(watched, phone_server, "tmpcopy")
    finally:
        shutil.rmtree(phone_models / "tmpcopy")
    page.set_input_files("#file-input", str(photos["cat"]))
    card = page.locator(".result[data-state=error]").first
    card.wait_for(state="attached")
    status = page.locator("#status")
    expect(status).to_contain_text("the model tmpcopy is gone from the models folder")
    assert "/api/models" not in status.inner_text()
    assert "error" in page.get_attribute("#status", "class")
    assert "the model tmpcopy is gone" in card.inner_text()
    options = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert "tmpcopy" not in options
    # no model is chosen (the default was, silently, while the page said "choose one"): a
    # photo given now is not sent to a model the user did not pick
    assert page.input_value("#model") == ""
    assert page.locator("#model-info").inner_text() == "No model is chosen: choose one in the list."
    posts = len([u for u in watched.requests if u.endswith("/api/predict")])
    page.set_input_files("#file-input", str(photos["dog"]))
    expect(status).to_have_text("choose a model in the list first")
    assert len([u for u in watched.requests if u.endswith("/api/predict")]) == posts
    assert page.locator(".result").count() == 1
    # the model chosen next answers
    page.select_option("#model", "mobilenet-20261206-075807-cats-dogs")
    page.set_input_files("#file-input", str(photos["cat"]))
    assert wait_answer(page).get_attribute("data-label") == "cats"
    assert all("Failed to load resource" in e for e in watched.errors), watched.errors


def test_a_model_deleted_during_gradcam_is_not_asked_again(watched, phone_server, phone_models,
                                                           photos):
    """The model deleted after it answered, while the page asked for the batch's Grad-CAMs:
    each remaining photo was still sent to /api/explain, one 404 after another. The first 404
    now says the model is gone on every card left, the status line says it, and the list of
    models is read again (the model is no longer in it)."""
    from playwright.sync_api import expect

    shutil.copytree(phone_models / "mobilenet-20261206-075807-cats-dogs",
                    phone_models / "tmpgone")
    asked = []

    def delete_then_ask(route):  # the folder goes just before the first Grad-CAM is asked
        asked.append(route.request.url)
        shutil.rmtree(phone_models / "tmpgone", ignore_errors=True)
        route.continue_()

    try:
        watched.context.route("**/api/explain", delete_then_ask)
        page = open_page(watched, phone_server, "tmpgone")
        page.set_input_files("#file-input", [str(photos[k]) for k in ("cat", "dog", "dog2")])
        wait_answer(page, 3)
        expect(page.locator(".gradcam-note", has_text="no Grad-CAM: the model tmpgone is gone "
                            "from the models folder")).to_have_count(3)
    finally:
        shutil.rmtree(phone_models / "tmpgone", ignore_errors=True)
    assert len(asked) == 1  # the other two photos were not sent
    expect(page.locator("#status")).to_contain_text(
        "the model tmpgone is gone from the models folder (deleted or renamed since the page "
        "loaded): the list of models is updated")
    assert "error" in page.get_attribute("#status", "class")
    options = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert "tmpgone" not in options and options
    assert page.locator(".result img.gradcam").count() == 0
    assert all("Failed to load resource" in e for e in watched.errors), watched.errors


def test_nine_photos_at_once_the_ninth_says_why_it_has_no_gradcam(watched, server, photos,
                                                                  tmp_path):
    """The page draws Grad-CAM for 8 photos of a batch; the 9th card ended at its server time
    without a word. Each card's time is the request's, for the photos sent together; a request
    with a failed photo colours the status line as an error."""
    from playwright.sync_api import expect

    names = []
    for i in range(9):
        names.append(tmp_path / f"photo{i}.jpg")
        shutil.copy(photos[("cat", "dog", "dog2")[i % 3]], names[-1])
    page = open_page(watched, server, "cats-dogs")
    page.set_input_files("#file-input", [str(n) for n in names])
    wait_answer(page, 9)
    expect(page.locator(".result img.gradcam")).to_have_count(8, timeout=120_000)
    ninth = page.locator(".result", has=page.locator("h3", has_text="photo8.jpg"))
    assert "no Grad-CAM: the page draws it for the first 8 photos given at once" in \
        ninth.inner_text()
    assert "photos sent together" in ninth.locator(".answer .time").inner_text()
    assert "error" not in (page.get_attribute("#status", "class") or "")

    notes = tmp_path / "notes.jpg"
    notes.write_text("shopping list")
    page.set_input_files("#file-input", [str(notes), str(photos["cat"])])
    expect(page.locator("#status")).to_contain_text("1 classified, 1 failed", timeout=120_000)
    assert "error" in page.get_attribute("#status", "class")
    assert watched.errors == []


def test_each_card_names_the_model_that_answered_it(watched, server, photos):
    """After switching models, the older cards (the bundle's "dogs 68.6%") sat beside the
    newer ones with nothing telling them apart: only the status line named the model, and
    the next request overwrote it. Each card now names the model that answered it."""
    page = open_page(watched, server, "cats-dogs")
    page.set_input_files("#file-input", str(photos["cat"]))
    wait_answer(page)
    page.select_option("#model", "digits")
    # the page's report link follows the model chosen (not the first model's report)
    assert page.get_attribute("#report-link", "href") == "/models/digits/report"
    page.set_input_files("#file-input", str(photos["cat"]))
    newest = wait_answer(page, 2)
    older = page.locator(".result[data-state=done]").nth(1)
    assert newest.locator(".model").inner_text() == "digits"
    assert older.locator(".model").inner_text() == "cats-dogs"
    assert "by cats-dogs, server time" in older.locator(".answer .time").inner_text()
    assert watched.errors == []


def test_the_server_gone_during_gradcam_is_said_and_not_asked_again(watched, server, photos):
    """The server stopped during the Grad-CAM step: the status line stayed "3 classified in
    ... ms", each card said "no Grad-CAM: TypeError: Failed to fetch", and the page sent one
    request per remaining photo. Now the status line says, as an error, what it says when a
    photo cannot be sent, and no more Grad-CAM is asked for."""
    from playwright.sync_api import expect

    watched.context.route("**/api/explain", lambda route: route.abort())  # as a stopped server
    page = open_page(watched, server, "cats-dogs")
    page.set_input_files("#file-input", [str(photos[k]) for k in ("cat", "dog", "dog2")])
    wait_answer(page, 3)
    expect(page.locator("#status")).to_have_text(
        "the server cannot be reached (is transfer serve still running?)")
    assert "error" in page.get_attribute("#status", "class")
    expect(page.locator(".gradcam-note", has_text="no Grad-CAM: the server cannot be reached")
           ).to_have_count(3)
    assert "Failed to fetch" not in page.locator("#results").inner_text()
    assert len([u for u in watched.requests if u.endswith("/api/explain")]) == 1
    assert all("Failed to load resource" in e for e in watched.errors), watched.errors


DOUBLE_DROP = """([bytes]) => {
  for (const name of ["same.jpg", "same.jpg", "other.jpg"]) {
    const data = new DataTransfer();
    data.items.add(new File([new Uint8Array(bytes)], name, { type: "image/jpeg" }));
    document.getElementById("drop").dispatchEvent(
      new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
  }
}"""


def test_a_double_click_or_a_double_drop_is_sent_once(watched, server, photos):
    """Double-clicking "Classify the drawing" sent the drawing twice (two cards), and so did a
    photo dropped twice while its answer was on its way. The button is busy until the answer
    comes and a file already on its way is not sent again; another photo given meanwhile is."""
    from playwright.sync_api import expect

    page = open_page(watched, server, "digits")
    canvas = page.locator("#digit-canvas")
    canvas.wait_for(state="visible")
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.8, steps=10)
    page.mouse.up()
    held = []  # the drawing's request, held: the button says it is busy while it waits
    watched.context.route("**/api/predict", lambda route: held.append(route), times=1)
    page.dblclick("#digit-classify")
    expect(page.locator("#digit-classify")).to_have_attribute("aria-disabled", "true")
    for _ in range(600):  # at most 30 s
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the drawing was never sent"
    held[0].continue_()
    wait_answer(page)
    expect(page.locator(".result img.gradcam")).to_have_count(1)
    assert page.locator(".result").count() == 1
    expect(page.locator("#digit-classify")).not_to_have_attribute("aria-disabled", "true")

    page.evaluate(DOUBLE_DROP, [list(photos["cat"].read_bytes())])
    wait_answer(page, 3)
    expect(page.locator(".result img.gradcam")).to_have_count(3)
    assert sorted(page.locator(".result h3").all_inner_texts()) == [
        "drawing.png", "other.jpg", "same.jpg"]
    assert len([u for u in watched.requests if u.endswith("/api/predict")]) == 3
    assert watched.errors == []


def test_a_link_dropped_says_there_is_nothing_to_classify(watched, server):
    """A link dragged from another tab (text/uri-list, no file) did nothing and said nothing;
    the status line now says there is nothing to classify."""
    page = open_page(watched, server, "cats-dogs")
    page.evaluate("""() => {
      const data = new DataTransfer();
      data.setData("text/uri-list", "https://example.com/cat.jpg");
      document.getElementById("drop").dispatchEvent(
        new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
    }""")
    status = page.locator("#status")
    assert status.inner_text().startswith("nothing to classify: drop photo files")
    assert "error" in page.get_attribute("#status", "class")
    assert page.locator(".result").count() == 0
    assert watched.errors == []


def drop_from_disk(page, paths):
    """Files and folders dropped on the drop zone as from a file manager (Chrome DevTools
    Protocol's drag events: a folder comes as the browser gives it, not as a File made up)."""
    cdp = page.context.new_cdp_session(page)
    box = page.locator("#drop").bounding_box()
    data = {"items": [], "files": [str(p) for p in paths], "dragOperationsMask": 1}
    for kind in ("dragEnter", "dragOver", "drop"):
        cdp.send("Input.dispatchDragEvent", {"type": kind, "x": box["x"] + box["width"] / 2,
                                             "y": box["y"] + 10, "data": data})


def test_a_folder_dropped_with_a_photo(watched, server, photos, tmp_path):
    """A folder dropped with a photo went as a File Chromium cannot read: fetch refused the
    request and every card, the photo's too, said "no answer from the server" (the server
    cannot be reached). Now a folder's photos are classified (named by their folder), a folder
    with none says so on its own card, and the photo beside them is classified."""
    from playwright.sync_api import expect

    (tmp_path / "my_cats").mkdir()
    shutil.copy(photos["cat"], tmp_path / "my_cats" / "cat.jpg")
    (tmp_path / "my_cats" / ".DS_Store").write_bytes(b"\0")  # left out, as a hidden file
    (tmp_path / "my_cats" / "._cat.jpg").write_bytes(b"\0\5\26\7")  # macOS's AppleDouble
    # beside cat.jpg, named as a photo: hidden, it is left out too (no card of its own)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "list.txt").write_text("shopping list")
    page = open_page(watched, server, "cats-dogs")
    drop_from_disk(page, [tmp_path / "my_cats", tmp_path / "notes", photos["dog"]])
    wait_answer(page, 2)
    assert page.locator(".result h3").all_inner_texts() == [
        "my_cats/cat.jpg", "notes", "dog.1100.jpg"]
    assert [page.locator(".result").nth(i).get_attribute("data-label") for i in (0, 2)] == [
        "cats", "dogs"]
    assert "a folder with no photo in it" in page.locator(".result").nth(1).inner_text()
    expect(page.locator("#status")).to_contain_text("cats-dogs: 2 classified, 1 failed")
    assert "cannot be reached" not in page.locator("main").inner_text()
    expect(page.locator(".result img.gradcam")).to_have_count(2)
    # each card's Grad-CAM is of its own photo (the cat's map on the dog's card said "cats")
    notes = [page.locator(".result").nth(i).locator(".gradcam-note").inner_text()
             for i in (0, 2)]
    assert notes[0].startswith("Grad-CAM of cats (") and \
        notes[1].startswith("Grad-CAM of dogs ("), notes


def test_a_folder_over_the_limit_and_an_empty_one_alone_are_said_in_words(
        watched, server, photos, tmp_path):
    """A drop takes at most 200 photos from folders: a folder beyond that said "the first 0
    are classified", and the whole tree was listed first; an empty folder dropped alone said
    "notes a folder with no photo ..." on the status line. The requests are held: only the
    words are read."""
    from playwright.sync_api import expect

    big = tmp_path / "big"
    big.mkdir()
    for n in range(205):  # copies: the browser's folder reader lists no symbolic link
        shutil.copy(photos["cat"], big / f"cat{n:03}.jpg")
    (tmp_path / "more").mkdir()
    shutil.copy(photos["cat"], tmp_path / "more" / "cat.jpg")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "list.txt").write_text("shopping list")
    held = []
    watched.context.route("**/api/predict", lambda route: held.append(route))
    page = open_page(watched, server, "cats-dogs")
    drop_from_disk(page, [tmp_path / "notes"])
    expect(page.locator("#status")).to_contain_text(
        "notes: a folder with no photo in it (JPEG, PNG, ...): nothing to classify")
    drop_from_disk(page, [big, tmp_path / "more"])
    expect(page.locator(".result").first).to_contain_text(
        "a folder of more than 200 photos: the first 200 are classified (a drop takes at most "
        "200 photos; drop the others a few at a time)")
    expect(page.locator(".result", has=page.locator("h3", has_text="more"))).to_contain_text(
        "a folder of photos, none classified (a drop takes at most 200 photos, taken by the "
        "folders before it; drop it on its own)")
    expect(page.locator(".result h3", has_text="big/cat199.jpg")).to_have_count(1)
    assert page.locator(".result h3", has_text="big/cat200.jpg").count() == 0
    page.close()
    for route in held:
        route.abort()


def test_several_requests_show_every_card_at_once_and_count_the_answers(
        watched, models_dir, photos, tmp_path):
    """Three photos in three requests (the upload limit): the later photos had no card until
    the earlier requests' Grad-CAMs had run, and the status line said "1 classified in .. ms"
    as if done. Now every card is there at once, the status line counts ("1 of 3 classified
    ..."), the Grad-CAMs follow the last answer; and a photo deleted after it was chosen is
    its own "cannot be read" (fetch refused the request: "the server cannot be reached")."""
    from playwright.sync_api import expect

    names = [tmp_path / f"{k}.jpg" for k in ("cat", "dog", "dog2")]
    for name in names:
        shutil.copy(photos[name.stem], name)
    sizes = sorted(n.stat().st_size for n in names)
    assert sizes[0] + sizes[1] > sizes[2]  # then, the page's form headers counted, no two
    limit = sizes[2] + 6 * 1024  # photos go together: one photo a request
    held = []  # the first two predict requests, answered when the test says; the third
    # as the browser sends it (Playwright's routing sends a file as it is on disk now)
    watched.context.route("**/api/predict", lambda route: held.append(route), times=2)
    with serve.serving(ServeSettings(models_dir=models_dir, port=0,
                                     max_upload_mb=limit / 2**20)) as url:
        page = open_page(watched, url, "cats-dogs")
        page.set_input_files("#file-input", [str(n) for n in names])
        expect(page.locator(".result[data-state=pending]")).to_have_count(3, timeout=5000)
        names[2].unlink()  # deleted after it was chosen, before it is sent
        while not held:
            page.wait_for_timeout(50)
        held[0].continue_()
        wait_answer(page)
        expect(page.locator("#status")).to_have_text("cats-dogs: 1 of 3 classified ...")
        while len(held) < 2:
            page.wait_for_timeout(50)
        held[1].continue_()
        expect(page.locator("#status")).to_have_text(
            "cats-dogs: 2 classified, 1 failed (see their cards), in 2 requests")
        third = page.locator(".result").nth(2)
        assert third.get_attribute("data-state") == "error"
        assert "cannot be read: it was changed, moved or deleted" in third.inner_text()
        expect(page.locator(".result img.gradcam")).to_have_count(2)
        asked = [u.rsplit("/", 1)[1] for u in watched.requests if "/api/" in u]
        assert asked == ["models", "predict", "predict", "explain", "explain"], asked
    assert "cannot be reached" not in page.locator("main").inner_text()


def test_a_near_certain_answer_is_not_shown_as_100_percent(watched, server, tmp_path):
    """A real MNIST digit: the digit model's 0.99999 showed as "100.0%" and its bar "1.0000",
    the others "0.0000": a certainty the model did not give, in two units. Now all in
    percent: ">99.9%", "<0.01%"."""
    from PIL import Image

    with np.load(require_asset("data/mnist") / "mnist.npz") as digits:
        Image.fromarray(digits["x_test"][0]).save(tmp_path / "seven.png")  # a 7
    page = open_page(watched, server, "digits")
    with page.expect_response("**/api/predict") as answer:
        page.set_input_files("#file-input", str(tmp_path / "seven.png"))
    top = answer.value.json()["predictions"][0]["top"]
    result = wait_answer(page)
    assert top[0]["probability"] >= 0.9995 and top[-1]["probability"] < 0.0001, top
    assert result.locator(".label").inner_text() == f"{top[0]['label']} >99.9%"
    assert result.locator(".bar .value").all_inner_texts() == [
        shown(t["probability"]) for t in top]
    assert result.locator(".bar .name").all_inner_texts() == [t["label"] for t in top]
    # each bar as long as its own probability: the first full, the others empty
    for bar, t in zip(result.locator(".bar").all(), top, strict=True):
        fill = bar.locator(".fill").bounding_box()["width"]
        track = bar.locator(".track").bounding_box()["width"]
        assert abs(fill / track - t["probability"]) < 0.01, (fill, track, t)
    assert watched.errors == []


def test_an_empty_models_folder_and_serve_top_30(watched, photos, mobilenet_weights, tmp_path,
                                                 monkeypatch):
    """`serve --models-dir emptymodels` (a folder holding no bundle) switched the page to
    ImageNet without a word on the console, as a missing folder has; and `serve --top 30`
    put 30 in a field whose max was 20 (invalid) while the cards showed 20 bars. The console
    now names the folder (its full path too), the page says it holds no bundle, and the
    field takes the server's --top: 30 bars."""
    from conftest import Recorder

    require_asset("keras/models/mobilenet_2_5_224_tf.h5")
    monkeypatch.chdir(tmp_path)
    Path("emptymodels").mkdir()
    recorder = Recorder()
    settings = ServeSettings(models_dir=Path("emptymodels"), top=30, port=0)
    with serve.serving(settings, recorder) as url:
        assert recorder.warnings == [
            f"no usable bundle in emptymodels ({Path.cwd() / 'emptymodels'}): the page offers "
            "ImageNet classifiers only (train one with `transfer train`, or give the folder of "
            "your bundles with --models-dir)"]
        page = open_page(watched, url, "imagenet:mobilenet-0.25")
        assert "The models folder (emptymodels) holds no bundle" in \
            page.locator("#model-info").inner_text()
        assert page.input_value("#top") == "30"
        assert page.eval_on_selector("#top", "e => e.validity.valid")
        page.set_input_files("#file-input", str(photos["dog"]))
        result = wait_answer(page)
        assert result.locator(".bar").count() == 30
        page.wait_for_selector(".result img.gradcam")
    assert watched.errors == []
