"""predict.py and eval.py entry points on the sample data (tiny untrained network, small inputs)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
torch.set_num_threads(1)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_entry_{name}", ROOT / "src" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cfg(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


COMMON = ["model=dekr_tiny", "test.input_size=128", "test.batch_size=2", "device=cpu", "progress=false"]


def test_predict_folder_with_unreadable_file(tmp_path: Path) -> None:
    predict = _load("predict")
    src = tmp_path / "in"
    src.mkdir()
    for p in sorted((DATA / "coco_sample").glob("*.jpg"))[:2]:
        shutil.copy(p, src / p.name)
    (src / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    cfg = _cfg("predict", [*COMMON, f"input={src}", f"output_dir={out}", "draw.min_score=0.0"])
    summary = predict.predict(cfg)
    assert summary["images"] == 3 and summary["skipped"] == [str(src / "broken.jpg")]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(p.stem + ".jpg" for p in src.glob("0*.jpg"))
    records = json.loads((out / "predictions.json").read_text())
    assert all(len(r["keypoints"]) == 51 and "file_name" in r for r in records)


def test_predict_video(tmp_path: Path) -> None:
    predict = _load("predict")
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (160, 120))
    rng = np.random.default_rng(0)
    for _ in range(5):
        writer.write(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    writer.release()
    out = tmp_path / "out"
    cfg = _cfg("predict", [*COMMON, f"input={video}", f"output_dir={out}"])
    summary = predict.predict(cfg)
    assert summary["videos"] == 1 and not summary["skipped"]
    cap = cv2.VideoCapture(str(out / "clip_pose.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 5


def test_eval_writes_results_and_metrics(tmp_path: Path) -> None:
    evaluate = _load("eval")
    from dekr.model import DEKR

    torch.manual_seed(0)
    model = DEKR(17, backbone="hrnet_tiny", heatmap_channels=16, channels_per_keypoint=8)
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    out = tmp_path / "eval"
    cfg = _cfg(
        "eval",
        [
            *COMMON,
            f"checkpoint={ckpt}",
            f"output_dir={out}",
            f"data.root={DATA / 'coco_sample'}",
            "data.val_ann=person_keypoints_sample.json",
            "data.val_images=.",
            "num_workers=0",
            "limit_images=2",
        ],
    )
    stats = evaluate.evaluate(cfg)
    assert {"AP", "AR", "APm"} <= set(stats)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["images"] == 2 and saved["metrics"]["AP"] == pytest.approx(stats["AP"])
    assert isinstance(json.loads((out / "results.json").read_text()), list)


def test_viz_renders_images() -> None:
    from dekr.codec.synthetic import fabricate_outputs
    from dekr.keypoints import COCO
    from dekr.viz import draw_poses, render_heatmaps, render_offsets

    img = np.zeros((120, 160, 3), np.uint8)
    poses = np.concatenate([np.random.default_rng(0).uniform(10, 110, (2, 17, 2)), np.ones((2, 17, 1))], -1)
    drawn = draw_poses(img, poses, COCO, scores=np.array([0.9, 0.5]))
    assert drawn.shape == img.shape and drawn.any() and not img.any()
    assert np.array_equal(draw_poses(img, np.zeros((0, 17, 3)), COCO), img)
    o = fabricate_outputs(COCO, 3, 30, 40, seed=0, flip=False)
    hm = render_heatmaps(o["heatmaps"][0], img)
    assert hm.shape == img.shape
    assert render_heatmaps(o["heatmaps"][0]).shape == (30, 40, 3)
    arrows = render_offsets(o["offsets"][0], o["heatmaps"][0, -1], COCO, threshold=0.3)
    assert arrows.shape == (120, 160, 3) and arrows.any()
