"""Synthetic figures for any keypoint layout: shapes, flip symmetry, learnable markers, and the
COCO people unchanged to the byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import synthetic_datamodule

from dekr.data.synthetic import _draw_generic, body_plan, generate_synthetic, random_figure, render_image
from dekr.keypoints import build_keypoint_spec

HERE = Path(__file__).resolve().parent
_LAYOUTS = yaml.safe_load((HERE / "data" / "synthetic_layouts.yaml").read_text())
_HAND5 = yaml.safe_load((HERE.parent / "conf" / "data" / "custom_example.yaml").read_text())["keypoints"]
LAYOUTS = {4: _LAYOUTS["quad4"], 5: _HAND5, 14: "crowdpose", 17: "coco", 35: _LAYOUTS["centipede35"]}
SYMMETRIC = [4, 14, 35]  # the non-COCO layouts with flip pairs

# Produced by the pre-change generator (src/dekr/data/synthetic.py at commit e93e0fe, COCO only) with
# generate_synthetic(root, num_train=4, num_val=2, image_size=128, seed=0): sha256 of the two
# annotation files and of the pixels of the first image (render_image(0, "train", 0, 128)).
COCO_DIGESTS = {
    "train_json": "5934255df012f92d9718bdfb20655e77ce928bedc16b523641e9ec0e4d080c9b",
    "val_json": "3e4416ab8100993b3733eedaecb21880d6db5ce9b5c4c152e3d0c2606fd586ed",
    "first_image": "06a12258f77c7e013b93f3d5990722a634e30bfb17c095a02ead95056bab8859",
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("keypoints", [None, "coco", {"builtin": "coco"}])
def test_coco_layout_is_unchanged(tmp_path: Path, keypoints: object) -> None:
    extra = {} if keypoints is None else {"keypoints": keypoints}
    root = generate_synthetic(tmp_path, num_train=4, num_val=2, image_size=128, seed=0, **extra)
    assert _sha((root / "annotations/person_keypoints_train.json").read_bytes()) == COCO_DIGESTS["train_json"]
    assert _sha((root / "annotations/person_keypoints_val.json").read_bytes()) == COCO_DIGESTS["val_json"]
    img, _ = render_image(0, "train", 0, 128, **extra)
    assert _sha(img.tobytes()) == COCO_DIGESTS["first_image"]


@pytest.mark.parametrize("k", sorted(LAYOUTS))
def test_layout_generates_valid_coco_files(tmp_path: Path, k: int) -> None:
    spec = build_keypoint_spec(LAYOUTS[k])
    assert spec.num_keypoints == k
    root = generate_synthetic(tmp_path, num_train=4, num_val=1, image_size=128, seed=0, keypoints=LAYOUTS[k])
    ann_file = root / "annotations" / "person_keypoints_train.json"
    data = json.loads(ann_file.read_text())
    (category,) = data["categories"]
    assert category["keypoints"] == list(spec.names)
    assert category["skeleton"] == [[a + 1, b + 1] for a, b in spec.skeleton]
    from dekr.data.coco import load_coco

    load_coco(ann_file, spec)  # the loader accepts it for this layout
    assert len(data["images"]) == 4
    people = [a for a in data["annotations"] if not a["iscrowd"]]
    assert people
    labelled = 0
    for a in data["annotations"]:
        assert {"keypoints", "num_keypoints", "bbox", "area", "iscrowd", "segmentation"} <= set(a)
        kp = np.asarray(a["keypoints"], dtype=float).reshape(k, 3)
        assert a["num_keypoints"] == int((kp[:, 2] > 0).sum())
        assert ((kp[:, 2] > 0) | (kp[:, :2] == 0).all(1)).all()  # unlabelled keypoints sit at (0, 0)
        assert ((kp[kp[:, 2] > 0, :2] >= 0) & (kp[kp[:, 2] > 0, :2] <= 127)).all()  # inside the image
        assert a["area"] > 0 and len(a["bbox"]) == 4 and a["segmentation"]["size"] == [128, 128]
        labelled += a["num_keypoints"]
    assert labelled > 0
    image = cv2.imread(str(root / "images" / "train" / data["images"][0]["file_name"]))
    assert image.shape == (128, 128, 3)


@pytest.mark.parametrize("k", SYMMETRIC)
def test_body_plan_is_mirror_symmetric_and_deterministic(k: int) -> None:
    spec = build_keypoint_spec(LAYOUTS[k])
    plan = body_plan(spec)
    flip = spec.flip_index()
    np.testing.assert_array_equal(plan.flip, flip)
    np.testing.assert_allclose(plan.rest[flip], plan.rest * [-1.0, 1.0], atol=1e-12)
    assert (plan.rest[[a for a, _ in spec.flip_pairs], 0] > 0).all()  # left keypoints on the figure's left
    has_parent = plan.parent >= 0
    np.testing.assert_array_equal(plan.parent[flip][has_parent[flip]], flip[plan.parent[has_parent[flip]]])
    assert [plan.colors[i] for i in flip] == list(plan.colors)
    assert [plan.shapes[i] for i in flip] == list(plan.shapes)
    limbs = {frozenset(e) for e in plan.limbs}
    assert {frozenset((int(flip[a]), int(flip[b]))) for a, b in plan.limbs} == limbs
    assert {frozenset(e) for e in spec.skeleton} <= limbs
    # every keypoint apart at rest; the plan depends on the layout only (rebuilt spec, same plan)
    d = np.linalg.norm(plan.rest[:, None] - plan.rest[None], axis=-1) + np.eye(k)
    assert d.min() > 2 * plan.marker
    again = body_plan(build_keypoint_spec(json.loads(json.dumps(LAYOUTS[k])) if k != 14 else {"builtin": "crowdpose"}))
    np.testing.assert_array_equal(again.rest, plan.rest)
    renamed = {**spec.__dict__, "names": tuple(n + "_x" for n in spec.names)}
    assert not np.array_equal(body_plan(type(spec)(**renamed)).rest, plan.rest)


def _figure_frame(fig: dict, centre: np.ndarray) -> np.ndarray:
    r = np.deg2rad(-fig["lean"])
    p = (fig["keypoints"] - centre) / fig["height"]
    return np.stack([np.cos(r) * p[:, 0] - np.sin(r) * p[:, 1], np.sin(r) * p[:, 0] + np.cos(r) * p[:, 1]], 1)


@pytest.mark.parametrize("k", SYMMETRIC)
def test_flipped_figures_are_figures(k: int) -> None:
    """A mirrored figure with swapped labels is drawn exactly like the mirrored image, and is as likely."""
    spec = build_keypoint_spec(LAYOUTS[k])
    plan = body_plan(spec)
    flip = spec.flip_index()
    size, centre = 160, np.array([80.0, 80.0])
    rng = np.random.default_rng(0)

    # drawing: the flipped image is the drawing of the flipped figure (up to anti-aliasing)
    for _ in range(3):
        fig = random_figure(rng, plan, centre, 120.0)
        mirrored = {
            **fig,
            "keypoints": np.stack([size - 1 - fig["keypoints"][:, 0], fig["keypoints"][:, 1]], 1)[flip],
            "lean": -fig["lean"],
            "right_first": not fig["right_first"],
        }
        a, b = np.zeros((size, size, 3), np.uint8), np.zeros((size, size, 3), np.uint8)
        la, lb = np.zeros((size, size), np.uint16), np.zeros((size, size), np.uint16)
        _draw_generic(a, la, 1, fig, plan)
        _draw_generic(b, lb, 1, mirrored, plan)
        diff = np.abs(a[:, ::-1].astype(int) - b.astype(int)).max(-1)
        assert (diff > 60).sum() <= 5 and diff.mean() < 0.5  # (measured: 0 pixels, mean < 0.1)
        assert ((la[:, ::-1] > 0) != (lb > 0)).mean() < 0.003  # silhouettes agree (measured: < 0.0012)

    # distribution: figure-frame positions and limb lengths of flipped figures match the originals
    frames = np.stack([_figure_frame(random_figure(rng, plan, centre, 100.0), centre) for _ in range(600)])
    flipped = frames[:, flip] * [-1.0, 1.0]
    spread = frames.std(0) + 0.01
    assert (np.abs(frames.mean(0) - flipped.mean(0)) < 0.3 * spread).all()
    for a, b in plan.limbs:
        length = np.linalg.norm(frames[:, a] - frames[:, b], axis=1)
        length_flipped = np.linalg.norm(flipped[:, a] - flipped[:, b], axis=1)
        assert abs(length.mean() - length_flipped.mean()) < 0.1 * length.mean()
    # per figure, the limb lengths of each limb and its mirror image swap
    for fr in frames[:5]:
        mir = fr[flip] * [-1.0, 1.0]
        for (a, b), m in zip(plan.limbs, plan.mirror_limb, strict=True):
            c, d = plan.limbs[m]
            assert np.isclose(np.linalg.norm(mir[a] - mir[b]), np.linalg.norm(fr[c] - fr[d]))


@pytest.mark.parametrize("k", [4, 5, 14, 35])
def test_visible_keypoints_sit_on_their_markers(k: int) -> None:
    """Learnable: a visible keypoint of a large figure shows its own marker colour."""
    spec = build_keypoint_spec(LAYOUTS[k])
    plan = body_plan(spec)
    hits = total = 0
    for index in range(6):
        img, anns = render_image(1, "train", index, 192, 3, (80, 180), spec)
        for a in anns:
            kp = np.asarray(a["keypoints"]).reshape(k, 3)
            for j, (x, y, v) in enumerate(kp):
                if v == 2:
                    total += 1
                    pixel = img[int(round(y)), int(round(x))].astype(int)
                    hits += int(np.abs(pixel - plan.colors[j]).max() <= 40)
    assert total >= 20 and hits / total > 0.75


def test_layout_change_regenerates(tmp_path: Path) -> None:
    args = {"num_train": 2, "num_val": 1, "image_size": 96, "seed": 0}
    ann = tmp_path / "annotations" / "person_keypoints_train.json"
    generate_synthetic(tmp_path, keypoints=LAYOUTS[4], **args)
    assert len(json.loads(ann.read_text())["categories"][0]["keypoints"]) == 4
    generate_synthetic(tmp_path, keypoints=LAYOUTS[5], **args)
    assert len(json.loads(ann.read_text())["categories"][0]["keypoints"]) == 5
    stamp = ann.stat().st_mtime_ns
    generate_synthetic(tmp_path, keypoints=build_keypoint_spec(LAYOUTS[5]), **args)
    assert ann.stat().st_mtime_ns == stamp  # same layout: nothing rewritten
    generate_synthetic(tmp_path, **args)
    assert len(json.loads(ann.read_text())["categories"][0]["keypoints"]) == 17
    assert "keypoints" not in json.loads((tmp_path / "synthetic_meta.json").read_text())  # COCO meta as before


def test_datamodule_trains_on_a_custom_layout(tmp_path: Path) -> None:

    spec = build_keypoint_spec(LAYOUTS[35])
    root = generate_synthetic(tmp_path, num_train=4, num_val=1, image_size=128, seed=0, keypoints=spec)
    dm = synthetic_datamodule(root, keypoints=spec, input_size=128, batch_size=2, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["heatmaps"].shape == (2, 36, 32, 32)
    assert float(batch["heatmaps"][:, :35].max()) > 0.5
