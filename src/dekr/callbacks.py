"""Training callbacks and plugins: validation overlays for the loggers, atomic checkpoint writes,
the rolling ``last.ckpt`` (with its previous copy) and the RNG states that make a resumed run the
same run."""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

log = logging.getLogger(__name__)


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

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        """Resume reads tensors and plain containers only (``weights_only=True``, whatever torch's
        default or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says): a checkpoint cannot run code."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        with open(path, "rb") as fh:
            return torch.load(fh, map_location=map_location or "cpu", weights_only=True)


#: the previous ``last.ckpt``, kept when a new one is written (the fall-back of a damaged one)
PREVIOUS_LAST = "last.prev.ckpt"


def _rng_states() -> dict[str, Any]:
    """The global RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 - the legacy global state itself
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in states:
        n = states["numpy"]
        keys = np.asarray(n["keys"].numpy(), dtype=np.uint32)
        np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["gauss"]))  # noqa: NPY002
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


class LastCheckpoint(pl.Callback):
    """Writes ``<dirpath>/last.ckpt`` every ``every_n_train_steps`` optimizer steps, at every
    training-epoch end (after that epoch's validation) and at the end of fit, so ``last.ckpt`` is
    always the final state; before each write the previous one is kept as ``last.prev.ckpt``
    (``keep_previous``). Its state, stored in every checkpoint, holds the Python, NumPy and torch
    RNG states (rank 0's; restored on resume); the data order and the augmentation do not depend on
    them: they are functions of (seed, epoch, index), see
    :class:`dekr.data.datamodule.ResumableSampler`.

    A step checkpoint is not written at an epoch's last batch (the epoch-end one follows it).
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 200, keep_previous: bool = True) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = int(every_n_train_steps or 0)
        self.keep_previous = keep_previous
        self._saved_step: int | None = None

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        if trainer.is_global_zero and self.keep_previous and self.last_path.is_file():
            keep_previous(self.last_path, self.dirpath / PREVIOUS_LAST)
        trainer.save_checkpoint(self.last_path)  # collective: every rank calls it, rank 0 writes
        self._saved_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._saved_step or batch_idx + 1 >= trainer.num_training_batches:
            return
        if (self.every_n_train_steps and step % self.every_n_train_steps == 0) or (
            0 < trainer.max_steps <= step
        ):  # a max_steps stop: the mid-epoch state, not the loop's end
            self._save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._saved_step:
            self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._saved_step:
            self._save(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": _rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "rng" in state_dict:
            _set_rng_states(state_dict["rng"])


def keep_previous(path: Path, previous: Path) -> None:
    """Make ``previous`` a copy of ``path`` atomically (a hard link where the file system allows)."""
    tmp = previous.with_name(f".{previous.name}.tmp-{os.getpid()}")
    try:
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, previous)
    finally:
        if tmp.exists():
            tmp.unlink()


def drawable_poses(poses: Any, height: int, width: int) -> np.ndarray:
    """``[P, K, 3]`` float64 copy of ``poses`` in which non-finite joints and joints farther than one
    image size outside the image are hidden (score -1, position 0), so drawing never fails on the
    output of a diverging network."""
    arr = np.array(poses.detach().cpu() if isinstance(poses, torch.Tensor) else poses, dtype=np.float64, copy=True)
    if arr.size == 0:
        return arr.reshape(0, 0, 3)
    if arr.shape[-1] == 2:
        arr = np.concatenate([arr, np.ones_like(arr[..., :1])], axis=-1)
    xy = arr[..., :2]
    reach = 2.0 * max(height, width)
    bad = ~np.isfinite(arr).all(-1) | (np.abs(xy) > reach).any(-1)
    arr[bad] = (0.0, 0.0, -1.0)
    return arr


def _overlay_pair(sample: dict, result: Any, spec: Any) -> np.ndarray:
    """Ground truth (left) and prediction (right) side by side, RGB uint8."""
    from dekr.viz import draw_poses

    image = sample["image"]
    h, w = image.shape[:2]
    scores = None if result.scores is None else np.nan_to_num(np.asarray(result.scores, dtype=np.float64))
    pred = draw_poses(image, drawable_poses(result.poses, h, w), spec, scores=scores, joint_threshold=0.05)
    gt_kpts = sample.get("keypoints")
    if gt_kpts is not None and len(gt_kpts):
        gt = draw_poses(image, drawable_poses(gt_kpts, h, w), spec, joint_threshold=0.0)
    else:
        gt = image.copy()
    cv2.putText(gt, "ground truth", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(pred, "prediction", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([gt, pred], axis=1)


class RunProgressBar(TQDMProgressBar):
    """Lightning's progress bars plus the whole run's progress and ETA on the training bar
    (``run=37% eta=3:05``): the rate is wall time per optimizer step since this process started
    training, validation included, times the steps left to ``trainer.estimated_stepping_batches``."""

    def __init__(self, refresh_rate: int = 1, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self._start: tuple[float, int] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._start = (time.monotonic(), trainer.global_step)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        total = trainer.estimated_stepping_batches
        if self._start is None or not total or total == float("inf") or trainer.sanity_checking:
            return items
        t0, step0 = self._start
        done = trainer.global_step - step0
        if done > 0:
            eta = (time.monotonic() - t0) / done * max(total - trainer.global_step, 0)
            minutes, seconds = divmod(int(round(eta)), 60)
            items["run"] = f"{100 * trainer.global_step / total:.0f}% eta={minutes}:{seconds:02d}"
        return items


class ValidationImages(pl.Callback):
    """After each validation, logs ground-truth vs predicted skeletons and a heatmap rendering of
    the first validation images to every logger (W&B images, TensorBoard images) and writes them as
    PNGs under ``<run>/overlays/epoch_XXX/``."""

    def __init__(self, max_images: int = 4) -> None:
        self.max_images = max_images
        self.last_dir: Path | None = None
        self.last_epoch = -1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Say where the result is as soon as a validation ends (the AP is computed by then)."""
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        ap = trainer.callback_metrics.get("val/AP")
        where = f"; overlays: {self.last_dir}" if self.last_dir and self.last_epoch == trainer.current_epoch else ""
        if ap is not None:
            log.info(
                "validation at epoch %d (step %d): AP %.3f%s",
                trainer.current_epoch,
                trainer.global_step,
                float(ap),
                where,
            )

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
        self.last_epoch = trainer.current_epoch
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
        from dekr.codec.geometry import input_geometry, warp_to_input

        size = pl_module.test_cfg.input_size
        geo = input_geometry(image.shape[0], image.shape[1], size, 1.0)
        x = torch.from_numpy(warp_to_input(image, geo)).float().permute(2, 0, 1)[None] / 255.0
        mean = torch.tensor(pl_module.codec.input.mean).view(1, 3, 1, 1)
        std = torch.tensor(pl_module.codec.input.std).view(1, 3, 1, 1)
        was_training = pl_module.net.training
        pl_module.net.eval()
        with torch.no_grad():
            heatmaps, _ = pl_module.net(((x - mean) / std).to(pl_module.device))
        pl_module.net.train(was_training)
        return heatmaps.float().cpu()
