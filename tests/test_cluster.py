"""--distribute multi-worker: real worker processes on 127.0.0.1 ports, real photos.

Every test that starts workers bounds them (a kill after TIMEOUT) and sends traffic only to
127.0.0.1. The unit tests use ``--weights none``; one test uses the genuine MobileNet-0.25
weights on the cats-vs-dogs tour split.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import split_from_archive
from transfer import cluster, launch
from transfer.errors import TransferError
from transfer.settings import Augment, TrainSettings

TIMEOUT = 240  # seconds any worker process may live in these tests
FAST = ["--base", "mobilenet", "--alpha", "0.25", "--weights", "none", "--image-size", "96",
        "--no-augment", "--engine", "tf"]


# --------------------------------------------------------------------------- TF_CONFIG


def config(**parts) -> str:
    return json.dumps(parts)


GOOD = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker",
                                                                       "index": 1}}


@pytest.mark.parametrize("raw, words", [
    (None, "needs TF_CONFIG"),
    ("", "needs TF_CONFIG"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (config(cluster={"worker": ["a:1"]}), "both \"cluster\" and \"task\""),
    (config(cluster={"worker": ["a:1"], "ps": ["b:2"]}, task={"type": "worker", "index": 0}),
     "no parameter servers"),
    (config(cluster={"worker": "a:1"}, task={"type": "worker", "index": 0}), "list of"),
    (config(cluster={"worker": ["nohostport"]}, task={"type": "worker", "index": 0}),
     "list of"),
    (config(cluster={"worker": []}, task={"type": "worker", "index": 0}), "no workers"),
    # a port that is not one failed seconds later, after TensorFlow loaded, as a join timeout
    (config(cluster={"worker": ["127.0.0.1:abc"]}, task={"type": "worker", "index": 0}),
     "'127.0.0.1:abc': the port must be a number from 1 to 65535"),
    (config(cluster={"worker": ["127.0.0.1:99999"]}, task={"type": "worker", "index": 0}),
     "'127.0.0.1:99999': the port must be"),
    (config(cluster={"worker": [":2222"]}, task={"type": "worker", "index": 0}),
     "':2222': no host before the port"),
    (config(cluster={"master": ["a:1"]}, task={"type": "worker", "index": 0}),
     "cluster has master: multi-worker training uses only chief and worker tasks (no other "
     "kinds of task)"),
    (config(cluster={"worker": ["a:1"]}, task={"type": "chief", "index": 0}),
     "task.type is 'chief', but its cluster lists no chief: add its address to cluster.chief"),
    (config(cluster={"worker": ["127.0.0.1:\uff11\uff18"]}, task={"type": "worker",
                                                                "index": 0}),
     "the port must be"),  # full-width digits: Python's isdigit, not gRPC's
    (config(cluster={"worker": ["a:1", "a:1"]}, task={"type": "worker", "index": 0}),
     "twice"),
    (config(cluster={"worker": ["a:1"]}, task={"type": "evaluator", "index": 0}),
     "task.type"),
    (config(cluster={"worker": ["a:1"]}, task={"type": "worker", "index": 1}), "task.index"),
    (config(cluster={"worker": ["a:1"]}, task={"type": "worker", "index": "0"}),
     "task.index"),
    (config(cluster={"chief": ["a:1", "b:1"], "worker": ["c:1"]},
            task={"type": "worker", "index": 0}), "more than one chief"),
])
def test_tf_config_errors_are_one_line(raw, words, tmp_path):
    environ = {} if raw is None else {"TF_CONFIG": raw}
    with pytest.raises(TransferError) as info:
        cluster.read_tf_config(environ)
    message = str(info.value)
    assert words in message and "\n" not in message
    # the CLI says the same in one line, exit code 1, before TensorFlow is imported
    env = {**os.environ, "TF_CONFIG": raw or ""}
    done = subprocess.run([sys.executable, "-m", "transfer", "train", "--data-dir",
                           str(tmp_path), "--distribute", "multi-worker"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and words in done.stderr
    assert "Traceback" not in done.stderr


def test_a_lost_worker_is_told_by_the_line_that_says_what_happened():
    """TensorFlow's collective errors open with "Graph execution error:" and a node trace:
    the one line shown is the cause under them."""
    text = ("Graph execution error:\n\nDetected at node CollectiveGatherV2 defined at (most "
            "recent call last):\n  File \"cluster.py\", line 261, in run\n    sizes = f()\n"
            "Collective ops is aborted by: failed to connect to all addresses\n"
            "The error could be from a previous operation.\n"
            "\t [[{{node CollectiveGatherV2}}]] [Op:__inference_step_12]")
    assert cluster.reason(text) == ("Collective ops is aborted by: failed to connect to all "
                                    "addresses")
    assert cluster.reason("Socket closed") == "Socket closed"
    assert cluster.reason("") == "no message"
    long = "tasks are unhealthy (stopped sending heartbeats): " + ", ".join(
        f"/job:worker/replica:0/task:{i}" for i in range(6))  # cut mid-list and mid-word
    assert cluster.reason(long) == long
    assert cluster.reason("word " * 100).endswith("word ...")
    # a worker killed while the model's variables were broadcast (an eager op's error)
    eager = ("{{function_node __wrapped__CollectiveBcastSend_device_/job:worker/replica:0/task:0"
             "/device:CPU:0}} Collective ops is aborted by: Error reported from /job:worker/"
             "task:1: The following tasks are unhealthy (stopped sending heartbeats):\n"
             "/job:worker/replica:0/task:1\nThe tasks have crashed. [Op:CollectiveBcastSendV2]")
    assert cluster.reason(eager) == (
        "Collective ops is aborted by: Error reported from /job:worker/task:1: The following "
        "tasks are unhealthy (stopped sending heartbeats): /job:worker/replica:0/task:1")


def test_a_worker_lost_while_the_model_is_built_is_the_one_line_of_a_lost_worker(
        monkeypatch):
    """Under the cluster's strategy each variable is broadcast from the chief as it is made: a
    worker killed then (seen with two real workers, the other killed 0.6 s after joining)
    surfaced as "could not build MobileNet: {{function_node ...CollectiveBcastSend...}}"."""
    from types import SimpleNamespace

    from transfer import bases, phases
    from transfer.tf import tf

    broken = tf.errors.UnavailableError(None, None, (
        "{{function_node __wrapped__CollectiveBcastSend_device_/job:worker/replica:0/task:0/"
        "device:CPU:0}} Collective ops is aborted by: Error reported from /job:worker/task:1: "
        "The following tasks are unhealthy (stopped sending heartbeats):\n"
        "/job:worker/replica:0/task:1\n"))

    def build(*args, **kwargs):  # kwargs: the reporter
        raise TransferError(f"could not build MobileNet: {broken}") from broken

    monkeypatch.setattr(bases, "build", build)
    plan = SimpleNamespace(settings=SimpleNamespace(distribute="none", seed=1, weights="none"),
                           base=bases.get("mobilenet"), size=32, alpha=0.25, names=["a", "b"])
    joined = SimpleNamespace(strategy=tf.distribute.get_strategy(), timeout=10.0, kept=None)
    with pytest.raises(cluster.WorkerLost) as caught:
        phases.build_model(plan, joined)
    assert str(caught.value).startswith(
        "multi-worker training stopped during the building of the model: a worker is down or "
        "unreachable (Collective ops is aborted by: Error reported from /job:worker/task:1: "
        "The following tasks are unhealthy (stopped sending heartbeats): "
        "/job:worker/replica:0/task:1); no bundle written.")
    with pytest.raises(TransferError, match="^could not build MobileNet: {{function_node"):
        phases.build_model(plan, None)  # no cluster: the build's own error, as it was


def test_tf_config_order_puts_a_chief_first():
    raw = config(cluster={"chief": ["c:1"], "worker": ["w:1", "w:2"]},
                 task={"type": "worker", "index": 1})
    topology = cluster.read_tf_config({"TF_CONFIG": raw})
    assert topology.addresses == ("c:1", "w:1", "w:2")
    assert topology.rank == 2 and not topology.chief and topology.workers == 3
    chief = cluster.read_tf_config({"TF_CONFIG": config(
        cluster={"chief": ["c:1"], "worker": ["w:1"]}, task={"type": "chief", "index": 0})})
    assert chief.chief and chief.rank == 0
    assert cluster.read_tf_config({"TF_CONFIG": json.dumps(GOOD)}).rank == 1


# --------------------------------------------------------------------------- helpers


def start_workers(n: int, args_of, env: dict | None = None,
                  env_of=None) -> tuple[list, list]:
    """n worker processes of `transfer train <args_of(i)>` on free 127.0.0.1 ports, each
    with its own TF_CONFIG (and ``env_of(i)``'s variables); output to files. (processes,
    [log path])"""
    ports = launch.free_ports(n)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    procs, logs = [], []
    base_env = {**os.environ, **(env or {})}
    for i in range(n):
        args = args_of(i)
        log = Path(args[args.index("--output") + 1]).parent / f"worker{i}-{ports[0]}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        handle = open(log, "w")  # noqa: SIM115 (closed with the process)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "transfer", "train", *args],
            env={**base_env, **(env_of(i) if env_of else {}),
                 "TF_CONFIG": launch.tf_config(addresses, i)},
            stdout=handle, stderr=subprocess.STDOUT, text=True))
        logs.append(log)
    return procs, logs


def wait_all(procs, timeout=TIMEOUT) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes


def text(log: Path) -> str:
    return log.read_text(errors="replace")


def train_args(data: Path, output: Path, *extra) -> list[str]:
    return ["--data-dir", str(data), "--output", str(output), "--models-dir",
            str(output.parent), *FAST, *extra]


def meta_of(bundle: Path) -> dict:
    return json.loads((bundle / "meta.json").read_text())


def wait_for(predicate, procs, limit=TIMEOUT) -> bool:
    """Poll until predicate() (True) or a worker ends or the limit passes (False)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        if any(p.poll() is not None for p in procs):
            return False
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- runs


@pytest.fixture()
def pair_of_splits(tiny_split, tmp_path) -> tuple[Path, Path]:
    """The tiny real split twice: one folder per worker (as on two machines)."""
    first, second = tmp_path / "data0", tmp_path / "data1"
    shutil.copytree(tiny_split, first, ignore=shutil.ignore_patterns(".cache"))
    shutil.copytree(tiny_split, second, ignore=shutil.ignore_patterns(".cache"))
    return first, second


@pytest.mark.parametrize("more", [[], ["--train-size", "64"]], ids=["one-size", "fixres"])
def test_two_workers_match_one_and_only_the_chief_writes(pair_of_splits, tmp_path, more):
    """Two workers, each with its own copy of the photos and its own models folder: the chief
    writes the bundle (workers 2, per-worker counts); the other writes nothing, not even a
    cache. A single-worker run then finds every feature shard in the cache the two workers
    made (shards do not depend on the worker count) and reaches the same model. With a
    training size below the model's (FixRes), the training shards at 64 px and the validation
    shards at 96 px are dealt out alike."""
    data0, data1 = pair_of_splits
    out = tmp_path / "models0" / "two"
    extra = ["--feature-shard-size", "8", "--epochs", "4", "--distribute", "multi-worker",
             *more]
    procs, logs = start_workers(2, lambda i: (
        train_args(data0, out, *extra) if i == 0 else
        train_args(data1, out, *extra) + ["--models-dir", str(tmp_path / "models1")]))
    codes = wait_all(procs)
    assert codes == [0, 0], text(logs[0]) + text(logs[1])
    meta = meta_of(out)
    assert meta["workers"] == 2
    images = meta["data"]["train_images"] + meta["data"]["validate_images"]
    counts = [w["feature_images"] for w in meta["per_worker"]]
    assert sum(counts) == images == 36 and min(counts) > 0, counts
    assert meta["feature_cache"] == "miss"
    assert not (data1 / ".cache").exists(), "a worker other than the chief wrote a cache"
    assert not any((tmp_path / "models1").iterdir()) if (tmp_path / "models1").exists() else True
    assert "the chief wrote the bundle" in text(logs[1])
    # one worker, same settings: every shard is a cache hit, the same head. The same CLI, in
    # this process (its TensorFlow already loaded: a new process spent seconds importing it)
    from typer.testing import CliRunner

    from transfer.cli import app

    single = tmp_path / "models0" / "one"
    done = CliRunner().invoke(app, ["train", *train_args(data0, single, "--feature-shard-size",
                                                         "8", "--epochs", "4", *more)])
    assert done.exit_code == 0, done.output
    one = meta_of(single)
    assert one["feature_cache"] == "hit" and one["workers"] == 1
    assert one["test_time"]["train_size"] == meta["test_time"]["train_size"] == (
        64 if more else 96)
    assert one["class_names"] == meta["class_names"]
    assert abs(one["metrics"]["val_accuracy"] - meta["metrics"]["val_accuracy"]) <= 0.01
    assert one["metrics"]["val_loss"] == pytest.approx(meta["metrics"]["val_loss"], abs=1e-4)


def test_workers_that_see_different_files_stop_with_one_line(pair_of_splits, tmp_path):
    """Shards are cut by position in the file list: a worker whose copy of the photos lacks
    one file would mix the labels up. Every worker says so in one line, no bundle."""
    data0, data1 = pair_of_splits
    victim = sorted((data1 / "train" / "cats").iterdir())[0]
    victim.unlink()
    out = tmp_path / "models" / "differ"
    procs, logs = start_workers(2, lambda i: train_args(data0 if i == 0 else data1, out,
                                                        "--distribute", "multi-worker"))
    codes = wait_all(procs)
    assert codes == [1, 1], text(logs[0]) + text(logs[1])
    for log in logs:
        errors = [line for line in text(log).splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "do not see the same images" in errors[0]
        assert "worker 1 lists 23 train + 12 validate files, the chief 24 + 12" in errors[0]
    assert not out.exists()


def test_workers_started_with_other_settings_stop_with_one_line(pair_of_splits, tmp_path):
    """One model is trained: a worker given another --epochs (or learning rate) is named with
    the settings that differ, on every worker (it ended in "a worker is down or unreachable
    (Collective instance ...)", and a different learning rate went unnoticed)."""
    data0, data1 = pair_of_splits
    out = tmp_path / "models" / "settings"
    weights_file = tmp_path / "base.weights.h5"
    weights_file.write_bytes(b"not read: compared by its SHA-256 before any model is built")
    procs, logs = start_workers(2, lambda i: train_args(
        data0 if i == 0 else data1, out, "--distribute", "multi-worker",
        *(["--learning-rate", "0.01", "--weights", str(weights_file)] if i else [])),
        env_of=lambda i: {"TRANSFER_FEATURE_MEMORY_MB": "0"} if i else {})
    codes = wait_all(procs)
    assert codes == [1, 1], text(logs[0]) + text(logs[1])
    for log in logs:
        errors = [line for line in text(log).splitlines() if line.startswith("error:")]
        assert len(errors) == 1, text(log)
        assert "worker 1 was started with other settings than the chief: --learning-rate " \
               "0.01 (the chief: " in errors[0]
        assert '--weights "a file with SHA-256 ' in errors[0] and '(the chief: "none")' in \
            errors[0]  # a random base on one worker made a silently wrong model
        # the memory budget decides how the shards are cut (streamed: classes interleaved)
        assert "TRANSFER_FEATURE_MEMORY_MB 0 (the chief: 1073741824)" in errors[0], errors[0]
    assert not out.exists()


def test_two_workers_fine_tune_in_a_custom_loop(tiny_split, tmp_path):
    """The fine-tune route across two workers: the chief's head is shared, then base and head
    train synchronously (each worker reads half of the images per step), every worker leaving
    out the photos the chief's feature pass could not read."""
    data = tmp_path / "data"
    shutil.copytree(tiny_split, data, ignore=shutil.ignore_patterns(".cache"))
    for name in ("train/cats/000", "train/cats/zzz", "validate/dogs/zzz"):  # photos cut short
        whole = sorted((data / name).parent.iterdir())[0].read_bytes()
        (data / f"{name}-cut-short.jpg").write_bytes(whole[:len(whole) // 3])
    out = tmp_path / "models" / "ft"
    temp = tmp_path / "temp"  # the workers' temp folder
    temp.mkdir()
    board = tmp_path / "tb"
    procs, logs = start_workers(2, lambda i: train_args(
        data, out, "--epochs", "2", "--fine-tune", "10", "--fine-tune-epochs", "2",
        "--fine-tune-lr", "1e-4", "--distribute", "multi-worker", "--tensorboard", str(board)),
        env={"TMPDIR": str(temp)})
    codes = wait_all(procs)
    assert codes == [0, 0], text(logs[0]) + text(logs[1])
    # a worker ends with os._exit, past the atexit handlers that delete TensorFlow
    # autograph's generated modules: they were left in the temp folder
    assert list(temp.iterdir()) == []
    meta = meta_of(out)
    loop = meta["training"]["custom_loop"]
    assert loop["workers"] == 2 and loop["global_batch"] == 64 and loop["resumed_from_epoch"] == 0
    # each worker's own count of the images its slices held (computed apart from the loop,
    # this passed with every worker training on all 24)
    assert [w["train_images"] for w in meta["per_worker"]] == [12, 12]
    assert [w["validate_images"] for w in meta["per_worker"]] == [6, 6]
    # the photos cut short, left out by every worker: the worker beside the chief (which alone
    # read the features) had no word of them, and sliced a list of 26 (13 photos, another
    # share of them than the chief's slices left it: some trained twice, some never)
    assert loop["images_read"] == {"train": [12, 12], "validate": [6, 6]}
    assert (meta["data"]["train_images"], meta["data"]["validate_images"]) == (24, 12)
    assert sorted(Path(s["file"]).name for s in meta["skipped"]) == [
        "000-cut-short.jpg", "zzz-cut-short.jpg", "zzz-cut-short.jpg"]
    # the loop read through tf.data: meta.json said "generator" (--pipeline's default)
    assert meta["pipeline"] == "tfdata", meta["pipeline"]
    for log in logs:  # the single-process run's line, which this route did not say
        said = text(log)
        assert said.count("fine-tuning the top 10 layers of MobileNet (") == 1, said
    rows = [line.split(",") for line in (out / "history.csv").read_text().splitlines()]
    phases = [row[-1] for row in rows[1:]]
    assert phases.count("fine-tune") == 2 and phases[0] == "head"
    # the chief logs the loop's epochs as on one machine (it wrote the head's only)
    from tests.test_training import tensorboard_scalars

    column = rows[0].index("val_loss")
    assert tensorboard_scalars(board / "fine-tune/validation", "epoch_loss") == pytest.approx(
        [float(row[column]) for row in rows[1:] if row[-1] == "fine-tune"], rel=1e-5)
    assert not (out.parent / f".{out.name}.checkpoints").exists(), "checkpoints left behind"
    result = meta["training"]["fine_tune_result"]  # the chief measured both models
    assert math.isfinite(result["frozen"]["val_loss"])
    kept = result["fine_tuned" if result["kept"] else "frozen"]
    assert meta["metrics"]["val_loss"] == pytest.approx(kept["val_loss"], abs=1e-6)


def test_two_workers_undo_a_fine_tuning_that_raised_the_validation_loss(tiny_split, tmp_path,
                                                                         mobilenet_weights):
    """As on one machine: a rate of 1 wrecks the top layers; the chief, which measured the
    frozen-base model (genuine weights) before fine-tuning, the other worker waiting, puts its
    weights back, warns, and saves that model: the saved model scores on the validation photos what
    meta.json says, the frozen model's loss."""
    from tests.test_training import binary_metrics, validation_pixels
    from transfer import bundle

    data = tmp_path / "data"
    shutil.copytree(tiny_split, data, ignore=shutil.ignore_patterns(".cache"))
    out = tmp_path / "models" / "ft"
    procs, logs = start_workers(2, lambda i: train_args(
        data, out, "--weights", "imagenet", "--epochs", "2", "--fine-tune", "10",
        "--fine-tune-epochs", "1", "--fine-tune-lr", "1.0", "--distribute", "multi-worker"))
    codes = wait_all(procs)
    assert codes == [0, 0], text(logs[0]) + text(logs[1])
    meta = meta_of(out)
    result = meta["training"]["fine_tune_result"]
    assert result["kept"] is False, result
    assert result["fine_tuned"]["val_loss"] > result["frozen"]["val_loss"]
    assert meta["metrics"]["val_loss"] == pytest.approx(result["frozen"]["val_loss"], abs=1e-6)
    assert "fine-tuning did not lower the validation loss" in text(logs[0])
    model, _ = bundle.load(out)
    pixels, labels = validation_pixels(data, 96)
    accuracy, loss = binary_metrics(model.predict(pixels, verbose=0), labels)
    assert loss == pytest.approx(result["frozen"]["val_loss"], abs=1e-4)
    assert accuracy == meta["metrics"]["val_accuracy"]


@pytest.fixture()
def slow_split(kaggle_zip, tmp_path) -> Path:
    """Enough real photos that the feature pass of two workers lasts several seconds."""
    return split_from_archive(kaggle_zip, tmp_path / "slow", 120, 40)


def fault_in_the_feature_pass(split: Path, out: Path, signum: int, worker_timeout: str):
    """Two workers start the feature pass (shards of 16); once the chief has cached two
    shards, worker 1 gets ``signum``. (chief's exit code, seconds it took to stop after the
    signal, chief's log, the command's arguments, the cache folder)"""
    cache = split / ".cache" / "features"
    args = train_args(split, out, "--image-size", "160", "--feature-shard-size", "16",
                      "--epochs", "2", "--distribute", "multi-worker", "--worker-timeout",
                      worker_timeout)
    procs, logs = start_workers(2, lambda i: args)
    try:
        assert wait_for(lambda: cache.is_dir() and len(list(cache.glob("*.npz"))) >= 2,
                        procs), "the pass never started: " + text(logs[0])
        procs[1].send_signal(signum)
        sent = time.monotonic()
        code = procs[0].wait(timeout=150)
        stopped_after = time.monotonic() - sent
    finally:
        procs[1].send_signal(signal.SIGKILL)
        wait_all(procs, timeout=5)
    log = text(logs[0])
    print(f"the chief stopped {stopped_after:.1f} s after the signal")
    # within --worker-timeout and its margins (3 of the slowest shard's time, a heartbeat):
    # the default 60 s in place of the option's 10 is past this
    assert code != 0 and stopped_after < float(worker_timeout) + 25, (code, stopped_after, log)
    assert "multi-worker training stopped during the feature pass" in log
    assert f"to resume (the features cached in {cache} are kept)" in log, log
    assert "Traceback" not in log
    assert len([line for line in log.splitlines() if line.startswith("error:")]) == 1
    assert not out.exists(), "a bundle was written"
    return args, cache


def test_a_killed_worker_stops_the_chief_and_a_rerun_resumes_the_feature_pass(
        slow_split, tmp_path, monkeypatch):
    temp = tmp_path / "tmp"  # the workers' temporary folder
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    out = tmp_path / "models" / "killed"
    args, cache = fault_in_the_feature_pass(slow_split, out, signal.SIGKILL, "30")
    done_before = len(list(cache.glob("*.npz")))
    assert 2 <= done_before < 20  # 240 + 80 images in shards of 16
    # the killed worker could not remove its temporary folder; the chief removed its own
    left = [p.name for p in temp.iterdir()]
    assert len(left) == 1 and left[0].startswith("transfer-worker-"), left
    # the same command again on both workers: the cached shards are not computed again
    procs, logs = start_workers(2, lambda i: args)
    assert wait_all(procs) == [0, 0], text(logs[0]) + text(logs[1])
    assert list(temp.iterdir()) == []  # the killed one's swept by the next run, theirs removed
    meta = meta_of(out)
    computed = sum(w["feature_images"] for w in meta["per_worker"])
    assert computed <= 320 - 16 * done_before + 16
    # the shards the first run finished were read, not computed: said so (it said "miss")
    assert meta["feature_cache"] == (f"partial: {320 - computed} of 320 features read, "
                                     f"{computed} computed") and meta["workers"] == 2


def test_a_hung_worker_stops_the_chief_within_the_timeout(slow_split, tmp_path):
    """A worker that stops answering (SIGSTOP: alive, silent) is a failure too: the chief
    stops with one line within --worker-timeout and its margins, writing no bundle."""
    fault_in_the_feature_pass(slow_split, tmp_path / "models" / "hung", signal.SIGSTOP, "10")


def test_a_worker_that_never_comes_is_one_line_after_the_start_up_wait(tiny_split,
                                                                      tmp_path):
    """Only worker 0 of 2 starts: after TRANSFER_STARTUP_SECONDS (TensorFlow alone would wait
    forever, deaf to SIGTERM) it is stopped with one line naming the wait. (A wait of 2 s: no
    other worker is ever started, so a longer one only made the test wait.)"""
    out = tmp_path / "models" / "alone"
    ports = launch.free_ports(2)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "transfer", "train", *train_args(tiny_split, out, "--distribute",
                                                                "multi-worker")],
        env={**os.environ, "TRANSFER_STARTUP_SECONDS": "2",
             "TF_CONFIG": launch.tf_config([f"127.0.0.1:{p}" for p in ports], 0)},
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and time.monotonic() - started < 90
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "did not all join within 2 s" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def waiting_worker(data: Path, out: Path, log: Path, addresses: list, rank: int,
                   startup: str = "60") -> subprocess.Popen:
    """One worker of a 2-worker TF_CONFIG, alone (Ctrl-C's default kept: not ignored)."""
    handle = open(log, "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "transfer", "train",
         *train_args(data, out, "--distribute", "multi-worker")],
        env={**os.environ, "TRANSFER_STARTUP_SECONDS": startup,
             "TF_CONFIG": launch.tf_config(addresses, rank)},
        stdout=handle, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


# the chief (listening) and a worker (calling it), each with one of the two signals: each
# case starts TensorFlow in a process of its own
@pytest.mark.parametrize("signum, code, rank", [("SIGTERM", 143, 0), ("SIGINT", 130, 1)])
def test_a_worker_waiting_for_the_others_stops_on_a_signal(tiny_split, tmp_path, signum,
                                                           code, rank):
    """SIGTERM and Ctrl-C did not stop a worker waiting for the others to join (TensorFlow's
    wait holds the interpreter, and installs its own SIGTERM handler): only kill -9 or the
    start-up wait's end did. Now it stops at once, with one line and exit 143 / 130."""
    log = tmp_path / "alone.log"
    out = tmp_path / "models" / "alone"
    proc = waiting_worker(tiny_split, out, log, [f"127.0.0.1:{p}" for p in
                                                 launch.free_ports(2)], rank)
    try:
        assert wait_for(lambda: "waiting for the others" in text(log), [proc], 120), text(log)
        time.sleep(2)  # well inside the wait
        proc.send_signal(getattr(signal, signum))
        stopped = time.monotonic()
        code_seen = wait_all([proc], timeout=20)[0]
    finally:
        proc.kill()
    said = text(log)
    # exit code 130/143, or ended by the signal itself (-2/-15), which a shell reports as the
    # same 130/143: seen once in a loaded run, the signal re-sent (errors.on_unraisable) landing
    # after the line was said
    assert code_seen in (code, -getattr(signal, signum)), (code_seen, said)
    assert time.monotonic() - stopped < 15, said
    errors = [line for line in said.splitlines() if line.startswith("error:")]
    assert errors == ["error: interrupted while waiting for the other workers"], said
    assert "Traceback" not in said and not out.exists()


def test_a_start_up_timeout_inside_tensorflow_ends_with_exit_code_1(tiny_split, tmp_path):
    """Worker 1 told "go" by its chief, which then never joins TensorFlow's cluster: after
    the start-up wait the line was said, then the process was SIGKILLed (exit 137, "Killed");
    the README says exit code 1."""
    import socket as sockets

    ports = launch.free_ports(2)
    chief = sockets.create_server(("127.0.0.1", ports[0]))
    chief.settimeout(120)
    log = tmp_path / "worker1.log"
    proc = waiting_worker(tiny_split, tmp_path / "models" / "w1", log,
                          [f"127.0.0.1:{p}" for p in ports], 1, startup="5")
    try:
        conn, _ = chief.accept()  # a chief that says go (the old worker read nothing)
        conn.settimeout(5)
        with contextlib.suppress(OSError):
            conn.recv(64)
            conn.sendall(b"go\n")
        conn.close()
        chief.close()
        code = wait_all([proc], timeout=90)[0]
    finally:
        proc.kill()
        chief.close()
    said = text(log)
    assert code == 1, said
    errors = [line for line in said.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "did not all join within 5 s" in errors[0], said


def test_a_worker_lost_as_the_training_loop_starts_is_one_line(tiny_split, tmp_path):
    """Worker 1 gone just as the distributed loop begins (seen with a real kill -9 1.6 s
    after joining): the chief's optimizer, broadcast from it as it is made, failed outside
    the loop's guard, and the chief printed a 70-line traceback. It is the lost worker's one
    line. Worker 1 is made to end there (os._exit, as a SIGKILL) by a sitecustomize."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import json, os\n"
        "if json.loads(os.environ.get('TF_CONFIG', '{}')).get('task', {}).get('index') == 1:\n"
        "    import transfer.phases\n"
        "    transfer.phases.fit_distributed = lambda *a, **k: os._exit(137)\n")
    out = tmp_path / "models" / "lost"
    args = [a for a in train_args(tiny_split, out, "--augment-copies", "0", "--epochs", "2",
                                  "--distribute", "multi-worker", "--worker-timeout", "10")
            if a != "--no-augment"]  # augmented on the fly: the end-to-end loop
    procs, logs = start_workers(2, lambda i: args, {"PYTHONPATH": str(hook)})
    codes = wait_all(procs)
    log = text(logs[0])
    assert codes[1] == 137, text(logs[1])
    assert codes[0] == 1 and "Traceback" not in log, log
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: multi-worker training stopped during the start of train: a worker is down or "
        "unreachable ("), log
    assert not out.exists()


def test_a_class_left_too_small_stops_every_worker_with_the_chiefs_line(tiny_split, tmp_path):
    """A class whose photos are all truncated JPEGs passes the header check and fails in the
    feature pass; only the chief checks what is left. It stopped with the right line, but the
    other worker said a worker was down and that the same command again would do (it fails
    again). Every worker now says the chief's line."""
    data = tmp_path / "data"
    shutil.copytree(tiny_split, data)
    photo = next((data / "train" / "cats").iterdir()).read_bytes()
    for part, count in (("train", 2), ("validate", 1)):
        (data / part / "birds").mkdir()
        for i in range(count):
            (data / part / "birds" / f"b{i}.jpg").write_bytes(photo[:700])
    out = tmp_path / "models" / "birds"
    procs, logs = start_workers(2, lambda i: train_args(data, out, "--distribute",
                                                        "multi-worker", "--worker-timeout", "30"))
    codes = wait_all(procs)
    lines = [[line for line in text(log).splitlines() if line.startswith("error:")]
             for log in logs]
    assert codes == [1, 1], (text(logs[0]), text(logs[1]))
    assert lines[0] == [line for line in lines[0] if line.startswith(
        "error: too few usable images after skipping 3 unreadable files (birds: 0 usable")]
    assert len(lines[0]) == 1 and lines[1] == [
        lines[0][0].replace("error: ", "error: the chief stopped: ", 1)], lines
    assert not out.exists()


def test_a_killed_worker_during_fine_tune_stops_the_chief_and_a_rerun_resumes_from_the_checkpoint(  # noqa: E501
        slow_split, tmp_path):
    """Worker 1 killed once the first fine-tuning epoch is checkpointed: the chief stops with
    one line, the checkpoint kept; the same command again resumes after that epoch. Three
    fine-tuning epochs (each some seconds on the 240 photos): the kill lands in the second,
    and the rerun trains the third and last."""
    out = tmp_path / "models" / "ft-killed"
    checkpoint = out.parent / f".{out.name}.checkpoints" / "fine-tune.npz"
    args = train_args(slow_split, out, "--epochs", "2", "--fine-tune", "20",
                      "--fine-tune-epochs", "3", "--fine-tune-lr", "1e-4", "--patience", "20",
                      "--distribute", "multi-worker", "--worker-timeout", "30")
    procs, logs = start_workers(2, lambda i: args)
    try:
        assert wait_for(checkpoint.is_file, procs), "no checkpoint: " + text(logs[0])
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        code = procs[0].wait(timeout=150)
        stopped_after = time.monotonic() - killed
    finally:
        wait_all(procs, timeout=5)
    log = text(logs[0])
    assert code != 0 and stopped_after < 120, (code, stopped_after, log)
    assert "multi-worker training stopped" in log and "Traceback" not in log
    assert not out.exists() and checkpoint.is_file(), "no bundle; the checkpoint is kept"
    # a mark in the checkpoint's model: the head's bias (the first array of shape (1,): the
    # model's weights come first, then the optimizer's, then the best weights) at 50, every
    # photo a dog. Resumed, the next epoch trains from it (its loss about 8, cats clipped at
    # 1e-7): the model's weights are the checkpoint's, not the frozen head's (which passed)
    with np.load(checkpoint) as data:
        arrays = [data[f"arr_{i}"] for i in range(len(data.files) - 1)]
        note = data["note"]
    bias = next(i for i, a in enumerate(arrays) if a.shape == (1,))
    arrays[bias] = np.full((1,), 50.0, arrays[bias].dtype)
    np.savez(checkpoint, *arrays, note=note)
    procs, logs = start_workers(2, lambda i: args)
    assert wait_all(procs) == [0, 0], text(logs[0]) + text(logs[1])
    loop = meta_of(out)["training"]["custom_loop"]
    assert "resumed after epoch" in text(logs[0])
    rows = [line.split(",") for line in (out / "history.csv").read_text().splitlines()]
    tuned = [row for row in rows[1:] if row[-1] == "fine-tune"]
    # killed in its second epoch (each step waits for every worker): resumed after the first
    assert loop["resumed_from_epoch"] == 1 and len(tuned) == 3, (loop, tuned)
    assert float(tuned[1][rows[0].index("loss")]) > 5, tuned
    assert not checkpoint.parent.exists()


def test_genuine_weights_two_workers_on_the_tour_split(kaggle_zip, mobilenet_weights,
                                                      tmp_path):
    """The issue's check: the tour split (1000 + 400 photos per class), two workers, the
    default frozen recipe with the genuine MobileNet-0.25 weights: both exit 0, a normal
    bundle with validation accuracy >= 0.93 and workers 2."""
    data = split_from_archive(kaggle_zip, tmp_path / "tour", 1000, 400)
    out = tmp_path / "models" / "m"
    code = launch.run_local(2, ["train", "--base", "mobilenet", "--alpha", "0.25",
                                "--data-dir", str(data), "--output", str(out),
                                "--models-dir", str(out.parent),
                                "--distribute", "multi-worker"])
    assert code == 0
    meta = meta_of(out)
    assert meta["workers"] == 2 and meta["metrics"]["val_accuracy"] >= 0.93
    assert meta["data"]["counts"]["train"] == {"cats": 1000, "dogs": 1000}
    assert sum(w["feature_images"] for w in meta["per_worker"]) == 2000 + 800
    assert all(w["feature_images"] > 0 for w in meta["per_worker"])
    assert (out / "model.keras").is_file() and (out / "report.html").is_file()


def test_the_local_launcher_runs_two_workers_and_passes_on_a_failure(tmp_path):
    """scripts/multiworker_local.sh is `python -m transfer.launch`: a bad command fails on
    both workers and the launcher returns its code."""
    assert launch.main([]) == 2 and launch.main(["x"]) == 2
    code = launch.run_local(2, ["train", "--data-dir", str(tmp_path / "none"),
                                "--distribute", "multi-worker"], grace=30)
    assert code == 1
    assert json.loads(launch.tf_config(["127.0.0.1:1", "127.0.0.1:2"], 1))["task"] == {
        "type": "worker", "index": 1}


def test_the_launcher_notices_a_failed_worker_while_the_chief_runs(monkeypatch):
    """Only the chief was polled while it ran (`any` stops at its first True): a worker that
    failed at start-up went unnoticed, the grace period never began, and the launcher waited
    for the chief's own start-up watchdog (300 s) and returned its 137. Now the failure is
    seen, the chief is killed after the grace period, and the exit code is the worker's."""
    import sys

    worker = ("import json, os, sys, time; "
              "i = json.loads(os.environ['TF_CONFIG'])['task']['index']; "
              "sys.exit(3) if i == 1 else time.sleep(120)")
    monkeypatch.setattr(launch, "command", lambda args: [sys.executable, "-c", worker])
    started = time.monotonic()
    assert launch.run_local(2, [], grace=1) == 3
    assert time.monotonic() - started < 60


def test_a_worker_that_cannot_start_takes_the_started_ones_with_it(monkeypatch):
    """The second worker's Popen failing (no memory, no process left) left the first running,
    waiting for it until its start-up watchdog (300 s), after the launcher had ended."""
    import sys

    started = []
    real = subprocess.Popen

    def second_fails(*args, **kwargs):
        if started:
            raise OSError(12, "Cannot allocate memory")
        started.append(real([sys.executable, "-c", "import time; time.sleep(120)"]))
        return started[-1]

    monkeypatch.setattr(launch.subprocess, "Popen", second_fails)
    with pytest.raises(OSError, match="Cannot allocate memory"):
        launch.start(2, ["train"])
    assert started[0].poll() == -signal.SIGKILL


def test_the_launcher_says_which_worker_failed_first_and_which_it_killed(monkeypatch,
                                                                        capsys):
    """Worker 1 killed (the OOM killer), the chief still waiting for it: after the grace
    period the launcher killed the chief, then said "worker 0 (the chief) was killed by
    SIGKILL" first, as if the chief had crashed. Now the worker that failed is said first and
    the chief is said killed by the launcher."""
    import sys

    worker = ("import json, os, signal, time; "
              "i = json.loads(os.environ['TF_CONFIG'])['task']['index']; "
              "os.kill(os.getpid(), signal.SIGKILL) if i == 1 else time.sleep(120)")
    monkeypatch.setattr(launch, "command", lambda args: [sys.executable, "-c", worker])
    assert launch.run_local(2, [], grace=1) == 137
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[launch]")]
    assert said == ["[launch] worker 1 was killed by SIGKILL",
                    "[launch] worker 0 (the chief) had not stopped 1 s after worker 1 failed: "
                    "killed by the launcher"]


def test_the_launcher_adds_multi_worker_and_refuses_another_strategy(monkeypatch, capsys):
    """Without --distribute multi-worker, N separate trainings raced for one bundle (and
    wrote models/x and models/x-2, exit 0)."""
    ran, graces = [], []
    monkeypatch.setattr(launch, "run_local",
                        lambda n, args, grace: ran.append(args) or graces.append(grace) or 0)
    assert launch.main(["2", "--", "train", "--output", "m"]) == 0
    assert launch.main(["2", "train", "--distribute=multi-worker"]) == 0
    assert ran == [["train", "--output", "m", "--distribute", "multi-worker"],
                   ["train", "--distribute=multi-worker"]]
    assert launch.main(["2", "train", "--distribute", "mirrored"]) == 2
    assert "not --distribute mirrored" in capsys.readouterr().err and len(ran) == 2
    # the option without its value: each worker said so, the launcher's own addition as the
    # value it took ("it took the next word, --distribute")
    for words in (["--distribute"], ["--distribute", "--epochs", "3"]):
        assert launch.main(["2", "--", "train", *words]) == 2 and len(ran) == 2
        assert capsys.readouterr().err == ("error: --distribute has no value; the launcher runs "
                                           "--distribute multi-worker (added when not given)\n")
    # another command has no --distribute: each worker said so, the same line twice
    assert launch.main(["2", "--", "predict", "foo.jpg"]) == 2 and len(ran) == 2
    assert capsys.readouterr().err == ("error: the launcher runs `transfer train` on several "
                                       "workers, not `transfer predict`\n")
    assert launch.main(["2", "--verbose", "train"]) == 0 and len(ran) == 3
    # a long --worker-timeout: the survivors get the time to notice and say so (150 s killed
    # a chief waiting out --worker-timeout 300 before its one line)
    assert launch.main(["2", "train", "--worker-timeout", "300"]) == 0
    assert launch.main(["2", "train", "--worker-timeout=10"]) == 0
    assert graces == [launch.GRACE_SECONDS] * 3 + [630.0, launch.GRACE_SECONDS]


def test_the_launcher_says_a_worker_killed_by_a_signal(tmp_path, monkeypatch, capsys):
    """A chief killed by SIGKILL (the OOM killer): the launcher said nothing and exited 247
    (sys.exit(-9)); now it says which worker, and exits 137 as a shell would."""
    import sys

    monkeypatch.setattr(launch, "command", lambda args: [
        sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert launch.run_local(2, [], grace=5) == 137
    err = capsys.readouterr().err
    assert "[launch] worker 0 (the chief) was killed by SIGKILL" in err
    assert "[launch] worker 1 was killed by SIGKILL" in err


@pytest.mark.parametrize("signum, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_the_launcher_passes_a_stop_on_to_its_workers(tmp_path, signum, code):
    """SIGTERM to the launcher alone left both workers running as orphans (the chief went on
    to write its bundle); Ctrl-C printed a traceback and SIGKILLed them. Now the signal is
    passed on, the workers stop with their own clean-up, and the launcher exits 130/143."""
    import signal
    import subprocess
    import sys

    pids = tmp_path / "pids"
    pids.mkdir()
    worker = ("import os, pathlib, signal, sys, time; "  # stops on Ctrl-C as transfer does
              "signal.signal(signal.SIGINT, lambda *a: sys.exit(130)); "
              f"pathlib.Path({str(pids)!r}, str(os.getpid())).touch(); time.sleep(120)")
    script = ("import sys; from transfer import launch; "
              f"launch.command = lambda args: [sys.executable, '-c', {worker!r}]; "
              "sys.exit(launch.run_local(2, []))")
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert wait_for(lambda: len(list(pids.iterdir())) == 2, [proc], 60), "no workers"
        proc.send_signal(getattr(signal, signum))
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code and "Traceback" not in err, err
    for pid in (int(p.name) for p in pids.iterdir()):
        with pytest.raises(ProcessLookupError):  # reaped by the launcher: no orphan left
            os.kill(pid, 0)


def test_a_terminals_ctrl_c_reaches_each_worker_once(tmp_path):
    """A terminal's Ctrl-C goes to the whole foreground process group: the workers (in the
    launcher's group) got it, then the launcher's own SIGINT 0.2 s later, in the middle of
    their clean-up (a traceback and exit 1 from a worker that had joined its cluster). Each
    worker is in a session of its own and hears it once, from the launcher."""
    import signal
    import subprocess
    import sys

    heard = tmp_path / "heard"
    heard.mkdir()
    worker = ("import os, pathlib, signal, sys, time\n"
              f"mine = pathlib.Path({str(heard)!r}, str(os.getpid()))\n"
              "mine.write_text('')\n"
              "def stop(*a):\n"
              "    mine.write_text(mine.read_text() + 'INT ')\n"
              "    time.sleep(1.5)  # its clean-up\n"
              "    sys.exit(130)\n"
              "signal.signal(signal.SIGINT, stop)\n"
              "time.sleep(120)\n")
    script = ("import sys; from transfer import launch; "
              f"launch.command = lambda args: [sys.executable, '-c', {worker!r}]; "
              "sys.exit(launch.run_local(2, []))")
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group, as a terminal's job
    try:
        assert wait_for(lambda: len(list(heard.iterdir())) == 2, [proc], 60), "no workers"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert [p.read_text() for p in heard.iterdir()] == ["INT "] * 2


def test_the_local_script_runs_the_workers_in_the_callers_folder(tmp_path):
    """scripts/multiworker_local.sh from one's own project: `--data-dir mine` is that
    project's mine/ (the script changed into the repository for good, so it was "no data
    folder mine" there)."""
    import subprocess

    script = Path(__file__).parent.parent / "scripts" / "multiworker_local.sh"
    (tmp_path / "mine").mkdir()
    done = subprocess.run([str(script), "2", "--", "train", "--data-dir", "mine",
                           "--distribute", "multi-worker"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("mine has no class subfolders") == 2, done.stderr  # both workers


# --------------------------------------------------------------------------- memory


def make_photos(folder: Path, per_class: int, seed: int = 0) -> None:
    """Small generated JPEGs in two class folders (bright vs dark, with noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, level in (("bright", 170), ("dark", 80)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(level, 40, (32, 32, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(folder / label / f"{i}.jpg", quality=90)


def _originals():
    from transfer import phases

    return phases.extract_features, phases.train_head


ORIGINAL = _originals()


def peak_features_memory(data: Path, tmp_path: Path, name: str, budget_mb: str,
                         monkeypatch) -> tuple[int, dict]:
    """Peak bytes Python allocated (numpy included) during a run's feature pass and head."""
    from transfer import phases, training

    monkeypatch.setenv("TRANSFER_FEATURE_MEMORY_MB", budget_mb)
    settings = TrainSettings(data_dir=data, base="vgg16", weights="none",
                             image_size=32, augment=Augment(enabled=False), engine="tf",
                             epochs=4, feature_shard_size=64, feature_cache=False,
                             output=tmp_path / name, models_dir=tmp_path)
    peaks = {}
    real_extract, real_head = ORIGINAL[0], ORIGINAL[1]

    def traced(fn, key):
        def run(*args, **kwargs):
            tracemalloc.start()
            try:
                return fn(*args, **kwargs)
            finally:
                peaks[key] = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
        return run

    monkeypatch.setattr(phases, "extract_features", traced(real_extract, "pass"))
    monkeypatch.setattr(phases, "train_head", traced(real_head, "head"))
    result = training.train(settings)
    return max(peaks.values()), result.meta


def test_features_beyond_memory_stream_from_shards_with_bounded_memory(tmp_path, monkeypatch):
    """VGG16's features are 512 floats (2 KB) an image. A run whose features exceed its memory
    budget keeps them in shard files (64 images each) and trains the head shard by shard: from
    500 to 2000 generated photos its peak memory grows by the file list only (under a fifth
    of the 3 MB of features added), while a run of the same 2000 photos holding their 4 MB of
    features in memory peaks above the streamed run by more than those 3 MB. (2000 photos, not
    2500: VGG16's pass is most of the test's time. The file list adds about 110 bytes an
    image, give or take 100 KB from run to run: 2000 keeps the growth well under its bound;
    1500 came within 140 KB of it. The in-memory margin is the 500 photos' 1 MB, unchanged.)
    Four head epochs: two reached 0.9 with 2500 photos, not with fewer."""
    warm, small, large = tmp_path / "tiny", tmp_path / "small", tmp_path / "large"
    make_photos(warm, 50, seed=2)
    make_photos(small, 250)
    make_photos(large, 1000, seed=1)
    shard = 64 * 512 * 4
    added = 1500 * 512 * 4
    # a first run pays for what a process does once (imports, caches): not measured
    peak_features_memory(warm, tmp_path, "warm", "0", monkeypatch)
    peak_small, _ = peak_features_memory(small, tmp_path, "s", "0", monkeypatch)
    peak_large, meta = peak_features_memory(large, tmp_path, "l", "0", monkeypatch)
    assert meta["data"]["train_images"] + meta["data"]["validate_images"] == 2000
    assert meta["metrics"]["val_accuracy"] > 0.9, ("bright vs dark is learnable from shards",
                                                   meta["metrics"])
    memory_large, meta_memory = peak_features_memory(large, tmp_path, "ml", "1024",
                                                     monkeypatch)
    print(f"peaks: streamed {peak_small} -> {peak_large}, in memory {memory_large} "
          f"(features added {added}, shard {shard})")
    assert memory_large > peak_large + added, "the measurement sees features in memory"
    # what grows is the file list (a path and a label per image), not the features
    assert peak_large - peak_small < 0.2 * added, "streamed memory grew with the features"
    assert abs(meta["metrics"]["val_accuracy"] - meta_memory["metrics"]["val_accuracy"]) < 0.05


def test_a_worker_without_a_shard_waits_for_the_chief_converting_its_base(slow_split,
                                                                          tmp_path):
    """One shard for two workers (more workers than shards): the idle worker gave up after
    --worker-timeout while the chief still converted its base to TFLite and ran the shard
    ("a worker did not answer within 3 s"), and every rerun failed the same way. It now waits
    as for the chief's head; the run completes. So does a worker with a small shard and no
    conversion to make (a base converted before, or TensorFlow): it went by its own shard's
    seconds, in the first round, while the chief converted."""
    home = tmp_path / "keras-home"  # a fresh one: the conversion is not cached, it takes seconds
    home.mkdir()
    out = tmp_path / "models" / "one-shard"
    # train: a shard of 216 photos (the chief's) and one of 24 (worker 1's, on TensorFlow);
    # validate: one shard of 80 (the chief's), worker 1 idle
    args = train_args(slow_split, out, "--image-size", "176", "--feature-shard-size", "216",
                      "--epochs", "2", "--distribute", "multi-worker", "--worker-timeout", "3")
    procs, logs = start_workers(2, lambda i: [*args, "--engine", ("tflite", "tf")[i]],
                                env={"KERAS_HOME": str(home)})
    assert wait_all(procs) == [0, 0], text(logs[0]) + text(logs[1])
    meta = meta_of(out)
    assert meta["workers"] == 2 and meta["engine"]["conversion_seconds"] > 3
    assert [w["feature_images"] for w in meta["per_worker"]] == [296, 24]


def killed_when(args: list[str], out: Path, checkpoint: Path, ready, ended: str) -> None:
    """Start two workers with ``args``; once the chief's ``checkpoint`` holds a note for which
    ``ready(note)`` is true, kill both (SIGKILL). Fails, saying ``ended``, when the run ended
    (or wrote its bundle ``out``) first."""
    def noted() -> bool:
        try:
            with np.load(checkpoint) as data:
                note = json.loads(str(data["note"]))
        except (OSError, ValueError, KeyError):  # not there yet, or being replaced
            return False
        return ready(note)

    procs, logs = start_workers(2, lambda i: args)
    try:
        caught = wait_for(noted, procs, limit=150)
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
    finally:
        wait_all(procs, timeout=5)
    if not caught or out.exists():
        pytest.fail(f"{ended}: " + text(logs[0])[-2000:])


def test_a_fine_tuning_stopped_early_stays_stopped_when_resumed(slow_split, tmp_path):
    """Both workers killed after early stopping had ended the fine-tuning (its last checkpoint
    says so) but before the bundle was written: the rerun said "resumed after epoch 2" and
    trained a third fine-tuning epoch, which the run never interrupted does not."""
    out = tmp_path / "models" / "ft-stopped"
    checkpoint = out.parent / f".{out.name}.checkpoints" / "fine-tune.npz"
    args = train_args(slow_split, out, "--epochs", "2", "--fine-tune", "20",
                      "--fine-tune-epochs", "6", "--fine-tune-lr", "0.5", "--patience", "1",
                      "--distribute", "multi-worker", "--worker-timeout", "30")

    killed_when(args, out, checkpoint, lambda note: note["wait"] >= 1,
                "the run ended before the test could stop it after its early stop")
    with np.load(checkpoint) as data:
        stopped_at = json.loads(str(data["note"]))["epoch"]
    procs, logs = start_workers(2, lambda i: args)
    assert wait_all(procs) == [0, 0], text(logs[0]) + text(logs[1])
    assert f"resumed after epoch {stopped_at}" in text(logs[0])
    history = (out / "history.csv").read_text().splitlines()[1:]
    assert sum(line.endswith("fine-tune") for line in history) == stopped_at
    # each worker's slices, though this run trained and validated nothing more (counted when
    # validating: 0 and 0)
    per_worker = meta_of(out)["per_worker"]
    assert [(w["train_images"], w["validate_images"]) for w in per_worker] == [(120, 40)] * 2


def test_a_worker_whose_port_is_taken_says_so(tiny_split, tmp_path):
    """Another program listening on the chief's port (or two workers given the same task
    index) was "the 2 workers of TF_CONFIG did not all join ... start the same command on
    every worker", which sends the user looking for a worker that is not missing."""
    import socket as sockets

    taken = sockets.socket(sockets.AF_INET, sockets.SOCK_STREAM)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        addresses = [f"127.0.0.1:{port}", f"127.0.0.1:{launch.free_ports(1)[0]}"]
        out = tmp_path / "models" / "taken"
        log = tmp_path / "chief.log"
        with open(log, "w") as handle:
            chief = subprocess.Popen(
                [sys.executable, "-m", "transfer", "train",
                 *train_args(tiny_split, out, "--distribute", "multi-worker")],
                env={**os.environ, "TF_CONFIG": launch.tf_config(addresses, 0),
                     "TRANSFER_STARTUP_SECONDS": "60"},
                stdout=handle, stderr=subprocess.STDOUT, text=True)
            code = wait_all([chief], timeout=90)[0]
    finally:
        taken.close()
    said = text(log)
    assert code == 1, said
    assert f"error: cannot listen on 127.0.0.1:{port}, this worker's address in TF_CONFIG " \
           "(another program uses that port, or another worker has this task index" in said
    assert "did not all join" not in said and "Traceback" not in said


def test_workers_listing_clusters_of_other_sizes_never_say_they_joined(tiny_split, tmp_path):
    """Worker 0 listing 2 addresses, worker 1 the same 2 and a third: worker 1 said
    "multi-worker: 3 workers joined", then that the clusters differ. The sizes are now
    compared before the join is said: each says the clusters differ, in one line."""
    ports = launch.free_ports(3)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    out = tmp_path / "models" / "sizes"
    procs, logs = [], []
    for i, listed in ((0, addresses[:2]), (1, addresses)):
        logs.append(tmp_path / f"worker{i}.log")
        with open(logs[-1], "w") as handle:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "transfer", "train",
                 *train_args(tiny_split, out, "--distribute", "multi-worker",
                             "--worker-timeout", "20")],
                env={**os.environ, "TF_CONFIG": launch.tf_config(listed, i),
                     "TRANSFER_STARTUP_SECONDS": "60"},
                stdout=handle, stderr=subprocess.STDOUT, text=True))
    codes = wait_all(procs, timeout=120)
    said = [text(log) for log in logs]
    assert codes == [1, 1], said
    for log in said:
        assert "workers joined" not in log and "Traceback" not in log, log
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "TF_CONFIG name different clusters" in errors[0], log
    assert not out.exists()


def test_a_timeout_line_names_the_bound_that_can_have_fired():
    """A worker paused for 20 s during the 30-minute wait for the chief's bundle was said not
    to have answered "within 1800 s (--worker-timeout)": neither number was --worker-timeout's
    20. The line now names both bounds when the wait was a longer one."""
    from transfer.tf import tf

    late = tf.errors.DeadlineExceededError(None, None, "Collective ops timed out")
    plain = str(cluster.lost(late, 20.0, "the head", 20.0))
    assert "a worker did not answer within 20 s (--worker-timeout)" in plain
    long = str(cluster.lost(late, 1800.0, "the chief's writing of the bundle", 20.0))
    assert ("a worker stopped answering: no heartbeat for --worker-timeout 20 s, or no result "
            "within 1800 s") in long
    assert "1800 s (--worker-timeout)" not in long


def test_workers_whose_cluster_lists_differ_are_told_so_not_that_a_worker_is_down():
    """Worker 1's TF_CONFIG listing a third worker: both stopped with "a worker is down or
    unreachable ... Start the same command again on every worker", which fails again."""
    from transfer.tf import tf

    text = ("Collective ops is aborted by: Device /job:worker/replica:0/task:1/device:CPU:0 is "
            "joining a group with size3, but that group has size 2 (group_key=1)")
    said = str(cluster.lost(tf.errors.InternalError(None, None, text), 20.0,
                            "comparing the workers' settings"))
    assert said == ("multi-worker training stopped during comparing the workers' settings: the "
                    "workers' TF_CONFIG name different clusters (one lists 3 workers, another "
                    "2); give every worker the same cluster list, the same addresses in the "
                    "same order")


def test_a_worker_lost_while_the_chief_writes_does_not_say_no_bundle_was_written():
    """A worker paused while the chief trained its head and wrote the bundle said, once
    resumed, "no bundle written" although the bundle was there: while it waits for the chief's
    bundle it cannot tell, and now says so."""
    from transfer.tf import tf

    late = tf.errors.DeadlineExceededError(None, None, "Collective ops timed out")
    waiting = str(cluster.lost(late, 1800.0, cluster.WRITING, 20.0))
    assert "no bundle written" not in waiting
    assert "the chief may have written the bundle (look at its --output)" in waiting
    assert "no bundle written" in str(cluster.lost(late, 20.0, "the head", 20.0))


def test_a_lost_workers_line_names_what_a_rerun_resumes_from(tiny_split, tmp_path):
    """The line always said "cached features and epoch checkpoints are kept": with
    --no-feature-cache on the frozen route nothing is, and where the checkpoints are was not
    said. It now names what the run leaves: its cached features, its checkpoints, or
    nothing (the run starts over)."""
    from types import SimpleNamespace

    from transfer.settings import Augment, TrainSettings
    from transfer.tf import tf
    from transfer.training import kept_for_a_rerun, plan

    def kept(shards: bool = True, chief: bool = True, saved: bool = False, **options) -> str:
        return kept_for_a_rerun(plan(TrainSettings(data_dir=tiny_split, base="mobilenet",
                                                   alpha=0.25, weights="none",
                                                   output=tmp_path / "m",
                                                   **options).validated()),
                                SimpleNamespace(features_kept=shards, chief=chief,
                                                checkpoints_kept=saved))

    cache = tiny_split / ".cache" / "features"
    checkpoints = tmp_path / ".m.checkpoints"
    still = Augment(enabled=False)
    # stopped before any shard or checkpoint was written: it said both were kept
    assert kept(False, augment=still, fine_tune=20) == ""
    assert kept(False, augment_copies=0) == ""
    checkpoints.mkdir()  # an empty folder is no checkpoint either
    assert kept(False, augment_copies=0) == ""
    (checkpoints / "state").mkdir()
    (checkpoints / "state" / "epoch-1.weights.h5").write_bytes(b"saved")
    assert kept(augment=still) == f"the features cached in {cache}"
    assert kept(augment=still, fine_tune=20) == (f"the features cached in {cache} and the "
                                                 f"epoch checkpoints in {checkpoints}")
    assert kept(augment=still, feature_cache=False) == ""
    assert kept(augment_copies=0) == f"the epoch checkpoints in {checkpoints}"
    # another worker keeps nothing itself (never a shard, its checkpoints folder empty, or on
    # another machine): what the chief keeps, as far as it knows, where it said nothing was
    # kept; and nothing before the chief kept anything (it then said the opposite)
    shutil.rmtree(checkpoints)
    assert kept(True, False, augment=still) == "the features the chief cached"
    assert kept(True, False, True, augment=still, fine_tune=20) == (
        "the features the chief cached and the epoch checkpoints the chief saved")
    assert kept(True, False, False, augment=still, fine_tune=20) == (
        "the features the chief cached")
    assert kept(False, False, True, augment=still, fine_tune=20) == (
        "the epoch checkpoints the chief saved")
    assert kept(False, False, augment=still) == ""
    assert kept(True, False, augment=still, feature_cache=False) == ""
    assert kept(False, False, True, augment_copies=0) == "the epoch checkpoints the chief saved"
    assert kept(False, False, False, augment_copies=0) == ""
    # without --output the checkpoints' folder is named after this run's time: the same
    # command again starts over (the line promised a resume)
    run = plan(TrainSettings(data_dir=tiny_split, base="mobilenet", alpha=0.25,
                             weights="none", models_dir=tmp_path / "models",
                             augment_copies=0).validated())
    (run.checkpoint_dir / "state").mkdir(parents=True)
    (run.checkpoint_dir / "state" / "epoch-1.weights.h5").write_bytes(b"saved")
    assert kept_for_a_rerun(run, SimpleNamespace(features_kept=False, chief=True)) == (
        f"the epoch checkpoints in {run.checkpoint_dir} (found again only with --output "
        f"{run.target})")
    assert kept_for_a_rerun(run, SimpleNamespace(features_kept=False, chief=False,
                                                 checkpoints_kept=True)) == (
        "the epoch checkpoints the chief saved (found again only with the --output the "
        "chief's line names)")
    down = tf.errors.UnavailableError(None, None, "Socket closed")
    assert str(cluster.lost(down, 60.0, "the feature pass (train)", kept="")).endswith(
        "no bundle written. Start the same command again on every worker (it starts over: "
        "nothing of this run is kept)")
    assert str(cluster.lost(down, 60.0, "train epoch 2", kept=f"the epoch checkpoints in "
                            f"{checkpoints}")).endswith(
        f"to resume (the epoch checkpoints in {checkpoints} are kept)")


def test_a_cnn_from_scratch_killed_in_its_first_half_resumes(slow_split, tmp_path):
    """The first half of a CNN from scratch's schedule is not watched by early stopping: its
    checkpoints held no best weights, and a rerun of both workers crashed on the other worker
    (the chief broadcast fewer arrays than it expected) instead of resuming."""
    out = tmp_path / "models" / "scratch-killed"
    checkpoint = out.parent / f".{out.name}.checkpoints" / "train.npz"
    args = ["--data-dir", str(slow_split), "--output", str(out), "--models-dir",
            str(out.parent), "--base", "scratch", "--image-size", "32", "--no-augment",
            "--epochs", "8", "--distribute", "multi-worker", "--worker-timeout", "30"]

    killed_when(args, out, checkpoint, lambda note: 1 <= note["epoch"] < 4,
                "the run ended before its first half did")
    procs, logs = start_workers(2, lambda i: args)
    assert wait_all(procs) == [0, 0], text(logs[0])[-3000:] + text(logs[1])[-3000:]
    assert "resumed after epoch" in text(logs[0])
    metrics = meta_of(out)["metrics"]
    assert metrics["best_epoch"] >= 5  # kept from the watched second half


def test_tf_config_without_multi_worker_is_said_at_the_start(tiny_split, tmp_path):
    """TF_CONFIG set, --distribute multi-worker forgotten on one machine: it trained alone,
    wrote its own bundle and moved models/latest without a word (exit 0) while the other
    worker waited. It is now said at the start (a warning: TF_CONFIG may be meant for other
    tools)."""
    from transfer.progress import Reporter
    from transfer.training import warn_tf_config_unused

    class Said(Reporter):
        def __init__(self):
            self.warnings = []

        def warn(self, message):
            self.warnings.append(message)

    alone = TrainSettings(data_dir=tiny_split, base="mobilenet", alpha=0.25, weights="none",
                          output=tmp_path / "m").validated()
    two = {"TF_CONFIG": launch.tf_config(["127.0.0.1:1", "127.0.0.1:2"], 1)}
    said = Said()
    warn_tf_config_unused(alone, said, two)
    assert said.warnings == ["TF_CONFIG is set (worker 1 of 2) but --distribute is not "
                             "multi-worker: training on this machine alone (add --distribute "
                             "multi-worker to train with the others)"]
    for settings, environ in ((alone, {}), (alone, {"TF_CONFIG": launch.tf_config(
            ["127.0.0.1:1"], 0)}), (TrainSettings(distribute="multi-worker"), two)):
        said = Said()
        warn_tf_config_unused(settings, said, environ)
        assert said.warnings == [], environ
    # and in a real run, before anything else is said
    done = subprocess.run(
        [sys.executable, "-m", "transfer", "train", *train_args(tiny_split, tmp_path / "b",
                                                                "--epochs", "1")],
        env={**os.environ, **two}, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "TF_CONFIG is set (worker 1 of 2)" in lines[0], done.stderr


def test_a_checkpoint_of_other_settings_is_said_not_dropped_in_silence(tiny_split, tmp_path):
    """A rerun with --fine-tune-epochs raised found the checkpoint of the earlier settings:
    it trained from the start and replaced it without a word. It now says so, and which
    setting differs."""
    from types import SimpleNamespace

    from transfer import phases
    from transfer.progress import Reporter
    from transfer.training import plan

    class Said(Reporter):
        def __init__(self):
            self.warnings = []

        def warn(self, message):
            self.warnings.append(message)

    def run(**options):
        return plan(TrainSettings(data_dir=tiny_split, base="mobilenet", alpha=0.25,
                                  weights="none", output=tmp_path / "m", fine_tune=10,
                                  **options).validated())

    before, after = run(fine_tune_epochs=2), run(fine_tune_epochs=4)
    path = tmp_path / "fine-tune.npz"
    model = SimpleNamespace(weights=[np.ones((2, 3), "float32")])
    optimizer = SimpleNamespace(variables=[np.zeros((1,), "float32")])
    identity = phases.checkpoint_identity(before, "fine-tune", 2)
    phases.save_checkpoint(path, phases.checkpoint_fingerprint(before, "fine-tune", 2), model,
                           optimizer, None, {"epoch": 1}, identity)
    said = Said()  # the same run resumes, in silence
    got = phases.load_checkpoint(path, phases.checkpoint_fingerprint(before, "fine-tune", 2),
                                 identity, said)
    assert got is not None and got[1] == {"epoch": 1} and said.warnings == []
    for other, why in ((after, "--fine-tune-epochs was 2, now 4"), (before, "2 workers then, "
                                                                    "3 now")):
        workers = 3 if other is before else 2
        said = Said()
        assert phases.load_checkpoint(
            path, phases.checkpoint_fingerprint(other, "fine-tune", workers),
            phases.checkpoint_identity(other, "fine-tune", workers), said) is None
        assert said.warnings == [f"the checkpoint {path} is of another run ({why}): not "
                                 "resumed; fine-tune starts from its first epoch (the "
                                 "checkpoint is replaced)"], said.warnings


def test_the_local_scripts_usage_names_the_script_and_help_is_not_an_error(tmp_path):
    """scripts/multiworker_local.sh printed a usage naming `python -m transfer.launch`, and
    -h was an error (exit 2)."""
    script = Path(__file__).parent.parent / "scripts" / "multiworker_local.sh"
    helped = subprocess.run([str(script), "-h"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith(f"usage: {script} N -- train"), helped.stdout
    wrong = subprocess.run([str(script)], cwd=tmp_path, capture_output=True, text=True,
                           timeout=600)
    assert wrong.returncode == 2 and f"usage: {script} N -- train" in wrong.stderr, wrong.stderr
    assert "transfer.launch" not in wrong.stderr


def test_a_chief_lost_while_it_trains_the_head_is_not_said_to_be_writing(tiny_split, tmp_path):
    """The chief hung (SIGSTOP) while it trained the head: worker 1 said "stopped during the
    chief's writing of the bundle". On the frozen route without fine-tuning the line now
    names the head's training too (the worker cannot tell which)."""
    from transfer.tf import tf
    from transfer.training import plan, waiting_for_the_chief

    def route(**options) -> str:
        return waiting_for_the_chief(plan(TrainSettings(
            data_dir=tiny_split, base="mobilenet", alpha=0.25, weights="none",
            output=tmp_path / "m", augment=Augment(enabled=False), **options).validated()))

    assert route() == "the chief's training of the head, or its writing of the bundle"
    assert route(fine_tune=10) == cluster.WRITING  # the head was shared before fine-tuning
    late = tf.errors.DeadlineExceededError(None, None, "Collective ops timed out")
    said = str(cluster.lost(late, 1800.0, route(), 20.0))
    assert said.startswith("multi-worker training stopped during the chief's training of the "
                           "head, or its writing of the bundle: ") and "no bundle written" \
        not in said and "the chief may have written the bundle" in said, said
