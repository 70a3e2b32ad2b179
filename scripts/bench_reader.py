#!/usr/bin/env python
"""Benchmark the pieces of the feature pass around the base (not a test): issue 12's figures.

Each pair runs alternately, several rounds, in one process; the medians are printed.
1. Reading a photo for 288 px: through a float32 array and back (before 2026-12-04) against
   ``pipelines.read_rgb`` (uint8 straight from Pillow).
2. JPEG draft mode: real photos enlarged to 4000 x 3000 (a phone's size), read for 224 px,
   decoded whole against ``read_rgb`` (draft mode); and the mean pixel difference.
3. One batch of 32 photos at 288 px and its mirror images through the converted base: a
   float32 batch with a contiguous mirror copy (before) against the uint8 batch and a strided
   mirror view cast into the interpreter's input (``TFLiteEngine`` now); 3b. that cast of the
   mirror view at once against channel by channel (``engines.cast_into``).
4. The converted base's fixed batch: views/s at 8 and at 32 (224 and 288 px), XNNPACK.

    python scripts/bench_reader.py --data-dir data --photos ../shared/data/flowers
    (KERAS_HOME with the MobileNet-0.25 weights)

Prints Markdown lines for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_common import removed_at_exit, split_files


def per_call(fn, seconds: float = 1.5) -> float:
    """Seconds per call of ``fn``, over about ``seconds`` after one warm-up call."""
    fn()
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        n += 1
    return (time.perf_counter() - started) / n


def alternate(pairs: dict, rounds: int = 4) -> dict:
    """{name: median seconds per call}, the callables measured in turn, ``rounds`` times."""
    times: dict = {name: [] for name in pairs}
    for _ in range(rounds):
        for name, fn in pairs.items():
            times[name].append(per_call(fn))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--photos", type=Path, required=True,
                        help="a folder of class folders of real photos to enlarge (flowers)")
    args = parser.parse_args()

    from PIL import Image

    from transfer import bases, engines, features, images, pipelines, training
    from transfer.settings import TrainSettings

    every = split_files(args.data_dir)
    files = (every[::10] if len(every) >= 320 else every)[:200]  # every 10th of a full split
    if len(files) < 32:  # step 3 runs one batch of 32 (a small split ended in a traceback)
        raise SystemExit(f"bench_reader needs at least 32 photos in {args.data_dir}, "
                         f"not {len(files)}")

    # 1. the reader at 288 px
    def read_all(reader):
        return lambda: [reader(p, 288) for p in files]

    def through_float(path, size):
        return images.rgb_array(images.open_image(path), size).astype("uint8")

    got = alternate({"float32 and back": read_all(through_float),
                     "uint8 (read_rgb)": read_all(pipelines.read_rgb)})
    print(f"1. reading {len(files)} photos for 288 px, ms a photo: " + ", ".join(
        f"{k} {v / len(files) * 1000:.2f}" for k, v in got.items()))

    # 2. draft mode on phone-sized photos
    folder = removed_at_exit(Path(tempfile.mkdtemp(prefix="bench-reader-")))
    sources = sorted(p for cls in pipelines.class_names(args.photos)
                     for p in pipelines.image_files(args.photos / cls))[::10][:20]
    big = []
    for i, source in enumerate(sources):
        path = folder / f"phone{i}.jpg"
        with Image.open(source) as photo:
            photo.convert("RGB").resize((4000, 3000), Image.BICUBIC).save(path, quality=90)
        big.append(path)

    def whole(path, size):
        return images.rgb_pixels(images.open_image(path), size)

    got = alternate({"decoded whole": lambda: [whole(p, 224) for p in big],
                     "draft mode (read_rgb)": lambda: [pipelines.read_rgb(p, 224) for p in big]},
                    rounds=2)
    diff = np.mean([np.abs(whole(p, 224).astype("float32") - pipelines.read_rgb(p, 224)).mean()
                    for p in big])
    print(f"2. {len(big)} photos enlarged to 4000 x 3000, read for 224 px, ms a photo: "
          + ", ".join(f"{k} {v / len(big) * 1000:.1f}" for k, v in got.items())
          + f"; mean absolute pixel difference {diff:.2f} of 255")

    # 3. and 4. need the converted base: the default run's, at 288 px, converted here
    settings = TrainSettings(data_dir=args.data_dir, base="mobilenet", alpha=0.25)
    run = training.plan(settings)
    from transfer import phases

    built = phases.build_model(run, None)
    model = phases.raw_feature_model(run, built)
    batch = np.stack([pipelines.read_rgb(p, 288) for p in files[:32]])
    path = folder / "base.tflite"
    engines.convert(model, 8, path)
    engine = engines.TFLiteEngine(path)

    def before():
        floats = batch.astype("float32")
        mirror = np.ascontiguousarray(floats[:, :, ::-1])
        for x in (floats, mirror):
            for i in range(0, 32, 8):
                engine.interpreter.set_tensor(engine.input["index"], x[i:i + 8])
                engine.interpreter.invoke()

    got = alternate({"float32 + mirror copy + set_tensor": before,
                     "uint8 and mirror view into the input": lambda: features.mirrored_mean(
                         engine, batch, copy=False)})
    print("3. 32 photos and their mirror images at 288 px, ms a batch: " + ", ".join(
        f"{k} {v * 1000:.1f}" for k, v in got.items()))
    target = np.zeros((8, 288, 288, 3), "float32")
    mirror = batch[:8, :, ::-1]
    got = alternate({"at once": lambda: np.copyto(target, mirror, casting="same_kind"),
                     "channel by channel (engines.cast_into)": lambda: engines.cast_into(
                         target, mirror),
                     "a contiguous batch, at once": lambda: np.copyto(target, batch[:8],
                                                                      casting="same_kind")})
    print("3b. 8 mirror views at 288 px cast into the interpreter's float32 input, ms a view: "
          + ", ".join(f"{k} {v * 1000 / 8:.3f}" for k, v in got.items()))

    from ai_edge_litert.interpreter import Interpreter

    for size in (224, 288):
        pairs = {}
        for n in (8, 32):
            interpreter = Interpreter(model_path=str(path), num_threads=engines.cpu_threads())
            index = interpreter.get_input_details()[0]["index"]
            interpreter.resize_tensor_input(index, [n, size, size, 3])
            interpreter.allocate_tensors()
            x = (np.random.default_rng(0).random((n, size, size, 3)) * 255).astype("float32")

            def call(interpreter=interpreter, index=index, x=x):
                interpreter.set_tensor(index, x)
                interpreter.invoke()

            pairs[n] = call
        got = alternate(pairs)
        print(f"4. {size} px, views/s on {engines.cpu_threads()} threads: " + ", ".join(
            f"batch {n} {n / got[n]:.0f}" for n in got))
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; {time.strftime('%Y-%m-%d')}; base "
          f"{bases.get('mobilenet').keras_class} alpha 0.25")


if __name__ == "__main__":
    from bench_common import run_main

    run_main(main)
