#!/usr/bin/env python
"""Benchmark `transfer mnist` over several seeds (not a test): its defaults, or with the
options given (the flags are MnistParams fields).

One seed's accuracy can sit either side of a target by chance; the mean and spread over seeds
say where the recipe stands. Usage:
    python scripts/bench_mnist.py --data ../shared/data/mnist --seeds 42,1,2
Prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from transfer.mnist import MnistParams, run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=None, help="mnist.npz or IDX folder")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--arch", default="cnn")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", default="42,1,2")
    defaults = MnistParams()
    parser.add_argument("--ema", type=float, default=defaults.ema)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    parser.add_argument("--shift", type=int, default=defaults.shift)
    args = parser.parse_args()
    options = dict(ema=args.ema, learning_rate=args.learning_rate,
                   label_smoothing=args.label_smoothing, shift=args.shift)
    changed = ", ".join(f"{k} {v}" for k, v in options.items()
                        if v != getattr(defaults, k)) or "defaults"
    print(f"options: {options} ({changed})", flush=True)
    times = []
    rows, accuracies = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            result = run(MnistParams(dataset=args.dataset, arch=args.arch, epochs=args.epochs,
                                     data=args.data, seed=seed, force=True,
                                     **options,
                                     output=Path(tmp) / f"seed{seed}"))
            m, t = result.meta["metrics"], result.meta["timings"]
            accuracies.append(m["test_accuracy"])
            times.append(statistics.mean(t["seconds_per_epoch"]))
            per_epoch = ", ".join(f"{s:.1f}" for s in t["seconds_per_epoch"])
            rows.append(f"| {seed} | {args.epochs} | {m['test_accuracy']:.4f} | {per_epoch} | "
                        f"{times[-1]:.1f} | {t['total_seconds']:.1f} | "
                        f"{os.getloadavg()[0]:.1f} |")
            print(rows[-1], flush=True)
    print(f"\nMachine: {platform.platform()}, {platform.processor() or 'cpu'}; "
          f"{time.strftime('%Y-%m-%d')}\n")
    print(f"{args.dataset}, {args.arch}: {changed}\n")
    print("| seed | epochs | test accuracy | seconds per epoch | mean s/epoch | total (s) | "
          "load |")
    print("| ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    print("\n".join(rows))
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    print(f"\nmean {statistics.mean(accuracies):.4f}, sd {spread:.4f}, "
          f"min {min(accuracies):.4f}, max {max(accuracies):.4f} over {len(accuracies)} seeds; "
          f"{statistics.mean(times):.1f} s per epoch")


if __name__ == "__main__":
    from bench_common import run_main

    run_main(main)
