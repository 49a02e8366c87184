"""What ``src/train.py`` does with a composed Hydra config: build, fit, evaluate, report."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from dekr.callbacks import AtomicCheckpointIO
from dekr.keypoints import build_keypoint_spec
from dekr.module import DEKRModule

log = logging.getLogger(__name__)


def wandb_credentials_available() -> bool:
    """True when W&B can log in without prompting (API key in the environment or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def _prepare_wandb(logger_cfg: DictConfig) -> None:
    """Run W&B offline (never prompt, never hang) unless credentials exist or the user chose a mode."""
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DISABLE_GIT", "true")
    mode = os.environ.get("WANDB_MODE")
    if mode in ("offline", "disabled", "dryrun") or not wandb_credentials_available():
        logger_cfg.offline = True
        os.environ["WANDB_MODE"] = "offline" if mode not in ("disabled",) else mode


def build_loggers(cfg: DictConfig) -> list[pl.loggers.Logger]:
    loggers = []
    for name, lcfg in (cfg.get("logger") or {}).items():
        if not isinstance(lcfg, DictConfig) or "_target_" not in lcfg:
            continue
        if "WandbLogger" in lcfg._target_:
            _prepare_wandb(lcfg)
            if cfg.get("sweep_group"):
                lcfg.group = cfg.sweep_group
        loggers.append(hydra.utils.instantiate(lcfg))
        log.info("logger %s: %s", name, lcfg._target_)
    return loggers


def build_callbacks(cfg: DictConfig, with_logger: bool = True) -> list[pl.Callback]:
    """Instantiate ``cfg.callbacks``; the LR monitor is dropped when no logger is configured."""
    out = []
    for c in (cfg.get("callbacks") or {}).values():
        if not isinstance(c, DictConfig) or "_target_" not in c:
            continue
        if not with_logger and c._target_.endswith("LearningRateMonitor"):
            continue
        out.append(hydra.utils.instantiate(c))
    return out


def resolve_ckpt_path(cfg: DictConfig, output_dir: Path) -> str | None:
    """``ckpt_path`` as given, ``last`` → this run's ``checkpoints/last.ckpt``; with ``auto_resume``
    a present ``last.ckpt`` is used when no path is given."""
    last = output_dir / "checkpoints" / "last.ckpt"
    path = cfg.get("ckpt_path")
    if path == "last":
        if not last.is_file():
            raise FileNotFoundError(
                f"ckpt_path=last but {last} does not exist; resume needs the same run folder "
                "(pass run_name=<the run's name>) or give the checkpoint path"
            )
        return str(last)
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"ckpt_path {path} does not exist")
        return str(path)
    if cfg.get("auto_resume") and last.is_file():
        log.info("auto_resume: continuing from %s", last)
        return str(last)
    return None


def build_module(cfg: DictConfig) -> DEKRModule:
    """The LightningModule from ``cfg.model`` (network), ``cfg.data.keypoints``, ``cfg.module`` and ``cfg.decode``."""
    spec = build_keypoint_spec(OmegaConf.to_container(cfg.data.keypoints, resolve=True))
    net = hydra.utils.instantiate(cfg.model)
    m = cfg.module
    return DEKRModule(
        net=net, keypoints=spec,
        optimizer=OmegaConf.to_container(m.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(m.scheduler, resolve=True),
        loss=OmegaConf.to_container(m.loss, resolve=True),
        decode=OmegaConf.to_container(cfg.decode, resolve=True) if cfg.get("decode") else None,
        test=OmegaConf.to_container(m.test, resolve=True),
        max_dets=int(m.max_dets),
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (and optionally test) as configured; returns the summary written to ``summary.json``."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = build_module(cfg)
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, with_logger=bool(loggers))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()],
        sync_batchnorm=bool(cfg.get("sync_batchnorm", False)),
    )
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    ckpt_path = resolve_ckpt_path(cfg, output_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    summary = summarize(cfg, trainer, module, callbacks, loggers)
    if cfg.get("test_after_fit"):
        best = summary.get("best_checkpoint") or None
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best)
        summary["test"] = results[0] if results else {}
    if trainer.is_global_zero:
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        if cfg.get("report", True):
            print_report(summary)
    return summary


def summarize(cfg: DictConfig, trainer: pl.Trainer, module: DEKRModule, callbacks: list, loggers: list) -> dict:
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    ckpt_cb = next((c for c in callbacks if isinstance(c, pl.callbacks.ModelCheckpoint) and c.monitor), None)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    wandb_dir = None
    for lg in loggers:
        if isinstance(lg, pl.loggers.WandbLogger):
            try:
                wandb_dir = str(Path(lg.experiment.dir).parent)
            except Exception:  # noqa: BLE001 - offline/disabled runs may lack a directory
                wandb_dir = None
    overlays = next((str(c.last_dir) for c in callbacks if getattr(c, "last_dir", None)), None)
    choices = {}
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        choices = dict(hc.runtime.choices)
        overrides = list(hc.overrides.task)
    except Exception:  # noqa: BLE001 - called outside a Hydra app (tests)
        overrides = []
    return {
        "output_dir": str(cfg.paths.output_dir),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "val": metrics,
        "best_AP": module.best_ap,
        "best_checkpoint": ckpt_cb.best_model_path if ckpt_cb else None,
        "last_checkpoint": str(last) if last.is_file() else None,
        "wandb_dir": wandb_dir,
        "overlays": overlays,
        "overrides": overrides,
        "choices": {k: v for k, v in choices.items() if not k.startswith("hydra")},
    }


def print_report(summary: dict) -> None:
    lines = ["", "DEKR training finished"]
    if summary["val"]:
        lines.append("  validation: " + ", ".join(f"{k[4:]} {v:.3f}" for k, v in sorted(summary["val"].items())
                                                 if k[4:] in ("AP", "AP50", "AP75", "AR", "AP_best")))
    lines += [
        f"  best checkpoint: {summary['best_checkpoint'] or '-'}",
        f"  last checkpoint: {summary['last_checkpoint'] or '-'}",
        f"  W&B run:         {summary['wandb_dir'] or '-'}"
        + ("  (offline: `wandb sync` it when online)" if summary["wandb_dir"] and
           os.environ.get("WANDB_MODE") == "offline" else ""),
        f"  overlays:        {summary['overlays'] or '-'}",
        f"  summary:         {summary['output_dir']}/summary.json",
    ]
    print("\n".join(lines), flush=True)
