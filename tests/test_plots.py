"""The PNGs people look at: nothing cut off, axes that say what they count."""

from __future__ import annotations

import numpy as np
import pytest

from transfer import plots

FLOWERS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


@pytest.fixture()
def figures(monkeypatch) -> list:
    """The figures the plots draw, kept open (plots closes each after saving it)."""
    real = plots._pyplot()
    kept = []

    class Keeping:
        def __getattr__(self, name):
            return getattr(real, name)

        def close(self, fig=None):
            kept.append(fig)

    monkeypatch.setattr(plots, "_pyplot", lambda: Keeping())
    yield kept
    for fig in kept:
        real.close(fig)


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


def test_a_title_the_font_cannot_draw_warns_no_one_and_leaves_the_filters(tmp_path):
    """A photo named in a script DejaVu Sans lacks (猫.jpg) drew boxes with a UserWarning per
    glyph on the console; silencing it must not change the caller's warning filters (a
    library call leaves them as they were)."""
    import warnings

    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inside = list(warnings.filters)
        plots.gradcam(np.zeros((32, 32, 3), "uint8"), np.zeros((32, 32)), tmp_path / "g.png",
                      title="猫.jpg: predicted cats 0.98")
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
