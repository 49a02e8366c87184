"""The LightningModule: network, losses, optimiser/schedule, decoder and AP metric in one place."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from dekr.codec import CodecConfig
from dekr.inference.predictor import PoseEstimator, PoseResult, TestConfig
from dekr.keypoints import KeypointSpec
from dekr.metrics import KeypointAP
from dekr.plaindata import plain

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or infinite, before it can corrupt the weights."""


class DEKRModule(pl.LightningModule):
    """DEKR training and evaluation.

    Args:
        net: the network, ``net(images) -> (heatmaps, offsets)`` (see :class:`dekr.model.DEKR`).
        spec: keypoint layout.
        codec: the codec settings (decoding at validation; stored in checkpoints).
        test: validation/test inference settings (the ``test`` config group).
        optimizer: ``params -> Optimizer`` (a ``_partial_`` config, e.g. ``torch.optim.Adam``).
        scheduler: ``(optimizer, steps_per_epoch) -> LRScheduler`` stepped every step (a ``_partial_``
            config, e.g. :func:`dekr.schedule.step_schedule`).
        loss: the training loss, ``loss(heatmaps, offsets, batch) -> {"heatmap", "offset", "total"}``.
        lr_scaling: ``{"enabled", "base_batch_size"}``: when enabled the optimizer's learning rates are
            multiplied by ``total_batch / base_batch_size``.
        val_annotations: COCO-format GT for the AP metric; read from the datamodule's
            ``annotation_file`` when omitted.

    Logged: ``train/loss``, ``train/loss_heatmap``, ``train/loss_offset``, ``train/images_per_s``,
    ``lr``, and at validation ``val/AP``, ``val/AP50``, ... and ``val/AP_best``.
    """

    def __init__(
        self,
        net: nn.Module,
        spec: KeypointSpec,
        codec: CodecConfig,
        test: TestConfig,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler],
        loss: nn.Module,
        lr_scaling: Mapping[str, Any] | None = None,
        val_annotations: str | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.codec = codec
        self.test_cfg = test
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.loss_fn = loss
        self.lr_scaling = dict(lr_scaling or {"enabled": False})
        self.val_annotations = val_annotations
        self.metric: KeypointAP | None = None
        self.best_ap = -1.0
        self._t_last: float | None = None
        self.last_val_results: list[tuple[dict, PoseResult]] = []

    # ------------------------------------------------------------------ training
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(images)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        heatmaps, offsets = self.net(batch["image"])
        losses = self.loss_fn(heatmaps, offsets, batch)
        total = losses["total"]
        if not torch.isfinite(total):
            ids = batch.get("image_id")
            raise NonFiniteLossError(
                f"non-finite loss at global step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx}"
                f"{', image ids ' + str(ids.tolist() if hasattr(ids, 'tolist') else ids) if ids is not None else ''}"
                f"): heatmap {losses['heatmap'].item()}, offset {losses['offset'].item()}. The weights were not "
                "updated. Lower the learning rate, enable warm-up (scheduler.warmup_steps) or check the batch's "
                "annotations; resume from the last checkpoint."
            )
        n = batch["image"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=n)
        self.log("train/loss_heatmap", losses["heatmap"], batch_size=n)
        self.log("train/loss_offset", losses["offset"], batch_size=n)
        now = time.perf_counter()
        if self._t_last is not None:
            rate = n * self.trainer.world_size / max(now - self._t_last, 1e-9)
            self.log("train/images_per_s", rate, batch_size=n)
        self._t_last = now
        return total

    def on_train_epoch_start(self) -> None:
        self._t_last = None

    def configure_optimizers(self) -> dict[str, Any]:
        opt = self.optimizer_factory(self.parameters())
        if self.lr_scaling.get("enabled"):
            factor = self._total_batch_size() / float(self.lr_scaling["base_batch_size"])
            for group in opt.param_groups:
                group["lr"] *= factor
                group["initial_lr"] = group["lr"]
        sched = self.scheduler_factory(opt, steps_per_epoch=self._steps_per_epoch())
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "lr"}}

    def _total_batch_size(self) -> int:
        dm = getattr(self.trainer, "datamodule", None)
        per_device = int(getattr(dm, "batch_size", 1) or 1)
        accumulate = int(getattr(self.trainer, "accumulate_grad_batches", 1) or 1)
        return per_device * max(self.trainer.world_size, 1) * accumulate

    def _steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch (the schedule's epochs), from the training loader itself, so that
        ``trainer.max_steps`` (where a run stops) does not change the schedule it follows."""
        try:
            self.trainer.estimated_stepping_batches  # noqa: B018 - sets the training loader up
            batches = self.trainer.num_training_batches
            accumulate = int(getattr(self.trainer, "accumulate_grad_batches", 1) or 1)
            if math.isfinite(batches) and batches > 0:
                return max(math.ceil(int(batches) / accumulate), 1)
        except Exception:  # noqa: BLE001 - no loader yet (e.g. optimizer built for inspection)
            pass
        return 1

    # ------------------------------------------------------------------ evaluation
    def estimator(self) -> PoseEstimator:
        estimator = PoseEstimator(self.net, self.spec, self.codec, self.test_cfg, device=self.device)
        if self.test_cfg.flip and not estimator.flip_test and not getattr(self, "_told_flip", False):
            log.info("test.flip: the '%s' layout has no flip pairs, validation runs without flip test", self.spec.name)
            self._told_flip = True
        return estimator

    def _make_metric(self, split: str = "val") -> KeypointAP:
        annotations = self.val_annotations
        dm = getattr(self.trainer, "datamodule", None)
        if annotations is None and hasattr(dm, "annotation_file"):
            annotations = dm.annotation_file(split)
        if annotations is None:
            raise ValueError("no validation annotations: pass val_annotations or use a datamodule that has them")
        options = getattr(dm, "metric_options", {})
        return KeypointAP(annotations, self.spec, max_dets=self.test_cfg.max_dets, **options).to(self.device)

    def on_validation_epoch_start(self, split: str = "val") -> None:
        self.metric = self._make_metric(split)
        self._estimator = self.estimator()
        self.last_val_results = []

    def validation_step(self, batch: Sequence[dict], batch_idx: int) -> None:
        results = self._estimator.predict_batch([s["image"] for s in batch])
        self.metric.update([int(s["image_id"]) for s in batch], [r.poses for r in results], [r.scores for r in results])
        if len(self.last_val_results) < 8:
            self.last_val_results.extend(list(zip(batch, results))[: 8 - len(self.last_val_results)])
        self.net.train(self.training)  # the estimator switches to eval; Lightning restores mode itself

    def on_validation_epoch_end(self) -> None:
        stats = {k: float(v) for k, v in self.metric.compute().items()}
        for name, value in stats.items():
            self.log(f"val/{name}", value, sync_dist=False, rank_zero_only=False)
        ap = stats.get("AP", 0.0)
        self.best_ap = max(self.best_ap, ap)
        self.log("val/AP_best", self.best_ap)
        self.metric.reset()

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start("test")

    def test_step(self, batch: Sequence[dict], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        stats = {k: float(v) for k, v in self.metric.compute().items()}
        for name, value in stats.items():
            self.log(f"test/{name}", value)
        self.metric.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["best_ap"] = self.best_ap
        # plain data only (read back with weights_only=True, never instantiated)
        checkpoint["dekr"] = {
            "network": dict(getattr(self.net, "arguments", {}) or {}),
            "keypoints": plain(dataclasses.asdict(self.spec)),
            "codec": self.codec.to_dict(),
            "test": plain(dataclasses.asdict(self.test_cfg)),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_ap = float(checkpoint.get("best_ap", -1.0))
