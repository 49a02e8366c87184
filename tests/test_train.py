"""Training system: configs compose, recipes run, DDP gathering, sweeps, crash-safe resume, W&B offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import COCO_SAMPLE, ROOT, synthetic_datamodule
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import dekr  # noqa: F401  (resolvers)
from dekr.data.synthetic import generate_synthetic

CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if not p.stem.startswith("_"))  # _base: shared
DATA = sorted(p.stem for p in (CONF / "data").glob("*.yaml") if not p.stem.startswith("_"))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, num_train=8, num_val=3, image_size=128, seed=1)
    return root


def tiny(root: Path | None, out: Path, run_name: str = "run", epochs: int = 1) -> list[str]:
    """Overrides that make any config a seconds-long CPU run (on the tiny synthetic set at ``root``)."""
    synthetic = (
        [
            f"data.root={root}",
            "data.synthetic.num_train=8",
            "data.synthetic.num_val=3",
            "data.synthetic.image_size=128",
            "data.synthetic.seed=1",
        ]
        if root
        else []
    )
    return [
        *synthetic,
        "data.input_size=128",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "data.pin_memory=false",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        f"trainer.max_epochs={epochs}",
        "trainer.check_val_every_n_epoch=1",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        f"paths.log_dir={out}",
        f"run_name={run_name}",
        "test.batch_size=3",
    ]


def run_train(
    args: list[str],
    cwd: Path = ROOT,
    timeout: int = 600,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env.pop("WANDB_API_KEY", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "src" / "train.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture()
def hydra_conf():
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        yield
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(hydra_conf: None, experiment: str) -> None:
    cfg = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    OmegaConf.resolve(cfg.model)
    from dekr.keypoints import build_keypoint_spec
    from dekr.model.build import network_arguments

    assert cfg.model.num_keypoints is None  # from the layout
    assert "num_keypoints" not in network_arguments(cfg.model)
    assert build_keypoint_spec(OmegaConf.to_container(cfg.data.keypoints)).num_keypoints in (14, 17)
    assert cfg.test.input_size == cfg.data.input_size


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("data", DATA)
def test_every_model_data_pair_composes(hydra_conf: None, model: str, data: str) -> None:
    cfg = compose("train", overrides=[f"model={model}", f"data={data}", "logger=tensorboard", "trainer=ddp"])
    resolved = OmegaConf.to_container(cfg.model, resolve=True)
    assert resolved["num_keypoints"] is None  # the layout's K, set by the builder
    assert resolved["adaptive_impl"] in ("grid_sample", "deform")
    assert cfg.data.codec.stride == cfg.codec.stride  # the data pipeline reads the codec group
    # the default quickstart experiment never turns a chosen real dataset into a synthetic one
    assert ("synthetic" in cfg.data) == (data in ("synthetic", "quickstart"))


def test_paper_recipes_match_reference(hydra_conf: None) -> None:
    w32 = compose("train", overrides=["experiment=coco_w32_512"])
    assert (w32.model.backbone, w32.data.input_size, w32.data.batch_size, w32.trainer.devices) == (
        "hrnet_w32",
        512,
        10,
        4,
    )
    assert list(w32.module.scheduler.milestones) == [90, 120] and w32.trainer.max_epochs == 140
    assert w32.module.optimizer.lr == 1e-3 and w32.module.optimizer.weight_decay == 0.0
    w48 = compose("train", overrides=["experiment=coco_w48_640"])
    assert (w48.model.backbone, w48.model.heatmap_channels, w48.data.input_size, w48.data.batch_size) == (
        "hrnet_w48",
        48,
        640,
        5,
    )
    cp = compose("train", overrides=["experiment=crowdpose_w32_512"])
    assert list(cp.module.scheduler.milestones) == [200, 260] and cp.trainer.max_epochs == 300
    assert cp.codec.nms.min_joints == 7 and cp.codec.scoring.scale_decrease == 0.8
    # the user's command: model=dekr_w32 with 8 devices keeps strategy auto (DDP for >1 device)
    user = compose("train", overrides=["model=dekr_w32", "trainer.devices=8"])
    assert user.trainer.devices == 8 and user.trainer.strategy == "auto" and user.model.backbone == "hrnet_w32"


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run_of_experiments(experiment: str, synthetic_root: Path, tmp_path: Path) -> None:
    real = experiment.startswith(("coco", "crowdpose"))
    args = [
        f"experiment={experiment}",
        "trainer.fast_dev_run=true",
        "logger=none",
        "model.pretrained=false",
        *tiny(None if real else synthetic_root, tmp_path),
    ]
    if experiment.startswith("coco"):  # the real COCO sample in the COCO layout
        args += [
            f"data.root={COCO_SAMPLE}",
            "data.train_ann=person_keypoints_sample.json",
            "data.train_images=.",
            "data.val_ann=person_keypoints_sample.json",
            "data.val_images=.",
        ]
    if experiment.startswith("crowdpose"):
        sample = COCO_SAMPLE.parent / "crowdpose_sample"
        args += [
            f"data.root={sample}",
            "data.train_ann=crowdpose_sample.json",
            "data.train_images=.",
            "data.val_ann=crowdpose_sample.json",
            "data.val_images=.",
            "data.test_ann=crowdpose_sample.json",
            "data.test_images=.",
        ]
    run_train(args)


@pytest.mark.slow
def test_offline_wandb_run_has_metrics_and_images(synthetic_root: Path, tmp_path: Path) -> None:
    proc = run_train(["logger=wandb", *tiny(synthetic_root, tmp_path, "wb")], env={"WANDB_MODE": ""})
    run_dir = tmp_path / "train" / "wb"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["wandb_dir"] and "W&B run" in proc.stdout
    wandb_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1, "W&B must fall back to offline mode without credentials"
    log_file = next(wandb_runs[0].glob("*.wandb"))
    records = log_file.read_bytes()  # protobuf records: metric names are stored as plain strings
    for key in (b"train/loss_heatmap", b"train/loss_offset", b"val/AP", b"val/AR", b"lr"):
        assert key in records, f"{key!r} was not logged to W&B"
    images = {
        p.parent.name + "/" + p.name.split("_")[0]
        for p in (wandb_runs[0] / "files" / "media" / "images").rglob("*.png")
    }
    assert {"val/overlays", "val/heatmaps"} <= images, "validation overlays/heatmaps were not logged as images"
    assert any((run_dir / "overlays").rglob("val_0.png"))


@pytest.mark.slow
def test_multirun_sweep_and_collector(synthetic_root: Path, tmp_path: Path) -> None:
    run_train(
        [
            "-m",
            "model.num_branches=1,17",
            "sweep_group=sweep_test",
            "logger=csv",
            *[a for a in tiny(synthetic_root, tmp_path) if not a.startswith("run_name")],
        ]
    )
    sweep_dir = tmp_path / "train" / "multirun" / "sweep_test"
    from dekr.sweep import collect, format_table

    rows = collect(sweep_dir)
    assert len(rows) == 2 and {r["model.num_branches"] for r in rows} == {"1", "17"}
    assert all(r["status"] == "done" and r["best_AP"] is not None for r in rows)
    assert "model.num_branches" in format_table(rows)


@pytest.mark.slow
def test_ddp_two_processes_gather_the_same_ap(synthetic_root: Path, tmp_path: Path) -> None:
    """AP gathered over 2 gloo ranks equals a single-process evaluation of the same checkpoint."""
    run_train(
        [
            "logger=csv",
            "trainer.strategy=ddp",
            "trainer.devices=2",
            "data.synthetic.num_val=3",
            *[a for a in tiny(synthetic_root, tmp_path, "ddp") if a != "trainer.devices=1"],
        ]
    )
    run_dir = tmp_path / "train" / "ddp"
    summary = json.loads((run_dir / "summary.json").read_text())
    ddp_ap = summary["val"]["val/AP"]
    from pytorch_lightning import Trainer

    from dekr.inference.predictor import TestConfig
    from dekr.keypoints import COCO
    from dekr.model import DEKR

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    net = DEKR(**ckpt["dekr"]["network"])
    module = _module(net, COCO, TestConfig(input_size=128, flip=True, scales=(1.0,), batch_size=3, max_dets=20))
    module.load_state_dict(ckpt["state_dict"])
    dm = synthetic_datamodule(synthetic_root, input_size=128, batch_size=2, num_workers=0)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    single = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/AP"]
    assert single == pytest.approx(ddp_ap, abs=1e-9)


def _module(net, spec, test):
    """A DEKRModule with the paper's optimizer, schedule and loss values (as conf/train.yaml)."""
    import functools

    from dekr.codec import default_codec_config
    from dekr.losses import DEKRLoss
    from dekr.module import DEKRModule
    from dekr.schedule import step_schedule

    return DEKRModule(
        net,
        spec,
        default_codec_config(),
        test,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
        scheduler=functools.partial(step_schedule, milestones=[90, 120], gamma=0.1, warmup_steps=0, warmup_ratio=0.001),
        loss=DEKRLoss(heatmap_factor=1.0, offset_factor=0.03, beta=1 / 9, bg_weight=0.1),
    )


def test_bad_config_value_fails_clearly(synthetic_root: Path, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="num_branches must be in"):
        run_train(["model.num_branches=40", "logger=none", *tiny(synthetic_root, tmp_path)])


@pytest.mark.slow
def test_training_checkpoint_evaluates_and_predicts(synthetic_root: Path, tmp_path: Path) -> None:
    """A checkpoint written by train.py loads in eval.py (same AP as the run's last validation) and
    predict.py, the network being rebuilt from the configuration stored in the checkpoint."""
    run_train(["logger=none", *tiny(synthetic_root, tmp_path, "ck")])
    run_dir = tmp_path / "train" / "ck"
    summary = json.loads((run_dir / "summary.json").read_text())
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    # centre threshold below 0: the briefly trained net's 30 best candidates per image are all output
    common = [
        f"checkpoint={ckpt}",
        "data=synthetic",
        "codec.centers.threshold=-1.0",
        f"data.root={synthetic_root}",
        "data.synthetic.num_train=8",
        "data.synthetic.num_val=3",
        "data.synthetic.image_size=128",
        "data.synthetic.seed=1",
        "data.input_size=128",
        "model=dekr_w32",
        f"paths.log_dir={tmp_path}",
        "run_name=x",
        "device=cpu",
    ]
    ev = subprocess.run(
        [sys.executable, str(ROOT / "src" / "eval.py"), *common, "test.flip=false", "num_workers=0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "x" / "metrics.json").read_text())
    ap = metrics.get("AP", metrics.get("metrics", {}).get("AP"))
    assert ap == pytest.approx(summary["val"]["val/AP"], abs=1e-9)
    pr = subprocess.run(
        [sys.executable, str(ROOT / "src" / "predict.py"), *common, f"input={synthetic_root / 'images' / 'val'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pr.returncode == 0, pr.stderr[-3000:]
    torch_preds = json.loads((tmp_path / "predict" / "x" / "predictions.json").read_text())
    # the same checkpoint exported to ONNX and run by onnxruntime through predict.py: the same poses
    ex = subprocess.run(
        [
            sys.executable,
            str(ROOT / "src" / "export.py"),
            f"checkpoint={ckpt}",
            "data=synthetic",
            f"output={tmp_path / 'm.onnx'}",
            "input_size=128",
            f"paths.log_dir={tmp_path}",
            "run_name=x",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ex.returncode == 0, ex.stderr[-3000:]
    onnx_args = [a for a in common if not a.startswith(("checkpoint=", "run_name="))]
    po = subprocess.run(
        [
            sys.executable,
            str(ROOT / "src" / "predict.py"),
            *onnx_args,
            "backend=onnx",
            f"onnx={tmp_path / 'm.onnx'}",
            "run_name=o",
            f"input={synthetic_root / 'images' / 'val'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert po.returncode == 0, po.stderr[-3000:]
    onnx_preds = json.loads((tmp_path / "predict" / "o" / "predictions.json").read_text())
    assert len(onnx_preds) == len(torch_preds) > 0
    for a in torch_preds:  # each PyTorch pose has an onnxruntime twin (order may differ on near-ties)
        same_image = [b for b in onnx_preds if b["image_id"] == a["image_id"]]
        dist = [max(abs(u - v) for u, v in zip(a["keypoints"], b["keypoints"])) for b in same_image]
        twin = same_image[dist.index(min(dist))]
        assert min(dist) < 1e-2 and abs(a["score"] - twin["score"]) < 1e-4


def test_non_finite_loss_is_reported_before_the_update() -> None:
    """A NaN loss stops training with the step and batch named, and the weights stay untouched."""
    from dekr.inference.predictor import TestConfig
    from dekr.keypoints import KeypointSpec
    from dekr.model import DEKR
    from dekr.module import NonFiniteLossError

    spec = KeypointSpec(name="t", names=("a", "b", "c"))
    test = TestConfig(input_size=64, flip=False, scales=(1.0,), batch_size=1, max_dets=20)
    module = _module(DEKR(num_keypoints=3, backbone="hrnet_tiny"), spec, test)
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    batch = {
        "image": torch.randn(2, 3, 64, 64),
        "image_id": torch.tensor([7, 9]),
        "heatmaps": torch.full((2, 4, 16, 16), float("nan")),
        "heatmap_mask": torch.ones(2, 16, 16),
        "offset_pixel": torch.zeros(0, dtype=torch.long),
        "offset_target": torch.zeros(0, 3, 2),
        "offset_weight": torch.zeros(0, 3),
    }

    class _Trainer:  # the attributes training_step reads
        world_size = 1
        global_step = 0
        current_epoch = 0

    module._trainer = _Trainer()  # type: ignore[assignment]
    with pytest.raises(NonFiniteLossError, match=r"global step 0 .*batch 5.*image ids \[7, 9\]"):
        module.training_step(batch, 5)
    for key, value in module.named_parameters():  # no optimizer step happened
        torch.testing.assert_close(value.detach(), before[key], msg=key)


def test_non_finite_loss_stops_a_training_run(synthetic_root: Path, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="non-finite loss at global step 0"):
        run_train(["logger=none", "module.loss.offset_factor=nan", *tiny(synthetic_root, tmp_path, "nan")])
    assert not (tmp_path / "train" / "nan" / "checkpoints" / "last.ckpt").exists()


def test_progress_shows_the_run_eta_and_each_validation_says_where_its_overlays_are(
    synthetic_root: Path, tmp_path: Path
) -> None:
    args = [a for a in tiny(synthetic_root, tmp_path, epochs=2) if not a.startswith("trainer.enable_progress_bar")]
    proc = run_train([*args, "logger=none", "trainer.enable_progress_bar=true"])
    bars = proc.stderr + proc.stdout
    assert "run=" in bars and "eta=" in bars, bars[-2000:]
    log = (tmp_path / "train" / "run" / "train.log").read_text()
    for epoch in (0, 1):  # every validation, as soon as it ends, with its AP and its overlays
        overlays = tmp_path / "train" / "run" / "overlays" / f"epoch_{epoch:03d}"
        assert f"validation at epoch {epoch} (step " in log and f"overlays: {overlays}" in log, log
        assert (overlays / "val_0.png").is_file()
