#!/usr/bin/env python
"""Where the frozen MobileNet-0.25 recipe's accuracy can come from (issue 12), not a test.

For each input size: features of the training photos (clean, mirrored, and random-affine
copies drawn as `train`'s augmented copies are), of the validation photos and of photos no
run has seen (clean and mirrored); then the head (`transfer.head.HeadTrainer`, the L2 grid,
early stopping on the validation loss, as `train` does) on several training sets, scored on
one view or on the mean of the photo's and its mirror image's logits (test-time flips). A last
block trains at the first size and tests at each larger one (FixRes: Touvron et al. 2019).

    python scripts/bench_tta.py --data-dir data --unseen unseen --sizes 224,288
    (KERAS_HOME with the MobileNet-0.25 weights; unseen/ holds cats/ and dogs/)

Prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from transfer import features
from transfer.head import HeadTrainer, epoch_orders
from transfer.pipelines import Augment

L2 = (0.0, 1e-4, 1e-3, 1e-2)


def files_of(root: Path):
    paths = sorted((root / "cats").iterdir()) + sorted((root / "dogs").iterdir())
    return paths, np.array([0 if p.parent.name == "cats" else 1 for p in paths])


def feature_views(size: int, roots: dict, cache: Path) -> dict:
    # keyed by the folders and their files too: a cache of another split was reused in
    # silence, and mixed into one table with this one's counts
    import hashlib

    listing = {name: [(p.name, p.stat().st_size) for p in files_of(root)[0]]
               for name, root in roots.items()}
    key = hashlib.sha256(repr(sorted(listing.items())).encode()).hexdigest()[:12]
    path = cache / f"bench_tta_{size}_{key}.npz"
    if path.exists():
        print(f"(features at {size} px from {path})", flush=True)
        return dict(np.load(path))
    import keras

    base = keras.applications.MobileNet(alpha=0.25, include_top=False, pooling="avg",
                                        weights="imagenet", input_shape=(size, size, 3))
    pool = ThreadPoolExecutor(2)
    out = {}
    for name, root in roots.items():
        paths, y = files_of(root)
        out[f"{name}_y"] = y
        views = ["clean", "flip"] + (["aug1", "aug2"] if name == "train" else [])
        for view in views:
            def pixels(item, view=view):
                i, p = item
                x = features.read_image(p, size)
                if view == "flip":
                    return x[:, ::-1]
                if view.startswith("aug"):
                    rng = np.random.default_rng(int(view[-1]) * 100_000 + i)
                    return features.random_affine(x, Augment(), rng)
                return x
            x = np.stack(list(pool.map(pixels, enumerate(paths)))).astype("float32")
            out[f"{name}_{view}"] = base.predict(x / 127.5 - 1.0, batch_size=64, verbose=0)
    np.savez(path, **out)
    return out


def fit(copies: list, y, val_x, val_y, seed: int = 42):
    """The head as `train` fits it: returns logits(features)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((copies[0].shape[1],))
    head = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(
        keras.layers.Dropout(0.2)(inputs)))
    n = len(y)
    trainer = HeadTrainer(head, True, 32, 1e-3, "constant", 100 * -(-n // 32), L2, seed)
    best, weights, wait = [np.inf] * 4, [None] * 4, [0] * 4
    for epoch, order in enumerate(epoch_orders(n, 100, seed)):
        _, _, val_loss, _, _ = trainer.run_epoch(copies[epoch % len(copies)], y, np.ones(n),
                                                 order, val_x, val_y)
        for i in range(4):
            if wait[i] < 5:
                if val_loss[i] < best[i]:
                    best[i], weights[i], wait[i] = val_loss[i], trainer.weights_of(i), 0
                else:
                    wait[i] += 1
        if min(wait) >= 5:
            break
    kernel, bias = weights[int(np.argmin(best))]
    return lambda f: (f @ kernel + bias)[:, 0]


def scores(logits, d: dict, n_val: int, n_unseen: int) -> list[float]:
    val = np.mean((logits("val") > 0) == d["val_y"])
    unseen = np.mean((logits("unseen") > 0) == d["unseen_y"])
    return [val, unseen, (val * n_val + unseen * n_unseen) / (n_val + n_unseen)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--unseen", type=Path, required=True)
    parser.add_argument("--sizes", default="224,288")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")))
    args = parser.parse_args()
    roots = {"train": args.data_dir / "train", "val": args.data_dir / "validate",
             "unseen": args.unseen}
    sizes = [int(s) for s in args.sizes.split(",")]
    per_size = {s: feature_views(s, roots, args.cache) for s in sizes}
    first = per_size[sizes[0]]
    n_val, n_unseen = len(first["val_y"]), len(first["unseen_y"])
    print(f"| size | head trained on | test views | val ({n_val}) | unseen ({n_unseen}) | "
          f"both ({n_val + n_unseen}) |")
    print("| ---: | --- | --- | ---: | ---: | ---: |")

    def row(size, trained, views, values):
        print(f"| {size} | {trained} | {views} | " + " | ".join(f"{v:.4f}" for v in values)
              + " |", flush=True)

    for size, d in per_size.items():
        variants = {"one random-affine copy (the default before 2026-12-05)": [d["train_aug1"]],
                    "clean (`--no-augment`)": [d["train_clean"]],
                    "mean of photo and mirror": [(d["train_clean"] + d["train_flip"]) / 2],
                    "photo or mirror (a seeded coin per photo)": [np.where(
                        np.random.default_rng(42).random(len(d["train_y"]))[:, None] < 0.5,
                        d["train_flip"], d["train_clean"])],
                    "clean, mirror, 2 affine copies": [d["train_clean"], d["train_flip"],
                                                       d["train_aug1"], d["train_aug2"]]}
        val_tta = (d["val_clean"] + d["val_flip"]) / 2
        for trained, copies in variants.items():
            f = fit(copies, d["train_y"], val_tta, d["val_y"])
            row(size, trained, "photo", scores(lambda s, f=f, d=d: f(d[f"{s}_clean"]), d, n_val,
                                               n_unseen))
            row(size, trained, "photo + mirror", scores(
                lambda s, f=f, d=d: f(d[f"{s}_clean"]) + f(d[f"{s}_flip"]), d, n_val,
                n_unseen))
    f = fit([first["train_clean"]], first["train_y"],
            (first["val_clean"] + first["val_flip"]) / 2, first["val_y"])
    for size, d in list(per_size.items())[1:]:
        row(f"{sizes[0]} -> {size}", "clean", "photo + mirror at the test size", scores(
            lambda s, d=d: f(d[f"{s}_clean"]) + f(d[f"{s}_flip"]), d, n_val, n_unseen))


if __name__ == "__main__":
    from bench_common import run_main

    run_main(main)
