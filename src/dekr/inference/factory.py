"""Build a :class:`PoseEstimator` from a composed Hydra config (shared by eval.py and predict.py)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from dekr.inference.decode import DecodeConfig
from dekr.inference.predictor import PoseEstimator
from dekr.keypoints import KeypointSpec, build_keypoint_spec

log = logging.getLogger(__name__)


def resolve_device(name: str | None) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def decode_config(node: Mapping | None) -> DecodeConfig:
    """:class:`DecodeConfig` from a config node (lists become tuples; unknown keys are errors)."""
    values = dict(node or {})
    unknown = set(values) - set(DecodeConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"decode config: unknown key(s) {sorted(unknown)}; "
                         f"allowed: {sorted(DecodeConfig.__dataclass_fields__)}")
    if "pool_thresholds" in values:
        values["pool_thresholds"] = tuple(float(v) for v in values["pool_thresholds"])
    return DecodeConfig(**values)


def build_estimator(cfg: Any) -> tuple[PoseEstimator, KeypointSpec]:
    """Model (``cfg.model``) + weights (``cfg.checkpoint``) + decoding options → estimator.

    Reads ``cfg.data.keypoints``, ``cfg.model``, ``cfg.checkpoint``, ``cfg.decode``, ``cfg.device``,
    ``cfg.input_size``, ``cfg.flip_test``, ``cfg.scales``, ``cfg.batch_size`` and
    ``cfg.rescore.weights``.
    """
    from omegaconf import OmegaConf

    from dekr.rescore import Rescorer

    spec = build_keypoint_spec(OmegaConf.to_container(cfg.data.keypoints, resolve=True))
    backend = cfg.get("backend", "torch")
    if backend == "onnx":
        model, device = _onnx_model(cfg, spec)
    elif backend == "torch":
        model, device = _torch_model(cfg)
    else:
        raise ValueError(f"backend must be 'torch' or 'onnx', got '{backend}'")
    rescorer = None
    weights = cfg.get("rescore", {}).get("weights") if cfg.get("rescore") else None
    if weights:
        rescorer = Rescorer.from_file(weights, spec)
    estimator = PoseEstimator(
        model, spec, decode_config(OmegaConf.to_container(cfg.decode, resolve=True)),
        input_size=int(cfg.input_size), flip_test=bool(cfg.flip_test), scales=tuple(cfg.scales),
        rescorer=rescorer, device=device, batch_size=int(cfg.batch_size),
    )
    return estimator, spec


def _torch_model(cfg: Any) -> tuple[torch.nn.Module, torch.device]:
    """The PyTorch network from ``cfg.checkpoint`` (rebuilt from its stored configuration when it
    has one) or ``cfg.model``, with the optional speed paths of ``cfg.speed``."""
    import hydra

    from dekr.deploy import load_backend
    from dekr.model.checkpoint import stored_model_kwargs

    checkpoint = cfg.get("checkpoint")
    stored = stored_model_kwargs(checkpoint) if checkpoint else None
    if stored and cfg.get("model_from_checkpoint", True):
        log.info("building the network from the checkpoint's stored configuration: %s", stored)
        model_cfg: Any = stored
    else:
        model_cfg = hydra.utils.instantiate(cfg.model)
    if not checkpoint:
        log.warning("no checkpoint given: the network has untrained weights and its poses are meaningless")
    device = resolve_device(cfg.get("device"))
    speed = cfg.get("speed") or {}
    model = load_backend("torch", model=model_cfg, checkpoint=checkpoint, device=device,
                         channels_last=bool(speed.get("channels_last", False)),
                         compile=bool(speed.get("compile", False)), precision=str(speed.get("precision", "fp32")))
    return model, device


def _onnx_model(cfg: Any, spec: KeypointSpec) -> tuple[Any, torch.device]:
    """An exported ``.onnx`` network run by onnxruntime (``cfg.onnx``); weights come from the file."""
    from dekr.deploy import load_backend

    if not cfg.get("onnx"):
        raise ValueError("backend=onnx needs onnx=PATH (a file written by `python src/export.py`)")
    if cfg.get("checkpoint"):
        raise ValueError("backend=onnx takes its weights from the .onnx file; drop checkpoint=...")
    model = load_backend("onnx", onnx_path=cfg.onnx, providers=cfg.get("onnx_providers"), threads=cfg.get("threads"))
    k = getattr(model, "num_keypoints", None)
    if k not in (None, spec.num_keypoints):
        raise ValueError(f"{cfg.onnx} predicts {k} keypoints but the data config declares {spec.num_keypoints}; "
                         "choose the matching data=... config")
    return model, torch.device("cpu")  # OnnxModel takes and returns CPU tensors; the provider picks the hardware


def register_resolvers() -> None:
    """Register the config resolvers (kept for callers; importing :mod:`dekr` already does it)."""
    from dekr.config import register_resolvers as project_resolvers

    project_resolvers()


__all__ = ["build_estimator", "decode_config", "register_resolvers", "resolve_device"]
