"""Faster PyTorch inference: channels_last, bf16/fp16 autocast, ``torch.compile`` with a clean fallback.

:func:`optimize_for_inference` wraps a network in :class:`InferenceModel`, an ``nn.Module`` with the
same call signature ``images [N, 3, H, W] -> (heatmaps [N, K+1, H/4, W/4], offsets [N, 2K, H/4, W/4])``
whose outputs are always float32 and contiguous (what the decoder expects), whatever precision the
network ran in.

* ``channels_last``: NHWC memory format for weights and inputs (faster convolutions on GPU tensor
  cores; on CPU it depends on the build: measure with ``benchmarks/run.py``).
* ``precision``: ``"fp32"``; ``"bf16"`` (GPU with bf16 support, or CPU); ``"fp16"`` (GPU only) through
  ``torch.autocast``. The adaptive convolution's ``deform_conv2d`` is autocast to fp32 by torchvision.
* ``compile``: ``torch.compile``; where it is unsupported (no dynamo for this Python, no C++ compiler
  for inductor on CPU, an op that fails to compile) a warning is issued and the eager network runs.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def check_precision(precision: str, device: torch.device) -> None:
    """Raise ``ValueError`` (naming the fix) if ``precision`` cannot run on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got '{precision}'")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision=fp16 is for GPUs; on CPU use precision=bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bf16 support; use precision=fp16 or fp32")


def compile_supported() -> tuple[bool, str]:
    """Whether ``torch.compile`` can be attempted here, and why not."""
    try:
        import torch._dynamo as dynamo

        if not dynamo.is_dynamo_supported():
            return False, "torch.compile (dynamo) is not supported on this Python/platform"
    except Exception as err:  # pragma: no cover - very old torch
        return False, f"torch._dynamo unavailable: {err}"
    return True, ""


class InferenceModel(nn.Module):
    """A network run with a memory format, an autocast precision and, optionally, ``torch.compile``.

    Args:
        model: ``images [N, 3, H, W] -> (heatmaps, offsets)``.
        channels_last: convert weights and inputs to ``torch.channels_last``.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast; outputs are returned as float32).
        compile: wrap the network in ``torch.compile``; falls back to eager with a warning on failure.
        compile_mode: ``torch.compile`` mode (``None``, ``"reduce-overhead"``, ``"max-autotune"``, ...).
        dynamic: ``torch.compile(dynamic=...)``; ``None`` lets dynamo decide (recompiles once per
            new input size, then generalises).

    ``compiled`` tells whether the compiled path is (still) in use.
    """

    def __init__(
        self,
        model: nn.Module,
        channels_last: bool = False,
        precision: Precision = "fp32",
        compile: bool = False,
        compile_mode: str | None = None,
        dynamic: bool | None = None,
    ) -> None:
        super().__init__()
        device = _model_device(model)
        check_precision(precision, device)
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.channels_last = channels_last
        self.precision = precision
        # Kept out of nn.Module's registry: the compiled wrapper shares self.model's parameters.
        self.__dict__["_compiled"] = None
        if compile:
            ok, why = compile_supported()
            if ok:
                try:
                    self.__dict__["_compiled"] = torch.compile(self.model, mode=compile_mode, dynamic=dynamic)
                except Exception as err:
                    warnings.warn(
                        f"torch.compile failed ({type(err).__name__}: {err}); running eager",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            else:
                warnings.warn(f"{why}; running eager", RuntimeWarning, stacklevel=2)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=_DTYPES[self.precision])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, 3, H, W] -> (heatmaps [N, K+1, H/4, W/4], offsets [N, 2K, H/4, W/4])``, float32."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self._autocast(images.device):
            if self._compiled is not None:
                try:
                    out = self._compiled(images)
                except Exception as err:  # inductor/dynamo failures surface at the first call
                    warnings.warn(
                        f"torch.compile failed at run time ({type(err).__name__}: {str(err)[:300]}); "
                        "falling back to eager for this model",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    self.__dict__["_compiled"] = None
                    out = self.model(images)
            else:
                out = self.model(images)
        heatmaps, offsets = out
        return (heatmaps.float().contiguous(), offsets.float().contiguous())


def optimize_for_inference(
    model: nn.Module,
    channels_last: bool = False,
    compile: bool = False,
    precision: Precision = "fp32",
    device: str | torch.device | None = None,
    compile_mode: str | None = None,
) -> InferenceModel:
    """Put ``model`` in eval mode on ``device`` and wrap it for fast inference.

    Args:
        model: a DEKR network (or any ``images -> (heatmaps, offsets)`` module).
        channels_last, compile, precision, compile_mode: see :class:`InferenceModel`.
        device: move the model there first (default: leave it where it is).

    Returns:
        :class:`InferenceModel`; call it under ``torch.inference_mode()``.
    """
    if device is not None:
        model = model.to(device)
    model.eval()
    return InferenceModel(
        model, channels_last=channels_last, precision=precision, compile=compile, compile_mode=compile_mode
    ).eval()


__all__ = [
    "PRECISIONS",
    "InferenceModel",
    "Precision",
    "check_precision",
    "compile_supported",
    "optimize_for_inference",
]
