#!/usr/bin/env python
"""Benchmark `transfer train` against the classic recipe and the floor, in one run (not a test).

(c) the floor: a bare TensorFlow `model.predict` pass of the base over every train + validate
    file at the base's native size, Pillow decode and resize included (sequential, as a plain
    script would do it), first and again last; the "x floor" column divides by the faster;
(a) the classic recipe: ImageDataGenerator + frozen base, the base runs on every (augmented)
    image every epoch, 10 epochs, no early stopping (`transfer train --augment-copies 0
    --epochs 10 --patience 10`);
(b) `transfer train` with its defaults (and, on a next run, `--train-size 288`: the default
    until 2026-12-05);
(b') `transfer train --no-augment` with each engine;
then (b) and (b') on tflite once more: the next run, features computed afresh, the converted
base reused. These runs call ``train`` in this process, where TensorFlow is already imported,
as the floor's pass has it; the last two rows run the same next runs as `transfer train`
processes, whose `total_seconds` also count TensorFlow's import (its own column).

Every run computes its features afresh (`--no-feature-cache`) and the TFLite cache starts
empty (a fresh KERAS_HOME linking the current one's weights), so each engine's first run
includes its conversion; the "again" rows reuse it. With --unseen (a folder of class folders
no run trains or validates on) each bundle is also scored there with `transfer evaluate`.

    python scripts/bench_train.py --data-dir data --base mobilenet --alpha 0.25 --unseen unseen

Prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import floor_pass, fresh_keras_home, removed_at_exit, split_files


def size_shown(test_time: dict) -> str:
    """"224 -> 288" for a run whose head trained at a smaller size than its model's (FixRes)."""
    size, train_size = test_time.get("size"), test_time.get("train_size")
    return f"{train_size} -> {size}" if train_size and train_size != size else str(size or "")


def row_of(label: str, meta: dict, no_engine: str = "") -> dict:
    """A table row from a run's meta.json (``no_engine``: what the engine cell says of a run
    that recorded none, the classic recipe's Keras fit)."""
    engine, timings = meta.get("engine") or {}, meta["timings"]
    return dict(label=label, total=timings["total_seconds"],
                tf_import=timings.get("tensorflow_import_seconds"),
                engine=engine.get("name") or no_engine, speed=engine.get("images_per_second"),
                size=size_shown(meta.get("test_time") or {}),
                val=meta["metrics"]["val_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--base", default="mobilenet")
    parser.add_argument("--alpha", type=float, default=0.25)
    parser.add_argument("--unseen", type=Path, help="class folders to score every bundle on")
    parser.add_argument("--engines", default="tf,tflite", help="engines of the (b') rows")
    parser.add_argument("--skip-classic", action="store_true", help="skip (a), the slow one")
    args = parser.parse_args()
    os.environ["KERAS_HOME"] = str(fresh_keras_home())

    from transfer.evaluate import evaluate
    from transfer.settings import Augment, EvaluateSettings, TrainSettings
    from transfer.tf import keras, tf
    from transfer.training import train

    files = split_files(args.data_dir)
    out = removed_at_exit(Path(tempfile.mkdtemp(prefix="bench-train-")))
    rows = [dict(label="(c) floor: bare TF predict pass over train + validate, Pillow decode "
                       "included", total=floor_pass(files, args.base, args.alpha))]
    print(rows[-1], flush=True)

    homes: dict = {}  # a first run's fresh KERAS_HOME, which its next run reuses

    def run(label: str, name: str, home: str | None = None, **options) -> None:
        # every first run converts into a TFLite cache of its own (the default's 224 px base is
        # --no-augment's: in a shared cache the later first run would reuse it); next runs use
        # their first run's
        if home is not None:
            if home not in homes:
                homes[home] = fresh_keras_home()
            os.environ["KERAS_HOME"] = str(homes[home])
        settings = TrainSettings(data_dir=args.data_dir, base=args.base, alpha=args.alpha,
                                 feature_cache=False, force=True, models_dir=out,
                                 output=out / name, **options)
        row = row_of(label, train(settings).meta,
                     "tf (Keras fit)" if name == "classic" else "")
        if args.unseen:
            report = evaluate(EvaluateSettings(model=out / name, data_dir=args.unseen,
                                               output=out / f"{name}-unseen", force=True)).report
            row["unseen"] = report["accuracy"]
        rows.append(row)
        print(row, flush=True)

    if not args.skip_classic:
        run("(a) classic recipe: ImageDataGenerator + frozen base every epoch, 10 epochs",
            "classic", augment_copies=0, epochs=10, patience=10)
    run("(b) transfer train (defaults), first run", "default", home="default")
    for engine in args.engines.split(","):
        run(f"(b') transfer train --no-augment --engine {engine}, first run", f"plain-{engine}",
            home=f"plain-{engine}", augment=Augment(enabled=False), engine=engine)
    # the next runs: features computed afresh again, the converted bases (and auto's
    # measurement) reused from the first runs above
    run("(b) again: the next run of the defaults", "default-next", home="default")
    run("(b) the next run with --train-size 288 (the head on photo + mirror means at 288 px: "
        "the default until 2026-12-05)", "default-288-next", home="default", train_size=288)
    if "tflite" in args.engines.split(","):
        run("(b') again: the next run of --no-augment --engine tflite", "plain-tflite-next",
            home="plain-tflite", augment=Augment(enabled=False), engine="tflite")

    # the same next runs as `transfer train` processes: what a user's total_seconds reads, the
    # import of TensorFlow included (tensorflow_import_seconds says how much)
    def process(label: str, name: str, home: str, *options: str) -> None:
        command = [sys.executable, "-m", "transfer", "train", "--data-dir", str(args.data_dir),
                   "--base", args.base, "--alpha", str(args.alpha), "--no-feature-cache",
                   "--force", "--models-dir", str(out), "--output", str(out / name), *options]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "KERAS_HOME": str(homes[home])})
        rows.append(row_of(label, json.loads((out / name / "meta.json").read_text())))
        print(rows[-1], flush=True)

    process("(b) the next run of the defaults, as a `transfer train` process", "default-cli",
            "default")
    if "tflite" in args.engines.split(","):
        process("(b') the next run of `--no-augment --engine tflite`, as a `transfer train` "
                "process", "plain-tflite-cli", "plain-tflite", "--no-augment", "--engine",
                "tflite")

    # the floor once more, last: the first pass of a process can be slow (one run here: 32.5 s,
    # then 24.6-25.6 s); the ratios use the faster of the two, the stricter bar
    rows.append(dict(label="(c) floor again, after the runs", total=floor_pass(
        files, args.base, args.alpha)))
    print(rows[-1], flush=True)
    floor = min(rows[0]["total"], rows[-1]["total"])
    classic = next((r["total"] for r in rows if r["label"].startswith("(a)")), None)
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}; "
          f"{len(files)} images; {time.strftime('%Y-%m-%d')}\n")
    print("| run | engine | size | total (s) | of it TF import (s) | pass images/s | val accuracy "
          "| unseen accuracy | x floor | faster than (a) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        cells = [r.get("engine", ""), str(r.get("size") or ""), f"{r['total']:.1f}",
                 "" if r.get("tf_import") is None else f"{r['tf_import']:.1f}",
                 "" if r.get("speed") is None else f"{r['speed']:.0f}",
                 "" if r.get("val") is None else f"{r['val']:.4f}",
                 "" if r.get("unseen") is None else f"{r['unseen']:.4f}",
                 f"{r['total'] / floor:.2f}",
                 "" if classic is None else f"{classic / r['total']:.1f}x"]
        print(f"| {r['label']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    from bench_common import run_main

    run_main(main)
