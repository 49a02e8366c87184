"""Run an exported DEKR file with ONNX Runtime, without the PyTorch model code.

This module imports only numpy, torch (for the returned tensors) and onnxruntime: never
``dekr.model``. An :class:`OnnxModel` is a drop-in ``model(images) -> (heatmaps, offsets)`` for the
decoder and :class:`dekr.inference.predictor.PoseEstimator`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the ONNX backend needs onnxruntime: `pip install -e .[deploy]` (or onnxruntime-gpu for CUDA)"
        ) from err
    return onnxruntime


def default_providers() -> list[str]:
    """CUDA (when this onnxruntime build has it) then CPU."""
    available = _ort().get_available_providers()
    preferred = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [*preferred, "CPUExecutionProvider"]


class OnnxModel:
    """An exported DEKR network as a callable.

    Args:
        path: ``.onnx`` file written by ``python src/export.py`` / :func:`dekr.deploy.export_onnx`.
        providers: onnxruntime execution providers in priority order (default: CUDA if available,
            then CPU).
        intra_op_num_threads: threads per operator (``None``: onnxruntime's default, one per
            physical core); ``inter_op_num_threads`` is 1 (sequential graph execution).
        graph_optimization_level: ``"disable" | "basic" | "extended" | "all"`` (default ``"all"``,
            fastest on CPU: it adds the NCHWc layout transform).
        allow_spinning: let idle intra-op threads spin (onnxruntime's default; lowest latency on an
            idle machine). ``False`` is kinder to, and suffers less from, other processes on the cores.

    ``__call__(images)`` takes ``float32 [N, 3, H, W]`` (torch tensor, any device, or numpy;
    ImageNet-normalised RGB, H and W multiples of 32) and returns ``(heatmaps [N, K+1, H/4, W/4],
    offsets [N, 2K, H/4, W/4])`` as float32 torch tensors on the input's device (CPU for numpy).

    Attributes:
        metadata: the ``dekr.*`` metadata stored at export (strings).
        num_keypoints: K, from the metadata or the output shape (``None`` if unknown).
        adaptive_impl: ``"deform"`` or ``"grid_sample"`` (the graph of the adaptive convolutions).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        intra_op_num_threads: int | None = None,
        graph_optimization_level: str = "all",
        allow_spinning: bool = True,
    ) -> None:
        ort = _ort()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"ONNX model not found: {self.path}. Export one first: "
                "`python src/export.py model=dekr_w32 checkpoint=PATH output=model.onnx`."
            )
        if graph_optimization_level not in OPTIMIZATION_LEVELS:
            raise ValueError(
                f"graph_optimization_level must be one of {OPTIMIZATION_LEVELS}, got '{graph_optimization_level}'"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization_level]
        if intra_op_num_threads is not None:
            options.intra_op_num_threads = int(intra_op_num_threads)
        options.inter_op_num_threads = 1
        if not allow_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = list(providers) if providers is not None else default_providers()
        available = ort.get_available_providers()
        missing = [p for p in providers if p not in available]
        if missing:
            raise ValueError(
                f"onnxruntime execution provider(s) {missing} not available in this build (available: {available}); "
                "install onnxruntime-gpu for CUDAExecutionProvider or pass providers=['CPUExecutionProvider']"
            )
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as err:
            raise RuntimeError(
                f"onnxruntime could not load {self.path}: {type(err).__name__}: {err}\n"
                "fix: is it a DEKR export? An impl=deform file needs DeformConv (onnxruntime >= 1.18); "
                "re-export with adaptive_impl=grid_sample for older runtimes."
            ) from err
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 2:
            raise ValueError(
                f"{self.path} has {len(inputs)} input(s) and {len(outputs)} output(s); a DEKR export has "
                "one input (images) and two outputs (heatmaps, offsets)"
            )
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in outputs]
        self.providers = self.session.get_providers()
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        k = self.metadata.get("dekr.num_keypoints")
        dim = outputs[0].shape[1] if len(outputs[0].shape) == 4 else None
        self.num_keypoints: int | None = int(k) if k is not None else (dim - 1 if isinstance(dim, int) else None)
        self.adaptive_impl: str | None = self.metadata.get("dekr.adaptive_impl")

    @property
    def input_mean(self) -> tuple[float, ...] | None:
        """Normalisation mean stored at export (ImageNet), or ``None``."""
        raw = self.metadata.get("dekr.input_mean")
        return tuple(json.loads(raw)) if raw else None

    @property
    def input_std(self) -> tuple[float, ...] | None:
        """Normalisation std stored at export (ImageNet), or ``None``."""
        raw = self.metadata.get("dekr.input_std")
        return tuple(json.loads(raw)) if raw else None

    def run_numpy(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``float32 [N, 3, H, W]`` numpy -> ``(heatmaps, offsets)`` numpy."""
        heatmaps, offsets = self.session.run(self.output_names, {self.input_name: images})
        return heatmaps, offsets

    def __call__(self, images: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        device = images.device if isinstance(images, torch.Tensor) else torch.device("cpu")
        array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if array.ndim != 4 or array.shape[1] != 3:
            raise ValueError(
                f"OnnxModel expects images [N, 3, H, W], got shape {tuple(array.shape)} "
                "(HWC images must be warped, normalised and transposed first, as PoseEstimator does)"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise TypeError(
                f"OnnxModel expects normalised float32 images, got {array.dtype}; normalise uint8 images on 0..1 with "
                f"the file's dekr.input_mean {self.metadata.get('dekr.input_mean', '?')} and dekr.input_std "
                f"{self.metadata.get('dekr.input_std', '?')} (PoseEstimator does)"
            )
        if array.shape[2] % 32 or array.shape[3] % 32:
            raise ValueError(f"image height and width must be multiples of 32, got {array.shape[2]}x{array.shape[3]}")
        array = np.ascontiguousarray(array, dtype=np.float32)
        heatmaps, offsets = self.run_numpy(array)
        return torch.from_numpy(heatmaps).to(device), torch.from_numpy(offsets).to(device)

    def __repr__(self) -> str:
        return (
            f"OnnxModel('{self.path}', providers={self.providers}, impl={self.adaptive_impl}, "
            f"num_keypoints={self.num_keypoints})"
        )


__all__ = ["OPTIMIZATION_LEVELS", "OnnxModel", "default_providers"]
