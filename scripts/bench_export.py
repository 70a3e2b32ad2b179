#!/usr/bin/env python
"""How much smaller an int8 TFLite file is than the float one, base by base (not a test).

Issue 12 asks for an int8 export "about a quarter" of the float file. The int8 weights are a
quarter of the float weights; what does not shrink is the rest of the file: per-channel
scales and zero points (12 bytes per output channel), int32 biases, tensor names and the
graph. This script converts each base with a one-unit sigmoid head through
``transfer.export``'s own converter (``_tflite``: float, full int8, int8 with the depthwise
convolutions in float) and prints the sizes. Random weights (``weights=None``) and random
calibration images: the file sizes depend on the architecture only, not on the values, so no
ImageNet weights are needed; accuracy is measured on the genuine bundle instead (see
docs/BENCHMARKS.md, "transfer export --quantize").

    python scripts/bench_export.py                       # MobileNet-0.25, MobileNetV2, InceptionV3
    python scripts/bench_export.py --bases mobilenet:0.25 vgg16

Prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np

VARIANTS = ("none", "int8", "int8-depthwise-float")


def sizes(name: str, alpha: float, calibration: int, work: Path) -> dict:
    """Parameters and file bytes of each variant for the base ``name`` at its native size."""
    from transfer import bases, export
    from transfer.tf import keras

    base = bases.get(name)
    model = bases.build(base, base.size, alpha, None)
    raw = keras.Input((base.size, base.size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(model(raw))
    classifier = keras.Model(raw, keras.layers.Dense(1, activation="sigmoid")(pooled))
    images = np.random.RandomState(0).uniform(-1, 1, (calibration, base.size, base.size, 3))
    out = {"params": classifier.count_params(), "size": base.size}
    for variant in VARIANTS:
        folder = work / f"{name}-{variant}"
        folder.mkdir()
        export._tflite(classifier, folder / "model.tflite", folder, variant,
                       images.astype("float32"))
        out[variant] = (folder / "model.tflite").stat().st_size
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+",
                        default=["mobilenet:0.25", "mobilenetv2", "inception"],
                        help="base[:alpha] as in `transfer bases`")
    parser.add_argument("--calibration", type=int, default=16,
                        help="random calibration images (sizes do not depend on them)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    print(f"Machine: {platform.machine()}, Python {platform.python_version()}; "
          "random weights, sizes only")
    print()
    print("| base | parameters | float bytes | int8 bytes | x float | int8, depthwise float "
          "| x float |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    try:
        for spec in args.bases:
            name, _, alpha = spec.partition(":")
            s = sizes(name, float(alpha or 1.0), args.calibration, work)
            label = f"{name}{f' {alpha}' if alpha else ''} ({s['size']} px)"
            print(f"| {label} | {s['params']:,} | {s['none']:,} | {s['int8']:,} | "
                  f"{s['int8'] / s['none']:.3f} | {s['int8-depthwise-float']:,} | "
                  f"{s['int8-depthwise-float'] / s['none']:.3f} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    from bench_common import run_main

    run_main(main)
