"""Decoding ahead (transfer/decode_ahead.py): a helper process decodes a run's photos, through
the one reader, while the run imports TensorFlow and builds its model; the pass takes them
from the buffer both processes map. Real Kaggle photos, a real helper process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import text_as_jpg, truncated

from transfer import decode_ahead, features, pipelines
from transfer.decode_ahead import DecodeAhead
from transfer.images import ImageError


def _photos(folder: Path, real_photos, per_class: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for cls in ("cats", "dogs"):
        for name, data in real_photos[cls][:per_class]:
            (folder / name).write_bytes(data)
            paths.append(folder / name)
    return paths


def _wait(ahead: DecodeAhead, jobs: int, timeout: float = 120.0) -> None:
    """Until the helper has reported ``jobs`` photos (or ended)."""
    deadline = time.monotonic() + timeout
    while ahead.done < jobs and time.monotonic() < deadline:
        if ahead._proc.poll() is not None and ahead._reader is not None:
            ahead._reader.join(timeout=5)  # its last lines are read
            break
        time.sleep(0.02)


def _outcome(read, path, size):
    try:
        return read(path, size)
    except ImageError as exc:
        return f"ImageError: {exc}"


def _same_as_the_reader(ahead: DecodeAhead, path, size) -> None:
    """``ahead.read`` gives what the run's own reader gives: its pixels, or its error."""
    expected = _outcome(pipelines.read_rgb, path, size)
    got = _outcome(ahead.read, path, size)
    if isinstance(expected, str):
        assert isinstance(got, str) and got == expected, got
    else:
        np.testing.assert_array_equal(got, expected)


def test_the_photos_come_back_as_the_reader_decodes_them(tmp_path, real_photos):
    paths = _photos(tmp_path / "photos", real_photos, 10)
    # two sizes, as a FixRes run's passes (training at 224 px, validation at 288)
    jobs = [(p, 224) for p in paths] + [(p, 160) for p in paths[:6]]
    with DecodeAhead(jobs) as ahead:
        _wait(ahead, len(jobs))
        assert ahead.done == len(jobs) and not ahead.failed
        for path, size in reversed(jobs):  # any order, from any slot
            pixels = ahead.read(path, size)
            assert pixels.dtype == np.uint8 and pixels.shape == (size, size, 3)
            np.testing.assert_array_equal(pixels, pipelines.read_rgb(path, size))
        assert ahead.hits == len(jobs)
        # read again (augmented copies do): still one photo, and each read the caller's own
        # copy, as the reader's is (a change to one is not what the next read gives)
        ahead.read(*jobs[0])[...] = 0
        np.testing.assert_array_equal(ahead.read(*jobs[0]), pipelines.read_rgb(*jobs[0]))
        assert ahead.hits == len(jobs)
    assert ahead._proc.poll() is not None  # the helper ended with close()
    # closed, it reads through the reader (the buffer is dropped), still the same pixels
    np.testing.assert_array_equal(ahead.read(*jobs[0]), pipelines.read_rgb(*jobs[0]))
    assert ahead.hits == len(jobs)
    # closed while its helper is midway (a run ending early): the helper is stopped there,
    # not left decoding for nobody
    with DecodeAhead([(p, s) for s in range(288, 32, -4) for p in paths]) as early:
        _wait(early, 16)
        assert early._proc.poll() is None
    assert early._proc.returncode == -signal.SIGKILL


def test_an_unreadable_photo_gets_the_readers_own_error(tmp_path, real_photos):
    good = _photos(tmp_path / "photos", real_photos, 2)
    (tmp_path / "text.jpg").write_bytes(text_as_jpg())
    (tmp_path / "cut.jpg").write_bytes(truncated(real_photos["cats"][5][1]))
    jobs = [(good[0], 224), (tmp_path / "text.jpg", 224), (tmp_path / "cut.jpg", 224),
            (good[1], 224), (tmp_path / "gone.jpg", 224)]
    with DecodeAhead(jobs) as ahead:
        _wait(ahead, len(jobs))
        assert ahead.done == len(jobs)
        assert ahead.failed == {1, 2, 4}
        for path, size in jobs:
            _same_as_the_reader(ahead, path, size)
        assert ahead.hits == 2


def test_it_holds_no_more_than_its_budget_and_stops_when_the_pass_catches_up(tmp_path,
                                                                             real_photos):
    paths = _photos(tmp_path / "photos", real_photos, 20)
    one = 224 * 224 * 3
    small = DecodeAhead([(p, 224) for p in paths], budget=3 * one + one // 2)
    with small:
        assert sorted(small.index.values()) == [0, 1, 2]  # the first three, in order
        assert small.index[(os.fspath(paths[2]), 224)] == 2
        # the buffer both processes map: those three photos (and each one's size and mtime,
        # a few bytes), not the whole budget
        assert 3 * one <= small._buffer.nbytes < 3 * one + one // 2, small._buffer.nbytes
        _wait(small, 3)
        assert small.done == 3
        np.testing.assert_array_equal(small.read(paths[10], 224),  # past the budget: read now
                                      pipelines.read_rgb(paths[10], 224))
        assert small.hits == 0
        np.testing.assert_array_equal(small.read(paths[2], 224),
                                      pipelines.read_rgb(paths[2], 224))
        assert small.hits == 1
    assert DecodeAhead([(p, 224) for p in paths], budget=one - 1).index == {}
    # the pass asking for a photo the helper has not reached: it is read now, and the helper
    # stops (the pass's own threads decode from there); what it wrote stays readable
    many = [(p, s) for s in range(288, 88, -10) for p in paths]  # 800 photos, 20 sizes
    with DecodeAhead(many) as ahead:
        _wait(ahead, 16)
        last = ahead.read(paths[-1], 98)
        np.testing.assert_array_equal(last, pipelines.read_rgb(paths[-1], 98))
        assert ahead._proc.wait(timeout=30) == -signal.SIGKILL  # stopped, not finished
        ahead._reader.join(timeout=30)
        written = ahead.done
        assert 16 <= written < len(many)
        for path, size in many[:written]:
            np.testing.assert_array_equal(ahead.read(path, size), pipelines.read_rgb(path, size))
        assert ahead.hits == written  # each photo counted once


def test_a_photo_replaced_after_it_was_decoded_is_read_again(tmp_path, real_photos):
    """The pass's features are keyed (in the cache) by each file's size and mtime as the pass
    sees them: a photo replaced after the helper decoded it must not give the old pixels."""
    paths = _photos(tmp_path / "photos", real_photos, 3)
    with DecodeAhead([(p, 224) for p in paths]) as ahead:
        _wait(ahead, len(paths))
        assert ahead.done == len(paths) and not ahead.failed
        old = pipelines.read_rgb(paths[0], 224)
        paths[0].write_bytes(real_photos["dogs"][20][1])  # another photo under its name
        new = pipelines.read_rgb(paths[0], 224)
        assert not np.array_equal(old, new)
        np.testing.assert_array_equal(ahead.read(paths[0], 224), new)
        os.utime(paths[1], ns=(0, paths[1].stat().st_mtime_ns + 10**9))  # touched only
        np.testing.assert_array_equal(ahead.read(paths[1], 224),
                                      pipelines.read_rgb(paths[1], 224))
        np.testing.assert_array_equal(ahead.read(paths[2], 224),
                                      pipelines.read_rgb(paths[2], 224))
        assert ahead.hits == 1  # only the photo left as it was came from the buffer


def test_a_helper_with_another_reader_decodes_nothing(tmp_path, real_photos, monkeypatch):
    """The helper imports the run's own reader (the run's sys.path) and checks it is the run's
    (its file, Pillow's version): another reader's pixels would train another model."""
    paths = _photos(tmp_path / "photos", real_photos, 4)
    real = decode_ahead._reader_identity()
    monkeypatch.setattr(decode_ahead, "_reader_identity",
                        lambda: {**real, "pillow": "0.0-not-this-one"})
    with DecodeAhead([(p, 224) for p in paths]) as ahead:
        ahead._proc.wait(timeout=60)
        ahead._reader.join(timeout=30)
        assert ahead._proc.returncode == 0 and ahead.done == 0  # it ended, having decoded none
        for path in paths:
            np.testing.assert_array_equal(ahead.read(path, 224), pipelines.read_rgb(path, 224))
        assert ahead.hits == 0


def test_the_helper_reads_with_the_runs_pillow_settings(tmp_path, real_photos, monkeypatch):
    """A program that lowered Pillow's decompression-bomb limit (or let truncated files load):
    the helper refuses (or loads) what the run's own reader does."""
    from PIL import Image, ImageFile

    paths = _photos(tmp_path / "photos", real_photos, 3)
    (tmp_path / "cut.jpg").write_bytes(truncated(real_photos["dogs"][7][1]))
    jobs = [(p, 224) for p in paths] + [(tmp_path / "cut.jpg", 224)]
    for limit, truncated_ok in ((10_000, False), (Image.MAX_IMAGE_PIXELS, True)):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", truncated_ok)
        with DecodeAhead(jobs) as ahead:
            _wait(ahead, len(jobs))
            assert ahead.done == len(jobs)
            # 10,000 pixels: every photo is a "bomb" (over twice the limit) to this run
            assert ahead.failed == (set(range(len(jobs))) if limit == 10_000 else set())
            for path, size in jobs:
                _same_as_the_reader(ahead, path, size)


def test_no_buffer_file_is_left_behind(tmp_path, real_photos, monkeypatch):
    paths = _photos(tmp_path / "photos", real_photos, 4)
    buffers = tmp_path / "buffers"
    buffers.mkdir()
    monkeypatch.setattr(decode_ahead, "_buffer_folder", lambda total: str(buffers))
    with DecodeAhead([(p, 224) for p in paths]) as ahead:
        _wait(ahead, len(paths))
        assert ahead.done == len(paths)
        # mapped by both processes, the file itself is gone (POSIX): a killed run leaves none
        assert list(buffers.iterdir()) == []
        np.testing.assert_array_equal(ahead.read(paths[0], 224),
                                      pipelines.read_rgb(paths[0], 224))
    assert list(buffers.iterdir()) == []


def test_the_helper_ends_when_its_run_is_killed(tmp_path, real_photos):
    """A run killed before it could stop its helper: the helper sees its parent gone and ends
    without decoding on for nobody. Its progress lines go to a process that outlives the run
    (so the helper's writes do not fail): they show it stopped before its last photo."""
    paths = _photos(tmp_path / "photos", real_photos, 15)
    sizes = (224, 208, 192, 176, 160, 144, 128, 112)
    jobs = json.dumps([[str(p), s] for s in sizes for p in paths])  # 240 distinct photos
    log = tmp_path / "progress.txt"
    copier = f"import sys; open({str(log)!r}, 'w').write(sys.stdin.read())"
    program = ("import json, os, subprocess, sys\n"
               "from transfer.decode_ahead import DecodeAhead\n"
               f"ahead = DecodeAhead([tuple(j) for j in json.loads({jobs!r})])\n"
               f"copier = subprocess.Popen([sys.executable, '-c', {copier!r}],\n"
               "                          stdin=ahead._proc.stdout)\n"
               "print(ahead.pid, copier.pid, flush=True)\n"
               "os._exit(0)\n")  # as a SIGKILL: no close(), no finally
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    helper, copier_pid = map(int, done.stdout.split())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (_running(helper) or _running(copier_pid)):
        time.sleep(0.05)
    assert not _running(helper)
    assert not _running(copier_pid)  # the helper's end closed the pipe
    reported = [int(line.split()[1]) for line in log.read_text().splitlines()
                if line.startswith("= ")]
    assert max(reported, default=0) < 240


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its parent's reaping is left


def test_a_feature_pass_through_it_gives_the_same_features(tmp_path, real_photos):
    paths = _photos(tmp_path / "photos", real_photos, 8)
    labels = [0] * 8 + [1] * 8

    def engine(batch):  # a fixed function of every pixel: any wrong pixel moves it
        batch = np.asarray(batch, "float32")
        return np.concatenate([batch.mean(axis=(1, 2)), batch[:, ::7, ::5].reshape(len(batch),
                                                                              -1)], axis=1)

    plain = features.run_pass(paths, labels, 96, engine, batch_size=5)
    with DecodeAhead([(p, 96) for p in paths]) as ahead:
        _wait(ahead, len(paths))
        through = features.run_pass(paths, labels, 96, engine, batch_size=5,
                                    reader=ahead.read, mirror=True)
        assert ahead.hits == len(paths)
    mirrored = features.run_pass(paths, labels, 96, engine, batch_size=5, mirror=True)
    np.testing.assert_array_equal(through.features, mirrored.features)
    assert not np.array_equal(plain.features, mirrored.features)


def test_a_train_process_decodes_ahead_while_importing_tensorflow(tiny_split, tmp_path,
                                                                    mobilenet_weights):
    """`transfer train` in a process of its own: its helper decodes photos while it imports
    TensorFlow; meta.json says how many the passes took from it, and the run is the same
    with decoding ahead off (TRANSFER_DECODE_AHEAD_MB=0). The genuine ImageNet weights: with
    a random base (--weights none) the two runs' metrics matched even when the helper's
    pixels were another photo's."""
    command = [sys.executable, "-m", "transfer", "train", "--base", "mobilenet", "--alpha",
               "0.25", "--image-size", "64", "--epochs", "2",
               "--no-augment", "--engine", "tf", "--no-feature-cache", "--data-dir",
               str(tiny_split), "--models-dir", str(tmp_path / "models")]
    metas, said = {}, {}
    for budget in ("768", "0"):
        out = tmp_path / f"models/ahead-{budget}"
        done = subprocess.run([*command, "--output", str(out)], capture_output=True,
                              text=True, timeout=600,
                              env={**os.environ, "TRANSFER_DECODE_AHEAD_MB": budget,
                                   "COLUMNS": "200"})
        assert done.returncode == 0, done.stderr
        metas[budget] = json.loads((out / "meta.json").read_text())
        said[budget] = done.stdout
    photos = sum(len(list((tiny_split / split).glob("*/*"))) for split in ("train", "validate"))
    if decode_ahead.available():
        assert 0 < metas["768"]["engine"]["decoded_ahead"] <= photos
    else:  # one core (or not POSIX): no helper, and the pass says so
        assert metas["768"]["engine"]["decoded_ahead"] == 0
    assert metas["0"]["engine"]["decoded_ahead"] == 0
    # the summary line says so: those photos' decoding is not in the pass's images/s
    ahead = metas["768"]["engine"]["decoded_ahead"]
    assert not ahead or (f"base {metas['768']['timings']['base_images_per_second']} images/s "
                         f"({ahead} photos decoded ahead)") in said["768"]
    assert "decoded ahead" not in said["0"]
    assert metas["768"]["metrics"] == metas["0"]["metrics"]
    assert (tmp_path / "models/ahead-768/history.csv").read_text() == (
        tmp_path / "models/ahead-0/history.csv").read_text()
