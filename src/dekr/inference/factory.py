"""Build a :class:`PoseEstimator` from a composed Hydra config (shared by eval.py and predict.py).

The keypoint layout, the codec and the test settings are built once here; the network comes from
the one builder (:func:`dekr.model.build.build_network`), so a checkpoint's stored content is checked
as plain data and never instantiated.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from dekr.codec import CodecConfig
from dekr.inference.predictor import PoseEstimator, TestConfig, network_codec, resolve_device, stored_layout
from dekr.keypoints import KeypointSpec, build_keypoint_spec, check_num_keypoints
from dekr.track import PoseTracker, TrackConfig

log = logging.getLogger(__name__)

#: the fix named when a checkpoint's stored layout differs from the data config's
DATA_FIX = "choose the data=... config the checkpoint was trained with"


def build_estimator(cfg: Any) -> tuple[PoseEstimator, KeypointSpec]:
    """Network (``cfg.model`` / ``cfg.checkpoint`` or ``cfg.onnx``) + ``cfg.codec`` + ``cfg.test`` →
    estimator, with ``cfg.rescore.weights`` when set. Returns the estimator and the layout."""
    from dekr.rescore import Rescorer

    spec = build_keypoint_spec(OmegaConf.to_container(cfg.data.keypoints, resolve=True))
    codec = CodecConfig.from_mapping(cfg.codec)
    test = TestConfig.from_mapping(OmegaConf.to_container(cfg.test, resolve=True))
    backend = cfg.get("backend", "torch")
    if backend == "onnx":
        model, device = _onnx_model(cfg, spec)
    elif backend == "torch":
        model, device, codec = _torch_model(cfg, spec, codec)
    else:
        raise ValueError(f"backend must be 'torch' or 'onnx', got '{backend}'")
    weights = cfg.rescore.get("weights") if cfg.get("rescore") else None
    rescorer = Rescorer.from_file(weights, spec) if weights else None
    estimator = PoseEstimator(model, spec, codec, test, rescorer=rescorer, device=device)
    if test.flip and not estimator.flip_test:
        log.warning("flip test requested but the '%s' layout has no flip pairs: running without it", spec.name)
    return estimator, spec


def network_from_config(cfg: Any, spec: KeypointSpec, codec: CodecConfig) -> tuple[torch.nn.Module, CodecConfig]:
    """The network of ``cfg.checkpoint`` (its stored architecture unless ``model_from_checkpoint=false``)
    or ``cfg.model``, in eval mode, and ``codec`` with the checkpoint's stride and input normalisation
    (they are the network's). A checkpoint's stored layout must be ``spec``. Shared by eval, predict
    and export."""
    from dekr.model.build import build_network
    from dekr.model.checkpoint import read_checkpoint

    checkpoint = cfg.get("checkpoint")
    stored = read_checkpoint(checkpoint) if checkpoint else None
    if stored is None:
        log.warning("no checkpoint given: the network has untrained weights and its poses are meaningless")
    else:
        stored_layout(stored.keypoints, spec, str(stored.path), DATA_FIX)
        codec = network_codec(stored.codec, codec, str(stored.path))
    net = build_network(spec, cfg.model, stored, prefer_stored=bool(cfg.get("model_from_checkpoint", True)))
    return net.eval(), codec


def _torch_model(cfg: Any, spec: KeypointSpec, codec: CodecConfig) -> tuple[torch.nn.Module, torch.device, CodecConfig]:
    """:func:`network_from_config` with the optional speed paths of ``cfg.speed``."""
    from dekr.deploy.speed import optimize_for_inference

    net, codec = network_from_config(cfg, spec, codec)
    device = resolve_device(cfg.get("device"))
    speed = cfg.get("speed") or {}
    model = optimize_for_inference(
        net,
        channels_last=bool(speed.get("channels_last", False)),
        compile=bool(speed.get("compile", False)),
        precision=str(speed.get("precision", "fp32")),
        device=device,
    )
    return model, device, codec


def _onnx_model(cfg: Any, spec: KeypointSpec) -> tuple[Any, torch.device]:
    """An exported ``.onnx`` network run by onnxruntime (``cfg.onnx``); weights come from the file."""
    from dekr.deploy import load_backend

    if not cfg.get("onnx"):
        raise ValueError("backend=onnx needs onnx=PATH (a file written by `python src/export.py`)")
    if cfg.get("checkpoint"):
        raise ValueError("backend=onnx takes its weights from the .onnx file; drop checkpoint=...")
    model = load_backend("onnx", onnx_path=cfg.onnx, providers=cfg.get("onnx_providers"), threads=cfg.get("threads"))
    k = getattr(model, "num_keypoints", None)
    if k is not None:
        check_num_keypoints(k, spec, str(cfg.onnx))
    return model, torch.device("cpu")  # OnnxModel takes and returns CPU tensors; the provider picks the hardware


def load_estimator(path: str | Path, **kwargs: Any) -> PoseEstimator:
    """An estimator from one file, everything else from what it stores: a ``.onnx`` export
    (:meth:`PoseEstimator.from_onnx`) or a checkpoint (:meth:`PoseEstimator.from_checkpoint`).
    Keyword arguments are their test settings (``input_size``, ``flip``, ``scales``, ``batch_size``,
    ``device``, ``spec``, ...)."""
    return PoseEstimator.load(path, **kwargs)


def build_tracker(cfg: Any, spec: KeypointSpec, fps: float | None = None) -> PoseTracker | None:
    """The tracker of a composed config's ``track`` node (``None`` when absent or ``enabled: false``)."""
    node = cfg.get("track") if hasattr(cfg, "get") else None
    if node is None:
        return None
    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    config = TrackConfig.from_mapping(plain)
    return PoseTracker(spec, config, fps=fps) if config.enabled else None


__all__ = ["DATA_FIX", "build_estimator", "build_tracker", "load_estimator", "network_from_config"]
