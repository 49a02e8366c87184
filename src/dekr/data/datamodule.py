"""``DEKRDataModule``: COCO-format keypoint data for Lightning, configured from ``conf/data/*.yaml``.

Layout: ``root/<*_ann>`` annotation files and ``root/<*_images>`` image folders (relative to
``root``, or absolute). Training batches are dicts of stacked tensors (``CONVENTIONS.md``);
validation and test batches are lists of evaluation samples (:func:`dekr.data.coco.eval_collate`).

Training order and augmentation are functions of (seed, epoch, index) only (:class:`ResumableSampler`),
so a run resumed mid-epoch continues at the right batch with the same images and the same random
crops as an uninterrupted one. DDP: the training sampler shards itself (rank-strided, as
``DistributedSampler``); Lightning inserts distributed samplers for evaluation. Synthetic data
(``synthetic: {...}``) is generated in :meth:`prepare_data` (rank 0, once per node) and is
idempotent.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dekr.codec import CodecConfig, TargetEncoder, default_codec_config
from dekr.codec.encode import COCO_MIN_CENTER_AREA
from dekr.data.coco import CocoKeypointDataset, eval_collate, train_collate
from dekr.data.transforms import TrainTransform
from dekr.keypoints import KeypointSpec, build_keypoint_spec
from dekr.metrics import area_ranges_for


def _plain(node: Any) -> Any:
    """OmegaConf node -> plain Python (dicts/lists); anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(node, (DictConfig, ListConfig)):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return node


class SeededIndex(int):
    """A dataset index that carries the seed of its sample's augmentation (``.seed``)."""

    seed: int

    def __new__(cls, index: int, seed: int) -> SeededIndex:
        obj = super().__new__(cls, index)
        obj.seed = seed
        return obj

    def __reduce__(self) -> tuple[type, tuple[int, int]]:  # through the loader workers' queues
        return SeededIndex, (int(self), self.seed)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Augmentation seed of sample ``index`` in ``epoch``: independent of worker, rank and position."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, index]).generate_state(1)[0])


class ResumableSampler(DistributedSampler):
    """Shuffled training indices whose order is a function of ``(seed, epoch)`` only (the order of
    ``DistributedSampler``: one ``randperm`` per epoch, padded and strided over ``num_replicas``),
    each yielded as a :class:`SeededIndex` with its :func:`sample_seed`.

    ``position()`` (called when iteration starts) returns ``(epoch, batches_done)``: the epoch to
    iterate and how many of its ``batch_size`` batches are already done; those are skipped, so a
    run restored mid-epoch continues with the next batch. Without it the epoch of
    :meth:`set_epoch` is used from its start. ``len()`` is always the whole epoch.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        position: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.batch_size = batch_size
        self.position = position

    def __iter__(self) -> Iterator[SeededIndex]:
        epoch, done = self.position() if self.position is not None else (self.epoch, 0)
        self.epoch = epoch
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.dataset), generator=g).tolist()  # type: ignore[arg-type]
        pad = self.total_size - len(order)
        order += (order * (pad // max(len(order), 1) + 1))[:pad]
        mine = order[self.rank : self.total_size : self.num_replicas]
        for i in mine[min(done * self.batch_size, len(mine)) :]:
            yield SeededIndex(i, sample_seed(self.seed, epoch, i))


class ResumableLoader(DataLoader):
    """The training ``DataLoader``: its iterator (and so the sampler's epoch order and workers)
    starts at the first batch request, i.e. after Lightning has restored a checkpoint's loop
    counters that :class:`ResumableSampler` reads (Lightning creates the iterator earlier, when it
    counts the steps for the LR schedule). Lightning sees it as stateful; its state is the fit
    loop's own counters, so ``state_dict`` is empty."""

    def __iter__(self) -> Iterator[Any]:
        yield from super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class DEKRDataModule(pl.LightningDataModule):
    """Train/val/test data of one COCO-format keypoint dataset.

    Args:
        keypoints: keypoint layout (a spec, a built-in name or a mapping, see
            :func:`dekr.keypoints.build_keypoint_spec`).
        root: dataset root folder.
        train_ann, train_images, val_ann, val_images, test_ann, test_images: paths relative to
            ``root`` (or absolute); test defaults to val.
        input_size: square network input side (512 or 640; smaller for synthetic data).
        codec: the codec settings (stride, input normalisation, target encoding; a
            :class:`~dekr.codec.CodecConfig` or a ``codec`` config node); ``None``: the defaults.
        batch_size: training batch size per process; ``val_batch_size`` for evaluation lists.
        num_workers, pin_memory, persistent_workers: DataLoader settings.
        augmentation: :class:`~dekr.data.transforms.TrainTransform` options (scale, rotation,
            translation, flip probability, ``flip_label_shift``).
        min_center_area: people with a smaller annotation area get no centre (COCO 1024, CrowdPose 0).
        ignore_unlabelled: loss mask from crowds and people without keypoints.
        skip_empty_train: drop training images without annotations.
        metric: ``{"crowd_split", "area_ranges"}`` of the AP metric (see :func:`dekr.metrics.area_ranges_for`).
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
        codec: CodecConfig | Mapping | None = None,
        batch_size: int = 10,
        val_batch_size: int = 1,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        augmentation: Mapping | None = None,
        min_center_area: float = COCO_MIN_CENTER_AREA,
        ignore_unlabelled: bool = True,
        skip_empty_train: bool = True,
        synthetic: Mapping | None = None,
        metric: Mapping | None = None,
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
        if codec is None:
            codec = default_codec_config()
        self.codec = codec if isinstance(codec, CodecConfig) else CodecConfig.from_mapping(codec)
        self.stride = self.codec.stride
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.augmentation = dict(_plain(augmentation) or {})
        self.min_center_area = min_center_area
        self.ignore_unlabelled = ignore_unlabelled
        self.skip_empty_train = skip_empty_train
        self.synthetic = dict(_plain(synthetic)) if synthetic else None
        metric = dict(_plain(metric) or {})
        unknown = sorted(set(metric) - {"crowd_split", "area_ranges"})
        if unknown:
            raise ValueError(f"data.metric: unknown key(s) {unknown}; allowed: crowd_split, area_ranges")
        #: keyword arguments of :class:`dekr.metrics.KeypointAP` for this dataset
        self.metric_options = {
            "crowd_split": metric.get("crowd_split"),
            "area_ranges": area_ranges_for(metric.get("area_ranges", "auto"), self.spec),
        }
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

            generate_synthetic(self.root, keypoints=self.spec, **self.synthetic)

    def make_encoder(self) -> TargetEncoder:
        return TargetEncoder(
            self.spec, self.input_size // self.stride, self.codec.targets, min_center_area=self.min_center_area
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
            transform=TrainTransform(
                self.spec, self.input_size, self.stride, norm=self.codec.input, **self.augmentation
            )
            if train
            else None,
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
    def _loader(self, split: str, loader: type[DataLoader] = DataLoader, **kwargs: Any) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        # the loader's own generator draws the worker base seed: iterating never moves the global RNG
        generator = torch.Generator().manual_seed(_global_seed())
        return loader(
            self.datasets[split],
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers,
            generator=generator,
            **kwargs,
        )

    def _train_position(self) -> tuple[int, int]:
        """``(epoch, batches done in it)`` of the attached trainer's fit loop, read when the training
        sampler starts an epoch: after a restore these are the checkpoint's counters (a checkpoint
        written after an epoch's last batch counts as the next epoch's start)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        loop = trainer.fit_loop
        epoch = loop.epoch_progress.current
        done = loop.epoch_loop.batch_progress.current.processed if epoch.processed == epoch.completed else 0
        return int(epoch.processed), int(done)

    def train_dataloader(self) -> DataLoader:
        if "train" not in self.datasets:
            self.setup("fit")
        dataset = self.datasets["train"]
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = ResumableSampler(
            dataset,
            self.batch_size,
            num_replicas=replicas,
            rank=rank,
            seed=_global_seed(),
            position=self._train_position if trainer is not None else None,
        )
        drop_last = len(sampler) > self.batch_size
        return self._loader(
            "train",
            ResumableLoader,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            collate_fn=train_collate,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", batch_size=self.val_batch_size, shuffle=False, collate_fn=eval_collate)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", batch_size=self.val_batch_size, shuffle=False, collate_fn=eval_collate)


def _global_seed() -> int:
    """The seed of ``pl.seed_everything`` (``PL_GLOBAL_SEED``), 0 when none was set."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))
