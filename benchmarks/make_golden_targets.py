"""Write ``tests/data/golden_targets.npz``: the official DEKR generators' output on fixed joints.

Needs the official code (``DEKR_REF=/path/to/HRNet/DEKR``) and the oracle harness
(``../shared/oracle/dekr_harness.py``, or ``DEKR_ORACLE=/path/to/oracle``). The tests compare
:mod:`dekr.codec.encode` against the stored digests without needing either.

For each case the file stores the *inputs* (raw COCO keypoints and areas, the output-pixel joints
with their centre row and the areas fed to the generators) and compact per-channel digests of the
official outputs (sum, sum of squares, index-weighted sums and non-zero counts, float64): exact
enough to catch any difference above float32 rounding, and a few KB instead of megabytes.

    DEKR_REF=/work/ref/DEKR python benchmarks/make_golden_targets.py
"""

# ruff: noqa: NPY002  (replays the legacy global np.random draws of the official code)
from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "golden_targets.npz"


def import_harness() -> types.ModuleType:
    """The oracle harness (official code on sys.path, numpy-2 patches applied)."""
    oracle = os.environ.get("DEKR_ORACLE", str(ROOT.parent / "shared" / "oracle"))
    if not os.environ.get("DEKR_REF"):
        sys.exit("DEKR_REF is not set: point it at a plain copy of HRNet/DEKR")
    sys.path.insert(0, oracle)
    import dekr_harness  # type: ignore[import-not-found]

    dekr_harness.setup()
    return dekr_harness


def digest(arr: np.ndarray) -> np.ndarray:
    """Per-channel ``[C, 3]`` float64: sum, position-weighted sum, non-zero count."""
    a = arr.astype(np.float64)
    c, h, w = a.shape
    ys, xs = np.mgrid[0:h, 0:w]
    position = 1.0 + xs + 1000.0 * ys
    return np.stack([a.sum((1, 2)), (a * position).sum((1, 2)), (a != 0).sum((1, 2))], axis=1)


def official_targets(joints: np.ndarray, area: np.ndarray, out: int, center_sigma: float):
    from dataset.target_generators import HeatmapGenerator, OffsetGenerator

    k = joints.shape[1] - 1
    hm, hw = HeatmapGenerator(out, k)(joints.copy(), 2.0, center_sigma, 0.1)
    off, ow = OffsetGenerator(out, out, k, 4)(joints.copy(), area.reshape(-1, 1))
    return hm, hw, off, ow


def affine(joints: np.ndarray, mat: np.ndarray) -> np.ndarray:
    out = joints.copy()
    out[..., :2] = joints[..., :2] @ mat[:, :2].T + mat[:, 2]
    return out


def random_mat(rng: np.random.RandomState, zoom: float, size: int, src_wh: tuple[float, float]):
    """Zoom, rotate about the map centre and shift: original px -> output px."""
    rot = np.deg2rad(rng.uniform(-30, 30))
    c, s = np.cos(rot), np.sin(rot)
    centre = np.array(src_wh) / 2 + rng.uniform(-40, 40, 2)
    lin = zoom * np.array([[c, -s], [s, c]])
    t = size / 2 - lin @ centre
    return np.concatenate([lin, t[:, None]], axis=1)


def augmented_samples(h: types.ModuleType) -> dict[str, np.ndarray]:
    """Official ``CocoKeypoints`` samples (read, mask, joints, random affine + flip, targets)."""
    import contextlib
    import io
    import random

    from dataset.build import build_dataset
    from dataset.COCODataset import CocoDataset

    root = h.make_coco_root("traingolden")
    cfg = h.load_cfg(opts=["DATASET.ROOT", root, "DATASET.TRAIN", "traingolden", "DATASET.DATA_FORMAT", "jpg"])
    with contextlib.redirect_stdout(io.StringIO()):
        ds = build_dataset(cfg, is_train=True)
    out: dict[str, np.ndarray] = {}
    names = []
    for idx, image_id in enumerate(ds.ids):
        for seed in ((2, 11), (6, 7), (5, 9), (10, 3))[idx % 4]:
            img, anno, info = CocoDataset.__getitem__(ds, idx)
            mask = ds.get_mask(anno, info)
            joints, area = ds.get_joints([a for a in anno if a["iscrowd"] == 0 or a["num_keypoints"] > 0])
            # replay the draws of RandomAffineTransform (np.random) and RandomHorizontalFlip (random)
            np.random.seed(seed)
            random.seed(seed)
            scale = min(img.shape[:2]) / 200 * (np.random.random() * 0.75 + 0.75)
            rot = (np.random.random() * 2 - 1) * 30
            dx = np.random.randint(-40 * scale, 40 * scale)
            dy = np.random.randint(-40 * scale, 40 * scale)
            flip = random.random() < 0.5
            np.random.seed(seed)
            random.seed(seed)
            img_t, masks, joints_t, area_t = ds.transforms(img, [mask], [joints], area)
            hm, ignored = ds.heatmap_generator(joints_t[0], ds.sigma, ds.center_sigma, ds.bg_weight)
            off, ow = ds.offset_generator(joints_t[0], area_t)
            name = f"sample{image_id}_{seed}"
            out[f"{name}/params"] = np.array([image_id, img.shape[1] / 2 + dx, img.shape[0] / 2 + dy, scale, rot, flip])
            for key, arr in (
                ("image", img_t.numpy()),
                ("heatmaps", hm),
                ("heatmap_weights", masks[0] * ignored),
                ("offsets", off),
                ("offset_weights", ow),
            ):
                out[f"{name}/{key}"] = digest(arr)
            names.append(name)
    out["samples"] = np.array(names)
    return out


def main() -> None:
    h = import_harness()
    rng = np.random.RandomState(0)
    cases: dict[str, np.ndarray] = {}
    with open(ROOT.parent / "shared" / "data" / "coco_sample" / "person_keypoints_sample.json") as f:
        coco = json.load(f)
    names = []

    def add(name, raw_kpts, ann_area, joints, area, out, center_sigma, official_get_joints=None):
        joints = joints.astype(np.float32).astype(np.float64)  # stored as float32, exactly
        hm, hw, off, ow = official_targets(joints, area, out, center_sigma)
        cases[f"{name}/joints"] = joints.astype(np.float32)
        cases[f"{name}/area"] = area.reshape(-1)
        cases[f"{name}/meta"] = np.array([out, center_sigma])
        if raw_kpts is not None and name.endswith("_0"):
            cases[f"{name}/raw_keypoints"] = raw_kpts
            cases[f"{name}/ann_area"] = ann_area
            cases[f"{name}/ref_centers"] = official_get_joints[0][:, -1]
            cases[f"{name}/ref_areas"] = official_get_joints[1].reshape(-1)
        for key, arr in (("heatmaps", hm), ("heatmap_weights", hw), ("offsets", off), ("offset_weights", ow)):
            cases[f"{name}/{key}"] = digest(arr)
        names.append(name)

    # real COCO people (incl. the (0,0)-centre bug people), 3 random augmentations each
    for img in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        anns = [a for a in anns if a["iscrowd"] == 0 or a["num_keypoints"] > 0]
        raw = np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(len(anns), 17, 3)
        ann_area = np.array([a["area"] for a in anns], dtype=np.float64)
        joints, area = h.official_joints(anns)
        for t in range(2):
            zoom = 128 / min(img["width"], img["height"]) / rng.uniform(0.75, 1.5)
            mat = random_mat(rng, zoom, 128, (img["width"], img["height"]))
            jt = affine(joints, mat)
            # the reference scales area by the *input* (512) zoom squared
            add(f"coco{img['id']}_{t}", raw, ann_area, jt, area.reshape(-1) * (4 * zoom) ** 2, 128, 4.0, (joints, area))

    # fabricated crowds at the 512 input / 128 map (sparse and dense)
    for name, dist in (("crowd30", 24.0), ("dense30", 8.0)):
        scene = h.crowd_scene(30, 512, seed=1, min_center_dist=dist, region=0.5 if dist < 10 else 1.0)
        anns = scene["annotations"]
        joints, area = h.official_joints(anns)
        jt = joints.copy()
        jt[..., :2] /= 4.0
        add(name, None, None, jt, area.reshape(-1), 128, 4.0)

    # integer coordinates (exact-zero offsets), centres just left of / above the map, tiny maps
    jq = np.zeros((4, 18, 3))
    jq[:, :17, :2] = rng.randint(-2, 34, size=(4, 17, 2))
    jq[:, :17, 2] = rng.randint(0, 3, size=(4, 17))
    jq[:, 17] = [[10.0, 11.0, 1], [-0.5, 5.0, 1], [12.0, -0.7, 1], [11.0, 12.0, 1]]
    add("integer32", None, None, jq, np.array([50.0, 400.0, 9.0, 51.5]), 32, 4.0)

    # CrowdPose layout (14 keypoints: centre channel 14 is drawn with sigma 2)
    jc = np.zeros((6, 15, 3))
    jc[:, :14, :2] = rng.uniform(-3, 64, size=(6, 14, 2))
    jc[:, :14, 2] = rng.randint(0, 3, size=(6, 14))
    vis = jc[:, :14, 2] > 0
    jc[:, 14, :2] = (jc[:, :14, :2] * vis[..., None]).sum(1) / np.maximum(vis.sum(1), 1)[:, None]
    jc[:, 14, 2] = 1
    add("crowdpose64", None, None, jc, rng.uniform(100, 5000, 6), 64, 4.0)

    # whole training samples through the official pipeline with the yaml augmentation; the
    # parameters it drew are stored so that the tests can replay them
    cases.update(augmented_samples(h))

    cases["names"] = np.array(names)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **cases)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.1f} KiB, {len(names)} cases)")


if __name__ == "__main__":
    main()
