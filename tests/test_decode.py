"""Decoder: equivalence with the reference pipeline, codec round trips, flip symmetry, NMS rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dekr.codec import codec_config, default_codec_config
from dekr.codec.decode import ScaleOutput, decode
from dekr.codec.geometry import flip_input, input_geometry, input_to_original
from dekr.codec.maps import pool_kernel
from dekr.codec.nms import pose_nms
from dekr.codec.synthetic import fabricate_outputs, outputs_from_ground_truth
from dekr.inference.predictor import PoseEstimator, TestConfig
from dekr.keypoints import COCO, KeypointSpec, get_keypoint_spec
from dekr.metrics import evaluate_keypoints, results_to_coco
from dekr.rescore import Rescorer

torch.set_num_threads(1)
GOLDEN = Path(__file__).parent / "data" / "decode_golden.npz"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _test(input_size: int, flip: bool = True, scales=(1.0,), batch_size: int = 4) -> TestConfig:
    return TestConfig(input_size=input_size, flip=flip, scales=tuple(scales), batch_size=batch_size, max_dets=20)


def _golden():
    z = np.load(GOLDEN)
    return z, {m["name"]: m for m in json.loads(bytes(z["meta"]).decode())}


def _case_outputs(m: dict) -> list[ScaleOutput]:
    spec = get_keypoint_spec(m["layout"])
    outs = []
    for i, f in enumerate(sorted(m["factors"], reverse=True)):
        g = input_geometry(*m["image_hw"], m["input_size"], f)
        o = fabricate_outputs(
            spec, m["people"], g.size[1] // 4, g.size[0] // 4, seed=m["seed"] * 10 + i, flip=m["flip"]
        )
        outs.append(ScaleOutput(f, o["heatmaps"], o["offsets"], o.get("heatmaps_flip"), o.get("offsets_flip")))
    return outs


def _rescorer(z, name: str, spec: KeypointSpec) -> Rescorer:
    pre = f"{name}/rescore/"
    state = {k[len(pre) :]: torch.from_numpy(z[k]) for k in z.files if k.startswith(pre)}
    r = Rescorer(spec, state["l1.weight"].shape[0])
    r.net.load_state_dict(state)
    return r.eval()


@pytest.mark.parametrize("name", ["coco_flip", "coco_noflip", "coco_portrait_ms", "coco_crowd_ms", "crowdpose_flip"])
def test_same_poses_and_scores_as_reference(name: str) -> None:
    """Golden fixture from benchmarks/make_decode_fixture.py (official post-processing)."""
    z, meta = _golden()
    m = meta[name]
    spec = get_keypoint_spec(m["layout"])
    outs = _case_outputs(m)
    checksum = sum(
        float(t.double().abs().sum())
        for o in outs
        for t in (o.heatmaps, o.offsets, o.heatmaps_flip, o.offsets_flip)
        if t is not None
    )
    assert checksum == pytest.approx(m["checksum"], rel=1e-9), "fabricated outputs changed; regenerate the fixture"
    # the fixture ran the official defaults, NMS_NUM_THRE 8 for every layout (here CrowdPose's floor(K/2) is 7)
    d = decode(outs, spec, codec_config({"nms": {"min_joints": 8}}))
    g = input_geometry(*m["image_hw"], m["input_size"])
    poses = torch.cat((input_to_original(d.poses[..., :2], [g]), d.poses[..., 2:]), -1)[0][d.valid[0]]
    scores = d.scores[0][d.valid[0]]
    ref_poses, ref_scores = z[f"{name}/poses"], z[f"{name}/scores"]
    assert poses.shape == ref_poses.shape
    np.testing.assert_allclose(poses[..., :2].numpy(), ref_poses[..., :2], atol=1e-3)
    np.testing.assert_allclose(poses[..., 2].numpy(), ref_poses[..., 2], atol=1e-4)
    np.testing.assert_allclose(scores.numpy(), ref_scores, atol=1e-4)
    rescored = _rescorer(z, name, spec)(poses, scores)
    np.testing.assert_allclose(rescored.numpy(), z[f"{name}/rescored"], atol=1e-4)


class _FixedModel:
    """Returns fixed outputs (plain, then flipped half when called with twice the batch)."""

    def __init__(self, out: ScaleOutput) -> None:
        self.out = out
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(tuple(x.shape))
        if x.shape[0] == 2 * self.out.heatmaps.shape[0]:
            return (
                torch.cat((self.out.heatmaps, self.out.heatmaps_flip)),
                torch.cat((self.out.offsets, self.out.offsets_flip)),
            )
        return self.out.heatmaps, self.out.offsets


def test_predictor_matches_reference_end_to_end() -> None:
    z, meta = _golden()
    m = meta["coco_flip"]
    out = _case_outputs(m)[0]
    model = _FixedModel(out)
    est = PoseEstimator(model, COCO, None, _test(m["input_size"]), rescorer=_rescorer(z, "coco_flip", COCO))
    res = est([np.zeros((*m["image_hw"], 3), np.uint8)])[0]
    assert model.calls == [(2, 3, 256, 384)]
    np.testing.assert_allclose(res.poses[..., :2], z["coco_flip/poses"][..., :2], atol=1e-3)
    np.testing.assert_allclose(res.scores, z["coco_flip/rescored"], atol=1e-4)


def test_flip_input_shift() -> None:
    x = torch.arange(8.0).view(1, 1, 1, 8)
    assert flip_input(x, 3).flatten().tolist() == [4, 3, 2, 1, 0, 2, 1, 0]


def test_batch_equals_single_images() -> None:
    a = fabricate_outputs(COCO, 5, 48, 64, seed=11)
    b = fabricate_outputs(COCO, 20, 48, 64, seed=12)
    keys = ("heatmaps", "offsets", "heatmaps_flip", "offsets_flip")
    batch = ScaleOutput(1.0, *(torch.cat((a[k], b[k])) for k in keys))
    d = decode([batch], COCO)
    for i, o in enumerate((a, b)):
        single = decode([ScaleOutput(1.0, *(o[k] for k in keys))], COCO)
        n = int(single.valid.sum())
        assert int(d.valid[i].sum()) == n
        torch.testing.assert_close(d.poses[i, :n], single.poses[0, :n])


def _scene(spec: KeypointSpec, h: int, w: int, seed: int):
    o = fabricate_outputs(spec, 6, h, w, seed=seed)
    return ScaleOutput(1.0, o["heatmaps"], o["offsets"], o["heatmaps_flip"], o["offsets_flip"])


def _sorted(d, w_in: int | None = None, perm=None):
    valid = d.valid[0]
    poses, scores = d.poses[0][valid], d.scores[0][valid]
    if w_in is not None:
        poses = poses[:, perm].clone()
        poses[..., 0] = w_in - 4 - poses[..., 0]
    key = poses[..., 0].mean(-1) * 1000 + poses[..., 1].mean(-1)  # order independent of scores
    order = key.argsort()
    return poses[order], scores[order]


@pytest.mark.parametrize("seed", [3, 4])
def test_flip_symmetry(seed: int) -> None:
    """Decoding the mirrored outputs gives the mirrored poses (x -> 4(w-1) - x, left/right swapped).

    Exact with interpolated joint scores; the reference's floored reads are not mirror-symmetric
    (floor(x) of a mirrored x lands one pixel off), so NMS may then keep a different duplicate.
    """
    h, w = 40, 56
    s = _scene(COCO, h, w, seed)
    mirrored = ScaleOutput(1.0, s.heatmaps_flip, s.offsets_flip, s.heatmaps, s.offsets)
    cfg = codec_config({"scoring": {"joint_score": "bilinear"}})
    p1, s1 = _sorted(decode([s], COCO, cfg))
    p2, s2 = _sorted(decode([mirrored], COCO, cfg), 4 * w, COCO.flip_index())
    torch.testing.assert_close(p1[..., :2], p2[..., :2], atol=1e-4, rtol=0)
    torch.testing.assert_close(p1[..., 2], p2[..., 2], atol=1e-6, rtol=0)
    torch.testing.assert_close(s1, s2, atol=1e-6, rtol=0)


def test_no_flip_pairs_disables_flip() -> None:
    spec = KeypointSpec(name="line", names=("a", "b", "c"))
    o = fabricate_outputs(spec, 3, 32, 32, seed=0)
    assert "heatmaps_flip" not in o
    model = _FixedModel(ScaleOutput(1.0, o["heatmaps"], o["offsets"]))
    res = PoseEstimator(model, spec, None, _test(128))([np.zeros((128, 128, 3), np.uint8)])
    assert model.calls == [(1, 3, 128, 128)]
    assert res[0].poses.shape[1:] == (3, 3)


def test_pool_kernel_from_map_size() -> None:
    thresholds = default_codec_config().centers.pool_thresholds
    assert pool_kernel(128, 128, thresholds) == 3
    assert pool_kernel(256, 200, thresholds) == 5
    assert pool_kernel(320, 400, thresholds) == 7


def test_nms_group_rule_keeps_nothing_when_best_was_suppressed() -> None:
    """0 and 1 duplicate; 1 and 2 duplicate; 0 and 2 not. Visit 0 keeps 1 (best of {0, 1}), group
    {0, 1} suppressed; visit 2: group {1, 2}, best 1 already suppressed → nothing kept for 2."""
    base = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])  # extent sqrt(200)
    poses = torch.stack((base, base + 0.5, base + 1.0))[None]  # [1, 3, 4, 2]
    heat = torch.tensor([[0.5, 0.9, 0.7]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    keep, rank = pose_nms(poses, heat, valid, distance=0.06, min_joints=3)
    assert keep.tolist() == [[False, True, False]]
    keep_greedy, _ = pose_nms(poses, heat, valid, distance=0.06, min_joints=3, strategy="greedy")
    assert keep_greedy.tolist() == [[True, True, False]] or keep_greedy.tolist() == [[False, True, False]]


def test_nms_asymmetric_threshold() -> None:
    small = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    big = torch.tensor([[0.5, 0.0], [6.0, 0.0], [0.0, 40.0]])
    poses = torch.stack((small, big))[None]
    valid = torch.ones(1, 2, dtype=torch.bool)
    from dekr.codec.nms import duplicate_matrix

    asym = duplicate_matrix(poses, valid, distance=0.3, min_joints=1)
    sym = duplicate_matrix(poses, valid, distance=0.3, min_joints=1, symmetric=True)
    assert asym[0, 1, 0] and not asym[0, 0, 1]  # only the big pose's threshold covers the pair
    assert sym[0, 0, 1] and sym[0, 1, 0]


# ----------------------------------------------------------------------------- codec round trips


def _roundtrip(gt: dict, spec: KeypointSpec, flip: bool, max_dets: int, cfg=None) -> dict:
    ids, poses, scores = [], [], []
    for im in gt["images"]:
        anns = [
            a for a in gt["annotations"] if a["image_id"] == im["id"] and (a["iscrowd"] == 0 or a["num_keypoints"] > 0)
        ]
        kp = np.array([a["keypoints"] for a in anns], np.float64).reshape(len(anns), spec.num_keypoints, 3)
        area = np.array([a.get("area", 1e9) for a in anns])
        cfg = cfg or default_codec_config()
        out = outputs_from_ground_truth(
            kp,
            area,
            (im["height"], im["width"]),
            spec,
            cfg,
            512,
            flip=flip,
            min_center_area=1024.0 if spec.name == "coco" else 0.0,
        )
        d = decode([out], spec, cfg)
        g = input_geometry(im["height"], im["width"], 512)
        p = torch.cat((input_to_original(d.poses[..., :2], [g]), d.poses[..., 2:]), -1)[0][d.valid[0]]
        ids.append(im["id"])
        poses.append(p.numpy())
        scores.append(d.scores[0][d.valid[0]].numpy())
    return evaluate_keypoints(gt, results_to_coco(ids, poses, scores), spec, max_dets=max_dets)


@pytest.mark.parametrize("flip", [False, True])
def test_coco_sample_roundtrip(flip: bool) -> None:
    gt = json.loads((DATA / "coco_sample" / "person_keypoints_sample.json").read_text())
    stats = _roundtrip(gt, COCO, flip, max_dets=20)
    assert stats["AP"] >= 0.99, stats


@pytest.mark.parametrize("flip", [False, True])
def test_dense_crowd_at_least_as_good_as_reference(flip: bool) -> None:
    z, _ = _golden()
    gt = json.loads(bytes(z["dense30/gt"]).decode())
    ref_ap = float(z["dense30/ref_ap"][int(flip)])
    stats = _roundtrip(gt, COCO, flip, max_dets=30)
    assert stats["AP"] >= ref_ap - 1e-6, (stats["AP"], ref_ap)


def test_coco_sample_roundtrip_with_heatmap_matching() -> None:
    gt = json.loads((DATA / "coco_sample" / "person_keypoints_sample.json").read_text())
    stats = _roundtrip(gt, COCO, True, max_dets=20, cfg=codec_config({"refine": {"enabled": True}}))
    assert stats["AP"] >= 0.99, stats


def test_max_filter_equals_max_pool() -> None:
    import torch.nn.functional as F

    from dekr.codec.maps import max_filter

    x = torch.rand(2, 37, 53)
    for k in (3, 5, 7):
        assert torch.equal(max_filter(x, k), F.max_pool2d(x[:, None], k, 1, k // 2)[:, 0])


class _SizeModel:
    """Fake network whose outputs depend on the input width (one fabricated output per scale)."""

    def __init__(self, outs: list[ScaleOutput]) -> None:
        self.by_width = {o.heatmaps.shape[-1] * 4: o for o in outs}

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.by_width[x.shape[-1]]
        n = x.shape[0] // 2
        return torch.cat((o.heatmaps.expand(n, -1, -1, -1), o.heatmaps_flip.expand(n, -1, -1, -1))), torch.cat(
            (o.offsets.expand(n, -1, -1, -1), o.offsets_flip.expand(n, -1, -1, -1))
        )


def test_predictor_multiscale_batch_matches_reference() -> None:
    """Two scales (1, 0.5) with flip test, a batch of two images."""
    z, meta = _golden()
    m = meta["coco_portrait_ms"]
    outs = _case_outputs(m)
    est = PoseEstimator(_SizeModel(outs), COCO, None, _test(m["input_size"], scales=m["factors"], batch_size=3))
    image = np.zeros((*m["image_hw"], 3), np.uint8)
    res = est([image, image])
    for r in res:
        np.testing.assert_allclose(r.poses, z["coco_portrait_ms/poses"], atol=1e-3)
        np.testing.assert_allclose(r.scores, z["coco_portrait_ms/scores"], atol=1e-4)
