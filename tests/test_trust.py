"""Files that are not what they claim: checkpoints never run code, mismatches and empty runs fail
clearly through the entry points, nothing done is overwritten."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dekr.keypoints import COCO
from dekr.model import DEKR
from dekr.model.build import build_network
from dekr.model.checkpoint import CheckpointMismatchError
from dekr.plaindata import plain

ROOT = Path(__file__).resolve().parents[1]
COMMON = [
    "model=dekr_tiny",
    "test.input_size=128",
    "test.batch_size=2",
    "device=cpu",
    "progress=false",
    "test.flip=false",
]


def _run(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
    )


def _checkpoint(path: Path, network: object = None, spec=COCO) -> Path:
    net = DEKR(num_keypoints=spec.num_keypoints, backbone="hrnet_tiny", channels_per_keypoint=8, heatmap_channels=16)
    dekr = {"network": net.arguments if network is None else network, "keypoints": plain(dataclasses.asdict(spec))}
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "dekr": dekr}, path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "a.png", "b.jpg"):
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    return folder


@pytest.mark.parametrize("key", ["network", "legacy"])
def test_a_crafted_checkpoint_cannot_run_code(tmp_path: Path, images: Path, key: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    payload = {"_target_": "builtins.open", "_args_": [str(victim), "w"]}
    ckpt = tmp_path / "evil.ckpt"
    if key == "network":
        _checkpoint(ckpt, network=payload)
    else:  # the older layout's key
        net = DEKR(num_keypoints=17, backbone="hrnet_tiny")
        torch.save({"state_dict": net.state_dict(), "dekr_model": {"num_keypoints": 17, **payload}}, ckpt)
    r = _run("predict.py", f"input={images}", f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path / 'out'}", *COMMON)
    assert r.returncode != 0
    assert victim.read_text() == "precious"
    assert "(stored network arguments): unknown argument(s) ['_args_', '_target_']" in r.stderr, r.stderr[-2000:]
    with pytest.raises(ValueError, match=r"evil.ckpt \(stored network arguments\): unknown argument"):
        build_network(COCO, None, ckpt)


def test_stored_arguments_are_type_checked(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "a.ckpt", network={"num_keypoints": 17, "backbone": {"nested": 1}})
    with pytest.raises(ValueError, match=r"a.ckpt \(stored network arguments\).backbone: expected a string"):
        build_network(COCO, None, ckpt)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_never_unpickles_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer's CheckpointIO loads with weights_only=True even when torch is told not to."""
    from dekr.callbacks import AtomicCheckpointIO

    marker = tmp_path / "ran"
    path = tmp_path / "last.ckpt"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": {}, "x": _Payload(marker)}, fh)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(path)
    assert not marker.exists()
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, path)  # a real checkpoint loads
    assert AtomicCheckpointIO().load_checkpoint(path)["epoch"] == 3


def test_keypoint_mismatch_fails_before_any_image(tmp_path: Path, images: Path) -> None:
    ckpt = _checkpoint(tmp_path / "coco.ckpt")
    r = _run(
        "predict.py",
        f"input={images}",
        f"checkpoint={ckpt}",
        "data=crowdpose",
        f"hydra.run.dir={tmp_path / 'out'}",
        *COMMON,
    )
    assert r.returncode != 0
    assert "trained on the keypoint layout 'coco' (17 keypoints" in r.stderr and "'crowdpose' (14" in r.stderr
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_predict_refuses_to_overwrite_and_keeps_same_stem_overlays(tmp_path: Path, images: Path) -> None:
    ckpt = _checkpoint(tmp_path / "m.ckpt")
    out = tmp_path / "out"
    first = _run("predict.py", f"input={images}", f"checkpoint={ckpt}", f"hydra.run.dir={out}", *COMMON)
    assert first.returncode == 0, first.stderr[-2000:]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a_jpg.jpg", "a_png.jpg", "b.jpg"]
    before = (out / "predictions.json").read_text()
    again = _run("predict.py", f"input={images}", f"checkpoint={ckpt}", f"hydra.run.dir={out}", *COMMON)
    assert again.returncode != 0 and "overwrite=true" in again.stderr
    assert (out / "predictions.json").read_text() == before
    forced = _run(
        "predict.py", f"input={images}", f"checkpoint={ckpt}", f"hydra.run.dir={out}", "overwrite=true", *COMMON
    )
    assert forced.returncode == 0


def test_predict_with_nothing_readable_exits_non_zero(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "x.jpg").write_bytes(b"not an image")
    ckpt = _checkpoint(tmp_path / "m.ckpt")
    r = _run("predict.py", f"input={folder}", f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path / 'out'}", *COMMON)
    assert r.returncode != 0 and "none of the 1 inputs" in r.stderr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["skipped"] == [str(folder / "x.jpg")]


def test_eval_with_every_image_unreadable_exits_non_zero(tmp_path: Path, coco_sample: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for p in coco_sample.glob("*.jpg"):
        (images / p.name).write_bytes(b"truncated")
    ckpt = _checkpoint(tmp_path / "m.ckpt")
    r = _run(
        "eval.py",
        f"checkpoint={ckpt}",
        f"data.root={tmp_path}",
        f"data.val_ann={coco_sample / 'person_keypoints_sample.json'}",
        f"data.val_images={images}",
        "num_workers=0",
        f"hydra.run.dir={tmp_path / 'ev'}",
        *COMMON,
    )
    assert r.returncode != 0 and "no image of the val split could be evaluated" in r.stderr, r.stderr[-2000:]


def test_export_of_an_unconverted_official_checkpoint_names_the_fix(tmp_path: Path) -> None:
    official = tmp_path / "pose_dekr_hrnetw32_coco.pth"
    torch.save({"offset_feature_layers.0.0.conv1.weight": torch.zeros(1), "conv1.weight": torch.zeros(1)}, official)
    r = _run(
        "export.py",
        f"checkpoint={official}",
        f"output={tmp_path / 'm.onnx'}",
        f"hydra.run.dir={tmp_path}",
        "model=dekr_tiny",
    )
    assert r.returncode == 1
    assert "python -m dekr.convert SRC DST --source official" in r.stderr, r.stderr[-2000:]
    with pytest.raises(CheckpointMismatchError, match="convert it first"):
        build_network(COCO, None, official)


def test_zero_branches_is_refused() -> None:
    with pytest.raises(ValueError, match=r"num_branches must be in \[1, num_keypoints=17\], got 0"):
        DEKR(num_keypoints=17, backbone="hrnet_tiny", num_branches=0)
