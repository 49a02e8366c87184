"""``DEKRDataModule``: COCO-format keypoint data for Lightning, configured from ``conf/data/*.yaml``.

Layout: ``root/<*_ann>`` annotation files and ``root/<*_images>`` image folders (relative to
``root``, or absolute). Training batches are dicts of stacked tensors (``CONVENTIONS.md``);
validation and test batches are lists of evaluation samples (:func:`dekr.data.coco.eval_collate`).

DDP: nothing here depends on the rank; Lightning inserts distributed samplers. Synthetic data
(``synthetic: {...}``) is generated in :meth:`prepare_data` (rank 0, once per node) and is
idempotent.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from dekr.data.coco import CocoKeypointDataset, eval_collate, train_collate
from dekr.data.transforms import TrainTransform
from dekr.keypoints import KeypointSpec, build_keypoint_spec
from dekr.targets import COCO_MIN_CENTER_AREA, TargetEncoder


def _plain(node: Any) -> Any:
    """OmegaConf node -> plain Python (dicts/lists); anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(node, (DictConfig, ListConfig)):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return node


class DEKRDataModule(pl.LightningDataModule):
    """Train/val/test data of one COCO-format keypoint dataset.

    Args:
        keypoints: keypoint layout (a spec, a built-in name or a mapping, see
            :func:`dekr.keypoints.build_keypoint_spec`).
        root: dataset root folder.
        train_ann, train_images, val_ann, val_images, test_ann, test_images: paths relative to
            ``root`` (or absolute); test defaults to val.
        input_size: square network input side (512 or 640; smaller for synthetic data).
        stride: output stride (4).
        batch_size: training batch size per process; ``val_batch_size`` for evaluation lists.
        num_workers, pin_memory, persistent_workers: DataLoader settings.
        augmentation: :class:`~dekr.data.transforms.TrainTransform` options (scale, rotation,
            translation, flip probability, ``flip_label_shift``).
        targets: :class:`~dekr.targets.TargetEncoder` options (``sigma``, ``radius``, ``bg_weight``,
            ``window``, ``area_mode``, ``fix_zero_keypoint_center``).
        min_center_area: people with a smaller annotation area get no centre (COCO 1024, CrowdPose 0).
        ignore_unlabelled: loss mask from crowds and people without keypoints.
        skip_empty_train: drop training images without annotations.
        synthetic: options of :func:`dekr.data.synthetic.generate_synthetic` (``num_train``,
            ``num_val``, ``image_size``, ``seed``); when set, the data is generated under ``root``.
    """

    def __init__(
        self,
        keypoints: Mapping | KeypointSpec | str = "coco",
        root: str = "data/coco",
        train_ann: str = "annotations/person_keypoints_train2017.json",
        train_images: str = "images/train2017",
        val_ann: str = "annotations/person_keypoints_val2017.json",
        val_images: str = "images/val2017",
        test_ann: str | None = None,
        test_images: str | None = None,
        input_size: int = 512,
        stride: int = 4,
        batch_size: int = 10,
        val_batch_size: int = 1,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        augmentation: Mapping | None = None,
        targets: Mapping | None = None,
        min_center_area: float = COCO_MIN_CENTER_AREA,
        ignore_unlabelled: bool = True,
        skip_empty_train: bool = True,
        synthetic: Mapping | None = None,
    ) -> None:
        super().__init__()
        self.spec = build_keypoint_spec(_plain(keypoints))
        self.root = Path(root)
        self.paths = {
            "train": (train_ann, train_images),
            "val": (val_ann, val_images),
            "test": (test_ann or val_ann, test_images or val_images),
        }
        self.input_size = input_size
        self.stride = stride
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.augmentation = dict(_plain(augmentation) or {})
        self.target_options = dict(_plain(targets) or {})
        self.min_center_area = min_center_area
        self.ignore_unlabelled = ignore_unlabelled
        self.skip_empty_train = skip_empty_train
        self.synthetic = dict(_plain(synthetic)) if synthetic else None
        self.datasets: dict[str, CocoKeypointDataset] = {}

    # ------------------------------------------------------------------ set-up
    def _path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    def annotation_file(self, split: str) -> Path:
        """COCO-format annotation file of ``split`` (``train``, ``val`` or ``test``)."""
        return self._path(self.paths[split][0])

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            from dekr.data.synthetic import generate_synthetic

            generate_synthetic(self.root, **self.synthetic)

    def make_encoder(self) -> TargetEncoder:
        return TargetEncoder(
            self.spec,
            self.input_size // self.stride,
            min_center_area=self.min_center_area,
            **self.target_options,
        )

    def make_dataset(self, split: str) -> CocoKeypointDataset:
        ann, images = (self._path(p) for p in self.paths[split])
        if not self.root.is_dir():
            hint = (
                "it is generated automatically by conf/data/synthetic.yaml"
                if self.synthetic is not None
                else "download the dataset there (COCO: https://cocodataset.org/#download; CrowdPose: "
                "https://github.com/Jeff-sjtu/CrowdPose) or set data.root"
            )
            raise FileNotFoundError(f"dataset root not found: {self.root.resolve()}; {hint}")
        train = split == "train"
        return CocoKeypointDataset(
            ann,
            images,
            self.spec,
            train=train,
            transform=TrainTransform(self.spec, self.input_size, self.stride, **self.augmentation) if train else None,
            encoder=self.make_encoder() if train else None,
            skip_empty=self.skip_empty_train if train else False,
            ignore_unlabelled=self.ignore_unlabelled,
        )

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}
        for split in wanted.get(stage or "", ("train", "val", "test")):
            if split not in self.datasets:
                self.datasets[split] = self.make_dataset(split)

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, **kwargs: Any) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        return DataLoader(
            self.datasets[split],
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        drop_last = len(self.datasets.get("train", ())) > self.batch_size
        return self._loader(
            "train", batch_size=self.batch_size, shuffle=True, drop_last=drop_last, collate_fn=train_collate
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", batch_size=self.val_batch_size, shuffle=False, collate_fn=eval_collate)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", batch_size=self.val_batch_size, shuffle=False, collate_fn=eval_collate)
