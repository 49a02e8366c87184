"""COCO-format datasets, augmentation and the DataModule on the real samples and a custom layout."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import compose_data
from omegaconf import OmegaConf

from dekr.codec.encode import TargetEncoder
from dekr.data.coco import CocoKeypointDataset, eval_collate, ignore_region
from dekr.data.datamodule import DEKRDataModule
from dekr.data.transforms import FlipWithPairs, TrainTransform, crop_matrix
from dekr.keypoints import COCO, CROWDPOSE, build_keypoint_spec

ROOT = Path(__file__).resolve().parents[1]


def digest(arr: np.ndarray) -> np.ndarray:
    """Per-channel digest of benchmarks/make_golden_targets.py: sum, position-weighted sum, non-zeros."""
    a = arr.astype(np.float64)
    ys, xs = np.mgrid[0 : a.shape[1], 0 : a.shape[2]]
    position = 1.0 + xs + 1000.0 * ys
    return np.stack([a.sum((1, 2)), (a * position).sum((1, 2)), (a != 0).sum((1, 2))], axis=1)


def coco_module(sample: Path, **kwargs) -> DEKRDataModule:
    args = dict(
        keypoints={"builtin": "coco"},
        root=str(sample),
        train_ann="person_keypoints_sample.json",
        train_images=".",
        val_ann="person_keypoints_sample.json",
        val_images=".",
        batch_size=2,
        num_workers=0,
    )
    args.update(kwargs)
    return DEKRDataModule(**args)


def crowdpose_module(sample: Path, **kwargs) -> DEKRDataModule:
    args = dict(
        keypoints={"builtin": "crowdpose"},
        root=str(sample),
        train_ann="crowdpose_sample.json",
        train_images=".",
        val_ann="crowdpose_sample.json",
        val_images=".",
        batch_size=2,
        num_workers=0,
        min_center_area=0,
        ignore_unlabelled=False,
    )
    args.update(kwargs)
    return DEKRDataModule(**args)


def test_coco_sample_loads(coco_sample: Path) -> None:
    dm = coco_module(coco_sample)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 512, 512) and batch["image"].dtype == torch.float32
    assert batch["heatmaps"].shape == (2, 18, 128, 128) and batch["heatmap_mask"].shape == (2, 128, 128)
    m = len(batch["offset_pixel"])
    assert m > 0 and batch["offset_target"].shape == (m, 17, 2) and batch["offset_weight"].shape == (m, 17)
    assert batch["offset_pixel"].max() < 2 * 128 * 128 and (batch["offset_weight"] > 0).any()
    assert batch["heatmaps"].amax() > 0.5
    assert abs(float(batch["image"].mean())) < 2.0
    val = next(iter(dm.val_dataloader()))
    assert isinstance(val, list) and len(val) == 1
    sample = val[0]
    assert set(sample) == {"image_id", "image", "keypoints"} and sample["image"].dtype == np.uint8
    assert sample["keypoints"].shape[1:] == (17, 3)
    assert sample["image"].shape == (425, 640, 3) and sample["image_id"] == 785


def test_crowdpose_sample_loads(crowdpose_sample: Path) -> None:
    dm = crowdpose_module(crowdpose_sample)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["heatmaps"].shape == (2, 15, 128, 128) and batch["offset_target"].shape[1:] == (14, 2)
    dm.setup("test")
    samples = [s for batch in dm.test_dataloader() for s in batch]
    assert len(samples) == 2 and all("crowd_index" in s for s in samples)
    assert {s["crowd_index"] for s in samples} == {0.33, 0.39}


def test_ignore_masks(coco_sample: Path, crowdpose_sample: Path) -> None:
    ds = CocoKeypointDataset(coco_sample / "person_keypoints_sample.json", coco_sample, COCO, train=False)
    for index, image_id in enumerate(ds.ids):
        anns = ds.annotations(image_id)
        unlabelled = any(a["num_keypoints"] == 0 or a["iscrowd"] for a in anns)
        mask = ds.raw_sample(index)["mask"]
        assert mask.dtype == bool
        assert (~mask).any() == unlabelled, image_id  # ignored pixels exactly where unlabelled people are
    # CrowdPose has no segmentations: with ignore_unlabelled the bbox is used
    ds = CocoKeypointDataset(crowdpose_sample / "crowdpose_sample.json", crowdpose_sample, CROWDPOSE, train=False)
    masks = {ds.ids[i]: ds.raw_sample(i)["mask"] for i in range(len(ds))}
    for image_id, mask in masks.items():
        has_empty = any(a["num_keypoints"] == 0 for a in ds.annotations(image_id))
        assert (~mask).any() == has_empty


def test_ignore_region_polygon_and_rle() -> None:
    poly = {"iscrowd": 0, "num_keypoints": 0, "segmentation": [[2, 2, 8, 2, 8, 8, 2, 8]]}
    from pycocotools import mask as mask_utils

    m = np.zeros((20, 20), np.uint8)
    m[10:15, 12:18] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    crowd = {"iscrowd": 1, "num_keypoints": 0, "segmentation": rle}
    labelled = {"iscrowd": 0, "num_keypoints": 3, "segmentation": [[0, 0, 19, 0, 19, 19]]}
    region = ignore_region([poly, crowd, labelled], 20, 20)
    assert region[5, 5] and region[12, 15] and not region[0, 19] and region.sum() < 100


def _people(n: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    kp = np.zeros((n, 17, 3))
    kp[:, :, :2] = rng.uniform(50, 250, (n, 17, 2))
    kp[:, :, 2] = 2
    centers, areas = TargetEncoder(COCO, 64).centers_and_areas(kp)
    return kp, centers, areas


@pytest.mark.parametrize("shift", [0.0, 3.0])
def test_flip_twice_is_identity(shift: float) -> None:
    flip = FlipWithPairs(COCO.flip_index(with_center=True), label_shift=shift, p=1.0)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
    mask = rng.integers(0, 2, (8, 12)).astype(np.float32)
    kps = rng.uniform(0, 40, (3 * 18, 2))
    params = {"shape": image.shape}
    once = flip.apply_to_keypoints(kps, **params)
    twice = flip.apply_to_keypoints(once, **params)
    np.testing.assert_allclose(twice, kps, atol=1e-9)
    np.testing.assert_array_equal(flip.apply(flip.apply(image)), image)
    np.testing.assert_array_equal(flip.apply_to_mask(flip.apply_to_mask(mask)), mask)
    # one flip mirrors x and swaps the left/right rows (left eye row 1 <- right eye row 2)
    np.testing.assert_allclose(once[1, 0], 47 - kps[2, 0] - shift)
    np.testing.assert_allclose(once[17, :], [47 - kps[17, 0] - shift, kps[17, 1]])


def test_transform_geometry_and_visibility() -> None:
    kp, centers, areas = _people()
    kp[0, 3, :2] = [-50, 20]  # outside the image
    image = np.zeros((300, 400, 3), np.uint8)
    t = TrainTransform(COCO, 256, 4, min_scale=1, max_scale=1, max_rotation=0, max_translate=0, flip_prob=0, seed=0)
    out = t(image, np.ones((300, 400), bool), kp, centers, areas)
    mat = crop_matrix(np.array([200.0, 150.0]), 300 / 200, 256)
    expected = (kp[..., :2] @ mat[:, :2].T + mat[:, 2]) / 4
    np.testing.assert_allclose(out.keypoints[..., :2], expected, atol=1e-4)
    assert out.keypoints[0, 3, 2] == 0 and out.keypoints[1, 3, 2] == 2
    np.testing.assert_allclose(out.areas, areas * (256 / 300) ** 2)
    assert out.image.shape == (3, 256, 256) and out.mask.shape == (64, 64)
    assert out.mask.min() == 1  # the 300 x 300 crop lies inside the image
    zoomed = TrainTransform(COCO, 256, 4, min_scale=1.5, max_scale=1.5, max_rotation=0, max_translate=0, flip_prob=0)
    out = zoomed(image, np.ones((300, 400), bool), kp, centers, areas)
    assert out.mask[0, 32] == 0 and out.mask[32, 32] == 1  # the black border is ignored


def test_reference_flip_shift() -> None:
    kp, centers, areas = _people()
    image = np.zeros((256, 256, 3), np.uint8)
    kwargs = dict(min_scale=1, max_scale=1, max_rotation=0, max_translate=0, flip_prob=1.0, seed=0)
    ref = TrainTransform(COCO, 256, 4, flip_label_shift="reference", **kwargs)(
        image, np.ones((256, 256)), kp, centers, areas
    )
    exact = TrainTransform(COCO, 256, 4, flip_label_shift="consistent", **kwargs)(
        image, np.ones((256, 256)), kp, centers, areas
    )
    np.testing.assert_allclose(exact.keypoints[..., 0] - ref.keypoints[..., 0], 0.75)  # 3 input px
    flip = COCO.flip_index()
    np.testing.assert_allclose(exact.keypoints[:, flip, 0], 255 / 4 - kp[..., 0] / 4, atol=1e-4)


def test_unreadable_image_is_skipped(coco_sample: Path, tmp_path: Path, caplog) -> None:
    for f in coco_sample.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "000000000785.jpg").write_bytes(b"not a jpeg")
    dm = coco_module(tmp_path, batch_size=4)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING):
        batches = list(dm.train_dataloader())
        val = [s for b in dm.val_dataloader() for s in b]
    assert sum(len(b["image"]) for b in batches) == 4
    assert len(val) == 3 and 785 not in {s["image_id"] for s in val}
    assert dm.datasets["train"].num_skipped >= 1 and dm.datasets["val"].num_skipped == 1
    assert "000000000785.jpg" in caplog.text
    assert eval_collate([None, None]) == []


def test_missing_data_fails_with_path(tmp_path: Path, coco_sample: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset root not found.*nowhere"):
        coco_module(tmp_path / "nowhere").setup("fit")
    with pytest.raises(FileNotFoundError, match="annotation file not found.*missing.json"):
        coco_module(coco_sample, train_ann="missing.json").setup("fit")
    with pytest.raises(ValueError, match="declares 17 keypoints.*spec 'crowdpose' has 14"):
        coco_module(coco_sample, keypoints={"builtin": "crowdpose"}).setup("fit")


def write_custom_dataset(root: Path, k: int = 5, n_images: int = 3) -> None:
    """A tiny COCO-format dataset with ``k`` keypoints, one unlabelled person and a crowd."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(1, n_images + 1):
        img = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / f"{i}.jpg"), img)
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 160, "height": 120})
        for _ in range(2):
            kp = np.concatenate([rng.uniform(20, 100, (k, 2)), np.full((k, 1), 2)], 1)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "iscrowd": 0,
                    "num_keypoints": k,
                    "keypoints": kp.reshape(-1).tolist(),
                    "area": 3000.0,
                    "bbox": [20, 20, 80, 80],
                }
            )
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": i,
                "category_id": 1,
                "iscrowd": 0,
                "num_keypoints": 0,
                "keypoints": [0] * (3 * k),
                "area": 400.0,
                "bbox": [120, 10, 20, 20],
            }
        )
    images.append({"id": 99, "file_name": "1.jpg", "width": 160, "height": 120})  # no people
    cat = {"id": 1, "name": "thing", "keypoints": [f"k{j}" for j in range(k)], "skeleton": []}
    (root / "train.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": [cat]}))


def test_custom_five_keypoint_dataset(tmp_path: Path) -> None:
    write_custom_dataset(tmp_path)
    cfg = compose_data("custom_example")
    cfg = OmegaConf.merge(
        cfg,
        {
            "root": str(tmp_path),
            "train_ann": "train.json",
            "train_images": "images",
            "val_ann": "train.json",
            "val_images": "images",
            "input_size": 128,
            "batch_size": 2,
            "num_workers": 0,
        },
    )
    from hydra.utils import instantiate

    dm = instantiate(cfg)
    assert dm.spec.num_keypoints == 5 and not dm.spec.can_flip
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 3 and len(dm.datasets["val"]) == 4  # val keeps the empty image
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 128, 128)
    assert batch["heatmaps"].shape == (2, 6, 32, 32) and batch["offset_target"].shape[1:] == (5, 2)
    assert (batch["heatmap_mask"] == 0).any()  # the unlabelled person is masked
    assert len(next(iter(dm.val_dataloader()))) == 1


@pytest.mark.parametrize("name", ["coco", "crowdpose", "synthetic", "custom_example"])
def test_data_configs(name: str) -> None:
    cfg = compose_data(name)
    assert cfg._target_ == "dekr.data.DEKRDataModule"
    spec = build_keypoint_spec(OmegaConf.to_container(cfg.keypoints))
    assert spec.num_keypoints == {"coco": 17, "crowdpose": 14, "synthetic": 17, "custom_example": 5}[name]
    assert cfg.input_size in (256, 512) and cfg.root
    dm = DEKRDataModule(**{k: v for k, v in cfg.items() if k != "_target_"})
    assert dm.make_encoder().output_size == (cfg.input_size // cfg.codec.stride,) * 2


def test_augmented_samples_match_reference(coco_sample: Path) -> None:
    """Replaying the official pipeline's random affine + flip gives its image and targets exactly."""
    golden = np.load(ROOT / "tests" / "data" / "golden_targets.npz")

    ds = CocoKeypointDataset(coco_sample / "person_keypoints_sample.json", coco_sample, COCO, train=False)
    transform = TrainTransform(COCO, 512, 4, flip_label_shift="reference")
    encoder = TargetEncoder(COCO, 128, fix_zero_keypoint_center=False)
    flips = set()
    for name in golden["samples"]:
        image_id, cx, cy, scale, rotation, flip = golden[f"{name}/params"]
        raw = ds.raw_sample(ds.ids.index(int(image_id)))
        centers, areas = encoder.centers_and_areas(raw["keypoints"], raw["ann_areas"])
        aug = transform.replay(
            raw["image"], raw["mask"], raw["keypoints"], centers, areas, (cx, cy), scale, rotation, bool(flip)
        )
        out = {"image": aug.image, **encoder(aug.keypoints, aug.centers, aug.areas, aug.mask)}
        for key, value in out.items():
            np.testing.assert_allclose(
                digest(value), golden[f"{name}/{key}"], rtol=1e-6, atol=1e-6, err_msg=f"{name} {key}"
            )
        flips.add(bool(flip))
    assert flips == {True, False}


def test_batched_fetch_equals_single_and_avoids_copies(coco_sample: Path) -> None:
    from dekr.data.coco import train_collate

    def dataset() -> CocoKeypointDataset:
        return CocoKeypointDataset(
            coco_sample / "person_keypoints_sample.json",
            coco_sample,
            COCO,
            train=True,
            transform=TrainTransform(COCO, 256, 4, seed=5),
            encoder=TargetEncoder(COCO, 64),
        )

    single, batched = dataset(), dataset()
    indices = [2, 0, 3]
    one_by_one = [single[i] for i in indices]
    expected = train_collate(one_by_one)
    samples = batched.__getitems__(indices)
    for sample, alone in zip(samples, one_by_one):  # batched encoding = encoding one by one
        for key in ("offset_pixel", "offset_target", "offset_weight"):
            torch.testing.assert_close(sample[key], alone[key], rtol=0, atol=0)
    batch = train_collate(samples)
    assert batch.keys() == expected.keys()
    assert batch["offset_pixel"].max() >= 64 * 64  # batch-wide pixel index
    for key, value in batch.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
        if key in ("image", "heatmaps", "heatmap_mask"):  # dense entries: the batch buffer, no copy
            assert value.untyped_storage().data_ptr() == samples[0][key].untyped_storage().data_ptr()
    # anything else is stacked as usual
    mixed = train_collate([single[0], single[1]])
    assert mixed["heatmaps"].shape == (2, 18, 64, 64)
