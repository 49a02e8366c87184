"""Synthetic people: deterministic, idempotent, valid COCO keypoints, usable by the DataModule."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import synthetic_datamodule

from dekr.data.coco import load_coco
from dekr.data.synthetic import generate_synthetic, render_image
from dekr.keypoints import COCO


def test_render_is_deterministic_by_seed() -> None:
    a_img, a_anns = render_image(3, "train", 5, 128)
    b_img, b_anns = render_image(3, "train", 5, 128)
    np.testing.assert_array_equal(a_img, b_img)
    assert a_anns == b_anns
    c_img, _ = render_image(4, "train", 5, 128)
    d_img, _ = render_image(3, "val", 5, 128)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_img, d_img)


def test_generate_is_idempotent_and_valid(tmp_path: Path) -> None:
    root = generate_synthetic(tmp_path / "syn", num_train=24, num_val=3, image_size=160, seed=1)
    ann = root / "annotations" / "person_keypoints_train.json"
    stamp = ann.stat().st_mtime_ns
    generate_synthetic(root, num_train=24, num_val=3, image_size=160, seed=1)
    assert ann.stat().st_mtime_ns == stamp  # same parameters: nothing rewritten
    first = json.loads(ann.read_text())

    coco = load_coco(ann, COCO)
    assert len(coco.imgs) == 24 and len(load_coco(root / "annotations/person_keypoints_val.json", COCO).imgs) == 3
    anns = first["annotations"]
    crowds = [a for a in anns if a["iscrowd"]]
    people = [a for a in anns if not a["iscrowd"]]
    assert crowds and any(a["num_keypoints"] == 0 for a in people)
    vis_counts = np.zeros(3, int)
    for a in people:
        k = np.array(a["keypoints"]).reshape(17, 3)
        assert a["num_keypoints"] == int((k[:, 2] > 0).sum())
        assert ((k[:, 2] > 0) | (k[:, :2] == 0).all(1)).all()  # unlabelled keypoints sit at (0, 0)
        lab = k[k[:, 2] > 0]
        assert ((lab[:, :2] >= 0) & (lab[:, :2] < 160)).all()
        vis_counts += np.bincount(k[:, 2].astype(int), minlength=3)
    assert (vis_counts > 0).all()  # unlabelled, occluded and visible keypoints all occur
    heights = [a["bbox"][3] for a in people]
    assert min(heights) < 40 and max(heights) > 100  # wide range of scales

    # learnable: visible wrists and ankles lie on saturated hand/foot colours, the background is grey
    img = cv2.imread(str(root / "images" / "train" / first["images"][0]["file_name"]))
    sat = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)[:, :, 1].astype(float)
    extremities = (9, 10, 15, 16)
    on_limbs = [
        sat[int(round(y)), int(round(x))]
        for a in people
        if a["image_id"] == 1
        for j, (x, y, v) in enumerate(np.array(a["keypoints"]).reshape(17, 3))
        if v == 2 and j in extremities
    ]
    assert on_limbs and np.median(on_limbs) > 2 * np.median(sat)

    generate_synthetic(root, num_train=4, num_val=2, image_size=160, seed=1)  # new parameters: regenerated
    assert len(json.loads(ann.read_text())["images"]) == 4


def test_datamodule_generates_synthetic(tmp_path: Path) -> None:
    from conftest import compose_data

    from dekr.data.datamodule import DEKRDataModule

    cfg = compose_data("synthetic")
    args = {k: v for k, v in cfg.items() if k != "_target_"}
    args.update(
        root=str(tmp_path / "syn"),
        num_workers=0,
        batch_size=2,
        input_size=128,
        synthetic={"num_train": 4, "num_val": 2, "image_size": 128, "seed": 0},
    )
    dm = DEKRDataModule(**args)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["heatmaps"].shape == (2, 18, 32, 32)
    assert len(next(iter(dm.val_dataloader()))) == 1


def test_workers_draw_distinct_augmentations(tmp_path: Path) -> None:
    """Each loader worker seeds its own augmentation stream (persistent workers, two epochs)."""
    import torch
    from torch.utils.data import DataLoader, Subset

    root = generate_synthetic(tmp_path / "syn", num_train=2, num_val=1, image_size=96, seed=0)
    dm = synthetic_datamodule(root, keypoints="coco", input_size=64, batch_size=2, num_workers=2)
    dm.setup("fit")
    assert dm.train_dataloader().persistent_workers
    same_image = Subset(dm.datasets["train"], [0] * 4)
    loader = DataLoader(same_image, batch_size=1, num_workers=2, persistent_workers=True)
    sums = [float(b["image"].sum()) for _ in range(2) for b in loader]
    assert len(set(sums)) == len(sums)
    assert torch.isfinite(torch.tensor(sums)).all()


def test_generation_refuses_a_folder_with_other_files(tmp_path: Path) -> None:
    """A real dataset's root is never written into, whatever the config says."""
    (tmp_path / "images" / "train2017").mkdir(parents=True)
    (tmp_path / "person_keypoints_val2017.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"refusing.*person_keypoints_val2017.json, images/train2017"):
        generate_synthetic(tmp_path, num_train=2, num_val=1)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["images", "person_keypoints_val2017.json", "train2017"]
