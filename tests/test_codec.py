"""The codec package: one config, layout-derived defaults, named NMS strategies, no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from dekr.codec import Codec, CodecConfig, ScaleOutput, codec_config, decode, default_codec_config
from dekr.codec.synthetic import outputs_from_ground_truth
from dekr.keypoints import COCO, CROWDPOSE, KeypointSpec

SRC = Path(__file__).resolve().parents[1] / "src" / "dekr"


def _layout(k: int) -> KeypointSpec:
    return KeypointSpec(name=f"k{k}", names=tuple(f"p{i}" for i in range(k)))


def test_nms_joint_count_follows_the_layout() -> None:
    nms = default_codec_config().nms
    assert nms.min_joints is None
    assert nms.joints_for(COCO.num_keypoints) == 8  # the reference's NMS_NUM_THRE for COCO
    assert nms.joints_for(CROWDPOSE.num_keypoints) == 7  # ... and for CrowdPose
    assert nms.joints_for(5) == 2
    with pytest.raises(ValueError, match=r"nms.min_joints=8 can never suppress.*'k5' layout \(5 keypoints"):
        Codec(_layout(5), codec_config({"nms": {"min_joints": 8}}))


def _double_peak_outputs(k: int):
    """Three people whose centre heatmap has a second peak 3 output px right of the true one (inside
    the offset window, so both peaks regress the same person)."""
    rng = np.random.default_rng(k)
    centres = np.array([[128.0, 128.0], [384.0, 128.0], [256.0, 384.0]])
    joints = centres[:, None] + rng.uniform(-70, 70, (3, k, 2))
    kp = np.concatenate([joints, np.full((3, k, 1), 2.0)], -1)
    cfg = default_codec_config()
    out = outputs_from_ground_truth(kp, np.full(3, 1e9), (512, 512), _layout(k), cfg, 512)
    centre_map = out.heatmaps[0, k]
    for c in kp[:, :, :2].mean(1) / cfg.stride:  # original px = input px here (512 x 512 at 512)
        x, y = int(c[0]), int(c[1])
        centre_map[y, x + 3] = 0.95
    return out


@pytest.mark.parametrize("k", [4, 5, 14, 17, 35])
def test_one_pose_per_person_with_double_peaks(k: int) -> None:
    out = _double_peak_outputs(k)
    spec = _layout(k)
    assert Codec(spec).decode([out]).counts()[0] == 3
    if k <= 8:  # the reference's fixed 8-joint rule never fires here: both peaks of every person stay
        assert decode([out], spec, codec_config({"nms": {"min_joints": 8}})).counts()[0] > 3


@pytest.mark.parametrize("strategy", ["reference", "greedy", "symmetric"])
def test_nms_strategies_are_named(strategy: str) -> None:
    out = _double_peak_outputs(17)
    assert Codec(_layout(17), codec_config({"nms": {"strategy": strategy}})).decode([out]).counts()[0] == 3
    with pytest.raises(ValueError, match=r"nms.strategy must be one of \['reference', 'greedy', 'symmetric'\]"):
        codec_config({"nms": {"strategy": "soft"}})


def test_codec_config_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match=r"unknown key 'sigmaa'"):
        codec_config({"targets": {"sigmaa": 2.0}})
    with pytest.raises(ValueError, match=r"codec.targets.radius: expected an integer"):
        CodecConfig.from_mapping(
            {
                **default_codec_config().to_dict(),
                "targets": {**default_codec_config().to_dict()["targets"], "radius": "4"},
            },
            origin="codec",
        )
    with pytest.raises(ValueError, match=r"missing key\(s\) \['refine'\]"):
        CodecConfig.from_mapping({k: v for k, v in default_codec_config().to_dict().items() if k != "refine"})
    assert CodecConfig.from_mapping(default_codec_config().to_dict()) == default_codec_config()


def test_codec_encode_decode_round_trip() -> None:
    """Codec.encode's targets, read as network outputs, decode back to the people (output px)."""
    k = 5
    spec = _layout(k)
    codec = Codec(spec)
    rng = np.random.default_rng(0)
    joints = np.array([[20.0, 20.0], [44.0, 40.0]])[:, None] + rng.uniform(-8, 8, (2, k, 2))
    kp = np.concatenate([joints, np.full((2, k, 1), 2.0)], -1)
    t = codec.encode(kp, None, 64)
    dense = codec.encoder(64).densify(t)
    d = codec.decode(
        [ScaleOutput(1.0, torch.from_numpy(dense["heatmaps"])[None], torch.from_numpy(dense["offsets"])[None])]
    )
    got = d.poses[0][d.valid[0]][..., :2].numpy() / codec.stride
    assert len(got) == 2
    for person in joints:
        assert min(np.abs(g - person).max() for g in got) < 1e-4


def test_no_import_cycles_in_the_package() -> None:
    modules = {}
    for f in SRC.rglob("*.py"):
        name = ".".join(("dekr", *f.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        modules[name] = f
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m, f in modules.items():
        for node in ast.walk(ast.parse(f.read_text())):  # function-level imports count too
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dekr"):
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                parts = t.split(".")
                for i in range(2, len(parts) + 1):  # importing dekr.a.b runs dekr.a first
                    dep = ".".join(parts[:i])
                    if dep in modules and dep != m and not m.startswith(dep + "."):
                        graph[m].add(dep)
    state: dict[str, int] = {}
    cycles = []

    def visit(u: str, path: list[str]) -> None:
        state[u] = 1
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                cycles.append(path[path.index(v) :] + [v])
            elif v not in state:
                visit(v, [*path, v])
        state[u] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
