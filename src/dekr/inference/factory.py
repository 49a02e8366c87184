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
    import hydra
    from omegaconf import OmegaConf

    from dekr.rescore import Rescorer

    spec = build_keypoint_spec(OmegaConf.to_container(cfg.data.keypoints, resolve=True))
    model = None
    if cfg.get("checkpoint"):
        from dekr.model.checkpoint import load_weights, stored_model_kwargs

        stored = stored_model_kwargs(cfg.checkpoint)
        if stored and cfg.get("model_from_checkpoint", True):
            from dekr.model import DEKR

            log.info("building the network from the checkpoint's stored configuration: %s", stored)
            model = DEKR(**stored)
        else:
            model = hydra.utils.instantiate(cfg.model)
        load_weights(model, cfg.checkpoint)
    else:
        log.warning("no checkpoint given: the network has untrained weights and its poses are meaningless")
        model = hydra.utils.instantiate(cfg.model)
    device = resolve_device(cfg.get("device"))
    model.to(device)
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


def register_resolvers() -> None:
    """Register the config resolvers (kept for callers; importing :mod:`dekr` already does it)."""
    from dekr.config import register_resolvers as project_resolvers

    project_resolvers()


__all__ = ["build_estimator", "decode_config", "register_resolvers", "resolve_device"]
