#!/usr/bin/env python
"""Benchmark the frozen feature pass's engines in one run (not a test): issue 12's figures.

(c) the floor: a bare TensorFlow `model.predict` pass of the base over every train + validate
    file, Pillow decode and resize included (sequential, as a plain script would do it);
(1) `transfer train --no-augment --no-feature-cache --engine E` on its very first run (an
    empty TFLite cache: the conversion is included);
(2) the same command again (features computed again, the converted base reused);
(3) a cache-hit rerun (`--feature-cache`, second time): the head's training time alone.

Usage: python scripts/bench_engine.py --data-dir data --base mobilenet --alpha 0.25
Prints a Markdown table for docs/BENCHMARKS.md. Uses a fresh temporary KERAS_HOME whose
models/ links the weights of the current one, so the TFLite cache starts empty.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from bench_common import floor_pass, fresh_keras_home, removed_at_exit, split_files


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--base", default="mobilenet")
    parser.add_argument("--alpha", type=float, default=0.25)
    parser.add_argument("--engines", default="tflite,tf")
    args = parser.parse_args()
    os.environ["KERAS_HOME"] = str(fresh_keras_home())

    from transfer.settings import Augment, TrainSettings
    from transfer.tf import keras, tf
    from transfer.training import train

    files = split_files(args.data_dir)
    floor = floor_pass(files, args.base, args.alpha)
    rows = [("(c) bare TF predict pass, Pillow decode included", floor, None, None, None)]

    def run(label, engine, cache, output):
        settings = TrainSettings(data_dir=args.data_dir, base=args.base, alpha=args.alpha,
                                 augment=Augment(enabled=False), engine=engine,
                                 feature_cache=cache, output=output, force=True,
                                 models_dir=output.parent)
        result = train(settings)
        t, e = result.meta["timings"], result.meta.get("engine") or {}
        rows.append((label, t["total_seconds"], t["training_seconds"],
                     e.get("images_per_second"), result.meta["metrics"]["val_accuracy"]))

    out = removed_at_exit(Path(tempfile.mkdtemp(prefix="bench-engine-")))
    for engine in args.engines.split(","):
        run(f"(1) train --no-augment --no-feature-cache --engine {engine}, first run",
            engine, False, out / f"{engine}-1")
        again = "converted base reused" if engine != "tf" else "nothing to convert"
        run(f"(2) the same, again ({again})", engine, False, out / f"{engine}-2")
    # a cache miss, then a hit: the user's feature cache of this folder is set aside for them
    # and put back after (it was deleted)
    cached = args.data_dir / ".cache" / "features"
    aside = cached.with_name(f"features.bench-aside-{os.getpid()}")
    if cached.exists():
        os.replace(cached, aside)
        print(f"(your feature cache is set aside at {aside} for the cache rows, and put back "
              "after them)", flush=True)
    try:
        run("(3a) train --no-augment, cache miss", args.engines.split(",")[0], True,
            out / "hit-1")
        run("(3b) train --no-augment, cache hit (head only)", args.engines.split(",")[0], True,
            out / "hit-2")
    finally:
        if aside.exists():
            shutil.rmtree(cached, ignore_errors=True)
            os.replace(aside, cached)
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; TensorFlow {tf.__version__}, "
          f"Keras {keras.__version__}; {len(files)} images; {time.strftime('%Y-%m-%d')}")
    print("| run | total (s) | head training (s) | pass images/s | val accuracy | x floor |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, total, head, speed, acc in rows:
        cells = [f"{total:.1f}", "" if head is None else f"{head:.2f}",
                 "" if speed is None else f"{speed}", "" if acc is None else f"{acc:.4f}",
                 f"{total / floor:.2f}"]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    from bench_common import run_main

    run_main(main)
