"""The PNGs people look at: nothing cut off, axes that say what they count."""

from __future__ import annotations

import numpy as np
import pytest

from transfer import plots

FLOWERS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


@pytest.fixture()
def figures(monkeypatch) -> list:
    """The figures the plots draw, each kept as it is saved."""
    real = plots.save
    kept = []

    def keeping(fig, path, dpi=100):
        real(fig, path, dpi)
        kept.append(fig)

    monkeypatch.setattr(plots, "save", keeping)
    return kept


@pytest.mark.parametrize("names", [["cats", "dogs"], FLOWERS])
def test_a_confusion_matrix_title_stays_inside_its_picture(figures, tmp_path, names):
    """A long model or folder name pushed the accuracy at the end of the title off the image
    ("...: accuracy" with no number, or its last digit cut)."""
    title = ("my-flowers-model on the validation split of /home/student/photos/flowers-2024: "
             "accuracy 0.9000")
    matrix = np.eye(len(names), dtype=int) * 8
    path = plots.confusion(matrix, names, tmp_path / "confusion.png", title=title)
    assert path.is_file()
    fig = figures[0]
    shown = next(text for text in fig.texts if text.get_text())  # the figure's title
    box = shown.get_window_extent(fig.canvas.get_renderer())
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
    assert shown.get_text().replace("\n", " ") == title


def test_curves_of_one_epoch_label_the_epoch_as_one(figures, tmp_path):
    history = {"loss": [0.3], "accuracy": [0.9], "val_loss": [0.2], "val_accuracy": [0.95]}
    plots.curves(history, tmp_path / "curves.png", title="one epoch")
    for ax in figures[0].axes:
        assert list(ax.get_xticks()) == [1]  # not 0.96, 0.98, 1.00, 1.02, 1.04
    plots.curves({k: v * 3 for k, v in history.items()}, tmp_path / "three.png")
    assert all(float(t).is_integer() for t in figures[1].axes[0].get_xticks())


def test_fine_tunings_single_view_validation_is_said_where_the_saved_model_averages_two(
        figures, tmp_path):
    """A model with test-time flips: the head's epochs are validated as the saved model
    (photo and mirror averaged), fine-tuning's on single views, and the curve stepped down at
    the dashed line with nothing saying why. Said right of the line, on both panels; not for
    a model without flips, nor without fine-tuning."""
    history = {"loss": [0.5, 0.4, 0.45], "accuracy": [0.8, 0.85, 0.84],
               "val_loss": [0.3, 0.25, 0.35], "val_accuracy": [0.9, 0.92, 0.88],
               "phase": ["head", "head", "fine-tune"]}

    def said(fig) -> list[tuple[float, str]]:
        return [(t.get_position()[0], t.get_text()) for ax in fig.axes for t in ax.texts]

    plots.curves(history, tmp_path / "flips.png", flips=True)
    assert said(figures[0]) == [(2.7, plots.FINE_TUNE_SINGLE_VIEWS)] * 2
    assert "single views" in plots.FINE_TUNE_SINGLE_VIEWS
    plots.curves(history, tmp_path / "plain.png")
    plots.curves({**history, "phase": ["head"] * 3}, tmp_path / "head.png", flips=True)
    assert said(figures[1]) == said(figures[2]) == []


def test_a_title_the_font_cannot_draw_warns_no_one_and_leaves_the_filters(tmp_path):
    """A photo named in a script DejaVu Sans lacks (猫.jpg) drew boxes with a UserWarning per
    glyph on the console; silencing it must not change the caller's warning filters (a
    library call leaves them as they were). Drawn with a glyph no font here has (cuneiform):
    with a CJK fallback font installed, 猫 draws and no warning could ever come."""
    import warnings

    assert plots.missing_glyphs(["\U00012000"]) == ["\U00012000"]  # the case is real here

    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inside = list(warnings.filters)
        plots.gradcam(np.zeros((32, 32, 3), "uint8"), np.zeros((32, 32)), tmp_path / "g.png",
                      title="\U00012000.jpg: predicted cats 0.98")
        assert list(warnings.filters) == inside
    assert not [w for w in caught if "missing from font" in str(w.message)]
    assert list(warnings.filters) == before and (tmp_path / "g.png").is_file()


def test_names_that_are_not_utf8_are_drawn_in_every_kind_of_text(tmp_path):
    """A Latin-1 file or class name (held by Python as a surrogate) made matplotlib raise
    TypeError: in a title, an axis label or a confusion matrix's tick labels."""
    latin1 = "caf\udce9"
    plots.confusion(np.array([[3, 1], [0, 4]]), [latin1, "dogs"], tmp_path / "c.png",
                    title=f"model on {latin1}/")
    plots.image_grid([np.zeros((8, 8, 3), "uint8")] * 2, [f"{latin1}.jpg", "b.jpg"],
                     tmp_path / "g.png", title=latin1)
    assert (tmp_path / "c.png").is_file() and (tmp_path / "g.png").is_file()


LONG_CLASSES = ["domestic short-haired cats from the shelter",
                "dogs of all breeds including mixed-breed puppies"]


def inside(text, box, renderer, slack: float = 2.0) -> bool:
    extent = text.get_window_extent(renderer)
    return box.x0 - slack <= extent.x0 and extent.x1 <= box.x1 + slack


def test_long_names_stay_inside_their_pictures_and_cells(figures, tmp_path):
    """Long class and file names ran off the pictures: misclassified.png's captions ran into
    each other, confusion.png lost its tick labels and its axis titles (with a matplotlib
    warning on the console), a Grad-CAM's title lost the class it shows. Titles now wrap to
    the figure, captions are cut in the middle to their cell, tick labels to a fixed width;
    a "$" in a name is a dollar sign, not TeX."""
    import warnings

    photos = np.zeros((4, 28, 28), "uint8")
    captions = [f"true {LONG_CLASSES[i % 2]}\npred {LONG_CLASSES[1 - i % 2]} 0.9{i}"
                for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning reaches the console
        plots.image_grid(photos, captions, tmp_path / "grid.png", cols=2, title="mistakes")
        plots.confusion(np.array([[5, 1], [2, 6]]), LONG_CLASSES, tmp_path / "c.png")
        title = ("price $5 and $10^2 roses, a very long photo file name taken on holiday in the "
                 "mountains with the family (edited copy).jpg: predicted roses 0.96; Grad-CAM of "
                 "tulips")
        plots.gradcam(np.zeros((32, 32, 3), "uint8"), np.zeros((4, 4)), tmp_path / "g.png",
                      title=title)
    grid, matrix, cam = figures
    renderer = cam.canvas.get_renderer()
    for ax in grid.axes[:4]:
        assert inside(ax.title, ax.get_window_extent(renderer), renderer), ax.title.get_text()
        assert ax.title.get_text().splitlines()[1].endswith(" 0.9" + ax.title.get_text()[-1])
    for fig in (grid, matrix, cam):
        assert inside(fig._suptitle, fig.bbox, renderer) if fig._suptitle else True
    assert cam._suptitle.get_text().replace("\n", " ") == title  # wrapped, nothing lost
    assert cam._suptitle.get_text().endswith("Grad-CAM of tulips")
    assert not cam._suptitle.get_parse_math()
    ax = matrix.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert all(len(t) <= 30 for t in ticks) and all("\u2026" in t for t in ticks)
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    label = ax.xaxis.label.get_window_extent(matrix.canvas.get_renderer())
    assert 0 <= label.y0 and label.y1 <= matrix.bbox.height  # drawn inside the picture


def test_class_names_the_fonts_cannot_draw_are_said_once_not_drawn_as_boxes_in_silence():
    """Class names in a script the installed fonts lack were drawn as boxes with matplotlib's
    warning filtered out: evaluate now says which (it uses this line)."""
    from transfer import plots

    assert plots.fonts()[0] == "DejaVu Sans"
    cuneiform = "\U00012000\U00012001"  # in none of the fonts plots look for
    line = plots.glyph_warning([f"{cuneiform} tablets", "Rosé petals", "Ωmega", "daisy"],
                               "confusion.png and misclassified.png")
    assert line == ("the plots' fonts have no \U00012000 \U00012001: confusion.png and "
                    "misclassified.png draw those class names as boxes (install a font that "
                    "has them, such as fonts-noto-cjk; the tables and the HTML report show the "
                    "names)")
    assert plots.glyph_warning(["Rosé petals", "Ωmega", "Жук", "daisy"], "x.png") is None
    assert plots.missing_glyphs(["玫瑰"]) == ([] if len(plots.fonts()) > 1 else ["玫", "瑰"])
    # a Latin-1 folder's "chi\xe9ns" is drawn with a replacement mark, which the fonts have:
    # it was said missing ("no \udce9 ... install a font"), which no font would mend
    assert plots.glyph_warning(["chi\udce9ns", "r\udcf6ses"], "x.png") is None


def test_looking_up_the_fonts_before_any_plot_logs_nothing():
    """evaluate asks which class names the fonts lack before it draws: with WenQuanYi Zen Hei
    installed, matplotlib's "findfont: Failed to find font weight normal ..." reached stderr
    (the quieting came with the first plot). A fresh process, as the CLI is."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "from transfer import plots; "
                           "plots.missing_glyphs(['玫瑰 roses']); plots.fonts()"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_a_caption_over_a_portrait_photo_is_cut_to_its_cell_not_to_the_photo():
    """misclassified.png cut "pred roses 0.52" to "pred ros... 0.52" over a portrait photo:
    the width taken was the photo's as drawn, not its cell's."""
    import numpy as np

    from transfer import plots

    fig, axes = plots.subplots(1, 4, figsize=(4 * 1.6, 1.8 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.imshow(np.zeros((300, 80)), interpolation="nearest")  # a tall, narrow photo
        ax.set_title("true roses\npred dandelion 0.67", fontsize=8)
    fig.draw_without_rendering()  # the aspect applied: the axes as wide as the photo is drawn
    plots._fit_titles(fig)
    assert [ax.title.get_text() for ax in axes.flat] == ["true roses\npred dandelion 0.67"] * 4


def test_a_grad_cam_with_nothing_on_it_says_so_in_its_panel(figures, tmp_path):
    """An empty Grad-CAM map (no region raises the class's score) was drawn as a uniform tint
    under the caption "Grad-CAM", as a map that works; a map of NaN (a diverged model) too."""
    photo = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    some = np.zeros((7, 7))
    some[2:4, 3:5] = 1.0
    for heatmap in (some, np.zeros((7, 7)), np.full((7, 7), np.nan)):
        plots.gradcam(photo, heatmap, tmp_path / "g.png", title="dog.jpg")
    captions = [[ax.title.get_text() for ax in fig.axes] for fig in figures]
    assert captions == [["image", "Grad-CAM"], ["image", "Grad-CAM: empty map"],
                        ["image", "Grad-CAM: not a number"]]


def test_a_confusion_matrix_of_many_classes_stays_drawable_and_its_ticks_apart(tmp_path):
    """200 classes (CUB's birds) drew a picture 11,200 px a side with 40,000 numbers (about
    500 MB to draw; 500 classes several GB); names alike but in the middle ("Photos of class
    A taken outdoors", "... B ...") were cut to one tick label."""
    from PIL import Image

    names = [f"species {k:03d}" for k in range(200)]
    matrix = np.diag(np.full(200, 3))
    path = plots.confusion(matrix, names, tmp_path / "many.png", title="200 classes")
    with Image.open(path) as picture:
        assert max(picture.size) <= plots.CONFUSION_MAX_INCHES * 100
    alike = ["Photos of class A taken outdoors", "Photos of class B taken outdoors", "dogs"]
    ticks = plots.tick_labels(alike)
    assert len(set(ticks)) == 3 and ticks[2] == "2: dogs"
    assert plots.tick_labels(["cats", "dogs"]) == ["cats", "dogs"]


def test_drawing_leaves_the_programs_matplotlib_as_it_was(tmp_path):
    """A notebook's backend (inline), fonts and font-manager log level: every plot call set
    ``matplotlib.use("Agg")`` (its ``plt.show()`` then showed nothing), the plots' fonts in the
    global rcParams and the log level for good, and registered its figures with pyplot."""
    import logging

    import matplotlib

    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # a backend of the program's, not Agg
    import matplotlib.pyplot as plt

    logger = logging.getLogger("matplotlib.font_manager")
    logger.setLevel(logging.INFO)
    figure = plt.figure()  # the program's own figure
    before = (matplotlib.get_backend(), list(matplotlib.rcParams["font.family"]),
              plt.get_fignums())
    try:
        plots.confusion(np.eye(2, dtype=int) * 3, ["玫瑰", "daisy"], tmp_path / "c.png", title="t")
        plots.curves({"loss": [1.0, 0.5], "val_loss": [1.1, 0.6]}, tmp_path / "h.png")
        assert plots.missing_glyphs(["daisy"]) == []
        assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (matplotlib.get_backend(), list(matplotlib.rcParams["font.family"]),
                plt.get_fignums()) == before
        assert logger.level == logging.INFO
    finally:
        plt.close(figure)
        logger.setLevel(logging.NOTSET)
        matplotlib.use(backend)
