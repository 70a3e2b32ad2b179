"""PNG figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

from transfer.files import utf8_text


def subplots(*args, figsize=None, **kwargs):
    """(figure, axes) as ``pyplot.subplots`` makes them, without pyplot: no backend chosen and
    no figure registered in the calling program (``matplotlib.use("Agg")`` here switched a
    notebook's inline backend, after which its ``show()`` showed nothing). PNG is written by
    the Agg canvas whatever the program's backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # its canvas: drawn and measured as it is written
    return fig, fig.subplots(*args, **kwargs)


@contextlib.contextmanager
def fonts_in_use():
    """The plots' fonts (``fonts()``, unless the program chose its own) and the font
    manager's log quiet, inside; matplotlib's settings and log level as they were after. (The
    fonts were set in the global ``rcParams`` for good, and the log level too.)"""
    import matplotlib

    logger = logging.getLogger("matplotlib.font_manager")
    level = logger.level
    # "findfont: Failed to find font weight normal for WenQuanYi Zen Hei, now using 500", on
    # stderr whenever these fonts are looked up (a plot, or missing_glyphs before any plot)
    logger.setLevel(logging.ERROR)
    try:
        chosen = matplotlib.rcParams["font.family"] != ["sans-serif"]  # a font of the caller's
        with matplotlib.rc_context({} if chosen else {"font.family": fonts()}):
            yield
    finally:
        logger.setLevel(level)


def drawn(fn):
    """Decorate a function that draws a picture (or looks its fonts up): it runs inside
    ``fonts_in_use``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with fonts_in_use():
            return fn(*args, **kwargs)

    return wrapper


def save(fig, path, dpi: int = 100) -> None:
    """Lay ``fig`` out and write it to ``path`` as PNG. Every text of the figure is
    made drawable first (``_text``: a file name that is not UTF-8 made matplotlib raise); a
    name in a script the font lacks (CJK) is drawn as boxes without a warning for each glyph,
    and the caller's warning filters are left as they were."""
    import warnings

    from matplotlib.text import Text

    for text in fig.findobj(Text):
        text.set_text(utf8_text(text.get_text()))
        text.set_parse_math(False)  # "$5 and $10 roses.jpg" is a name, not TeX
    _fit_titles(fig)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font",
                                category=UserWarning)
        warnings.filterwarnings("ignore", message=r"Tight layout not applied",
                                category=UserWarning)  # the figure is written as it is
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)


# Fonts with the scripts DejaVu lacks (CJK, symbols), used after it when installed: matplotlib
# takes each glyph from the first font of the list that has it
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR",
                  "Source Han Sans", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
                  "Droid Sans Fallback", "Microsoft YaHei", "Yu Gothic", "Malgun Gothic",
                  "PingFang SC", "Hiragino Sans", "Apple SD Gothic Neo", "Arial Unicode MS",
                  "Noto Emoji", "Segoe UI Symbol")


# their files' names (lower case, no spaces), to find one installed after matplotlib built its
# font cache (it never looks again)
FALLBACK_FILES = ("notosanscjk", "sourcehansans", "wqy-zenhei", "wqy-microhei",
                  "droidsansfallback", "msyh", "yugoth", "malgun", "pingfang", "hiragino",
                  "applesdgothicneo", "arialuni", "notoemoji-", "seguisym")


@functools.cache
def fonts() -> list[str]:
    """The plots' fonts: DejaVu Sans, then the installed FALLBACK_FONTS."""
    from matplotlib import font_manager

    manager = font_manager.fontManager
    if not any(f.name in FALLBACK_FONTS for f in manager.ttflist):
        for path in font_manager.findSystemFonts():
            if any(key in Path(path).name.lower() for key in FALLBACK_FILES):
                with contextlib.suppress(Exception):  # a font matplotlib cannot read
                    manager.addfont(path)
    installed = {f.name for f in manager.ttflist}
    return ["DejaVu Sans", *(f for f in FALLBACK_FONTS if f in installed)]


@drawn
def missing_glyphs(texts) -> list[str]:
    """The characters of ``texts`` (class names) that none of the plots' fonts can draw: they
    come out as boxes (CJK or emoji with only DejaVu installed). Empty when all can be drawn."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    # a name that is not UTF-8 is drawn with replacement marks (``utf8_text``), which DejaVu has
    missing = {c for text in texts for c in utf8_text(text) if not c.isspace() and ord(c) >= 0x250}
    for family in fonts():  # Latin (below U+0250) is in DejaVu
        if not missing:
            break
        path = font_manager.findfont(font_manager.FontProperties(family=family),
                                     fallback_to_default=False)
        charmap = FT2Font(path).get_charmap()
        missing = {c for c in missing if ord(c) not in charmap}
    return sorted(missing)


def glyph_warning(names, plots: str) -> str | None:
    """One line saying which class names ``plots`` (PNG files) draw as boxes, or None."""
    missing = missing_glyphs(names)
    if not missing:
        return None
    shown = " ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
    return (f"the plots' fonts have no {shown}: {plots} draw those class names as boxes "
            "(install a font that has them, such as fonts-noto-cjk; the tables and the HTML "
            "report show the names)")


CHAR_WIDTH = 0.6  # of the font size: DejaVu Sans's mean character width, a little over


def fitting(text: str, inches: float, points: float, wrap: bool = True) -> str:
    """``text`` fitted to a width of ``inches`` at ``points``: each line wrapped (``wrap``)
    or cut in the middle with an ellipsis (its end kept: a probability, a file's suffix)."""
    import textwrap

    chars = max(8, int(inches * 72 / (CHAR_WIDTH * points)))
    if wrap:
        return "\n".join(textwrap.fill(line, chars, break_long_words=True,
                                        break_on_hyphens=False) or line
                         for line in text.split("\n"))
    head = (chars - 1) * 2 // 3
    return "\n".join(line if len(line) <= chars else
                     line[:head] + "\u2026" + line[len(line) - (chars - 1 - head):]
                     for line in text.split("\n"))


def _fit_titles(fig) -> None:
    """The figure's title wrapped to its width, each axes title cut to its axes' width: a
    long path or file name ran off both edges (a Grad-CAM's class, a curve's model, cut)."""
    width = fig.get_figwidth()
    title = getattr(fig, "_suptitle", None)
    if title is not None and title.get_text():
        title.set_text(fitting(title.get_text(), width * 0.96, title.get_fontsize()))
    for ax in fig.axes:
        # a grid's cell, gaps included: a portrait photo is drawn narrower than its cell
        spec = ax.get_subplotspec()
        room = (0.96 * width * (spec.colspan.stop - spec.colspan.start)
                / spec.get_gridspec().ncols if spec is not None
                else ax.get_position(original=True).width * width)
        for text in (ax.title, ax._left_title, ax._right_title):
            if text.get_text():
                text.set_text(fitting(text.get_text(), room, text.get_fontsize(), wrap=False))


FINE_TUNE_SINGLE_VIEWS = "fine-tuning:\nvalidation on\nsingle views"


def single_views_from(ax, start: float, colour="grey") -> None:
    """Say on ``ax``, right of the dashed line at ``start``, that fine-tuning's validation
    figures are single-view ones: the head's epochs before it are measured as the saved model
    (photo and mirror averaged), so the curve steps at the line partly by that alone."""
    from matplotlib.transforms import blended_transform_factory

    ax.text(start + 0.2, 0.03, FINE_TUNE_SINGLE_VIEWS, color=colour, fontsize=7,
            va="bottom", ha="left", zorder=5,  # over a curve it crosses, still readable
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1},
            transform=blended_transform_factory(ax.transData, ax.transAxes))


@drawn
def curves(history: dict[str, list[float]], path: Path, title: str = "",
           flips: bool = False) -> Path:
    """Accuracy and loss per epoch, training vs validation; ``flips``: the saved model
    averages photo and mirror, so fine-tuning's single-view validation is said as such."""
    epochs = list(range(1, len(history.get("loss", [])) + 1))
    fig, axes = subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        if metric in history:
            ax.plot(epochs, history[metric], "o-", label=f"train {metric}")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], "s-", label=f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
        if len(epochs) == 1:  # one point: the locator would label 0.96 ... 1.04
            ax.set_xticks([1])
            ax.set_xlim(0.5, 1.5)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if "phase" in history and "fine-tune" in history["phase"]:
        start = history["phase"].index("fine-tune") + 0.5
        for ax in axes:
            ax.axvline(start, color="grey", linestyle="--")
            if flips:
                single_views_from(ax, start)
    fig.suptitle(title)
    save(fig, path)
    return Path(path)


@drawn
def image_grid(images, titles, path: Path, cols: int = 5, title: str = "",
               cmap: str = "gray") -> Path:
    """A grid of 2-D images (or RGB) with a caption each; blank cells are hidden."""
    import numpy as np

    n = max(len(images), 1)
    rows = (n + cols - 1) // cols
    fig, axes = subplots(rows, cols, figsize=(cols * 1.6, rows * 1.8 + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            image = np.asarray(images[i])
            kwargs = {} if image.ndim == 3 else {"cmap": cmap}
            if cmap == "coolwarm" and image.ndim == 2:
                limit = float(np.abs(image).max()) or 1.0
                kwargs.update(vmin=-limit, vmax=limit)
            ax.imshow(image, interpolation="nearest", **kwargs)
            ax.set_title(str(titles[i]), fontsize=8)
    fig.suptitle(title)
    save(fig, path, dpi=80)
    return Path(path)


CONFUSION_MAX_INCHES = 30.0  # 3000 px a side: 200 classes drew 11,200 (500 MB to draw)
CONFUSION_COUNTS_UP_TO = 40  # classes whose cells show their counts (beyond, colour alone)


def tick_labels(names) -> list[str]:
    """Class names as a confusion matrix's ticks: a long one cut in the middle to fit, and
    numbered (``3: ...``) when cutting made two alike (names differing in the middle)."""
    fitted = [fitting(utf8_text(name), 2.2, 10, wrap=False) for name in names]
    if len(set(fitted)) < len(fitted):
        fitted = [f"{k}: {name}" for k, name in enumerate(fitted)]
    return fitted


@drawn
def confusion(matrix, names, path: Path, title: str = "") -> Path:
    """A confusion matrix with counts (rows: true class, columns: predicted); for many classes
    at most ``CONFUSION_MAX_INCHES`` a side, its cells' counts left out beyond
    ``CONFUSION_COUNTS_UP_TO`` classes (report.json and the page's table have them)."""
    import numpy as np

    matrix = np.asarray(matrix)
    size = min(CONFUSION_MAX_INCHES, max(4.0, 0.55 * len(names) + 2))
    fig, ax = subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    # tick labels are drawn from these, not kept text; a long class name cut to fit
    names = tick_labels(names)
    ticks = min(10.0, max(2.0, 0.8 * 72 * (size - 2) / max(1, len(names))))  # points
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=ticks)
    ax.set_yticks(range(len(names)), names, fontsize=ticks)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    if len(names) <= CONFUSION_COUNTS_UP_TO:
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > threshold else "black")
    import textwrap

    # centred on the figure and wrapped to it (about 11 characters an inch): a long model or
    # folder name cut off the accuracy at the end of the line
    fig.suptitle(textwrap.fill(title, width=max(24, int(size * 11)), break_long_words=True,
                               break_on_hyphens=False), fontsize=10)
    save(fig, path)
    return Path(path)


@drawn
def noise_curve(results, path: Path, title: str = "") -> Path:
    """Test accuracy against the sigma of added Gaussian noise."""
    sigmas, accuracies = zip(*results, strict=True)
    fig, ax = subplots(figsize=(5, 3.5))
    ax.plot(sigmas, accuracies, "o-")
    for s, a in results:
        ax.annotate(f"{a:.3f}", (s, a), textcoords="offset points", xytext=(0, 6), ha="center",
                    fontsize=8)
    ax.set_xlabel("Gaussian noise sigma (pixels in [0, 1])")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    save(fig, path)
    return Path(path)


def map_state(heatmap) -> str | None:
    """What a Grad-CAM map shows: "nan" (a diverged model's: broken, not empty), "empty" (no
    region raises the class's score; drawn as a uniform tint), or None (something)."""
    import numpy as np

    heatmap = np.asarray(heatmap, dtype="float64")
    if np.isnan(heatmap).any():
        return "nan"
    return None if heatmap.size and float(heatmap.max()) > 0 else "empty"


@drawn
def gradcam(image, heatmap, path: Path, title: str = "", alpha: float = 0.45) -> Path:
    """The image and the image overlaid with a Grad-CAM heatmap (jet), side by side; the
    overlay's caption says when the map is empty or not a number (a uniform tint)."""
    import matplotlib
    import numpy as np
    from PIL import Image

    image = np.asarray(image, dtype="uint8")
    h, w = image.shape[:2]
    heatmap = np.asarray(heatmap, dtype="float64")
    # a map with nothing on it is a uniform tint: its panel says so (not a broken picture)
    shown = {"nan": "Grad-CAM: not a number", "empty": "Grad-CAM: empty map"}.get(
        map_state(heatmap), "Grad-CAM")
    heat = Image.fromarray((np.clip(np.nan_to_num(heatmap), 0, 1) * 255).astype("uint8")).resize(
        (w, h), Image.BILINEAR)
    colours = matplotlib.colormaps["jet"](np.asarray(heat) / 255.0)[..., :3] * 255.0
    overlay = ((1 - alpha) * image + alpha * colours).clip(0, 255).astype("uint8")
    width = 8.0
    # each panel as tall as the image is, within 1.5 in and twice its width: a strip of 10 x
    # 3000 px made a picture 100,000 px tall (4 GB of memory); beyond, it is letterboxed
    tall = min(max(width / 2 * h / w, 1.5), width)
    fig, axes = subplots(1, 2, figsize=(width, tall + 0.6))
    for ax, picture, caption in zip(axes, (image, overlay), ("image", shown), strict=True):
        ax.imshow(picture)
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    save(fig, path)
    return Path(path)
