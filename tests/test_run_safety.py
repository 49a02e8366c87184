"""Run safety: last.ckpt is the final state, a killed run resumes bit for bit, one run per folder,
damaged checkpoints, bounded W&B start, impossible device requests, diverging runs, no network."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import ROOT, synthetic_datamodule
from omegaconf import OmegaConf

import dekr  # noqa: F401  (resolvers, NO_ALBUMENTATIONS_UPDATE)
from dekr.data.synthetic import generate_synthetic

TESTS = Path(__file__).resolve().parent


class KillAt(pl.Callback):
    """SIGKILLs the training process after optimizer step ``step`` (its step checkpoint written) or
    at the start of epoch ``epoch_start`` (the previous epoch's checkpoint written): a hard crash."""

    def __init__(self, step: int = -1, epoch_start: int = -1) -> None:
        self.step, self.epoch_start = step, epoch_start

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.current_epoch == self.epoch_start:
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, num_train=8, num_val=3, image_size=128, seed=1)
    return root


def tiny(root: Path, out: Path, run_name: str, epochs: int = 3, workers: int = 0) -> list[str]:
    """A deterministic seconds-long CPU run: 8 images, batch 2 (4 steps per epoch), last.ckpt every step."""
    return [
        "logger=none",
        f"data.root={root}",
        "data.synthetic.num_train=8",
        "data.synthetic.num_val=3",
        "data.synthetic.image_size=128",
        "data.synthetic.seed=1",
        "data.input_size=128",
        "data.batch_size=2",
        f"data.num_workers={workers}",
        "data.persistent_workers=false",
        "data.pin_memory=false",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        f"trainer.max_epochs={epochs}",
        "trainer.deterministic=true",
        "trainer.check_val_every_n_epoch=1",
        "trainer.enable_progress_bar=false",
        "test.batch_size=3",
        f"paths.log_dir={out}",
        f"run_name={run_name}",
        "callbacks.last_checkpoint.every_n_train_steps=1",
    ]


def train_py(args: list[str], env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    full_env.update(
        {
            "WANDB_MODE": "offline",
            "PYTHONWARNINGS": "ignore",
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            **(env or {}),
        }
    )
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / "train.py"), *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def max_weight_difference(a: dict, b: dict) -> float:
    assert a["state_dict"].keys() == b["state_dict"].keys()
    return max((a["state_dict"][k].double() - b["state_dict"][k].double()).abs().max().item() for k in a["state_dict"])


# ----------------------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_killed_run_resumes_bit_identical(synthetic_root: Path, tmp_path: Path) -> None:
    """SIGKILL mid-epoch (after step 5 of 12, 2 loader workers) or at an epoch boundary (no workers), or a
    planned stop with trainer.max_steps=6, then a rerun with the same run_name: the final weights equal an
    uninterrupted run's exactly (max |dw| == 0)."""
    ok(train_py(tiny(synthetic_root, tmp_path, "straight")))
    straight = weights(tmp_path / "train" / "straight")
    assert straight["global_step"] == 12
    cases = {
        "mid_epoch_workers": (["+callbacks.kill.step=5"], 2),
        "epoch_boundary": (["+callbacks.kill.epoch_start=2"], 0),
    }
    for name, (kill, workers) in cases.items():
        args = tiny(synthetic_root, tmp_path, name, workers=workers)
        killed = train_py([*args, "+callbacks.kill._target_=test_run_safety.KillAt", *kill])
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        run_dir = tmp_path / "train" / name
        assert (run_dir / ".run.lock").is_file()  # the killed run's lock: stale, taken over below
        at_kill = weights(run_dir)["global_step"]
        assert at_kill == {"mid_epoch_workers": 5, "epoch_boundary": 8}[name]
        proc = ok(train_py(args))
        assert "stale run lock" in proc.stdout + proc.stderr
        resumed = weights(run_dir)
        assert resumed["global_step"] == 12
        diff = max_weight_difference(straight, resumed)
        print(f"{name}: killed at step {at_kill}, max |w_straight - w_resumed| = {diff}")
        assert diff == 0.0, f"{name}: resumed weights differ from the uninterrupted run by {diff}"
        assert (run_dir / "checkpoints" / "last.prev.ckpt").is_file()
        assert not (run_dir / ".run.lock").exists()
    # stopped on purpose with trainer.max_steps (the LR schedule is laid out per epoch, not over max_steps)
    args = tiny(synthetic_root, tmp_path, "max_steps")
    ok(train_py([*args, "trainer.max_steps=6"]))
    assert weights(tmp_path / "train" / "max_steps")["global_step"] == 6
    ok(train_py(args))
    diff = max_weight_difference(straight, weights(tmp_path / "train" / "max_steps"))
    print(f"max_steps: stopped at step 6, max |w_straight - w_resumed| = {diff}")
    assert diff == 0.0, f"max_steps: resumed weights differ from the uninterrupted run by {diff}"


@pytest.mark.slow
def test_last_checkpoint_is_the_final_state(synthetic_root: Path, tmp_path: Path) -> None:
    """A run stopped by max_steps mid-epoch leaves last.ckpt at that step, the previous one kept."""
    ok(
        train_py(
            [
                *tiny(synthetic_root, tmp_path, "steps", epochs=3),
                "trainer.max_steps=6",
                "callbacks.last_checkpoint.every_n_train_steps=200",
            ]
        )
    )
    ckpts = tmp_path / "train" / "steps" / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 6
    assert torch.load(ckpts / "last.prev.ckpt", weights_only=True)["global_step"] == 4  # the epoch-0 end
    summary = json.loads((tmp_path / "train" / "steps" / "summary.json").read_text())
    assert summary["global_step"] == 6


def test_sampler_order_is_a_function_of_seed_epoch_and_position() -> None:
    from dekr.data.datamodule import ResumableSampler

    data = list(range(11))
    full = list(ResumableSampler(data, batch_size=2, seed=3, position=lambda: (4, 0)))
    assert sorted(full) == data and full != data
    assert full == list(ResumableSampler(data, batch_size=2, seed=3, position=lambda: (4, 0)))
    assert full != list(ResumableSampler(data, batch_size=2, seed=3, position=lambda: (5, 0)))
    rest = list(ResumableSampler(data, batch_size=2, seed=3, position=lambda: (4, 2)))
    assert rest == full[4:] and [s.seed for s in rest] == [s.seed for s in full[4:]]
    padded = full + full[:1]  # DistributedSampler's padding to equal shards
    for rank in (0, 1):
        shard = list(ResumableSampler(data, 2, num_replicas=2, rank=rank, seed=3, position=lambda: (4, 0)))
        assert shard == padded[rank::2]


def test_training_batch_carries_image_ids(synthetic_root: Path) -> None:
    """The training batch names its images (the non-finite-loss error lists them)."""

    dm = synthetic_datamodule(synthetic_root, input_size=128, batch_size=3, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    ids = set(dm.datasets["train"].ids)
    assert batch["image_id"].shape == (3,) and set(batch["image_id"].tolist()) <= ids
    again = next(iter(dm.train_dataloader()))  # same seed, epoch, position: same images, same crops
    assert torch.equal(again["image"], batch["image"]) and torch.equal(again["image_id"], batch["image_id"])


# ----------------------------------------------------------------------------------------------- run lock
def test_second_run_in_a_locked_folder_stops_at_once(synthetic_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "train" / "busy"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("the first run's config\n")
    (run_dir / ".run.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
    t0 = time.time()
    proc = train_py(tiny(synthetic_root, tmp_path, "busy"))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and time.time() - t0 < 60
    assert str(run_dir) in out and f"pid {os.getpid()}" in out and "run_name=" in out and "wait" in out
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "the first run's config\n"
    assert not (run_dir / "checkpoints").exists()


def test_stale_lock_is_replaced_and_own_lock_released(tmp_path: Path) -> None:
    from dekr.training import RunFolderLocked, acquire_run_lock, release_run_lock

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".run.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    lock = acquire_run_lock(tmp_path)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    with pytest.raises(RunFolderLocked, match="in use by another run"):
        acquire_run_lock(tmp_path)  # this (live) process holds it
    release_run_lock(lock)
    assert not lock.exists()


# ----------------------------------------------------------------------------------------------- damaged checkpoints
def _ckpt(path: Path, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {"w": torch.ones(1000)}}, path)


def test_truncated_last_falls_back_to_the_previous(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from dekr.training import CheckpointError, remove_stale_temporaries, resolve_ckpt_path

    ckpts = tmp_path / "checkpoints"
    _ckpt(ckpts / "last.ckpt", 8)
    _ckpt(ckpts / "last.prev.ckpt", 4)
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 2])
    (ckpts / ".last.ckpt.tmp-12345").write_bytes(data[:100])
    cfg = OmegaConf.create({"auto_resume": True, "ckpt_path": None})
    assert remove_stale_temporaries(ckpts) == [ckpts / ".last.ckpt.tmp-12345"]
    assert not list(ckpts.glob(".*tmp*"))
    with caplog.at_level("WARNING"):
        assert resolve_ckpt_path(cfg, tmp_path) == str(ckpts / "last.prev.ckpt")
    assert str(ckpts / "last.ckpt") in caplog.text and "damaged" in caplog.text
    (ckpts / "last.prev.ckpt").unlink()
    with pytest.raises(CheckpointError, match=r"(?s)damaged.*Delete .*last\.ckpt.*auto_resume=false"):
        resolve_ckpt_path(cfg, tmp_path)


def test_truncated_last_without_fallback_fails_clearly(synthetic_root: Path, tmp_path: Path) -> None:
    ckpts = tmp_path / "train" / "broken" / "checkpoints"
    _ckpt(ckpts / "last.ckpt", 8)
    (ckpts / "last.ckpt").write_bytes((ckpts / "last.ckpt").read_bytes()[:500])
    (ckpts / ".last.ckpt.tmp-999999").write_bytes(b"partial")
    proc = train_py(tiny(synthetic_root, tmp_path, "broken"))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "last.ckpt is damaged" in out and "auto_resume=false" in out and "Delete" in out
    assert not (ckpts / ".last.ckpt.tmp-999999").exists()  # interrupted writes are cleaned at start


# ----------------------------------------------------------------------------------------------- W&B, devices
@pytest.mark.slow
def test_wandb_without_network_goes_offline_quickly(synthetic_root: Path, tmp_path: Path) -> None:
    """An API key but no reachable server (a closed localhost port): one warning, offline, no 90 s wait."""
    args = [a for a in tiny(synthetic_root, tmp_path, "wb", epochs=1) if a != "logger=none"]
    t0 = time.time()
    proc = ok(
        train_py(
            ["logger=wandb", *args],
            env={"WANDB_API_KEY": "f" * 40, "WANDB_MODE": "", "WANDB_BASE_URL": "http://127.0.0.1:9"},
        )
    )
    elapsed = time.time() - t0
    out = proc.stdout + proc.stderr
    assert out.count("logging offline") == 1 and "127.0.0.1:9" in out
    assert list((tmp_path / "train" / "wb" / "wandb").glob("offline-run-*"))
    assert elapsed < 60, f"W&B start took {elapsed:.0f} s"


def test_more_devices_than_the_machine_has_fails_clearly(synthetic_root: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("the check is for machines without GPUs")
    args = [a for a in tiny(synthetic_root, tmp_path, "dev") if not a.startswith("trainer.")]
    proc = train_py([*args, "trainer.devices=8", "trainer.max_epochs=1"])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "trainer.devices=8" in out and "no GPU" in out and "set trainer.devices=1" in out
    assert not (tmp_path / "train" / "dev" / "checkpoints").exists()


def test_a_run_without_training_batches_fails(synthetic_root: Path, tmp_path: Path) -> None:
    ann = json.loads((synthetic_root / "annotations" / "person_keypoints_train.json").read_text())
    ann["annotations"] = []  # every training image is skipped as empty
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps(ann))
    proc = train_py([*tiny(synthetic_root, tmp_path, "empty", epochs=1), f"data.train_ann={empty}"])
    assert proc.returncode != 0 and "no training batch was processed" in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------------------------- diverging runs
def test_overlays_survive_diverging_predictions() -> None:
    from dekr.callbacks import _overlay_pair, drawable_poses
    from dekr.keypoints import build_keypoint_spec

    spec = build_keypoint_spec("coco")
    poses = np.random.default_rng(0).uniform(0, 60, (3, 17, 3))
    poses[0, :5, :2] = np.nan
    poses[1, :, :2] = 1e30
    poses[2, 3] = (np.inf, -np.inf, np.nan)

    result = SimpleNamespace(poses=poses, scores=np.array([np.nan, 1e30, 0.5]))
    sample = {"image": np.zeros((64, 80, 3), np.uint8), "keypoints": poses.copy()}
    out = _overlay_pair(sample, result, spec)
    assert out.shape == (64, 160, 3)
    shown = drawable_poses(poses, 64, 80)
    assert (shown[0, :5, 2] < 0).all() and (shown[1, :, 2] < 0).all() and shown[2, 3, 2] < 0
    assert np.isfinite(shown).all() and (shown[2, 4] == poses[2, 4]).all()


# ----------------------------------------------------------------------------------------------- no network
def test_importing_the_package_makes_no_network_call() -> None:
    """albumentations' update check is off (NO_ALBUMENTATIONS_UPDATE) and nothing connects anywhere."""
    code = (
        "import socket, sys\n"
        "calls = []\n"
        "def refuse(self, *a, **k):\n"
        "    calls.append(a)\n"
        "    raise OSError('network disabled in this test')\n"
        "socket.socket.connect = refuse\n"
        "socket.socket.connect_ex = refuse\n"
        "import dekr, os\n"
        "assert os.environ.get('NO_ALBUMENTATIONS_UPDATE') == '1'\n"
        "import albumentations.check_version as cv\n"
        "import dekr.data.transforms, dekr.data, dekr.training\n"
        "print('CALLS', calls)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CALLS []" in proc.stdout
    assert "albumentations" in sys.modules and os.environ.get("NO_ALBUMENTATIONS_UPDATE") == "1"


# ----------------------------------------------------------------------------------------------- configs
def test_recipes_default_to_fp32_and_trainer_keys_need_no_plus() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        for exp in ("coco_w32_512", "coco_w48_640", "crowdpose_w32_512", "crowdpose_w48_640"):
            assert compose("train", overrides=[f"experiment={exp}"]).trainer.precision == "32-true", exp
        assert compose("train", overrides=["trainer=gpu"]).trainer.precision == "32-true"
        cfg = compose(
            "train",
            overrides=[
                "trainer.max_steps=5",
                "trainer.val_check_interval=0.5",
                "trainer.accumulate_grad_batches=2",
                "trainer.gradient_clip_val=1.0",
            ],
        )
        assert (cfg.trainer.max_steps, cfg.trainer.accumulate_grad_batches) == (5, 2)
        assert compose("train").trainer.max_steps == -1  # Lightning's default
        hydra_cfg = compose("train", return_hydra_config=True).hydra
        assert hydra_cfg.callbacks.run_lock._target_ == "dekr.training.RunLock"
    GlobalHydra.instance().clear()
