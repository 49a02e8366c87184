"""DEKR losses: reference averaging, zero at the target, finite on empty batches."""

from __future__ import annotations

import torch

from dekr.losses import DEKRLoss, heatmap_loss, offset_loss, smooth_l1


def _batch(n: int = 2, k: int = 3, h: int = 8, w: int = 8, people: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    heat_w = torch.full((n, k + 1, h, w), 0.1)
    off_w = torch.zeros(n, 2 * k, h, w)
    if people:
        heat_w[:, :, 2:5, 2:5] = 1.0
        off_w[:, :, 3:5, 3:5] = 0.02
    return {
        "heatmaps": torch.rand(n, k + 1, h, w, generator=g),
        "heatmap_weights": heat_w,
        "offsets": torch.randn(n, 2 * k, h, w, generator=g) * 5,
        "offset_weights": off_w,
    }


def test_zero_when_prediction_equals_target() -> None:
    batch = _batch()
    losses = DEKRLoss()(batch["heatmaps"].clone(), batch["offsets"].clone(), batch)
    assert all(v.item() == 0.0 for v in losses.values())


def test_finite_on_batch_without_people() -> None:
    batch = _batch(people=False)
    batch["heatmap_weights"].zero_()
    pred_h = torch.randn_like(batch["heatmaps"], requires_grad=True)
    pred_o = torch.randn_like(batch["offsets"], requires_grad=True)
    losses = DEKRLoss()(pred_h, pred_o, batch)
    assert torch.isfinite(losses["total"]) and losses["offset"].item() == 0.0
    losses["total"].backward()
    assert torch.isfinite(pred_o.grad).all()


def test_reference_normalisation_and_factors() -> None:
    batch = _batch()
    pred_h = batch["heatmaps"] + 0.5
    pred_o = batch["offsets"] + 1.0
    losses = DEKRLoss(heatmap_factor=2.0, offset_factor=0.03)(pred_h, pred_o, batch)
    expected_h = (0.25 * batch["heatmap_weights"]).sum() / batch["heatmap_weights"].numel()
    num_pos = (batch["offset_weights"] > 0).sum()
    expected_o = ((1.0 - 0.5 / 9) * batch["offset_weights"]).sum() / num_pos
    torch.testing.assert_close(losses["heatmap"], 2.0 * expected_h)
    torch.testing.assert_close(losses["offset"], 0.03 * expected_o)
    torch.testing.assert_close(heatmap_loss(pred_h, batch["heatmaps"], batch["heatmap_weights"]), expected_h)
    torch.testing.assert_close(offset_loss(pred_o, batch["offsets"], batch["offset_weights"]), expected_o)


def test_smooth_l1_branches() -> None:
    d = torch.tensor([0.05, -0.05, 1.0, -2.0])
    beta = 1.0 / 9
    expected = torch.tensor([0.5 * 0.05**2 / beta, 0.5 * 0.05**2 / beta, 1.0 - 0.5 * beta, 2.0 - 0.5 * beta])
    torch.testing.assert_close(smooth_l1(d, beta), expected)
