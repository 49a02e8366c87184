"""COCO-format keypoint datasets (COCO, CrowdPose, any custom layout) for bottom-up training/eval.

A *training* sample (dict of tensors) holds ``image [3, S, S]``, the loss mask ``heatmap_mask
[S/4, S/4]`` and the compact DEKR targets (``heatmaps``, ``offset_pixel``, ``offset_target``,
``offset_weight``, see :mod:`dekr.codec.encode`); :func:`train_collate` batches them.
An *evaluation* sample (dict) holds ``image_id``, ``image`` (uint8 ``[H, W, 3]`` RGB, original
size) and, when the annotation file has it, ``crowd_index`` (CrowdPose); see ``CONVENTIONS.md``.

Annotation files are read by :func:`dekr.data.annotations.load_annotations`, the reader the metric
uses too: every annotation is validated and missing ``area``/``bbox``/``iscrowd``/``num_keypoints``
are filled (``python -m dekr.data.check`` shows what and where).

Annotation handling, as the reference:

* people = annotations that are not crowds or have labelled keypoints; all of them feed the
  targets (their ``[P, K, 3]`` keypoints, their centre and "area", see
  :func:`dekr.codec.encode.person_centers_and_areas`);
* the loss mask (``ignore_unlabelled=True``) is 0 on crowd regions and on people without labelled
  keypoints (segmentation polygons or RLE via pycocotools; an annotation without segmentation
  falls back to its ``bbox``); the reference's CrowdPose loader uses no mask
  (``ignore_unlabelled=False``);
* training skips images without annotations (``skip_empty``); evaluation keeps every image.

Unreadable images are skipped with a warning and counted (``num_skipped``): training substitutes
the next image, evaluation yields ``None`` (dropped by :func:`eval_collate`).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset, default_collate, get_worker_info

from dekr.codec.encode import TargetEncoder
from dekr.data.annotations import build_coco, load_annotations
from dekr.data.transforms import TrainTransform
from dekr.keypoints import KeypointSpec

log = logging.getLogger(__name__)


def read_image(path: str | os.PathLike) -> np.ndarray | None:
    """uint8 ``[H, W, 3]`` RGB, or ``None`` when the file is missing or cannot be decoded.

    EXIF orientation is ignored, as annotations refer to the stored pixel grid (as the reference).
    """
    data = np.fromfile(str(path), dtype=np.uint8) if os.path.isfile(path) else None
    if data is None or data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_coco(ann_file: str | os.PathLike, spec: KeypointSpec) -> COCO:
    """Read, validate and normalise a COCO-format keypoint file for ``spec`` (quietly).

    See :func:`dekr.data.annotations.load_annotations` (the same reader the metric uses): missing
    ``area``/``bbox``/``iscrowd``/``num_keypoints`` are filled, every annotation is checked, and a bad
    file raises :class:`~dekr.data.annotations.AnnotationError` naming the annotation ids and the fix.
    """
    dataset, _ = load_annotations(ann_file, spec, need_file_names=True)
    return build_coco(dataset)


def people_arrays(anns: Sequence[dict], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints ``[P, K, 3]`` float64 (original px) and annotation areas ``[P]`` of ``anns``.

    A missing ``area`` falls back to the bbox area, then to infinity (no small-person rule).
    """
    kpts = np.zeros((len(anns), k, 3), dtype=np.float64)
    areas = np.full(len(anns), np.inf)
    for i, ann in enumerate(anns):
        if ann.get("keypoints"):
            kpts[i] = np.asarray(ann["keypoints"], dtype=np.float64).reshape(k, 3)
        if "area" in ann:
            areas[i] = float(ann["area"])
        elif "bbox" in ann:
            areas[i] = float(ann["bbox"][2] * ann["bbox"][3])
    return kpts, areas


def num_keypoints(ann: dict) -> int:
    """``num_keypoints`` of an annotation, counted from ``keypoints`` when the field is missing."""
    if "num_keypoints" in ann:
        return int(ann["num_keypoints"])
    return int((np.asarray(ann.get("keypoints") or [0, 0, 0]).reshape(-1, 3)[:, 2] > 0).sum())


def ignore_region(anns: Sequence[dict], height: int, width: int) -> np.ndarray:
    """bool ``[H, W]``: True on crowd regions and on people without labelled keypoints."""
    region = np.zeros((height, width), dtype=bool)
    for ann in anns:
        if not (ann.get("iscrowd", 0) or num_keypoints(ann) == 0):
            continue
        seg = ann.get("segmentation")
        if isinstance(seg, list):
            seg = [poly for poly in seg if len(poly) >= 6]  # degenerate polygons cannot be rasterised
        if isinstance(seg, dict) or (isinstance(seg, list) and len(seg) > 0):
            if isinstance(seg, list):
                rles = mask_utils.frPyObjects(seg, height, width)
                rle = mask_utils.merge(rles)
            elif isinstance(seg.get("counts"), list):
                rle = mask_utils.frPyObjects(seg, height, width)
            else:
                rle = seg
            with warnings.catch_warnings():  # pycocotools' decode trips numpy 2's __array__ copy warning
                warnings.simplefilter("ignore", DeprecationWarning)
                region |= mask_utils.decode(rle).astype(bool)
        elif ann.get("bbox"):
            x, y, w, h = ann["bbox"]
            x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
            region[y0 : int(np.ceil(y + h)), x0 : int(np.ceil(x + w))] = True
    return region


class CocoKeypointDataset(Dataset):
    """Bottom-up samples from a COCO-format keypoint annotation file.

    Args:
        ann_file: COCO-format JSON (``person_keypoints_*.json``).
        image_dir: folder of the images (``file_name`` is relative to it).
        spec: keypoint layout.
        train: training samples (augmented, with targets) or evaluation samples.
        transform: training augmentation; required when ``train``.
        encoder: target encoder; required when ``train``.
        skip_empty: drop images without annotations (default: ``train``).
        ignore_unlabelled: build the loss mask from crowds and people without keypoints.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        spec: KeypointSpec,
        train: bool,
        transform: TrainTransform | None = None,
        encoder: TargetEncoder | None = None,
        skip_empty: bool | None = None,
        ignore_unlabelled: bool = True,
    ) -> None:
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(
                f"image folder not found: {self.image_dir}. Download the dataset images there or set "
                "the data config's image folder to where they are."
            )
        if train and (transform is None or encoder is None):
            raise ValueError("a training dataset needs a transform and a target encoder")
        self.spec = spec
        self.train = train
        self.transform = transform
        self.encoder = encoder
        self.ignore_unlabelled = ignore_unlabelled
        self.coco = load_coco(ann_file, spec)
        ids = sorted(self.coco.imgs)
        if train if skip_empty is None else skip_empty:
            ids = [i for i in ids if len(self.coco.getAnnIds(imgIds=i, iscrowd=None)) > 0]
        self.ids = ids
        self.num_skipped = 0

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: int) -> Path:
        return self.image_dir / self.coco.imgs[image_id]["file_name"]

    def annotations(self, image_id: int) -> list[dict]:
        return self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, iscrowd=None))

    def _skip(self, image_id: int) -> None:
        self.num_skipped += 1
        log.warning(
            "skipping unreadable image %s (image id %d; %d skipped so far in this process)",
            self.image_path(image_id),
            image_id,
            self.num_skipped,
        )

    def raw_sample(self, index: int) -> dict[str, Any] | None:
        """Image, people (original px) and loss mask of one image, before augmentation.

        Returns ``None`` when the image cannot be read. Keys: ``image_id``, ``image`` uint8
        ``[H, W, 3]``, ``keypoints [P, K, 3]``, ``ann_areas [P]``, ``mask`` bool ``[H, W]``
        (False = ignored).
        """
        image_id = self.ids[index]
        image = read_image(self.image_path(image_id))
        if image is None:
            self._skip(image_id)
            return None
        h, w = image.shape[:2]
        anns = self.annotations(image_id)
        mask = ~ignore_region(anns, h, w) if self.ignore_unlabelled else np.ones((h, w), dtype=bool)
        people = [a for a in anns if not a.get("iscrowd", 0) or num_keypoints(a) > 0]
        kpts, ann_areas = people_arrays(people, self.spec.num_keypoints)
        return {"image_id": image_id, "image": image, "keypoints": kpts, "ann_areas": ann_areas, "mask": mask}

    def train_sample(self, raw: dict[str, Any], seed: int | None = None) -> dict[str, torch.Tensor]:
        """Augment one raw sample (with the augmentation ``seed`` when given) and encode its targets."""
        assert self.transform is not None and self.encoder is not None
        centers, areas = self.encoder.centers_and_areas(raw["keypoints"], raw["ann_areas"])
        aug = self.transform(raw["image"], raw["mask"], raw["keypoints"], centers, areas, seed=seed)
        targets = self.encoder.encode(aug.keypoints, aug.centers, aug.areas)
        return {
            "image_id": torch.tensor(int(raw["image_id"])),
            "image": torch.from_numpy(aug.image),
            "heatmap_mask": torch.from_numpy(aug.mask),
            **{key: torch.from_numpy(value) for key, value in targets.items()},
        }

    def eval_sample(self, raw: dict[str, Any]) -> dict[str, Any]:
        sample: dict[str, Any] = {
            "image_id": int(raw["image_id"]),
            "image": raw["image"],
            "keypoints": raw["keypoints"],
        }  # GT [P, K, 3], for overlays only
        crowd_index = self.coco.imgs[raw["image_id"]].get("crowdIndex")
        if crowd_index is not None:
            sample["crowd_index"] = float(crowd_index)
        return sample

    def _readable_raw(self, index: int) -> dict[str, Any]:
        """Raw sample of ``index``, or of the next readable image when it cannot be read."""
        for attempt in range(min(len(self.ids), 16)):
            raw = self.raw_sample((index + attempt) % len(self.ids))
            if raw is not None:
                return raw
        raise RuntimeError(
            f"16 consecutive unreadable images from index {index} in {self.image_dir}; check the dataset"
        )

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        if not self.train:
            raw = self.raw_sample(index)
            return None if raw is None else self.eval_sample(raw)
        return self.train_sample(self._readable_raw(index), seed=getattr(index, "seed", None))

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any] | None]:
        """A whole batch at once (used by the DataLoader): the targets of all its images are encoded
        in one vectorized call. Images, masks and heatmaps are written straight into batch buffers
        (shared memory inside a loader worker) and returned as views of them, which
        :func:`train_collate` hands on without copying."""
        if not self.train:
            return [self[i] for i in indices]
        assert self.transform is not None and self.encoder is not None
        raws = [self._readable_raw(i) for i in indices]
        b, s = len(raws), self.transform.input_size
        h, w = self.encoder.output_size
        k = self.spec.num_keypoints
        batch = {
            "image": _batch_tensor((b, 3, s, s)),
            "heatmap_mask": _batch_tensor((b, h, w)),
            "heatmaps": _batch_tensor((b, k + 1, h, w)),
        }
        augmented = []
        for i, raw in enumerate(raws):
            centers, areas = self.encoder.centers_and_areas(raw["keypoints"], raw["ann_areas"])
            aug = self.transform(
                raw["image"],
                raw["mask"],
                raw["keypoints"],
                centers,
                areas,
                image_out=batch["image"][i].numpy(),
                seed=getattr(indices[i], "seed", None),  # per-sample seed from the sampler (SeededIndex)
            )
            batch["heatmap_mask"][i] = torch.from_numpy(aug.mask)
            augmented.append(aug)
        targets = self.encoder.encode_batch(
            [a.keypoints for a in augmented],
            [a.centers for a in augmented],
            [a.areas for a in augmented],
            heatmaps_out=batch["heatmaps"].numpy(),
        )
        samples = [
            {"image_id": torch.tensor(int(raw["image_id"])), **{key: value[i] for key, value in batch.items()}}
            for i, raw in enumerate(raws)
        ]
        ends = np.cumsum(targets["offset_counts"])
        pixel = targets["offset_pixel"] - np.repeat(np.arange(b) * (h * w), targets["offset_counts"])
        for key, values in (
            ("offset_pixel", pixel),
            ("offset_target", targets["offset_target"]),
            ("offset_weight", targets["offset_weight"]),
        ):
            for sample, part in zip(samples, np.split(values, ends[:-1])):
                sample[key] = torch.from_numpy(part)
        return samples


def _batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """Zero float32 tensor; inside a DataLoader worker it is allocated in shared memory (fresh shared
    memory reads as zero), as ``default_collate`` does, so the batch crosses to the main process
    without another copy."""
    if get_worker_info() is None:
        return torch.zeros(shape, dtype=torch.float32)  # (numpy would back it with stall-prone huge pages)
    proto = torch.empty(0, dtype=torch.float32)
    storage = proto._typed_storage()._new_shared(math.prod(shape), device=proto.device)
    return proto.new(storage).resize_(*shape)


#: per-pixel offset entries of a training sample, concatenated (not stacked) by :func:`train_collate`
OFFSET_KEYS = ("offset_pixel", "offset_target", "offset_weight")


def train_collate(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch training samples: dense entries are stacked (samples that are consecutive views of one
    batch buffer, from :meth:`CocoKeypointDataset.__getitems__`, are returned as that buffer, without
    a copy); the offset entries of all samples are concatenated and ``offset_pixel`` becomes the
    batch-wide index ``(b * h + y) * w + x`` (``h, w`` from ``heatmap_mask``)."""
    out = {}
    for key, first in samples[0].items():
        if key in OFFSET_KEYS:
            continue
        storage, start, n = first.untyped_storage(), first.storage_offset(), first.numel()
        views = first.is_contiguous() and all(
            s[key].untyped_storage().data_ptr() == storage.data_ptr()
            and s[key].is_contiguous()
            and s[key].storage_offset() == start + i * n
            and s[key].shape == first.shape
            for i, s in enumerate(samples)
        )
        if views:
            out[key] = first.new_empty(0).set_(storage, start, (len(samples), *first.shape))
        else:
            out[key] = default_collate([s[key] for s in samples])
    for key in OFFSET_KEYS:
        if key in samples[0]:
            out[key] = torch.cat([s[key] for s in samples])
    if "offset_pixel" in out:  # per-image pixel -> batch-wide pixel
        counts = torch.tensor([len(s["offset_pixel"]) for s in samples])
        out["offset_pixel"] += torch.arange(len(samples)).repeat_interleave(counts) * samples[0]["heatmap_mask"].numel()
    return out


def eval_collate(batch: Sequence[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """Evaluation batches are lists of samples; unreadable images (``None``) are dropped."""
    return [sample for sample in batch if sample is not None]
