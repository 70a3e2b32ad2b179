"""The settings objects every command takes from Python (no TensorFlow, no photos needed).

A program calling the library hands values the CLI never would: ``force="no"`` (true in
Python, so it replaced files), a number as a string, one path where a list is expected. Each
is one TransferError naming the option, raised before anything is read or written.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from transfer.errors import TransferError
from transfer.settings import (
    Augment,
    CompareSettings,
    EvaluateSettings,
    ExplainSettings,
    ExportSettings,
    FetchOptions,
    MnistParams,
    PredictSettings,
    ReportSettings,
    ServeSettings,
    TrainSettings,
)


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"not read by the settings")
    return path


def every_settings(image: Path) -> dict:
    """A valid instance of each settings class, by name."""
    return {"train": TrainSettings(), "fetch": FetchOptions(),
            "predict": PredictSettings(paths=[image]), "evaluate": EvaluateSettings(),
            "explain": ExplainSettings(image=image), "export": ExportSettings(),
            "compare": CompareSettings(output=image.parent / "compare"),
            "report": ReportSettings(folder=image.parent), "mnist": MnistParams(),
            "serve": ServeSettings()}


@pytest.mark.parametrize("name", ["train", "fetch", "predict", "evaluate", "explain", "export",
                                  "compare", "report", "mnist"])
def test_force_is_true_or_false_in_every_command(name, image, tmp_path, monkeypatch):
    """``force="no"`` is true in Python: evaluate, explain, predict, export, compare, report
    and mnist replaced the user's files with it."""
    monkeypatch.chdir(tmp_path)
    settings = every_settings(image)[name]
    settings.validated()  # valid as it is
    with pytest.raises(TransferError) as info:
        settings.replace(force="no").validated()
    assert str(info.value) == "--force must be True or False, not 'no'"


@pytest.mark.parametrize("settings, message", [
    (PredictSettings(paths=["a.jpg"], imagenet="no"),
     "--imagenet must be True or False, not 'no'"),
    (TrainSettings(augment=Augment(enabled="no")), "--enabled must be True or False, not 'no'"),
    (TrainSettings(augment=Augment(shear="x")), "--shear must be a number, not 'x'"),
    (TrainSettings(epochs=2.5), "--epochs must be a whole number, not 2.5"),
    (TrainSettings(learning_rate=float("nan")),
     "--learning-rate must be a positive number, not nan"),  # its range, not its type
    (EvaluateSettings(model=None), "--model must be a path, not None"),
    (EvaluateSettings(worst="3"), "--worst must be a whole number, not '3'"),
    (ExportSettings(model=None), "--model must be a path, not None"),
    (ExportSettings(output=3), "--output must be a path, not 3"),
    (ExportSettings(check_images=[3]), "--check-images must be paths, not 3"),
    (ReportSettings(folder=None), "--folder must be a path, not None"),
    (MnistParams(output=3), "--output must be a path, not 3"),
    (MnistParams(limit="100"), "--limit must be a whole number, not '100'"),
    (ExplainSettings(images=3), "--images must be paths, not 3"),
    (ExplainSettings(images=["a.jpg", None]), "--images must be paths, not None"),
    (CompareSettings(runs=[1]), "--runs must be one of scratch, frozen, fine-tuned, not 1"),
    (FetchOptions(train_per_class="10"), "--train-per-class must be a whole number, not '10'"),
    (FetchOptions(source="microsoft", microsoft_url=5),
     "microsoft_url must be an address (a str), not 5"),  # urlsplit's AttributeError
    (FetchOptions(competition=5), "--competition must be a Kaggle competition's name, not 5"),
    (ServeSettings(max_upload_mb="20"), "--max-upload-mb must be a number, not '20'"),
])
def test_a_value_of_the_wrong_kind_is_one_error_naming_the_option(settings, message):
    """Before: a TypeError or AttributeError from deep inside the checks (shear, model=None,
    output=3, runs=[1]), or silently on (enabled="no", imagenet="no")."""
    with pytest.raises(TransferError) as info:
        settings.validated()
    assert str(info.value) == message


def test_one_path_is_one_image_not_its_letters(image, tmp_path, monkeypatch):
    """``PredictSettings(paths="photo.jpg")`` was read letter by letter ("." classified the
    whole working folder); a Path raised a TypeError. One path is one image, as in
    ``predict("photo.jpg")`` and ``ExplainSettings(images="folder")``."""
    monkeypatch.chdir(tmp_path)
    assert PredictSettings(paths="photo.jpg").validated().paths == ["photo.jpg"]
    assert PredictSettings(paths=image).validated().paths == [image]
    assert ExportSettings(check_images=image).validated().check_images == [image]
    assert ExplainSettings(images=image).validated().images == [str(image)]


@pytest.mark.parametrize("call, takes", [
    ("transfer.training:train", "TrainSettings"),
    ("transfer.compare:compare", "CompareSettings"),
    ("transfer.datasets:fetch_data", "FetchOptions"),
    ("transfer.serve:create_app", "ServeSettings"),
])
def test_a_command_given_a_path_instead_of_its_settings_says_so(call, takes):
    import importlib

    module, name = call.split(":")
    function = getattr(importlib.import_module(module), name)
    with pytest.raises(TransferError) as info:
        function("data")
    assert str(info.value) == (f"{name} takes a {takes} (from transfer.settings), not 'data': "
                               f"{name}({takes}(...))")


def test_every_entry_point_given_the_wrong_kind_of_argument_says_so(tmp_path):
    """explain_all("data/test") and mnist.run("mnist.npz") were AttributeErrors, evaluate(5),
    export(5) and open_classifier(model=5) TypeErrors deep in pathlib: one TransferError each,
    as train, compare, fetch_data and create_app say it."""
    from transfer import mnist
    from transfer.evaluate import evaluate
    from transfer.explain import explain_all
    from transfer.export import export
    from transfer.inference import open_classifier

    with pytest.raises(TransferError, match=r"^explain_all takes a ExplainSettings \(from "):
        explain_all("data/test")
    with pytest.raises(TransferError, match=r"^mnist.run takes a MnistParams \(from "):
        mnist.run("mnist.npz")
    for call in (lambda: evaluate(5), lambda: export(5), lambda: open_classifier(model=5)):
        with pytest.raises(TransferError, match=r"^--model must be a path, not 5$"):
            call()
    with pytest.raises(TransferError, match=r"^open_classifier takes a PredictSettings"):
        open_classifier("models/x")
    # open_classifier checks what predict checks of the classifier's fields: imagenet="no"
    # was ImageNet mode, models_dir="" the current folder, models_dir=5 a TypeError
    for options, said in ((dict(imagenet="no"), "--imagenet must be True or False, not 'no'"),
                          (dict(models_dir=""), "--models-dir must be a path, not ''"),
                          (dict(models_dir=5), "--models-dir must be a path, not 5"),
                          (dict(engine="gpu"), "--engine must be one of"),
                          (dict(imagenet=True, base="mobilenet", alpha=0.3),
                           "--alpha for mobilenet must be one of")):
        with pytest.raises(TransferError, match="^" + re.escape(said)):
            open_classifier(**options)


def test_numpy_numbers_and_odd_bases_from_a_program(tmp_path):
    """A sweep over np.array([0.25, 0.5]) was refused ("--alpha must be a number, not
    np.float32(0.25)"), and NumPy values in the settings were saved as strings ("3") in
    meta.json; a list as the base was a TypeError (unhashable)."""
    import json

    import numpy as np

    (tmp_path / "data/train/a").mkdir(parents=True)
    settings = TrainSettings(base="mobilenet", alpha=np.float32(0.25), epochs=np.int64(3),
                             data_dir=tmp_path / "data").validated()
    assert json.loads(json.dumps(settings.as_dict(), default=str))["alpha"] == 0.25
    assert json.loads(json.dumps(settings.as_dict(), default=str))["epochs"] == 3
    for made in (lambda: TrainSettings(base=["mobilenet"], data_dir=tmp_path / "data"),
                 lambda: ServeSettings(base={"mobilenet": 1}, imagenet=True),
                 lambda: CompareSettings(base=["vgg16"], output=tmp_path / "out")):
        with pytest.raises(TransferError, match="unknown base"):
            made().validated()


def test_numpy_numbers_become_pythons_where_keras_and_sockets_take_only_pythons(tmp_path):
    """``seed=np.int64(7)`` (a sweep over ``np.arange``) passed the settings' checks, then
    Keras refused it after the data was read ("Expected `seed` argument to be an integer"),
    as ``Dense(np.int64(16))``, the mirror layer ``image_size`` and a socket ``port``."""
    import keras
    import numpy as np

    (tmp_path / "data/train/a").mkdir(parents=True)
    settings = TrainSettings(data_dir=tmp_path / "data", seed=np.int64(7), dense=np.int64(16),
                             image_size=np.int64(96), learning_rate=np.float32(1e-3),
                             augment=Augment(rotation=np.float64(20))).validated()
    numbers = (settings.seed, settings.dense, settings.image_size, settings.learning_rate,
               settings.augment.rotation)
    assert [type(n) for n in numbers] == [int, int, int, float, float]
    assert numbers == (7, 16, 96, pytest.approx(1e-3), 20.0)
    keras.layers.Dense(settings.dense)  # refused np.int64
    keras.random.SeedGenerator(settings.seed)
    assert type(MnistParams(limit=np.int64(200), seed=np.int64(3)).validated().seed) is int
    assert type(ServeSettings(port=np.int64(8765)).validated().port) is int


def test_a_report_asked_for_a_number_of_gradcams_that_is_not_one(tmp_path):
    from transfer.report import write_report

    with pytest.raises(TransferError) as info:
        write_report(tmp_path, gradcams="x")
    assert str(info.value) == "gradcams must be a whole number, not 'x'"


def test_paths_may_come_from_a_generator_and_a_number_is_refused(image):
    assert PredictSettings(paths=image.parent.glob("*.jpg")).validated().paths == [image]
    with pytest.raises(TransferError, match="paths must be a list of images, folders or "
                                            "globs, not 3"):
        PredictSettings(paths=3).validated()


def test_train_refuses_what_would_measure_nothing_or_write_among_the_photos(tmp_path):
    """A seed NumPy cannot take (a traceback after the data was read); a TensorBoard folder
    inside the photos (a class named tb next time); the same folder for training and
    validation (a perfect score on photos it trained on): each one line before any work."""
    for folder in ("ph/cats", "ph/dogs", "split/train/cats", "split/validate/cats"):
        (tmp_path / folder).mkdir(parents=True)
    for seed in (-1, 2**32):
        with pytest.raises(TransferError, match=r"^--seed must be"):
            TrainSettings(data_dir=tmp_path / "ph", seed=seed).validated()
    for settings in (CompareSettings(data_dir=tmp_path / "ph", seed=-1), MnistParams(seed=-1)):
        with pytest.raises(TransferError, match=r"^--seed must be at least 0, not -1$"):
            settings.validated()
    TrainSettings(data_dir=tmp_path / "ph", seed=2**32 - 1).validated()  # the largest
    with pytest.raises(TransferError, match=r"^--tensorboard .*ph/tb is inside the data folder"):
        TrainSettings(data_dir=tmp_path / "ph", tensorboard=tmp_path / "ph" / "tb").validated()
    train = tmp_path / "split" / "train"
    for validate in (train, train / "cats", tmp_path / "split"):
        with pytest.raises(TransferError, match=r"hold the same photos: validating on "
                                                r"training photos measures nothing"):
            TrainSettings(train_dir=train, validate_dir=validate).validated()
    apart = TrainSettings(train_dir=train, validate_dir=tmp_path / "split" / "validate",
                          preview_augment=True, models_dir=tmp_path / "models").validated()
    # --preview-augment writes beside the folders read, not into --data-dir's default
    assert apart.preview_folder() == tmp_path / "split"


def test_models_dir_is_checked_only_when_the_bundle_goes_there(tmp_path, monkeypatch):
    """With --output nothing is written into --models-dir (bundle, latest and checkpoints go
    beside the output), yet a file named models in the folder one stood in stopped the run:
    "--models-dir models is a file, not a folder", an option never given."""
    (tmp_path / "ph/cats").mkdir(parents=True)
    (tmp_path / "ph/dogs").mkdir()
    monkeypatch.chdir(tmp_path)
    Path("models").write_text("my notes on models")
    settings = TrainSettings(data_dir=Path("ph"), output=tmp_path / "out" / "m").validated()
    assert settings.output == tmp_path / "out" / "m"
    with pytest.raises(TransferError, match=r"^--models-dir models is a file, not a folder"):
        TrainSettings(data_dir=Path("ph")).validated()  # where the bundle would go


def test_an_unknown_augment_setting_from_python_is_one_error():
    """TrainSettings(augment={"bogus": 1}) (a settings.json edited by hand) raised a bare
    TypeError from inside the dataclass."""
    with pytest.raises(TransferError, match=r"^augment= has no setting 'bogus'; it takes "
                                            r"enabled, rotation"):
        TrainSettings(augment={"bogus": 1, "rotation": 10})
    assert TrainSettings(augment={"rotation": 10}).augment == Augment(rotation=10)


def test_train_refuses_more_epochs_than_any_run_goes(tmp_path):
    """--epochs 1000000 was taken (early stopping ended the run at epoch 67, after building
    every epoch's order: 788 MB); a CNN from scratch, which watches only its second half,
    would train for days. Above MAX_EPOCHS it is one line before any work."""
    from transfer.settings import MAX_EPOCHS

    for folder in ("ph/cats", "ph/dogs"):
        (tmp_path / folder).mkdir(parents=True)
    assert TrainSettings(data_dir=tmp_path / "ph", epochs=MAX_EPOCHS).validated().epochs == \
        MAX_EPOCHS
    for base in ("mobilenet", "scratch"):
        with pytest.raises(TransferError, match=rf"^--epochs must be at most {MAX_EPOCHS}, not "
                                                rf"1000000: early stopping ends a run long "
                                                "before"):
            TrainSettings(data_dir=tmp_path / "ph", base=base, epochs=1_000_000).validated()


def test_train_dir_without_validate_dir_validates_on_the_folder_beside_it(tmp_path,
                                                                          monkeypatch):
    """`transfer train --train-dir pets/train` validated on ./data/validate (the tour's
    photos) though pets/validate sat beside it. The validation folder beside --train-dir (any
    name of VALIDATE_FOLDERS) is used; --data-dir's only when none is there; the training
    folder itself is never its own validation folder."""
    monkeypatch.chdir(tmp_path)
    for folder in ("pets/train/cats", "pets/Val/cats", "data/train/cats", "data/validate/cats",
                   "lone/train/cats", "odd/valid/cats", "odd/valid/dogs"):
        Path(folder).mkdir(parents=True)
    resolved = TrainSettings(train_dir=Path("pets/train")).resolved()
    assert resolved.validate_dir == Path("pets/Val")
    assert TrainSettings(train_dir="lone/train").resolved().validate_dir == \
        Path("data/validate")
    # --data-dir alone, and --validate-dir given, as before
    assert TrainSettings().resolved().validate_dir == Path("data/validate")
    assert TrainSettings(train_dir="pets/train", validate_dir="data/validate").resolved(
    ).validate_dir == Path("data/validate")
    # a training folder named valid/ is not its own validation folder: with --data-dir's
    # folder gone it is split in memory, not refused as "the same photos"
    shutil.rmtree("data")
    assert TrainSettings(train_dir="odd/valid").validated().validate_dir is None
    # from inside the training folder: its parent is "..", not "." (it named
    # pets/train/Val, "no data folder", while pets/Val was found)
    monkeypatch.chdir(tmp_path / "pets/train")
    assert TrainSettings(train_dir=".").resolved().validate_dir == Path("../Val")


def test_predict_and_explain_refuse_what_would_read_or_write_elsewhere(image, tmp_path,
                                                                        monkeypatch):
    """explain's pictures into a folder of the photos given (a class of pictures to the next
    train or evaluate, as evaluate's --output there is refused); an empty path from a
    program (an unset variable: every photo under the current folder, classified or drawn
    on; the CLI refuses an empty argument); predict --models-dir naming a file (no bundle
    there: ImageNet mode, maybe a 92 MB download, with a warning only)."""
    from typer.testing import CliRunner

    from transfer.cli import app

    data = tmp_path / "data"
    (data / "cats").mkdir(parents=True)
    with pytest.raises(TransferError, match=r"^--output .*data/heat is inside the data folder"):
        ExplainSettings(images=[str(data)], output=data / "heat").validated()
    ExplainSettings(images=[str(data)], output=tmp_path / "elsewhere").validated()
    # a folder of photos alone (no class folders): its pictures may go inside it
    ExplainSettings(images=[str(data / "cats")], output=data / "cats" / "heat").validated()
    for settings in (ExplainSettings(images=[""]), PredictSettings(paths=[str(image), " "])):
        with pytest.raises(TransferError, match=r"holds an empty path \(an unset variable\?\)"):
            settings.validated()
    (tmp_path / "models.txt").write_text("not a folder")
    with pytest.raises(TransferError, match=r"^--models-dir .*models.txt is a file, not a"):
        PredictSettings(paths=[str(image)], models_dir=tmp_path / "models.txt").validated()
    # predict --output out/ wrote a file named out (a Path drops the slash)
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["predict", str(image), "--output", "out/"])
    assert done.exit_code == 1 and "--output out/ names a folder; name a file" in done.output
    assert not (tmp_path / "out").exists()
    # from Python too (predict(output="out/") wrote it), and "-" is no file named "-"
    with pytest.raises(TransferError, match=r"^--output out/ names a folder; name a file$"):
        PredictSettings(paths=[str(image)], output="out/").validated()
    with pytest.raises(TransferError, match=r"^--output - is the command line's standard"):
        PredictSettings(paths=[str(image)], output="-").validated()


def test_fetch_datas_test_split_0_is_its_default(tmp_path):
    """--test-split 0, the default --help shows, switched the cats/dogs tour from its
    per-class counts (1000 + 400) to fractions of every photo, and was refused beside the
    counts ("not both"), though --test-per-class 0 is accepted beside fractions."""
    from transfer.archive import KAGGLE
    from transfer.datasets import _split_plan

    plain = FetchOptions(data_dir=tmp_path / "d").validated()
    zero = FetchOptions(data_dir=tmp_path / "d", test_split=0.0).validated()
    assert zero.test_split is None
    assert _split_plan(zero, KAGGLE) == _split_plan(plain, KAGGLE) == {
        "mode": "per_class", "train": 1000, "validate": 400}
    FetchOptions(data_dir=tmp_path / "d", test_split=0, train_per_class=500,
                 validate_per_class=200).validated()


def test_train_settings_refuse_before_any_run_what_training_would(tmp_path):
    """--tta flip with --augment-copies 0 or a CNN from scratch passed validated() and was
    refused only as the run was planned (compare trained its first runs, minutes, before a
    later one failed); --dense 1000000 (8 GB of head on InceptionV3's features) and
    --fine-tune-epochs 10**9 had no bound, unlike --image-size and --epochs."""
    (tmp_path / "ph/cats").mkdir(parents=True)
    data = tmp_path / "ph"
    for settings in (TrainSettings(data_dir=data, tta="flip", augment_copies=0),
                     TrainSettings(data_dir=data, tta="flip", base="scratch", alpha=1.0)):
        with pytest.raises(TransferError, match=r"^--tta flip needs features computed once"):
            settings.validated()
    TrainSettings(data_dir=data, tta="flip").validated()
    TrainSettings(data_dir=data, tta="flip", augment_copies=0,
                  augment=Augment(enabled=False)).validated()  # no augmentation: computed once
    with pytest.raises(TransferError, match=r"^--dense must be at most 16384, not 1000000"):
        TrainSettings(data_dir=data, dense=1_000_000).validated()
    with pytest.raises(TransferError, match=r"^--fine-tune-epochs must be at most 100000"):
        TrainSettings(data_dir=data, fine_tune=2, fine_tune_epochs=10**9).validated()
