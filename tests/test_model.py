"""The DEKR network: shapes, parameter counts, gradients, adaptive-conv kernels, grouped head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from dekr.model import DEKR, GroupedAdaptiveBlock
from dekr.model.adaptive import (
    adaptive_conv_deform,
    adaptive_conv_grid_sample,
    sampling_displacements,
    sampling_grid,
)

# Parameter counts of the official HRNet/DEKR models built from its COCO configs
# (w32_4x_reg03_bs10_512..., w48_4x_reg03_bs5_640...), measured with the reference code.
REFERENCE_PARAMS = {"hrnet_w32": (32, 29_561_182), "hrnet_w48": (48, 65_684_590)}


def _randomise(module: nn.Module, seed: int = 0, transform_scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            fan = p[0].numel() if p.dim() > 1 else 1
            scale = (1.0 / fan) ** 0.5 if p.dim() > 1 else 0.1
            if "transform" in name:
                scale = transform_scale * (1.0 if p.dim() > 1 else 1.0)
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)


@pytest.mark.parametrize(
    ("backbone", "channels"),
    [("hrnet_w18_small", 240), ("hrnet_w18", 270), ("hrnet_w32", 480), ("hrnet_w48", 720)],
)
def test_output_shapes_every_backbone(backbone: str, channels: int) -> None:
    model = DEKR(num_keypoints=17, backbone=backbone).eval()
    assert model.backbone.out_channels == channels
    with torch.no_grad():
        heatmaps, offsets = model(torch.randn(2, 3, 64, 96))
    assert heatmaps.shape == (2, 18, 16, 24)
    assert offsets.shape == (2, 34, 16, 24)


@pytest.mark.parametrize("backbone", sorted(REFERENCE_PARAMS))
def test_parameter_count_equals_reference(backbone: str) -> None:
    heatmap_channels, expected = REFERENCE_PARAMS[backbone]
    model = DEKR(num_keypoints=17, backbone=backbone, heatmap_channels=heatmap_channels)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_branches": 1},
        {"num_branches": 4},
        {"keypoint_groups": [[0, 1, 2, 3, 4], [5, 7, 9], [6, 8, 10], [11, 13, 15], [12, 14, 16]]},
        {"block": "conv"},
        {"dilation": 2, "offset_blocks": 3, "channels_per_keypoint": 8},
        {"num_keypoints": 5},
    ],
)
def test_ablation_axes_build_and_run(kwargs: dict) -> None:
    k = kwargs.get("num_keypoints", 17)
    model = DEKR(backbone="hrnet_w18_small", **{"num_keypoints": 17, **kwargs}).eval()
    with torch.no_grad():
        heatmaps, offsets = model(torch.randn(1, 3, 64, 64))
    assert heatmaps.shape == (1, k + 1, 16, 16)
    assert offsets.shape == (1, 2 * k, 16, 16)


def test_bad_head_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="num_branches"):
        DEKR(num_keypoints=5, backbone="hrnet_w18_small", num_branches=6)
    with pytest.raises(ValueError, match="partition"):
        DEKR(num_keypoints=3, backbone="hrnet_w18_small", keypoint_groups=[[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="block"):
        DEKR(num_keypoints=3, backbone="hrnet_w18_small", block="fancy")
    with pytest.raises(ValueError, match="impl"):
        DEKR(num_keypoints=3, backbone="hrnet_w18_small", adaptive_impl="cuda_magic")
    with pytest.raises(ValueError, match="backbone"):
        DEKR(num_keypoints=3, backbone="resnet50")


@pytest.mark.parametrize("impl", ["grid_sample", "deform"])
def test_every_parameter_receives_gradient(impl: str) -> None:
    torch.manual_seed(0)
    model = DEKR(num_keypoints=4, backbone="hrnet_w18_small", adaptive_impl=impl).train()
    _randomise(model.heatmap_head, 1)
    _randomise(model.offset_head, 2)
    heatmaps, offsets = model(torch.randn(2, 3, 64, 64))
    (heatmaps.square().mean() + offsets.square().mean()).backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == []


def _block_pair(dilation: int, seed: int = 0) -> tuple[GroupedAdaptiveBlock, GroupedAdaptiveBlock]:
    a = GroupedAdaptiveBlock(groups=3, channels=5, dilation=dilation, impl="deform")
    _randomise(a, seed)
    b = GroupedAdaptiveBlock(groups=3, channels=5, dilation=dilation, impl="grid_sample")
    b.load_state_dict(a.state_dict())
    return a.eval(), b.eval()


@pytest.mark.parametrize("dilation", [1, 2])
def test_adaptive_kernels_agree(dilation: int) -> None:
    a, b = _block_pair(dilation)
    x = torch.randn(2, 15, 13, 17)
    ya, yb = a(x), b(x)
    assert ya.abs().max() > 0.1
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=0)
    with torch.no_grad():
        a.double(), b.double()
        torch.testing.assert_close(a(x.double()), b(x.double()), atol=1e-12, rtol=0)


def test_adaptive_kernels_agree_in_backward() -> None:
    a, b = _block_pair(1, seed=3)
    x1 = torch.randn(1, 15, 9, 11, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    a(x1).sum().backward()
    b(x2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-4, rtol=1e-4)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-3, rtol=1e-3, msg=name)


def test_checkpointed_block_matches_stored() -> None:
    a = GroupedAdaptiveBlock(groups=2, channels=4, impl="grid_sample", checkpoint=True).train()
    _randomise(a, 5)
    b = GroupedAdaptiveBlock(groups=2, channels=4, impl="grid_sample", checkpoint=False).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 8, 10, 10)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    a(x1).square().sum().backward()
    b(x2).square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(a.weight.grad, b.weight.grad)


@pytest.mark.parametrize("impl", ["deform", "grid_sample"])
@pytest.mark.parametrize("dilation", [1, 2])
def test_identity_transform_is_plain_conv(impl: str, dilation: int) -> None:
    block = GroupedAdaptiveBlock(groups=3, channels=4, dilation=dilation, impl=impl).eval()
    _randomise(block, 7)
    with torch.no_grad():
        block.transform.weight.zero_()
        bias = torch.zeros(3, 6)
        bias[:, 0] = 1.0  # A = I, t = 0
        bias[:, 3] = 1.0
        block.transform.bias.copy_(bias.flatten())
    x = torch.randn(2, 12, 11, 9)
    plain = F.conv2d(x, block.weight, padding=dilation, dilation=dilation, groups=3)
    expected = F.relu(block.bn(plain) + x)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=0)


def test_translation_moves_samples() -> None:
    """t = (0, +1) in (y, x) with A = I samples the pixel to the right: a shifted convolution."""
    x = torch.randn(1, 2, 6, 8, dtype=torch.float64)
    weight = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    transform = torch.zeros(1, 6, 6, 8, dtype=torch.float64)
    transform[:, 0] = transform[:, 3] = 1.0
    transform[:, 5] = 1.0
    dy, dx = sampling_displacements(
        transform,
        torch.tensor([[-1.0, -1, -1, 0, 0, 0, 1, 1, 1], [-1.0, 0, 1, -1, 0, 1, -1, 0, 1]], dtype=torch.float64),
        1,
    )
    shifted = F.conv2d(F.pad(x, (0, 2, 1, 1)), weight)  # out(x) reads x + 1 + gx
    torch.testing.assert_close(adaptive_conv_deform(x, weight, dy, dx, 1), shifted)
    torch.testing.assert_close(adaptive_conv_grid_sample(x, weight, sampling_grid(transform, 1, 1), 1), shifted)


class _LoopBranch(nn.Module):
    """One keypoint's regression branch written as the official code lays it out: separate
    matrix and translation convs, a per-branch deformable conv, offsets built with matmul."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.transform_matrix_conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.translation_conv = nn.Conv2d(channels, 2, 3, padding=1)
        self.adapt_conv_weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        self.bn = nn.BatchNorm2d(channels)
        self.register_buffer(
            "regular", torch.tensor([[-1.0, -1, -1, 0, 0, 0, 1, 1, 1], [-1.0, 0, 1, -1, 0, 1, -1, 0, 1]])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        m = self.transform_matrix_conv(x).permute(0, 2, 3, 1).reshape(-1, 2, 2)
        off = (m @ self.regular - self.regular).transpose(1, 2).reshape(n, h, w, 18).permute(0, 3, 1, 2)
        t = self.translation_conv(x)
        off = off + torch.cat([t[:, :1], t[:, 1:]] * 9, dim=1)
        out = deform_conv2d(x, off, self.adapt_conv_weight, padding=1)
        return F.relu(self.bn(out) + x)


@pytest.mark.parametrize("impl", ["deform", "grid_sample"])
def test_grouped_head_equals_per_keypoint_loop(impl: str) -> None:
    """The grouped regression head equals K independent official-style branches whose weights
    are split out of it by the converter's inverse mapping."""
    from dekr.convert import dekr_to_official

    k, c = 4, 5
    model = DEKR(num_keypoints=k, backbone="hrnet_w18_small", channels_per_keypoint=c, adaptive_impl=impl)
    _randomise(model.offset_head, 11)
    model.eval()
    official = dekr_to_official(model.state_dict(), k)
    branches = []
    for j in range(k):
        blocks = []
        for b in range(2):
            blk = _LoopBranch(c)
            pre = f"offset_feature_layers.{j}.{b}."
            blk.transform_matrix_conv.load_state_dict(
                {n: official[pre + "transform_matrix_conv." + n] for n in ("weight", "bias")}
            )
            blk.translation_conv.load_state_dict(
                {n: official[pre + "translation_conv." + n] for n in ("weight", "bias")}
            )
            blk.adapt_conv_weight.data.copy_(official[pre + "adapt_conv.weight"])
            blk.bn.load_state_dict(
                {
                    n: official[pre + "bn." + n]
                    for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
                }
            )
            blocks.append(blk)
        final = nn.Conv2d(c, 2, 1)
        final.load_state_dict({n: official[f"offset_final_layer.{j}.{n}"] for n in ("weight", "bias")})
        branches.append(nn.Sequential(*blocks, final).eval())
    features = torch.randn(2, model.backbone.out_channels, 12, 10)
    with torch.no_grad():
        grouped = model.offset_head(features)
        shared = model.offset_head.transition(features)
        looped = torch.cat([br(shared[:, j * c : (j + 1) * c]) for j, br in enumerate(branches)], dim=1)
    assert grouped.abs().max() > 0.1
    torch.testing.assert_close(grouped, looped, atol=1e-5, rtol=0)


def test_uneven_branches_put_offsets_in_keypoint_order() -> None:
    groups = [[0, 3], [1], [2, 4]]
    model = DEKR(num_keypoints=5, backbone="hrnet_w18_small", keypoint_groups=groups).eval()
    head = model.offset_head
    with torch.no_grad():
        head.final.weight.zero_()
        bias = torch.arange(head.final.bias.numel(), dtype=torch.float32)
        head.final.bias.copy_(bias)
        out = model(torch.randn(1, 3, 32, 32))[1][0, :, 0, 0]
    per_branch = 2 * max(len(g) for g in groups)
    expected = torch.empty(10)
    for b, group in enumerate(groups):
        for i, kp in enumerate(group):
            expected[2 * kp] = b * per_branch + 2 * i
            expected[2 * kp + 1] = b * per_branch + 2 * i + 1
    torch.testing.assert_close(out, expected)
