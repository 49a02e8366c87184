"""Data-pipeline benchmark: target encoding (ours vs the official generators) and loader throughput.

    PYTHONPATH=src python benchmarks/bench_data.py                     # ours only
    DEKR_REF=/path/to/HRNet/DEKR PYTHONPATH=src python benchmarks/bench_data.py   # side by side

Table 1, target encoding alone, on the same output-pixel joints for both implementations:
the people of the 4 COCO sample images mapped to the 512 input / 128 map at scale 1 without
rotation (as the oracle's measurement), and a fabricated 30-person crowd (sample poses, random
sizes and places). "ours, 1" is one :meth:`dekr.codec.encode.TargetEncoder.encode` call per image;
"ours, batch" encodes 10 images in one :meth:`~dekr.codec.encode.TargetEncoder.encode_batch` call, as the
data loader does for its batch of 10 (per image). Both produce the compact targets (dense heatmaps,
per-pixel offsets) from which the loss reads everything the reference's four dense arrays hold;
"exact, batch" is the same with ``exact_heatmaps=True`` (Gaussians drawn directly in float64,
bit-identical to the reference). "max diff" compares the default encoder's densified targets with
the reference's arrays on the same joints. The
official ``HeatmapGenerator`` + ``OffsetGenerator`` run through the oracle harness (``../shared/oracle``
or ``$DEKR_ORACLE``) when ``DEKR_REF`` is set. "floor" is the time to allocate and write one dense
float32 heatmap array per image (10 per batch), which any encoder pays.

Table 2, the whole training sample (read + decode, ignore mask, augmentation at 512, targets), one
process (= one loader worker), on the 4 COCO sample images with the yaml augmentation; then through a
1-worker DataLoader (batch 10, incl. collate and the transfer to the main process), with the
dataset's batched fetch (:meth:`CocoKeypointDataset.__getitems__`: one encoding call per batch,
written into shared-memory batch buffers) and, for comparison, fetched and encoded one sample at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from timing import median_seconds  # noqa: E402

from dekr.codec import default_codec_config  # noqa: E402
from dekr.codec.encode import TargetEncoder, person_centers_and_areas  # noqa: E402
from dekr.data.coco import CocoKeypointDataset, train_collate  # noqa: E402
from dekr.data.transforms import TrainTransform, crop_matrix  # noqa: E402
from dekr.keypoints import COCO  # noqa: E402

COCO_SAMPLE = ROOT.parent / "shared" / "data" / "coco_sample"
ANN = COCO_SAMPLE / "person_keypoints_sample.json"


def timeit(fn: Callable[[], object], reps: int, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in ms."""
    return 1e3 * median_seconds(fn, reps, warmup)


def sample_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, joints [P, K+1, 3] output px with centre row, area [P]) per COCO sample image."""
    data = json.loads(ANN.read_text())
    cases = []
    for img in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        anns = [a for a in anns if a["iscrowd"] == 0 or a["num_keypoints"] > 0]
        kp = np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(-1, 17, 3)
        centers, areas = person_centers_and_areas(kp, [a["area"] for a in anns], fix_zero_keypoint_center=False)
        scale = min(img["width"], img["height"]) / 200
        mat = crop_matrix(np.array([img["width"] / 2, img["height"] / 2]), scale, 512)
        joints = np.concatenate([kp, centers[:, None]], axis=1)
        joints[..., :2] = (joints[..., :2] @ mat[:, :2].T + mat[:, 2]) / 4
        cases.append((f"coco {img['id']}", joints, areas * (512 / (200 * scale)) ** 2))
    return cases


def crowd_case(n: int = 30, seed: int = 0) -> tuple[str, np.ndarray, np.ndarray]:
    """30 sample poses at random sizes (60-120 px tall) and places on the 512 input."""
    rng = np.random.default_rng(seed)
    data = json.loads(ANN.read_text())
    templates = [
        np.array(a["keypoints"], float).reshape(17, 3) for a in data["annotations"] if a["num_keypoints"] >= 10
    ]
    people = []
    for i in range(n):
        t = templates[i % len(templates)].copy()
        vis = t[:, 2] > 0
        lo, hi = t[vis, :2].min(0), t[vis, :2].max(0)
        height = rng.uniform(60, 120)
        t[vis, :2] = (t[vis, :2] - (lo + hi) / 2) / (hi[1] - lo[1]) * height + rng.uniform(70, 442, 2)
        t[~vis] = 0
        people.append(t)
    kp = np.stack(people)
    centers, areas = person_centers_and_areas(kp, np.full(n, 5000.0), fix_zero_keypoint_center=False)
    joints = np.concatenate([kp, centers[:, None]], axis=1)
    joints[..., :2] /= 4
    return "crowd 30", joints, areas


def reference_generators() -> Callable[[np.ndarray, np.ndarray], object] | None:
    if not os.environ.get("DEKR_REF"):
        return None
    sys.path.insert(0, os.environ.get("DEKR_ORACLE", str(ROOT.parent / "shared" / "oracle")))
    import dekr_harness  # type: ignore[import-not-found]

    dekr_harness.setup()
    from dataset.target_generators import HeatmapGenerator, OffsetGenerator

    hg, og = HeatmapGenerator(128, 17), OffsetGenerator(128, 128, 17, 4)

    def run(joints: np.ndarray, area: np.ndarray) -> tuple[np.ndarray, ...]:
        heatmaps, weights = hg(joints, 2.0, 4.0, 0.1)
        offsets, offset_weights = og(joints, area.reshape(-1, 1))
        return heatmaps, weights, offsets, offset_weights

    return run


def reference_getitem(reps: int) -> float | None:
    """Official CocoKeypoints.__getitem__ with the yaml augmentation, ms/sample (oracle harness)."""
    if not os.environ.get("DEKR_REF"):
        return None
    import dekr_harness  # type: ignore[import-not-found]
    from dataset.build import build_dataset

    root = dekr_harness.make_coco_root("trainbench")
    cfg = dekr_harness.load_cfg(
        opts=["DATASET.ROOT", root, "DATASET.TRAIN", "trainbench", "DATASET.DATA_FORMAT", "jpg"]
    )
    with contextlib.redirect_stdout(io.StringIO()):
        ds = build_dataset(cfg, is_train=True)
    return timeit(lambda: [ds[i] for i in range(len(ds))], reps) / len(ds)


def _max_difference(enc: TargetEncoder, joints: np.ndarray, area: np.ndarray, reference: tuple) -> float:
    """Largest absolute difference between our densified targets and the reference's arrays."""
    ours = enc(joints[:, :-1], joints[:, -1], area)
    keys = ("heatmaps", "heatmap_weights", "offsets", "offset_weights")
    return max(float(np.abs(ours[key] - np.asarray(ref)).max()) for key, ref in zip(keys, reference))


class _PerSample(torch.utils.data.Dataset):
    """The dataset without its batched ``__getitems__`` (for comparison)."""

    def __init__(self, ds: CocoKeypointDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict:
        return self.ds[index]


def loader_ms(ds: torch.utils.data.Dataset, collate: Callable, batches: int = 8, batch_size: int = 10) -> float:
    """ms per sample through a 1-worker DataLoader, after its first batch (worker start-up)."""
    from torch.utils.data import DataLoader

    order = [i % len(ds) for i in range((batches + 1) * batch_size)]
    loader = DataLoader(ds, batch_size=batch_size, sampler=order, num_workers=1, collate_fn=collate)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    n = sum(len(batch["image"]) for batch in it)
    return 1e3 * (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    enc = TargetEncoder(COCO, 128)
    ref = reference_generators()

    print(f"Target encoding, ms per image (median of {args.reps}), 128x128 map, 17 keypoints + centre")
    exact = TargetEncoder(COCO, 128, exact_heatmaps=True)
    header = f"{'case':<20}{'people':>7}{'ours, 1':>9}{'ours, batch':>13}{'exact, batch':>14}"
    if ref:
        header += f"{'reference':>11}{'speed-up':>10}{'batch speed-up':>16}{'max diff':>10}"
    print(header)
    cases = sample_cases()
    groups = [("COCO sample (mean)", cases), *[(c[0], [c]) for c in [crowd_case()]]]
    for name, group in groups:
        ours = np.mean(
            [timeit(lambda j=j, a=a: enc.encode(j[:, :-1], j[:, -1], a), args.reps * 5) for _, j, a in group]
        )
        batch = [group[i % len(group)] for i in range(10)]
        kps, ctrs, areas = [j[:, :-1] for _, j, _ in batch], [j[:, -1] for _, j, _ in batch], [a for *_, a in batch]
        ours_b = timeit(lambda k=kps, c=ctrs, a=areas: enc.encode_batch(k, c, a), args.reps * 2) / len(batch)
        exact_b = timeit(lambda k=kps, c=ctrs, a=areas: exact.encode_batch(k, c, a), args.reps * 2) / len(batch)
        people = np.mean([len(j) for _, j, _ in group])
        row = f"{name:<20}{people:>7.1f}{ours:>9.3f}{ours_b:>13.3f}{exact_b:>14.3f}"
        if ref:
            ref_ms = np.mean([timeit(lambda j=j, a=a: ref(j.copy(), a), max(args.reps // 3, 3)) for _, j, a in group])
            diff = max(_max_difference(enc, j, a, ref(j.copy(), a)) for _, j, a in group)
            row += f"{ref_ms:>11.2f}{ref_ms / ours:>9.1f}x{ref_ms / ours_b:>15.1f}x{diff:>10.1e}"
        print(row)

    def dense_heatmaps() -> list[np.ndarray]:
        out = [np.empty((18, 128, 128), np.float32) for _ in range(10)]
        for a in out:
            a.fill(0.0)
        return out

    floor = timeit(dense_heatmaps, args.reps * 2) / 10
    print(f"{'floor':<20}{'':>7}{'':>9}{floor:>13.3f}{'':>14}   (allocating and writing the dense heatmaps alone)")

    ds = CocoKeypointDataset(
        ANN,
        COCO_SAMPLE,
        COCO,
        train=True,
        transform=TrainTransform(COCO, 512, default_codec_config().stride, seed=0),
        encoder=TargetEncoder(COCO, 128),
    )
    raws = [ds.raw_sample(i) for i in range(len(ds))]
    n = len(ds)
    steps = {
        "read + decode": lambda: [ds.raw_sample(i) for i in range(n)],
        "augment (affine, flip, normalise)": lambda: [
            ds.transform(
                r["image"], r["mask"], r["keypoints"], *ds.encoder.centers_and_areas(r["keypoints"], r["ann_areas"])
            )
            for r in raws
        ],
        "whole __getitem__": lambda: [ds[i] for i in range(n)],
    }
    print(
        f"\nWhole training sample at 512 (4 COCO sample images, yaml augmentation), one process, median of {args.reps}"
    )
    print(f"{'step':<36}{'ms/sample':>10}{'samples/s':>11}")
    for name, fn in steps.items():
        ms = timeit(fn, args.reps) / n
        print(f"{name:<36}{ms:>10.2f}{1e3 / ms:>11.1f}")
    loaders = {
        "DataLoader, 1 worker, batch 10": (ds, train_collate),
        "  same, fetched and encoded one by one": (_PerSample(ds), train_collate),
    }
    for label, (dataset, collate) in loaders.items():
        ms = loader_ms(dataset, collate)
        print(f"{label:<36}{ms:>10.2f}{1e3 / ms:>11.1f}")
    ref_ms = reference_getitem(max(args.reps // 3, 3))
    if ref_ms is not None:
        print(f"{'reference __getitem__ (yaml aug.)':<36}{ref_ms:>10.2f}{1e3 / ref_ms:>11.1f}")


if __name__ == "__main__":
    main()
