"""Checkpoint import: official and MMPose layouts, round trips, clear errors on mismatches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from dekr.convert import convert_file, dekr_to_official, main, official_to_dekr
from dekr.model import DEKR
from dekr.model.checkpoint import CheckpointMismatchError, load_weights, read_state_dict

K = 5


def _random_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in model.state_dict().items():
        if t.dtype.is_floating_point:
            scale = 0.1 if t.dim() == 1 else (1.0 / t[0].numel()) ** 0.5
            v = torch.randn(t.shape, generator=g) * scale
            out[name] = v.abs() + 0.5 if name.endswith("running_var") else v
        else:
            out[name] = t.clone()
    return out


@pytest.fixture(scope="module")
def small_model() -> DEKR:
    model = DEKR(num_keypoints=K, backbone="hrnet_w18_small", heatmap_channels=32)
    model.load_state_dict(_random_state(model, 0))
    return model.eval()


def test_official_round_trip_through_files(small_model: DEKR, tmp_path: Path) -> None:
    official = dekr_to_official(small_model.state_dict(), K)
    assert "offset_feature_layers.4.1.translation_conv.bias" in official
    assert "offset_final_layer.0.weight" in official and official["offset_final_layer.0.weight"].shape[0] == 2
    src = tmp_path / "official.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in official.items()}, "epoch": 3}, src)
    kwargs = convert_file(src, tmp_path / "ours.pth", "official")
    assert kwargs["num_keypoints"] == K and kwargs["backbone"] == "hrnet_w18_small"
    back = read_state_dict(tmp_path / "ours.pth")
    for key, value in small_model.state_dict().items():
        torch.testing.assert_close(back[key], value, msg=key)
    assert official_to_dekr(official).keys() == small_model.state_dict().keys()


def test_converted_official_checkpoint_gives_same_outputs(small_model: DEKR, tmp_path: Path) -> None:
    src = tmp_path / "official.pth"
    torch.save(dekr_to_official(small_model.state_dict(), K), src)
    dst = tmp_path / "ours.pth"
    assert main([str(src), str(dst), "--source", "official"]) == 0
    model = DEKR(num_keypoints=K, backbone="hrnet_w18_small")
    load_weights(model, dst).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), small_model(x)):
            torch.testing.assert_close(a, b)


def _mmpose_state(model: DEKR, seed: int) -> dict[str, torch.Tensor]:
    """An MMPose 1.x DEKR state_dict (HRNet backbone + DEKRHead) with random head weights."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    c_in, c = model.backbone.out_channels, 15 * K
    state = {
        "backbone." + k[len("backbone.body.") :]: v
        for k, v in model.state_dict().items()
        if k.startswith("backbone.body.")
    }

    def bn(prefix: str, n: int) -> None:
        state.update(
            {
                f"{prefix}.weight": 1 + rnd(n, scale=0.1),
                f"{prefix}.bias": rnd(n, scale=0.1),
                f"{prefix}.running_mean": rnd(n, scale=0.1),
                f"{prefix}.running_var": rnd(n).abs() + 0.5,
                f"{prefix}.num_batches_tracked": torch.tensor(7),
            }
        )

    h, d = "head.heatmap_conv_layers", "head.displacement_conv_layers"
    state[f"{h}.0.conv.weight"] = rnd(32, c_in, 1, 1, scale=c_in**-0.5)
    bn(f"{h}.0.bn", 32)
    state[f"{h}.1.conv1.weight"] = rnd(32, 32, 3, 3, scale=0.05)
    state[f"{h}.1.conv2.weight"] = rnd(32, 32, 3, 3, scale=0.05)
    bn(f"{h}.1.bn1", 32)
    bn(f"{h}.1.bn2", 32)
    state[f"{h}.2.weight"], state[f"{h}.2.bias"] = rnd(K + 1, 32, 1, 1), rnd(K + 1)
    state[f"{d}.0.conv.weight"] = rnd(c, c_in, 1, 1, scale=c_in**-0.5)
    bn(f"{d}.0.bn", c)
    for layer in (1, 2):
        state[f"{d}.{layer}.regular_matrix"] = torch.tensor(
            [[-1.0, -1, -1, 0, 0, 0, 1, 1, 1], [-1.0, 0, 1, -1, 0, 1, -1, 0, 1], [1.0] * 9]
        )
        state[f"{d}.{layer}.transform_matrix_conv.weight"] = rnd(6 * K, 15, 3, 3, scale=0.05)
        state[f"{d}.{layer}.transform_matrix_conv.bias"] = rnd(6 * K, scale=0.3)
        state[f"{d}.{layer}.adapt_conv.weight"] = rnd(c, 15, 3, 3, scale=0.1)
        bn(f"{d}.{layer}.norm", c)
    state[f"{d}.3.weight"], state[f"{d}.3.bias"] = rnd(2 * K, 15, 1, 1), rnd(2 * K)
    return state


def _mmpose_heads(state: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MMPose's DEKRHead forward, written from its published definition, on features ``x``."""

    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(
            t, state[p + ".running_mean"], state[p + ".running_var"], state[p + ".weight"], state[p + ".bias"], False
        )

    h, d = "head.heatmap_conv_layers", "head.displacement_conv_layers"
    y = F.relu(bn(F.conv2d(x, state[f"{h}.0.conv.weight"]), f"{h}.0.bn"))
    z = F.relu(bn(F.conv2d(y, state[f"{h}.1.conv1.weight"], padding=1), f"{h}.1.bn1"))
    y = F.relu(bn(F.conv2d(z, state[f"{h}.1.conv2.weight"], padding=1), f"{h}.1.bn2") + y)
    heat = F.conv2d(y, state[f"{h}.2.weight"], state[f"{h}.2.bias"])
    y = F.relu(bn(F.conv2d(x, state[f"{d}.0.conv.weight"]), f"{d}.0.bn"))
    n, _, hh, ww = y.shape
    for layer in (1, 2):
        p = f"{d}.{layer}"
        aff = F.conv2d(
            y, state[p + ".transform_matrix_conv.weight"], state[p + ".transform_matrix_conv.bias"], padding=1, groups=K
        )
        aff = aff.permute(0, 2, 3, 1).reshape(n, hh, ww, K, 2, 3)
        off = (aff @ state[p + ".regular_matrix"]).transpose(4, 5).reshape(n, hh, ww, K * 18).permute(0, 3, 1, 2)
        out = deform_conv2d(y, off.contiguous(), state[p + ".adapt_conv.weight"], padding=1)
        y = F.relu(bn(out, p + ".norm") + y)
    disp = F.conv2d(y, state[f"{d}.3.weight"], state[f"{d}.3.bias"], groups=K)
    return heat, disp


@pytest.mark.parametrize("impl", ["deform", "grid_sample"])
def test_mmpose_checkpoint_gives_mmpose_outputs(small_model: DEKR, tmp_path: Path, impl: str) -> None:
    state = _mmpose_state(small_model, seed=4)
    src = tmp_path / "mmpose.pth"
    torch.save({"meta": {"mmpose_version": "1.3.0"}, "state_dict": state}, src)
    dst = tmp_path / "ours.pth"
    convert_file(src, dst, "mmpose")
    model = DEKR(num_keypoints=K, backbone="hrnet_w18_small", adaptive_impl=impl)
    load_weights(model, dst).eval()
    features = torch.randn(2, model.backbone.out_channels, 10, 12)
    with torch.no_grad():
        heat, disp = _mmpose_heads(state, features)
        ours_heat, ours_off = model.heatmap_head(features), model.offset_head(features)
    assert disp.abs().max() > 0.1
    torch.testing.assert_close(ours_heat, heat, atol=1e-5, rtol=0)
    # MMPose regresses keypoint - pixel; this project pixel - keypoint.
    torch.testing.assert_close(ours_off, -disp, atol=1e-5, rtol=0)


def test_wrong_keypoint_count_is_explained(small_model: DEKR, tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(small_model.state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="keypoint count differs: checkpoint has 5"):
        load_weights(DEKR(num_keypoints=17, backbone="hrnet_w18_small"), path)


def test_wrong_width_is_explained(small_model: DEKR, tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"state_dict": small_model.state_dict()}, path)
    with pytest.raises(CheckpointMismatchError, match="backbone width differs"):
        load_weights(DEKR(num_keypoints=K, backbone="hrnet_w32"), path)


def test_unconverted_official_checkpoint_is_explained(small_model: DEKR, tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(dekr_to_official(small_model.state_dict(), K), path)
    with pytest.raises(CheckpointMismatchError, match="dekr.convert"):
        load_weights(DEKR(num_keypoints=K, backbone="hrnet_w18_small"), path)


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "absent.pth"), str(tmp_path / "o.pth")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    assert main([str(garbage), str(tmp_path / "o.pth")]) == 1
    assert "could not read" in capsys.readouterr().err
    torch.save({"foo": torch.zeros(1)}, tmp_path / "other.pth")
    assert main([str(tmp_path / "other.pth"), str(tmp_path / "o.pth"), "--source", "mmpose"]) == 1
    assert "not an MMPose DEKR checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists()
