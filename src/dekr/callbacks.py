"""Training callbacks and plugins: validation overlays for the loggers, atomic checkpoint writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, fsyncs it, then renames it
    over the target: a crash while saving leaves the previous ``last.ckpt`` intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


def _overlay_pair(sample: dict, result: Any, spec: Any) -> np.ndarray:
    """Ground truth (left) and prediction (right) side by side, RGB uint8."""
    from dekr.viz import draw_poses

    image = sample["image"]
    pred = draw_poses(image, result.poses, spec, scores=result.scores, joint_threshold=0.05)
    gt_kpts = sample.get("keypoints")
    if gt_kpts is not None and len(gt_kpts):
        gt = draw_poses(image, np.asarray(gt_kpts, dtype=np.float32), spec, joint_threshold=0.0)
    else:
        gt = image.copy()
    cv2.putText(gt, "ground truth", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(pred, "prediction", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([gt, pred], axis=1)


class ValidationImages(pl.Callback):
    """After each validation, logs ground-truth vs predicted skeletons and a heatmap rendering of
    the first validation images to every logger (W&B images, TensorBoard images) and writes them as
    PNGs under ``<run>/overlays/epoch_XXX/``."""

    def __init__(self, max_images: int = 4) -> None:
        self.max_images = max_images
        self.last_dir: Path | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        pairs = getattr(pl_module, "last_val_results", [])[: self.max_images]
        if not pairs:
            return
        from dekr.viz import render_heatmaps

        spec = pl_module.spec
        images = [_overlay_pair(sample, result, spec) for sample, result in pairs]
        heat = self._heatmap_rendering(pl_module, pairs[0][0]["image"])
        out_dir = Path(trainer.default_root_dir) / "overlays" / f"epoch_{trainer.current_epoch:03d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            cv2.imwrite(str(out_dir / f"val_{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        if heat is not None:
            heat = render_heatmaps(heat[0], pairs[0][0]["image"])
            cv2.imwrite(str(out_dir / "heatmaps_0.png"), cv2.cvtColor(heat, cv2.COLOR_RGB2BGR))
        self.last_dir = out_dir
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/overlays", images=list(images), step=step)
                if heat is not None:
                    logger.log_image("val/heatmaps", images=[heat], step=step)
            elif isinstance(logger, TensorBoardLogger):
                for i, img in enumerate(images):
                    logger.experiment.add_image(f"val/overlay_{i}", img, step, dataformats="HWC")
                if heat is not None:
                    logger.experiment.add_image("val/heatmaps", heat, step, dataformats="HWC")
            elif isinstance(logger, CSVLogger):
                pass  # the PNGs above are the CSV logger's images

    @staticmethod
    def _heatmap_rendering(pl_module: pl.LightningModule, image: np.ndarray) -> torch.Tensor | None:
        """Network heatmaps of one image at the test input size, ``[1, K+1, h, w]``."""
        from dekr.inference.geometry import input_geometry, warp_to_input

        size = int(pl_module.test_cfg["input_size"])
        geo = input_geometry(image.shape[0], image.shape[1], size, 1.0)
        x = torch.from_numpy(warp_to_input(image, geo)).float().permute(2, 0, 1)[None] / 255.0
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        was_training = pl_module.net.training
        pl_module.net.eval()
        with torch.no_grad():
            heatmaps, _ = pl_module.net(((x - mean) / std).to(pl_module.device))
        pl_module.net.train(was_training)
        return heatmaps.float().cpu()
