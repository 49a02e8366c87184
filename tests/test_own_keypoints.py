"""Your own keypoints end to end: layouts of 5, 14, 17 and 35 keypoints made by the synthetic
generator, through the codec round trip and through train -> eval -> predict -> export; and an
AI-Challenger-style file without area / iscrowd / bbox through training with validation and eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dekr.codec import Codec, default_codec_config
from dekr.codec.geometry import input_geometry, input_to_original
from dekr.codec.synthetic import outputs_from_ground_truth
from dekr.data.synthetic import generate_synthetic
from dekr.keypoints import build_keypoint_spec
from dekr.metrics import area_ranges_for, evaluate_keypoints, results_to_coco

ROOT = Path(__file__).resolve().parents[1]
_LAYOUTS = yaml.safe_load((ROOT / "tests" / "data" / "synthetic_layouts.yaml").read_text())
_HAND5 = yaml.safe_load((ROOT / "conf" / "data" / "custom_example.yaml").read_text())["keypoints"]
LAYOUTS = {5: _HAND5, 14: {"builtin": "crowdpose"}, 17: {"builtin": "coco"}, 35: _LAYOUTS["centipede35"]}


def _generate(root: Path, k: int, num_train: int = 6, num_val: int = 4, size: int = 192, people: int = 3) -> Path:
    return generate_synthetic(
        root,
        num_train=num_train,
        num_val=num_val,
        image_size=size,
        seed=k,
        max_people=people,
        heights=[80, 180],
        keypoints=LAYOUTS[k],
    )


@pytest.mark.parametrize("k", sorted(LAYOUTS))
@pytest.mark.parametrize("max_dets", [20, 30])
def test_codec_round_trip_on_generated_layouts(tmp_path: Path, k: int, max_dets: int) -> None:
    spec = build_keypoint_spec(LAYOUTS[k])
    # people far enough apart that their 8 x 8 offset windows do not overlap (where they do, the reference
    # codec itself loses joints: its overlap rule keeps the smaller person's offsets)
    root = _generate(tmp_path / "syn", k, num_val=6, size=320, people=2)
    gt = json.loads((root / "annotations" / "person_keypoints_val.json").read_text())
    codec = Codec(spec)
    cfg = default_codec_config()
    for flip in (False, True) if spec.can_flip else (False,):
        ids, poses, scores = [], [], []
        for im in gt["images"]:
            anns = [a for a in gt["annotations"] if a["image_id"] == im["id"] and a["num_keypoints"] > 0]
            kp = np.array([a["keypoints"] for a in anns], np.float64).reshape(len(anns), k, 3)
            out = outputs_from_ground_truth(
                kp,
                np.array([a["area"] for a in anns]),
                (im["height"], im["width"]),
                spec,
                cfg,
                256,
                flip=flip,
                min_center_area=0.0,
            )
            d = codec.decode([out])
            g = input_geometry(im["height"], im["width"], 256)
            xy = input_to_original(d.poses[..., :2], [g])
            p = np.concatenate([xy[0].numpy(), d.poses[0, :, :, 2:].numpy()], -1)[d.valid[0].numpy()]
            ids.append(im["id"])
            poses.append(p)
            scores.append(d.scores[0][d.valid[0]].numpy())
        stats = evaluate_keypoints(
            gt, results_to_coco(ids, poses, scores), spec, max_dets=max_dets, area_ranges=area_ranges_for("auto", spec)
        )
        assert stats["AP"] >= 0.99, (k, flip, stats)


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    flags = [a for a in args if a.startswith("--")]  # Hydra's flags before the overrides
    args = (*flags, *(a for a in args if not a.startswith("--")))
    r = subprocess.run(
        [sys.executable, str(ROOT / "src" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "disabled"},
    )
    assert r.returncode == 0, f"{script} {args}\n{r.stderr[-3000:]}"
    return r


def _data_config(folder: Path, name: str, keypoints: object, root: Path) -> list[str]:
    """A data config of the user's own, kept outside conf/ (found with --config-dir), as the README says."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    cfg = {
        "defaults": ["_base", "_self_"],
        "keypoints": keypoints,
        "root": str(root),
        "train_ann": "annotations/person_keypoints_train.json",
        "train_images": "images/train",
        "val_ann": "annotations/person_keypoints_val.json",
        "val_images": "images/val",
        "input_size": 128,
        "batch_size": 2,
        "num_workers": 0,
    }
    (folder / "data" / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return [f"--config-dir={folder}", f"data={name}"]


# 5 (no flip pairs) and 35 by default, to keep the suite short; DEKR_E2E_LAYOUTS=5,14,17,35 runs every layout
E2E_LAYOUTS = [int(k) for k in os.environ.get("DEKR_E2E_LAYOUTS", "5,35").split(",")]


def _train_one_epoch(data: list[str], tmp_path: Path, *extra: str) -> None:
    """One epoch of the tiny model on CPU, validated, into ``tmp_path/train/r``."""
    _run(
        "train.py",
        *data,
        "~experiment",
        "model=dekr_tiny",
        "logger=none",
        "trainer.max_epochs=1",
        "trainer.check_val_every_n_epoch=1",
        "trainer.accelerator=cpu",
        "test.input_size=128",
        f"paths.log_dir={tmp_path}",
        "run_name=r",
        "~callbacks.validation_images",
        *extra,
    )


@pytest.mark.slow
@pytest.mark.parametrize("k", E2E_LAYOUTS)
def test_train_eval_predict_rescore_export_on_a_layout(tmp_path: Path, k: int) -> None:
    root = _generate(tmp_path / "syn", k)
    data = _data_config(tmp_path / "my_conf", f"layout{k}", LAYOUTS[k], root)
    _train_one_epoch(data, tmp_path, "test.batch_size=2")
    run = tmp_path / "train" / "r"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 3 and "val/AP" in summary["val"]
    ckpt = run / "checkpoints" / "last.ckpt"
    common = [
        *data,
        "model=dekr_tiny",
        "test.input_size=128",
        "test.batch_size=2",
        "device=cpu",
        "progress=false",
        f"paths.log_dir={tmp_path}",
    ]
    _run("eval.py", f"checkpoint={ckpt}", *common, "run_name=e", "num_workers=0")
    metrics = json.loads((tmp_path / "eval" / "e" / "metrics.json").read_text())
    assert metrics["metrics"]["AP"] == pytest.approx(summary["val"]["val/AP"], abs=1e-9)
    spec = build_keypoint_spec(LAYOUTS[k])
    assert metrics["flip_test"] == spec.can_flip  # what ran, not what was asked
    _run("predict.py", f"checkpoint={ckpt}", *common, "run_name=p", f"input={root / 'images' / 'val'}")
    preds = json.loads((tmp_path / "predict" / "p" / "predictions.json").read_text())
    assert all(len(p["keypoints"]) == 3 * k for p in preds)
    # centre threshold below 0: the one-epoch net's best candidates are all output (poses to rescore)
    _run("eval.py", f"checkpoint={ckpt}", *common, "run_name=all", "num_workers=0", "codec.centers.threshold=-1.0")
    results = tmp_path / "eval" / "all" / "results.json"
    rescore = [sys.executable, "-m", "dekr.rescore"]
    for step in (
        ["dump", *data, f"--predictions={results}", "--split=val", f"--out={tmp_path / 'd.npz'}"],
        ["train", *data, f"--data={tmp_path / 'd.npz'}", f"--out={tmp_path / 'r.pth'}", "--epochs=2"],
    ):
        flags = [a for a in step[1:] if a.startswith("--")]
        r = subprocess.run(
            [*rescore, step[0], *flags, *(a for a in step[1:] if not a.startswith("--"))],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        assert r.returncode == 0, r.stderr[-3000:]
    _run(
        "eval.py",
        f"checkpoint={ckpt}",
        *common,
        "run_name=e2",
        "num_workers=0",
        f"rescore.weights={tmp_path / 'r.pth'}",
    )
    rescored = json.loads((tmp_path / "eval" / "e2" / "metrics.json").read_text())
    assert set(rescored["metrics"]) == set(metrics["metrics"])
    _run(
        "export.py",
        f"checkpoint={ckpt}",
        *data,
        f"output={tmp_path / 'm.onnx'}",
        "input_size=128",
        "adaptive_impl=grid_sample",
        f"paths.log_dir={tmp_path}",
        "run_name=x",
    )
    assert (tmp_path / "m.onnx").is_file()


@pytest.mark.slow
def test_aic_style_file_without_area_iscrowd_bbox_trains_and_evaluates(tmp_path: Path) -> None:
    """A 14-keypoint export that lists only keypoints (no area, iscrowd, bbox, num_keypoints)."""
    root = _generate(tmp_path / "syn", 14)
    for split in ("train", "val"):
        path = root / "annotations" / f"person_keypoints_{split}.json"
        d = json.loads(path.read_text())
        d["annotations"] = [{k: a[k] for k in ("id", "image_id", "category_id", "keypoints")} for a in d["annotations"]]
        path.write_text(json.dumps(d))
    aic = {
        "name": "aic",
        "names": [f"j{i}" for i in range(14)],
        "flip_pairs": [[0, 3], [1, 4], [2, 5]],
        "skeleton": [[0, 1], [1, 2], [3, 4], [4, 5]],
    }
    data = _data_config(tmp_path / "my_conf", "aic", aic, root)
    _train_one_epoch(data, tmp_path)
    summary = json.loads((tmp_path / "train" / "r" / "summary.json").read_text())
    assert "val/AP" in summary["val"]
    _run(
        "eval.py",
        f"checkpoint={tmp_path / 'train' / 'r' / 'checkpoints' / 'last.ckpt'}",
        *data,
        "model=dekr_tiny",
        "test.input_size=128",
        "device=cpu",
        "progress=false",
        "num_workers=0",
        f"paths.log_dir={tmp_path}",
        "run_name=e",
    )
    metrics = json.loads((tmp_path / "eval" / "e" / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"AP", "AP50", "AP75", "AR", "AR50", "AR75"}  # one area range
