"""Deployment: ONNX export with the adaptive convolutions, an ONNX Runtime backend, PyTorch speed paths.

* :func:`export_onnx` / ``python src/export.py``: the full network to ONNX (``DeformConv`` or
  ``GridSample`` graph), verified with onnxruntime.
* :class:`OnnxModel`: an exported file as ``model(images) -> (heatmaps, offsets)``; imports no
  PyTorch model code.
* :func:`optimize_for_inference`: channels_last, bf16/fp16 autocast, ``torch.compile`` with fallback.
* :func:`load_backend`: one entry point for ``predict.py`` and the Python API.

Submodules are imported lazily: ``from dekr.deploy import OnnxModel`` does not import ``dekr.model``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from dekr.deploy.export import ExportResult, export_onnx, verify_onnx
    from dekr.deploy.onnx_backend import OnnxModel
    from dekr.deploy.speed import InferenceModel, optimize_for_inference

_LAZY = {
    "export_onnx": "dekr.deploy.export",
    "verify_onnx": "dekr.deploy.export",
    "ExportResult": "dekr.deploy.export",
    "ExportError": "dekr.deploy.export",
    "ExportVerificationError": "dekr.deploy.export",
    "OnnxModel": "dekr.deploy.onnx_backend",
    "InferenceModel": "dekr.deploy.speed",
    "optimize_for_inference": "dekr.deploy.speed",
}
BACKENDS = ("torch", "onnx")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dekr.deploy' has no attribute '{name}'")


def load_backend(
    kind: str = "torch",
    *,
    model: nn.Module | None = None,
    checkpoint: str | Path | None = None,
    onnx_path: str | Path | None = None,
    device: str | torch.device | None = None,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    channels_last: bool = False,
    compile: bool = False,
    precision: str = "fp32",
) -> Callable[..., Any]:
    """A ``model(images [N, 3, H, W]) -> (heatmaps [N, K+1, H/4, W/4], offsets [N, 2K, H/4, W/4])``.

    Args:
        kind: ``"torch"`` (PyTorch network) or ``"onnx"`` (an exported file run by onnxruntime).
        model: torch only: the network (build one with :func:`dekr.model.build.build_network`).
        checkpoint: torch only: weights loaded strictly into ``model`` (None: keep its weights).
        onnx_path: onnx only: the ``.onnx`` file.
        device: torch only: where the network runs (default CPU, or the module's device).
        providers: onnx only: onnxruntime execution providers (default CUDA if available, then CPU).
        threads: onnx only: intra-op threads (None: onnxruntime's default).
        channels_last, compile, precision: torch only: see :func:`optimize_for_inference`.

    Returns:
        torch: an :class:`InferenceModel` (an ``nn.Module``, in eval mode); onnx: an :class:`OnnxModel`
        (returns CPU tensors for CPU inputs). Both plug into ``PoseEstimator(model, spec, ...)``.
    """
    if kind not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got '{kind}'")
    if kind == "onnx":
        if onnx_path is None:
            raise ValueError("backend=onnx needs the exported file: onnx=PATH (make one with `python src/export.py`)")
        if checkpoint is not None:
            raise ValueError(
                "backend=onnx runs the weights baked into the .onnx file; drop checkpoint "
                "(or re-export with `python src/export.py checkpoint=...`)"
            )
        from dekr.deploy.onnx_backend import OnnxModel

        return OnnxModel(onnx_path, providers=providers, intra_op_num_threads=threads)
    if model is None:
        raise ValueError("backend=torch needs a model (see dekr.model.build.build_network)")
    from dekr.deploy.speed import optimize_for_inference
    from dekr.model.checkpoint import load_weights

    net = load_weights(model, checkpoint) if checkpoint is not None else model
    return optimize_for_inference(net, channels_last=channels_last, compile=compile, precision=precision, device=device)  # type: ignore[arg-type]


__all__ = [
    "BACKENDS",
    "ExportResult",
    "InferenceModel",
    "OnnxModel",
    "export_onnx",
    "load_backend",
    "optimize_for_inference",
    "verify_onnx",
]
