#!/usr/bin/env python
"""Benchmark `transfer train` against the seeds' recipe on one split (not a test).

(a) the seeds' recipe: ImageDataGenerator + frozen base, the base runs on every image every
    epoch, 10 epochs, no early stopping (transfer train --augment-copies 0);
(b) transfer train with its defaults (augmented feature copies), for K in --copies;
(b') transfer train --no-augment;
(c) one bare forward pass of the base over train + validate: the floor.

Every run extracts features afresh (no cache hits), so the times are cold-start times.
Usage: python scripts/bench_train.py --data-dir data --base mobilenet --alpha 0.25
Prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from transfer import bases, features, pipelines
from transfer.pipelines import Augment
from transfer.progress import Reporter
from transfer.training import HParams, train


def bare_forward(data_dir: Path, base_name: str, alpha: float) -> tuple[float, int]:
    base = bases.get(base_name)
    model = bases.build(base, base.size, alpha, "imagenet")
    from transfer.tf import keras

    pooled = keras.Model(model.input, keras.layers.GlobalAveragePooling2D()(model.output))
    start, n = time.perf_counter(), 0
    for split in ("train", "validate"):
        names = pipelines.class_names(data_dir / split)
        files = pipelines.listing(data_dir / split, names)
        flow = pipelines.generator_flow(data_dir / split, names, base.size, base.preprocess, 32,
                                        None, shuffle=False, seed=0)
        features.extract(pooled, flow, pipelines.steps(len(files), 32),
                         Reporter(), split)
        n += len(files)
    return time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--base", default="mobilenet")
    parser.add_argument("--alpha", type=float, default=0.25)
    parser.add_argument("--copies", default="1,3,5", help="augment-copies values for (b)")
    parser.add_argument("--skip-seeds", action="store_true", help="skip (a), the slow one")
    args = parser.parse_args()
    out = Path("/tmp/transfer-bench-models")
    common = dict(data_dir=args.data_dir, base=args.base, alpha=args.alpha, models_dir=out,
                  feature_cache=False, force=True)
    rows = []

    def run(label, **kw):
        start = time.perf_counter()
        result = train(HParams(**{**common, **kw}))
        seconds = time.perf_counter() - start
        m, t = result.meta["metrics"], result.meta["timings"]
        rows.append((label, seconds, m["val_accuracy"], t["base_images_per_second"],
                     m["epochs_run"]))
        print(rows[-1], flush=True)

    if not args.skip_seeds:
        run("(a) seeds' recipe: generator + frozen base every epoch, 10 epochs",
            augment_copies=0, epochs=10, patience=10, output=out / "a")
    for k in [int(c) for c in args.copies.split(",")]:
        run(f"(b) transfer train, --augment-copies {k}", augment_copies=k, output=out / f"b{k}")
    run("(b') transfer train --no-augment", augment=Augment(enabled=False), output=out / "bn")
    seconds, n = bare_forward(args.data_dir, args.base, args.alpha)
    rows.append(("(c) bare forward pass of the base over train + validate", seconds, None,
                 round(n / seconds, 1), None))

    print(f"\nMachine: {platform.machine()}, {platform.processor() or 'cpu'}, "
          f"Python {platform.python_version()}; date {time.strftime('%Y-%m-%d')}\n")
    print("| run | wall time (s) | val accuracy | base images/s | epochs |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, seconds, acc, ips, epochs in rows:
        print(f"| {label} | {seconds:.1f} | {'' if acc is None else f'{acc:.4f}'} | "
              f"{ips or ''} | {epochs or ''} |")


if __name__ == "__main__":
    main()
