"""The learning-rate schedule: per-step factor with a linear warm-up, then ``gamma`` at each
milestone epoch (the reference's MultiStepLR, plus MMPose's optional warm-up)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def lr_factor(
    milestones: Sequence[int], gamma: float, warmup_steps: int, steps_per_epoch: int, warmup_ratio: float
) -> Callable[[int], float]:
    """``factor(step)``: ``gamma ** (milestones passed)``, times a linear ramp from ``warmup_ratio`` to 1
    over the first ``warmup_steps`` steps."""
    milestones = sorted(int(m) for m in milestones)

    def factor(step: int) -> float:
        epoch = step // max(steps_per_epoch, 1)
        decay = gamma ** sum(epoch >= m for m in milestones)
        if warmup_steps > 0 and step < warmup_steps:
            return decay * (warmup_ratio + (1 - warmup_ratio) * step / warmup_steps)
        return decay

    return factor


def step_schedule(
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    milestones: Sequence[int],
    gamma: float,
    warmup_steps: int,
    warmup_ratio: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` of :func:`lr_factor` (``conf/train.yaml``'s ``module.scheduler``,
    instantiated as a partial and completed by the LightningModule with the optimizer and the number
    of steps per epoch)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(milestones, gamma, int(warmup_steps), steps_per_epoch, float(warmup_ratio))
    )


__all__ = ["lr_factor", "step_schedule"]
