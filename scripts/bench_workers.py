#!/usr/bin/env python
"""Benchmark the frozen feature pass with 1 and with 2 local workers (not a test).

Each run is

    transfer train --base mobilenet --alpha 0.25 --no-augment --no-feature-cache --epochs 1

on a cats-vs-dogs split: once as a plain run (1 worker), once as N local workers
(``python -m transfer.launch N -- train ... --distribute multi-worker``: the launcher of
``scripts/multiworker_local.sh``). Every figure is read from the bundle's ``meta.json``:
``timings.feature_extraction_seconds`` (the pass over train + validate: the engine's opening
and parity check included, and with workers the gathers and waits of every round), ``engine``,
``per_worker`` and ``data``. ``--epochs 1`` keeps the head's share negligible; the validation
accuracy is shown only to see that the runs learnt the same thing.

The split is made first with ``transfer fetch-data --archive
$TRANSFER_TEST_ASSETS/data/dogs-vs-cats/train.zip`` (assets default: ../shared beside the
repository) in a temporary folder, unless ``--data-dir`` names one. KERAS_HOME is a temporary
folder whose ``models/`` links the shared weights (nothing is written into the shared
folder); a warm-up run converts the base to TFLite once, so that no timed run pays for the
conversion.

Usage:
    python scripts/bench_workers.py               # the tour's split: 1000 + 400 per class
    python scripts/bench_workers.py --repeats 5
    python scripts/bench_workers.py --per-class 50 --feature-shard-size 32 --repeats 1  # smoke

Prints a Markdown table for docs/BENCHMARKS.md ("Multi-worker feature pass").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--base", "mobilenet", "--alpha", "0.25", "--no-augment", "--no-feature-cache",
         "--epochs", "1"]


def assets() -> Path:
    return Path(os.environ.get("TRANSFER_TEST_ASSETS") or REPO.parent / "shared")


def keras_home(root: Path) -> Path:
    """A KERAS_HOME under ``root`` whose models/ links the shared weights."""
    shared = assets() / "keras" / "models"
    if not shared.is_dir():
        sys.exit(f"no weights folder {shared} (set TRANSFER_TEST_ASSETS)")
    home = root / "keras-home"
    (home / "models").mkdir(parents=True)
    for item in shared.iterdir():
        (home / "models" / item.name).symlink_to(item.resolve())
    return home


def transfer(args: list, env: dict, log: Path, workers: int = 0) -> float:
    """Run ``transfer <args>`` (as ``workers`` local workers when > 0), output to ``log``;
    the wall time in seconds. Exits with the log's tail when the run fails."""
    if workers:
        cmd = [sys.executable, "-m", "transfer.launch", str(workers), "--", *args]
    else:
        cmd = [sys.executable, "-m", "transfer", *args]
    started = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                              check=False).returncode
    seconds = time.perf_counter() - started
    if code != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-20:])
        sys.exit(f"exit code {code}: {' '.join(cmd)}\n{tail}")
    return seconds


def split(args, root: Path, env: dict) -> Path:
    """The data folder: --data-dir, or a fresh fetch-data split of the shared archive."""
    if args.data_dir is not None:
        return args.data_dir
    archive = assets() / "data" / "dogs-vs-cats" / "train.zip"
    if not archive.is_file():
        sys.exit(f"no archive {archive} (set TRANSFER_TEST_ASSETS, or give --data-dir)")
    data = root / "data"
    fetch = ["fetch-data", "--archive", str(archive), "--data-dir", str(data)]
    if args.per_class:  # the tour's ratio: 1000 train + 400 validate per class
        fetch += ["--train-per-class", str(args.per_class),
                  "--validate-per-class", str(max(1, math.ceil(0.4 * args.per_class)))]
    print(f"making the split: transfer {' '.join(fetch)}", file=sys.stderr, flush=True)
    transfer(fetch, env, root / "fetch-data.log")
    return data


def row_of(meta: dict, wall: float) -> dict:
    t, data = meta["timings"], meta["data"]
    images = data["train_images"] + data["validate_images"]  # --no-augment: one pass each
    seconds = t["feature_extraction_seconds"]
    per_worker = [w.get("feature_images", 0) for w in meta.get("per_worker", [])]
    return {"workers": meta.get("workers", 1), "images": images, "seconds": seconds,
            "rate": images / seconds if seconds else float("nan"), "wall": wall,
            "accuracy": meta["metrics"]["val_accuracy"],
            "engine": (meta.get("engine") or {}).get("name"),
            "per_worker": per_worker or [images]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per worker count")
    parser.add_argument("--per-class", type=int, default=0,
                        help="training images per class of a smaller split (validation: 0.4x); "
                        "default: the tour's 1000 + 400")
    parser.add_argument("--workers", default="1,2",
                        help="worker counts to time; 1 is a plain run without --distribute")
    parser.add_argument("--feature-shard-size", type=int, default=None,
                        help="passed to every run (default: train's own, 512); a small split "
                        "needs small shards, or a second worker has nothing to do")
    parser.add_argument("--engine", default=None, help="passed to every run (default: auto)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="an existing split to use instead of making one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    if args.data_dir is not None:  # the runs start in the repository: relative to here
        args.data_dir = args.data_dir.resolve()
    counts = [int(n) for n in args.workers.split(",")]

    root = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(KERAS_HOME=str(keras_home(root)), TF_CPP_MIN_LOG_LEVEL="3", COLUMNS="120")
    try:
        data = split(args, root, env)
        models = root / "models"
        extra = ["--data-dir", str(data), "--models-dir", str(models), "--force"]
        if args.feature_shard_size:
            extra += ["--feature-shard-size", str(args.feature_shard_size)]
        if args.engine:
            extra += ["--engine", args.engine]
        print("warm-up run (converts the base to TFLite once; not timed)", file=sys.stderr,
              flush=True)
        transfer([*TRAIN, *extra, "--output", str(models / "warm-up")], env,
                 root / "warm-up.log")
        rows = []
        for repeat in range(args.repeats):
            for n in counts:
                name = f"w{n}-r{repeat}"
                run = [*TRAIN, *extra, "--output", str(models / name)]
                if n > 1:
                    run += ["--distribute", "multi-worker"]
                wall = transfer(run, env, root / f"{name}.log", workers=n if n > 1 else 0)
                meta = json.loads((models / name / "meta.json").read_text())
                rows.append(row_of(meta, wall))
                r = rows[-1]
                print(f"{name}: {r['images']} images, feature pass {r['seconds']:.2f} s "
                      f"({r['rate']:.1f} images/s, engine {r['engine']}, per worker "
                      f"{r['per_worker']}), wall {wall:.1f} s, val accuracy "
                      f"{r['accuracy']:.4f}", file=sys.stderr, flush=True)
        report(rows, counts, args)
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def report(rows: list, counts: list, args) -> None:
    from importlib.metadata import version

    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPUs; Python "
          f"{platform.python_version()}, TensorFlow {version('tensorflow')}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}; load average at the end {load}; "
          f"{args.repeats} run(s) per row (median; range in brackets)"
          + (f"; --feature-shard-size {args.feature_shard_size}"
             if args.feature_shard_size else "") + "\n")
    print("| workers | images | images per worker | feature pass (s) | images/s | "
          "wall time (s) | val accuracy | engine |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |")

    def cell(values, fmt):
        mid = statistics.median(values)
        if len(values) == 1:
            return format(mid, fmt)
        return f"{format(mid, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"

    for n in counts:
        mine = [r for r in rows if r["workers"] == n]
        if not mine:
            continue
        accuracies = sorted({round(r["accuracy"], 4) for r in mine})
        engines = sorted({str(r["engine"]) for r in mine})
        print(f"| {n} | {mine[0]['images']} | {' + '.join(map(str, mine[0]['per_worker']))} | "
              f"{cell([r['seconds'] for r in mine], '.2f')} | "
              f"{cell([r['rate'] for r in mine], '.1f')} | "
              f"{cell([r['wall'] for r in mine], '.1f')} | "
              f"{', '.join(f'{a:.4f}' for a in accuracies)} | {', '.join(engines)} |")


if __name__ == "__main__":
    from bench_common import run_main

    run_main(main)
