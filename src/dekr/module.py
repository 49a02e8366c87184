"""The LightningModule: network, losses, optimiser/schedule, decoder and AP metric in one place."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from dekr.inference.factory import decode_config
from dekr.inference.predictor import PoseEstimator, PoseResult
from dekr.keypoints import KeypointSpec, build_keypoint_spec
from dekr.losses import DEKRLoss
from dekr.metrics import KeypointAP


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or infinite, before it can corrupt the weights."""


def build_lr_lambda(
    milestones: Sequence[int], gamma: float, warmup_steps: int, steps_per_epoch: int, warmup_ratio: float = 0.001
):
    """Per-step LR factor: linear warm-up over ``warmup_steps``, then ``gamma`` at each milestone epoch."""
    milestones = sorted(int(m) for m in milestones)

    def factor(step: int) -> float:
        epoch = step // max(steps_per_epoch, 1)
        decay = gamma ** sum(epoch >= m for m in milestones)
        if warmup_steps > 0 and step < warmup_steps:
            return decay * (warmup_ratio + (1 - warmup_ratio) * step / warmup_steps)
        return decay

    return factor


class DEKRModule(pl.LightningModule):
    """DEKR training and evaluation.

    Args:
        net: the network, ``net(images) -> (heatmaps, offsets)`` (see :class:`dekr.model.DEKR`).
        keypoints: keypoint layout (a :class:`KeypointSpec`, a built-in name or a mapping).
        optimizer: ``{"lr", "weight_decay", "betas"}`` for Adam, with ``scale_lr`` (bool) and
            ``base_batch_size``: when scaling, ``lr = lr * total_batch / base_batch_size``.
        scheduler: ``{"milestones": [epochs], "gamma", "warmup_steps"}``.
        loss: ``{"heatmap_factor", "offset_factor"}``.
        decode: decoder thresholds (:class:`DecodeConfig` fields).
        test: ``{"input_size", "flip", "scales", "batch_size"}`` for validation/test inference.
        val_annotations: COCO-format GT for the AP metric; read from the datamodule's
            ``val_annotations`` attribute when omitted.
        max_dets: detections per image counted by the metric (COCO: 20).

    Logged: ``train/loss``, ``train/loss_heatmap``, ``train/loss_offset``, ``train/images_per_s``,
    ``lr``, and at validation ``val/AP``, ``val/AP50``, ... and ``val/AP_best``.
    """

    def __init__(
        self,
        net: nn.Module,
        keypoints: KeypointSpec | Mapping | str = "coco",
        optimizer: Mapping | None = None,
        scheduler: Mapping | None = None,
        loss: Mapping | None = None,
        decode: Mapping | None = None,
        test: Mapping | None = None,
        val_annotations: str | None = None,
        max_dets: int = 20,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "keypoints"])
        self.net = net
        self.spec = build_keypoint_spec(keypoints)
        self.hparams["keypoints"] = {k: _plain(v) for k, v in dataclasses.asdict(self.spec).items()}
        if getattr(net, "num_keypoints", self.spec.num_keypoints) != self.spec.num_keypoints:
            raise ValueError(
                f"model predicts {net.num_keypoints} keypoints but the data declares {self.spec.num_keypoints} "
                f"({self.spec.name}); set model.num_keypoints to match"
            )
        self.optim_cfg = {"lr": 1e-3, "weight_decay": 0.0, "betas": (0.9, 0.999), "scale_lr": False,
                          "base_batch_size": 40, **dict(optimizer or {})}
        self.sched_cfg = {"milestones": [90, 120], "gamma": 0.1, "warmup_steps": 0, **dict(scheduler or {})}
        self.loss_fn = DEKRLoss(**dict(loss or {}))
        self.decode_cfg = decode_config(decode)
        self.test_cfg = {"input_size": 512, "flip": True, "scales": [1.0], "batch_size": 4, **dict(test or {})}
        self.val_annotations = val_annotations
        self.max_dets = max_dets
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
        cfg = self.optim_cfg
        lr = float(cfg["lr"])
        if cfg.get("scale_lr"):
            total = self._total_batch_size()
            lr = lr * total / float(cfg["base_batch_size"])
        opt = torch.optim.Adam(self.parameters(), lr=lr, weight_decay=float(cfg["weight_decay"]),
                               betas=tuple(cfg["betas"]))
        steps_per_epoch = self._steps_per_epoch()
        lam = build_lr_lambda(self.sched_cfg["milestones"], float(self.sched_cfg["gamma"]),
                              int(self.sched_cfg["warmup_steps"]), steps_per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "lr"}}

    def _total_batch_size(self) -> int:
        dm = getattr(self.trainer, "datamodule", None)
        per_device = int(getattr(dm, "batch_size", 1) or 1)
        accumulate = int(getattr(self.trainer, "accumulate_grad_batches", 1) or 1)
        return per_device * max(self.trainer.world_size, 1) * accumulate

    def _steps_per_epoch(self) -> int:
        try:
            steps = self.trainer.estimated_stepping_batches
            epochs = self.trainer.max_epochs
            if math.isfinite(steps) and epochs and epochs > 0:
                return max(int(steps) // epochs, 1)
        except Exception:  # noqa: BLE001 - no loader yet (e.g. optimizer built for inspection)
            pass
        return 1

    # ------------------------------------------------------------------ evaluation
    def estimator(self) -> PoseEstimator:
        t = self.test_cfg
        return PoseEstimator(self.net, self.spec, self.decode_cfg, input_size=int(t["input_size"]),
                             flip_test=bool(t["flip"]), scales=tuple(float(s) for s in t["scales"]),
                             device=self.device, batch_size=int(t["batch_size"]))

    def _make_metric(self, split: str = "val") -> KeypointAP:
        annotations = self.val_annotations
        dm = getattr(self.trainer, "datamodule", None)
        if annotations is None and hasattr(dm, "annotation_file"):
            annotations = dm.annotation_file(split)
        if annotations is None:
            raise ValueError("no validation annotations: pass val_annotations or use a datamodule that has them")
        return KeypointAP(annotations, self.spec, max_dets=self.max_dets).to(self.device)

    def on_validation_epoch_start(self, split: str = "val") -> None:
        self.metric = self._make_metric(split)
        self._estimator = self.estimator()
        self.last_val_results = []

    def validation_step(self, batch: Sequence[dict], batch_idx: int) -> None:
        results = self._estimator.predict_batch([s["image"] for s in batch])
        self.metric.update([int(s["image_id"]) for s in batch], [r.poses for r in results],
                           [r.scores for r in results])
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
        checkpoint["dekr_model"] = dict(getattr(self.net, "config", {}) or {})
        checkpoint["dekr_keypoints"] = self.spec.name

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_ap = float(checkpoint.get("best_ap", -1.0))


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


