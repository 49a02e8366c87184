"""Tracking across frames (dekr.track), the streaming API, results formats and video predict's
incremental output and resume."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from dekr.data.synthetic_video import load_ground_truth, render_clip, write_clip
from dekr.inference.factory import load_estimator
from dekr.inference.predictor import PoseEstimator
from dekr.keypoints import COCO, build_keypoint_spec
from dekr.model import DEKR
from dekr.plaindata import plain
from dekr.results import FrameResult
from dekr.track import GreedyTracker, OneEuroFilter, PoseTracker, TrackConfig, default_track_config, pose_similarity

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)
COMMON = ["model=dekr_tiny", "test.input_size=128", "test.batch_size=2", "device=cpu", "progress=false",
          "test.flip=false"]  # fmt: skip


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_entry_{name}", ROOT / "src" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="predict", overrides=overrides)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = DEKR(num_keypoints=17, backbone="hrnet_tiny", channels_per_keypoint=8, heatmap_channels=16)
    with torch.no_grad():  # untrained, but finding "people" (centre heat above threshold, joint scores > 0.1)
        net.heatmap_head.final.bias += 0.2
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    dekr = {"network": net.arguments, "keypoints": plain(dataclasses.asdict(COCO))}
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "dekr": dekr}, path)
    return path


def _detections(gt, rng: np.random.Generator, noise: float = 1.5, miss: float = 0.05):
    """Ground-truth poses as detections: noise, joint scores from visibility, some people missed."""
    out = []
    for _, kp in gt:
        keep = rng.random(len(kp)) > miss
        kp = kp[keep]
        xy = kp[..., :2] + rng.normal(0, noise, kp[..., :2].shape)
        score = np.where(kp[..., 2] == 2, 0.9, np.where(kp[..., 2] == 1, 0.4, 0.0))
        out.append((np.concatenate([xy, score[..., None]], -1), np.full(len(kp), 0.9), np.flatnonzero(keep)))
    return out


def test_similarity_is_vectorized_and_layout_agnostic() -> None:
    spec = build_keypoint_spec({"name": "tri", "names": ["a", "b", "c"], "sigmas": [0.05, 0.1, 0.2]})
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.uniform(0, 100, (4, 3, 2)), np.ones((4, 3, 1))], -1)
    sim = pose_similarity(a, a[[2, 0]], spec.sigmas_array)
    assert sim.shape == (4, 2) and np.isclose(sim[2, 0], 1.0) and np.isclose(sim[0, 1], 1.0)
    assert pose_similarity(a[:0], a, spec.sigmas_array).shape == (0, 4)
    unseen = a.copy()
    unseen[..., 2] = 0  # no joint seen in both: OKS 0, only the box term
    assert (pose_similarity(unseen, a, spec.sigmas_array, box_weight=0.0) == 0).all()


def test_static_clip_keeps_every_id(checkpoint: Path) -> None:
    frames = [img for img, _ in render_clip(seed=1, num_frames=20, num_people=3, scenario="static")]
    assert all((f == frames[0]).all() for f in frames)
    # the tracker on ground truth with noise
    gt = [(np.array([p["id"] for p in people]), np.stack([p["keypoints"] for p in people]))
          for _, people in render_clip(seed=1, num_frames=40, num_people=3, scenario="static")]  # fmt: skip
    tracker = PoseTracker(COCO, {"enabled": True, "patience": 5})
    first = None
    for poses, scores, _ in _detections(gt, np.random.default_rng(0), miss=0.0):
        ids, _ = tracker.update(poses, scores)
        first = ids if first is None else first
        assert (ids == first).all()
    # the streaming API on one image repeated (an untrained network: whatever it finds keeps its ID)
    est = PoseEstimator.from_checkpoint(checkpoint, input_size=128, flip=False, batch_size=4, device="cpu")
    results = list(est.stream(frames, track={"min_score": 0.0, "joint_threshold": 0.0, "min_similarity": 0.5}))
    assert len(results) == 20 and all(isinstance(r, FrameResult) for r in results)
    assert len(results[0]) > 0 and (results[0].track_ids >= 0).all()
    for r in results:
        assert (r.track_ids == results[0].track_ids).all()


@pytest.mark.parametrize("seed", [0, 2])
def test_crossing_clip_keeps_ids_through_the_crossing(tmp_path: Path, seed: int) -> None:
    gt_file = tmp_path / "gt.json"
    write_clip(tmp_path / "clip.mp4", gt_file, seed=seed, num_frames=80, num_people=3, scenario="cross")
    gt = load_ground_truth(gt_file)
    assert cv2.VideoCapture(str(tmp_path / "clip.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 80
    dets = _detections(gt, np.random.default_rng(seed))
    tracker, greedy = PoseTracker(COCO, {"enabled": True}), GreedyTracker(COCO)
    mapping: dict[int, int] = {}
    greedy_ids: set[int] = set()
    for (gt_ids, _), (poses, scores, kept) in zip(gt, dets):
        ids, _ = tracker.update(poses, scores)
        greedy_ids.update(greedy.update(poses, scores)[0].tolist())
        for person, track in zip(gt_ids[kept], ids):
            assert mapping.setdefault(int(person), int(track)) == track, "an ID switched"
    assert len(set(mapping.values())) == len(mapping) == 3
    assert len(greedy_ids) > 3  # the per-frame baseline loses people at every missed detection


def _walker(x0: float, vx: float, t: int, rng: np.random.Generator) -> np.ndarray:
    """A rigid COCO figure (100 px tall) walking along x: ``[17, 3]`` at frame ``t``, all joints seen."""
    template = np.stack([np.linspace(-15, 15, 17), np.linspace(-50, 50, 17)], -1)
    xy = template + (x0 + vx * t, 120.0) + rng.normal(0, 0.5, template.shape)
    return np.concatenate([xy, np.full((17, 1), 0.9)], -1)


@pytest.mark.parametrize("case", ["mixed pose", "one pose for two"])
def test_a_crossing_keeps_both_ids_when_the_poses_in_between_mislead(case: str) -> None:
    """Two people cross: ``a`` walks right, ``b`` walks left; for 10 frames around the crossing the
    network's poses mislead.

    ``mixed pose``: just before ``b`` is hidden, its pose borrows 6 joints from ``a`` (the network's
    pose of a half-covered person): the track's velocity comes from the median joint displacement,
    not from the mean, so ``b`` is found again where it reappears. ``one pose for two``: while they
    overlap the network finds one pose between them, close to both predictions: that contested
    match keeps an ID but takes neither track's motion (``contest_ratio``); with ``contest_ratio: 0``
    both people come out of the crossing with new IDs."""
    rng = np.random.default_rng(0)
    tracker = PoseTracker(COCO, {"enabled": True, "contest_ratio": 0.0 if case == "mixed pose" else 0.7})
    ids_a, ids_b = set(), set()
    hidden = range(28, 38) if case == "mixed pose" else range(30, 40)
    for t in range(60):
        a, b = _walker(100, 3.0, t, rng), _walker(300, -3.0, t, rng)
        if t == 27 and case == "mixed pose":
            b[:6, :2] = a[:6, :2]  # a mixed pose: 6 of b's joints are a's
        if t not in hidden:
            poses = np.stack([a, b])
        else:
            poses = np.stack([a]) if case == "mixed pose" else np.stack([(a + b) / 2])
        ids, _ = tracker.update(poses, np.full(len(poses), 0.9))
        if t not in hidden:
            ids_a.add(int(ids[0]))
            ids_b.add(int(ids[1]))
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b, (ids_a, ids_b)


def test_a_second_detection_of_one_person_starts_no_track() -> None:
    """From the frame a person appears, the network also gives a shifted, lower-scored copy of them:
    with birth suppression the copy gets no track (no ID for it to steal later); a second person
    elsewhere still starts one."""
    gt = [np.array([p["keypoints"] for p in people])
          for _, people in render_clip(seed=1, num_frames=20, num_people=3, scenario="walk")]  # fmt: skip
    rng = np.random.default_rng(1)
    counts = {}
    for birth in (0.4, None):
        tracker = PoseTracker(COCO, {"birth_similarity": birth}, fps=25)
        seen = set()
        for kp in gt:
            people = np.concatenate([kp[..., :2] + rng.normal(0, 1.0, kp[..., :2].shape),
                                     np.full(kp.shape[:2] + (1,), 0.9)], -1)  # fmt: skip
            copy = people[:1].copy()
            copy[..., :2] += 6.0  # a second pose a few px off the first person
            poses = np.concatenate([people, copy])
            ids, _ = tracker.update(poses, np.r_[np.full(len(people), 0.9), 0.3])
            seen |= set(ids[ids >= 0].tolist())
        counts[birth] = len(seen)
    assert counts[0.4] == 3 and counts[None] > 3, counts


def test_track_config_comes_from_its_group_and_refuses_unknown_keys() -> None:
    cfg = default_track_config()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        composed = compose(config_name="predict", overrides=["input=x", "track.patience=7"])
    assert TrackConfig.from_mapping(plain(composed.track)) == cfg.replace(patience=7)
    assert cfg.replace(smoothing={"enabled": True}).smoothing.min_cutoff == cfg.smoothing.min_cutoff
    with pytest.raises(ValueError, match="patiense"):
        TrackConfig.from_mapping({"patiense": 3})
    with pytest.raises(ValueError, match="patience"):
        TrackConfig.from_mapping({"patience": "soon"})


def test_one_euro_prediction_removes_the_lag_at_steady_speed() -> None:
    truth = (2.0 * np.arange(100))[:, None, None] * np.ones((1, 5, 2))  # 2 px per frame
    lag = {}
    for predict in (False, True):
        f = OneEuroFilter(min_cutoff=1.0, beta=0.0, d_cutoff=1.0, predict=predict)
        out = np.stack([f(x, 1 / 25) for x in truth])
        lag[predict] = np.abs(out - truth)[50:].mean()
    assert lag[False] > 2.0 and lag[True] < 0.05, lag


def test_one_euro_filter_reduces_jitter_vectorized() -> None:
    rng = np.random.default_rng(0)
    truth = np.linspace(0, 50, 100)[:, None, None] * np.ones((1, 5, 2))
    noisy = truth + rng.normal(0, 2, truth.shape)
    f = OneEuroFilter(min_cutoff=1.0, beta=0.05, d_cutoff=1.0)
    out = np.stack([f(x, 1 / 25) for x in noisy])
    acc = lambda p: np.abs(np.diff(p, 2, axis=0)).mean()  # noqa: E731
    assert acc(out) < 0.5 * acc(noisy)
    assert abs(np.abs(out - truth)[10:].mean() - np.abs(noisy - truth)[10:].mean()) < 1.0


def test_low_scored_wrong_joints_barely_move_the_smoothed_pose() -> None:
    """A person walking at 2 px/frame; every 7th frame one joint jumps 40 px with a low score (a wrong
    joint, as networks give them). Score-weighted smoothing keeps that joint near its true path and
    steadier than trusting every joint; weight 0 carries a joint on with its filtered speed."""
    k, steps = 17, 60
    truth = np.zeros((steps, k, 3))
    truth[..., 0] = 100 + 2.0 * np.arange(steps)[:, None] + 5 * np.arange(k)[None]
    truth[..., 1] = 100 + 3 * np.arange(k)[None]
    truth[..., 2] = 0.9
    seen = truth.copy()
    spikes = np.arange(5, steps, 7)
    seen[spikes, 3, :2] += 40.0
    seen[spikes, 3, 2] = 0.05
    smooth = {"enabled": True, "min_cutoff": 2.0, "beta": 0.05, "d_cutoff": 1.0, "predict": True}
    err, acc = {}, {}
    for confidence in (0.0, 0.5):
        tracker = PoseTracker(COCO, {"smoothing": {**smooth, "confidence": confidence}}, fps=25)
        out = np.stack([tracker.update(p[None], np.array([0.9]))[1][0] for p in seen])
        err[confidence] = np.abs(out[spikes, 3, :2] - truth[spikes, 3, :2]).max()
        acc[confidence] = np.abs(np.diff(out[:, 3, :2], 2, axis=0)).mean()
        assert np.allclose(out[..., 2], seen[..., 2])  # joint scores come back as detected
    assert err[0.5] < 5.0 < 20.0 < err[0.0], err  # trusted fully, the spike comes through (40 px)
    assert acc[0.5] < 0.25 * acc[0.0], acc

    f = OneEuroFilter(min_cutoff=2.0, beta=0.0, d_cutoff=1.0, predict=True)
    for x in truth[:30, :, :2]:
        f(x, 1 / 25)
    held = f(truth[30, :, :2] + 100.0, 1 / 25, weight=np.zeros((k, 1)))
    assert np.allclose(held[:, 0], truth[30, :, 0], atol=0.5)  # ignored sample: carried at 2 px/frame


def test_results_formats(checkpoint: Path) -> None:
    poses = np.random.default_rng(0).uniform(10, 100, (2, 17, 3)).astype(np.float32)
    res = FrameResult(poses, np.array([0.9, 0.5], np.float32), COCO, frame=3, source="v.mp4",
                      track_ids=np.array([4, -1]))  # fmt: skip
    d = json.loads(res.to_json())
    assert d["frame"] == 3 and [p["track_id"] for p in d["people"]] == [4, None]
    back = FrameResult.from_dict(d, COCO)
    assert np.allclose(back.poses, poses, atol=1e-3) and back.track_ids.tolist() == [4, -1]
    coco = res.to_coco(image_id=7)
    assert coco[0]["image_id"] == 7 and len(coco[0]["keypoints"]) == 51 and coco[0]["track_id"] == 4
    lines = res.to_csv().splitlines()
    assert lines[0].startswith("frame,source,person,track_id") and len(lines) == 1 + 2 * 17
    img = np.zeros((120, 120, 3), np.uint8)
    assert res.plot(img).any() and not img.any()


def test_stream_matches_predict_on_a_folder(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (img, _) in enumerate(render_clip(seed=3, num_frames=3, num_people=2, size=(160, 128))):
        cv2.imwrite(str(folder / f"f{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    _load("predict").predict(_cfg([*COMMON, f"input={folder}", f"output_dir={out}", f"checkpoint={checkpoint}"]))
    records = json.loads((out / "predictions.json").read_text())
    est = load_estimator(checkpoint, input_size=128, flip=False, batch_size=2, device="cpu")
    results = list(est.stream(folder))
    assert [r.source for r in results] == ["f0.png", "f1.png", "f2.png"]
    for r in results:
        mine = sorted(r.to_coco(0), key=lambda x: -x["score"])
        theirs = sorted((x for x in records if x["file_name"] == r.source), key=lambda x: -x["score"])
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs):
            assert np.allclose(a["keypoints"], b["keypoints"], atol=1e-3) and np.isclose(a["score"], b["score"])


def _video(path: Path, n: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (160, 128))
    for img, _ in render_clip(seed=4, num_frames=n, num_people=2, size=(160, 128)):
        writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_killed_video_predict_keeps_frames_and_resume_continues(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    predict = _load("predict")
    video = _video(tmp_path / "clip.mp4", 10)
    args = [*COMMON, f"input={video}", f"checkpoint={checkpoint}", "track.enabled=true", "track.min_score=0.0",
            "track.joint_threshold=0.0", "track.smoothing.enabled=true"]  # fmt: skip
    full = tmp_path / "full"
    predict.predict(_cfg([*args, f"output_dir={full}"]))
    expected = [json.loads(line) for line in (full / "predictions.jsonl").read_text().splitlines()]
    assert [f["frame"] for f in expected] == list(range(10))
    assert any(p["track_id"] is not None for f in expected for p in f["people"])

    calls = {"n": 0}
    original = PoseEstimator.predict_batch

    def dies_after_two_batches(self, images):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt  # a killed run (not an error the run would skip)
        return original(self, images)

    out = tmp_path / "out"
    monkeypatch.setattr(PoseEstimator, "predict_batch", dies_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        predict.predict(_cfg([*args, f"output_dir={out}"]))
    monkeypatch.setattr(PoseEstimator, "predict_batch", original)
    kept = (out / "predictions.jsonl").read_text().splitlines()
    assert len(kept) == 4 and not (out / "predictions.json").exists()  # two batches of 2 frames
    with open(out / "predictions.jsonl", "a") as fh:
        fh.write('{"frame": 4, "sou')  # a write cut short by the kill

    with pytest.raises(FileExistsError, match="resume=true"):
        predict.predict(_cfg([*args, f"output_dir={out}"]))
    summary = predict.predict(_cfg([*args, f"output_dir={out}", "resume=true"]))
    assert summary["resumed_frames"] == 4 and summary["frames"] == 10
    got = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [f["frame"] for f in got] == list(range(10))
    for a, b in zip(got, expected):  # same poses, same IDs (tracker and filters replayed)
        assert [p["track_id"] for p in a["people"]] == [p["track_id"] for p in b["people"]]
        assert np.allclose([p["keypoints"] for p in a["people"]], [p["keypoints"] for p in b["people"]], atol=2e-3)
    records = json.loads((out / "predictions.json").read_text())
    assert {r["frame"] for r in records} <= set(range(10)) and all("track_id" in r for r in records)
    cap, n = cv2.VideoCapture(str(out / "clip_pose.mp4")), 0
    while cap.read()[0]:
        n += 1
    assert n == 10
