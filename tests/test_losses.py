"""DEKR losses on the compact batch: equal to the reference's dense formulas, zero at the target,
finite on empty batches."""

from __future__ import annotations

import numpy as np
import torch

from dekr.codec.encode import TargetEncoder
from dekr.data.coco import train_collate
from dekr.keypoints import COCO
from dekr.losses import DEKRLoss, gather_offsets, heatmap_loss, offset_loss, smooth_l1


def _people(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    kp = np.zeros((n, 17, 3))
    kp[:, :, :2] = rng.uniform(12, size - 12, (n, 1, 2)) + rng.uniform(-8, 8, (n, 17, 2))
    kp[:, :, 2] = rng.integers(0, 3, (n, 17))
    return kp


def _samples(size: int = 32) -> tuple[TargetEncoder, list[dict], list[dict]]:
    """Compact training samples (as the dataset returns them) and their dense reference targets;
    the second image has crowded, overlapping people and a partly ignored mask."""
    rng = np.random.default_rng(0)
    enc = TargetEncoder(COCO, size)
    samples, dense = [], []
    for n, masked in ((2, False), (6, True)):
        kp = _people(rng, n, size)
        centers, areas = enc.centers_and_areas(kp)
        mask = np.ones((size, size), np.float32)
        if masked:
            mask[:, : size // 3] = 0
        compact = enc.encode(kp, centers, areas)
        samples.append({"heatmap_mask": torch.from_numpy(mask), **{k: torch.from_numpy(v) for k, v in compact.items()}})
        dense.append(enc(kp, centers, areas, mask))
    return enc, samples, dense


def test_equal_to_dense_reference_losses() -> None:
    """On real targets, the compact losses equal the reference formulas on the densified targets."""
    _, samples, dense = _samples()
    batch = train_collate(samples)
    d = {key: torch.from_numpy(np.stack([x[key] for x in dense])) for key in dense[0]}
    assert d["offset_weights"].gt(0).sum() > 100 and (d["heatmap_weights"] == 0).any()
    g = torch.Generator().manual_seed(1)
    pred_h = d["heatmaps"] + 0.3 * torch.randn(d["heatmaps"].shape, generator=g)
    pred_o = d["offsets"] + 2.0 * torch.randn(d["offsets"].shape, generator=g)
    expected_h = ((pred_h - d["heatmaps"]) ** 2 * d["heatmap_weights"]).mean()
    expected_o = (smooth_l1(pred_o - d["offsets"], 1 / 9) * d["offset_weights"]).sum() / (d["offset_weights"] > 0).sum()
    losses = DEKRLoss(heatmap_factor=2.0, offset_factor=0.03, beta=1 / 9, bg_weight=0.1)(pred_h, pred_o, batch)
    torch.testing.assert_close(losses["heatmap"], 2.0 * expected_h)
    torch.testing.assert_close(losses["offset"], 0.03 * expected_o)
    torch.testing.assert_close(heatmap_loss(pred_h, batch["heatmaps"], batch["heatmap_mask"], 0.1), expected_h)
    torch.testing.assert_close(
        offset_loss(pred_o, batch["offset_pixel"], batch["offset_target"], batch["offset_weight"]), expected_o
    )


def test_zero_when_prediction_equals_target() -> None:
    _, samples, dense = _samples()
    batch = train_collate(samples)
    offsets = torch.from_numpy(np.stack([x["offsets"] for x in dense]))
    torch.testing.assert_close(
        gather_offsets(offsets, batch["offset_pixel"])[batch["offset_weight"] > 0],
        batch["offset_target"][batch["offset_weight"] > 0],
    )
    losses = DEKRLoss(heatmap_factor=1.0, offset_factor=0.03, beta=1 / 9, bg_weight=0.1)(
        batch["heatmaps"].clone(), offsets, batch
    )
    assert all(v.item() == 0.0 for v in losses.values())


def test_finite_on_batch_without_people() -> None:
    enc = TargetEncoder(COCO, 16)
    compact = enc.encode(np.zeros((0, 17, 3)), np.zeros((0, 3)), np.zeros(0))
    sample = {"heatmap_mask": torch.zeros(16, 16), **{k: torch.from_numpy(v) for k, v in compact.items()}}
    batch = train_collate([sample, sample])
    assert batch["offset_pixel"].numel() == 0 and batch["heatmaps"].shape == (2, 18, 16, 16)
    pred_h = torch.randn(2, 18, 16, 16, requires_grad=True)
    pred_o = torch.randn(2, 34, 16, 16, requires_grad=True)
    losses = DEKRLoss(heatmap_factor=1.0, offset_factor=0.03, beta=1 / 9, bg_weight=0.1)(pred_h, pred_o, batch)
    assert torch.isfinite(losses["total"]) and losses["offset"].item() == 0.0 and losses["heatmap"].item() == 0.0
    losses["total"].backward()
    assert torch.isfinite(pred_o.grad).all() and torch.isfinite(pred_h.grad).all()


def test_smooth_l1_branches() -> None:
    d = torch.tensor([0.05, -0.05, 1.0, -2.0])
    beta = 1.0 / 9
    expected = torch.tensor([0.5 * 0.05**2 / beta, 0.5 * 0.05**2 / beta, 1.0 - 0.5 * beta, 2.0 - 0.5 * beta])
    torch.testing.assert_close(smooth_l1(d, beta), expected)
