"""What ``src/train.py`` does with a composed Hydra config: build, fit, evaluate, report."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import hydra
import pytorch_lightning as pl
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from dekr.callbacks import PREVIOUS_LAST, AtomicCheckpointIO
from dekr.codec import Codec, CodecConfig
from dekr.inference.predictor import TestConfig
from dekr.keypoints import KeypointSpec, build_keypoint_spec
from dekr.model.build import build_network
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


#: seconds the W&B server gets to accept a connection before the run goes offline
WANDB_CONNECT_TIMEOUT = 3.0
#: seconds ``wandb.init`` may take online (W&B's own default is 90)
WANDB_INIT_TIMEOUT = 20.0


def wandb_reachable(timeout: float = WANDB_CONNECT_TIMEOUT) -> str | None:
    """``None`` when the W&B server (``WANDB_BASE_URL``, default ``https://api.wandb.ai``) accepts a
    TCP connection within ``timeout`` seconds, else why not. Only the server the user configured is
    contacted, and only when W&B would contact it anyway (credentials present, online mode)."""
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    host = url.hostname or "api.wandb.ai"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port} unreachable ({exc.__class__.__name__}: {exc})"


def _go_offline(logger_cfg: DictConfig, why: str) -> None:
    log.warning("W&B: %s; logging offline to the run folder instead (upload later with `wandb sync <dir>`)", why)
    logger_cfg.offline = True
    os.environ["WANDB_MODE"] = "offline"


def _prepare_wandb(logger_cfg: DictConfig) -> None:
    """Run W&B offline (never prompt, never hang) unless credentials exist or the user chose a mode;
    with credentials, a server that does not answer within a few seconds also means offline."""
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DISABLE_GIT", "true")
    os.environ.setdefault("WANDB_INIT_TIMEOUT", str(WANDB_INIT_TIMEOUT))
    mode = os.environ.get("WANDB_MODE")
    if mode in ("offline", "disabled", "dryrun") or not wandb_credentials_available() or logger_cfg.get("offline"):
        logger_cfg.offline = True
        os.environ["WANDB_MODE"] = "offline" if mode not in ("disabled",) else mode
        return
    problem = wandb_reachable()
    if problem:
        _go_offline(logger_cfg, problem)


def _start_wandb(logger: pl.loggers.WandbLogger, lcfg: DictConfig) -> pl.loggers.WandbLogger:
    """Start the W&B run now (bounded by ``WANDB_INIT_TIMEOUT``); if that fails online, warn once and
    return an offline logger instead of failing the training run."""
    try:
        logger.experiment  # noqa: B018 - starts wandb.init
        return logger
    except Exception as exc:  # noqa: BLE001 - wandb raises CommError, UsageError, TimeoutError ...
        if lcfg.get("offline"):
            raise
        import wandb

        wandb.finish(exit_code=1, quiet=True)
        _go_offline(lcfg, f"could not start the online run ({exc.__class__.__name__}: {str(exc)[:200]})")
        offline = hydra.utils.instantiate(lcfg)
        offline.experiment  # noqa: B018
        return offline


def build_loggers(cfg: DictConfig) -> list[pl.loggers.Logger]:
    loggers = []
    for name, lcfg in (cfg.get("logger") or {}).items():
        if not isinstance(lcfg, DictConfig) or "_target_" not in lcfg:
            continue
        if "WandbLogger" in lcfg._target_:
            _prepare_wandb(lcfg)
            if cfg.get("sweep_group"):
                lcfg.group = cfg.sweep_group
            logger = hydra.utils.instantiate(lcfg)
            if pl.utilities.rank_zero_only.rank == 0:
                logger = _start_wandb(logger, lcfg)
            loggers.append(logger)
            log.info("logger %s: %s", name, lcfg._target_)
            continue
        loggers.append(hydra.utils.instantiate(lcfg))
        log.info("logger %s: %s", name, lcfg._target_)
    return loggers


def build_callbacks(cfg: DictConfig, with_logger: bool = True) -> list[pl.Callback]:
    """Instantiate ``cfg.callbacks``; the LR monitor is dropped when no logger is configured, the
    progress bar when ``trainer.enable_progress_bar`` is false."""
    out = []
    bars = bool(cfg.get("trainer", {}).get("enable_progress_bar", True))
    for c in (cfg.get("callbacks") or {}).values():
        if not isinstance(c, DictConfig) or "_target_" not in c:
            continue
        if not with_logger and c._target_.endswith("LearningRateMonitor"):
            continue
        if not bars and c._target_.endswith("ProgressBar"):
            continue
        out.append(hydra.utils.instantiate(c))
    return out


class CheckpointError(RuntimeError):
    """A checkpoint to resume from is missing or damaged; the message says what to do."""


def checkpoint_problem(path: Path) -> str | None:
    """``None`` when ``path`` is a complete checkpoint archive (torch's zip format; its directory
    sits at the end, so a truncated write fails here without loading the tensors), else what is wrong."""
    try:
        with zipfile.ZipFile(path) as zf:
            if not any(n.endswith("data.pkl") for n in zf.namelist()):
                return "not a torch checkpoint (no data.pkl)"
    except (OSError, zipfile.BadZipFile) as exc:
        return f"unreadable ({exc})"
    return None


def _usable_last(last: Path, how: str) -> str:
    """``last`` when it is intact, else the kept ``last.prev.ckpt`` with a warning, else a clear error."""
    problem = checkpoint_problem(last)
    if problem is None:
        return str(last)
    previous = last.with_name(PREVIOUS_LAST)
    if previous.is_file() and checkpoint_problem(previous) is None:
        log.warning(
            "%s: %s is damaged (%s, probably an interrupted write); resuming from the previous one, %s",
            how,
            last,
            problem,
            previous,
        )
        return str(previous)
    raise CheckpointError(
        f"{how}: {last} is damaged ({problem}) and there is no intact {PREVIOUS_LAST} beside it. Delete {last} "
        "to resume from nothing / start this run over, or set auto_resume=false (or run_name=<another name>) "
        "to start a new run."
    )


def resolve_ckpt_path(cfg: DictConfig, output_dir: Path) -> str | None:
    """``ckpt_path`` as given, ``last`` → this run's ``checkpoints/last.ckpt``; with ``auto_resume``
    a present ``last.ckpt`` is used when no path is given. A damaged ``last.ckpt`` falls back to the
    kept ``last.prev.ckpt`` (with a warning)."""
    last = output_dir / "checkpoints" / "last.ckpt"
    path = cfg.get("ckpt_path")
    if path == "last":
        if not last.is_file() and not last.with_name(PREVIOUS_LAST).is_file():
            raise FileNotFoundError(
                f"ckpt_path=last but {last} does not exist; resume needs the same run folder "
                "(pass run_name=<the run's name>) or give the checkpoint path"
            )
        return _usable_last(last if last.is_file() else last.with_name(PREVIOUS_LAST), "ckpt_path=last")
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"ckpt_path {path} does not exist")
        problem = checkpoint_problem(Path(path))
        if problem:
            raise CheckpointError(f"ckpt_path {path} is damaged ({problem}); give an intact checkpoint")
        return str(path)
    if cfg.get("auto_resume"):
        if last.is_file():
            resumed = _usable_last(last, "auto_resume")
        elif last.with_name(PREVIOUS_LAST).is_file():  # killed between keeping the previous and the new write
            resumed = _usable_last(last.with_name(PREVIOUS_LAST), "auto_resume")
        else:
            return None
        log.info("auto_resume: continuing from %s", resumed)
        return resumed
    return None


def remove_stale_temporaries(checkpoint_dir: Path) -> list[Path]:
    """Delete the ``.<name>.tmp-<pid>`` files that interrupted checkpoint writes left (the run folder
    is locked by this run, so none is being written)."""
    removed = []
    for tmp in checkpoint_dir.glob(".*.tmp-*") if checkpoint_dir.is_dir() else ():
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    if removed:
        log.warning(
            "removed %d partial checkpoint file(s) of an interrupted write: %s",
            len(removed),
            ", ".join(p.name for p in removed),
        )
    return removed


class RunFolderLocked(RuntimeError):
    """Another live run holds this run folder."""


LOCK_NAME = ".run.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_run_lock(run_dir: Path) -> Path:
    """Create ``run_dir/.run.lock`` holding this pid and host; a lock of a dead process on this host
    is stale and replaced. Raises :class:`RunFolderLocked` when a live run holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(lock.read_text() or "{}")
            except (OSError, ValueError):
                other = {}
            pid, host = int(other.get("pid", -1) or -1), other.get("host", "?")
            if host == me["host"] and (pid <= 0 or not _pid_alive(pid)) or not other:
                log.warning("removing the stale run lock %s (pid %s on %s is gone)", lock, pid, host)
                lock.unlink(missing_ok=True)
                continue
            raise RunFolderLocked(
                f"run folder {run_dir} is in use by another run (pid {pid} on {host}, started "
                f"{other.get('started', '?')}; lock file {lock}). Two runs in one folder would overwrite each "
                "other's checkpoints, summary and .hydra: choose another run_name=..., or wait for that run to end "
                f"(if it is dead on another host, delete {lock})."
            ) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        return lock
    raise RunFolderLocked(f"could not take the run lock {lock}; delete it if no run uses {run_dir}")


def release_run_lock(lock: Path) -> None:
    """Remove ``lock`` when it is this process's."""
    try:
        if json.loads(lock.read_text()).get("pid") == os.getpid():
            lock.unlink()
    except (OSError, ValueError):
        pass


class RunLock(HydraCallback):
    """Hydra callback: locks the run folder before Hydra writes anything into it (``.hydra``, the
    log), so a second run with the same ``run_name`` stops at once with a message; released when the
    run ends (a killed run's lock is detected as stale). Only the launching process (rank 0) locks;
    multirun jobs have folders of their own. Disabled with ``run_lock=false``."""

    def __init__(self) -> None:
        self.lock: Path | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("run_lock", True) or pl.utilities.rank_zero_only.rank != 0:
            return
        try:
            self.lock = acquire_run_lock(Path(str(config.hydra.run.dir)).resolve())
        except RunFolderLocked as exc:  # Hydra turns exceptions of callbacks into warnings: exit here
            raise SystemExit(f"Error: {exc}") from None

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.lock is not None:
            release_run_lock(self.lock)
            self.lock = None


def check_devices(cfg: DictConfig) -> None:
    """Refuse a device request the machine cannot serve (e.g. ``trainer.devices=8`` with no GPU,
    which would start 8 CPU processes that share the data and train nothing useful)."""
    import torch

    tcfg = cfg.trainer
    accelerator = str(tcfg.get("accelerator", "auto"))
    devices = tcfg.get("devices", 1)
    if accelerator in ("auto", "gpu", "cuda") and not torch.cuda.is_available():
        requested = devices if isinstance(devices, int) else None
        if isinstance(devices, str) and devices.lstrip("-").isdigit():
            requested = int(devices)
        if requested is not None and requested > 1 or str(devices) == "-1":
            raise ValueError(
                f"trainer.devices={devices} requested with trainer.accelerator={accelerator}, but this machine has "
                "no GPU (1 CPU accelerator): set trainer.devices=1, or run on a machine with GPUs; for a multi-"
                "process CPU run (testing DDP) set trainer.accelerator=cpu explicitly."
            )


def build_module(cfg: DictConfig, spec: KeypointSpec, codec: CodecConfig) -> DEKRModule:
    """The LightningModule from ``cfg.model`` (network, via the one builder), ``cfg.module``
    (optimizer, scheduler and loss as ``_partial_`` / plain configs) and ``cfg.test``; ``spec`` and
    ``codec`` are built once per process by :func:`train`."""
    m = cfg.module
    return DEKRModule(
        net=build_network(spec, cfg.model),
        spec=spec,
        codec=codec,
        test=TestConfig.from_mapping(OmegaConf.to_container(cfg.test, resolve=True)),
        optimizer=hydra.utils.instantiate(m.optimizer),
        scheduler=hydra.utils.instantiate(m.scheduler),
        loss=hydra.utils.instantiate(m.loss),
        lr_scaling=OmegaConf.to_container(m.lr_scaling, resolve=True),
    )


def build_spec_and_codec(cfg: DictConfig) -> tuple[KeypointSpec, CodecConfig]:
    """The keypoint layout (``cfg.data.keypoints``) and the codec (``cfg.codec``), once per process."""
    spec = build_keypoint_spec(OmegaConf.to_container(cfg.data.keypoints, resolve=True))
    codec = CodecConfig.from_mapping(cfg.codec)
    Codec(spec, codec)  # refuses settings that cannot work for this layout (e.g. NMS joint count)
    return spec, codec


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (and optionally test) as configured; returns the summary written to ``summary.json``."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    check_devices(cfg)
    if pl.utilities.rank_zero_only.rank == 0:
        remove_stale_temporaries(output_dir / "checkpoints")
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    spec, codec = build_spec_and_codec(cfg)
    datamodule = hydra.utils.instantiate(cfg.data, _partial_=True)(keypoints=spec, codec=codec)
    module = build_module(cfg, spec, codec)
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg, with_logger=bool(loggers))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        sync_batchnorm=bool(cfg.get("sync_batchnorm", False)),
    )
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    ckpt_path = resolve_ckpt_path(cfg, output_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.global_step == 0 and trainer.limit_train_batches != 0 and not trainer.interrupted:
        raise RuntimeError(
            f"no training batch was processed (trainer.num_training_batches={trainer.num_training_batches}, "
            f"world size {trainer.world_size}, data.batch_size={getattr(datamodule, 'batch_size', '?')}): the training "
            "set is empty or smaller than one batch per device. Check data.root / data.train_ann, lower "
            "data.batch_size or use fewer trainer.devices."
        )

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
        lines.append(
            "  validation: "
            + ", ".join(
                f"{k[4:]} {v:.3f}"
                for k, v in sorted(summary["val"].items())
                if k[4:] in ("AP", "AP50", "AP75", "AR", "AP_best")
            )
        )
    lines += [
        f"  best checkpoint: {summary['best_checkpoint'] or '-'}",
        f"  last checkpoint: {summary['last_checkpoint'] or '-'}",
        f"  W&B run:         {summary['wandb_dir'] or '-'}"
        + (
            "  (offline: `wandb sync` it when online)"
            if summary["wandb_dir"] and os.environ.get("WANDB_MODE") == "offline"
            else ""
        ),
        f"  overlays:        {summary['overlays'] or '-'}",
        f"  summary:         {summary['output_dir']}/summary.json",
    ]
    print("\n".join(lines), flush=True)
