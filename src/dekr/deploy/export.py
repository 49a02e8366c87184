"""Export the full DEKR network, adaptive convolutions included, to ONNX, and verify it.

Two graphs for the adaptive convolution, the same function:

* ``"deform"`` (opset >= 19): the adaptive conv becomes one ONNX ``DeformConv`` node. The dynamo
  exporter (``torch.onnx.export(..., dynamo=True)``) maps ``torchvision::deform_conv2d`` onto it
  through onnxscript's torch_lib; the legacy TorchScript exporter cannot. Fastest on ONNX Runtime
  CPU.
* ``"grid_sample"`` (opset >= 16): one bilinear ``GridSample`` over all 9 taps of all branches, then
  a batched ``MatMul`` with the 3x3 weights (the eager model's ``einsum`` written as a matmul, which
  ONNX Runtime runs about twice as fast as ``Einsum``). For runtimes without ``DeformConv``
  (older ONNX Runtime builds, TensorRT < 10, ...).

The graph has a dynamic batch and image size: input ``images float32 [N, 3, H, W]`` (ImageNet
normalised, H and W multiples of 32), outputs ``heatmaps [N, K+1, H/4, W/4]`` and
``offsets [N, 2K, H/4, W/4]`` (see ``CONVENTIONS.md``). :func:`export_onnx` always checks the file
with ONNX Runtime against the PyTorch model before it reports success and raises
:class:`ExportVerificationError` otherwise (the unverified file is kept beside the target as
``*.unverified.onnx`` for inspection, never at the requested path).

The file carries metadata (``dekr.num_keypoints``, ``dekr.adaptive_impl``, ``dekr.stride``,
``dekr.input_mean``/``dekr.input_std``, ``dekr.model_kwargs``) that
:class:`dekr.deploy.onnx_backend.OnnxModel` reads back.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dekr.codec import CodecConfig, default_codec_config
from dekr.model.adaptive import GroupedAdaptiveBlock

log = logging.getLogger(__name__)

IMPLS = ("deform", "grid_sample")
MIN_OPSET = {"deform": 19, "grid_sample": 16}
DEFAULT_OPSET = {"deform": 19, "grid_sample": 18}
INPUT_NAME = "images"
OUTPUT_NAMES = ("heatmaps", "offsets")


class ExportError(RuntimeError):
    """The model could not be exported."""


class ExportVerificationError(ExportError):
    """The exported file does not reproduce the PyTorch model within tolerance."""


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and how well it matched PyTorch.

    Attributes:
        path: the verified ONNX file.
        impl: adaptive-conv graph (``deform`` or ``grid_sample``).
        opset: ONNX opset of the file.
        checks: one entry per verified input shape: ``{"shape": [N, 3, H, W], "heatmaps": max abs
            diff, "offsets": max abs diff, "heatmaps_scale": max abs PyTorch value, "offsets_scale": ...}``.
        export_s: seconds spent exporting; ``verify_s``: seconds spent verifying.
    """

    path: Path
    impl: str
    opset: int
    checks: list[dict[str, Any]] = field(default_factory=list)
    export_s: float = 0.0
    verify_s: float = 0.0

    @property
    def max_abs_diff(self) -> float:
        """Largest difference over every check and both outputs."""
        return max((max(c["heatmaps"], c["offsets"]) for c in self.checks), default=float("nan"))

    def summary(self) -> str:
        """One line per check, for logs and the CLI."""
        lines = [f"wrote {self.path} (impl={self.impl}, opset={self.opset}, export {self.export_s:.1f} s)"]
        for c in self.checks:
            lines.append(
                f"  onnxruntime vs PyTorch at {tuple(c['shape'])}: max |diff| heatmaps {c['heatmaps']:.2e} "
                f"(values up to {c['heatmaps_scale']:.2e}), offsets {c['offsets']:.2e} "
                f"(values up to {c['offsets_scale']:.2e})"
            )
        return "\n".join(lines)


def prepare_for_export(model: nn.Module, impl: str = "deform") -> nn.Module:
    """A CPU, float32, eval-mode copy of ``model`` whose adaptive convolutions use ``impl``'s graph.

    ``grid_sample`` exports the model's own GridSample + MatMul kernel, ``deform`` the ONNX DeformConv.
    ``model`` itself is left untouched. Raises ``ValueError`` for an unknown ``impl``.
    """
    if impl not in IMPLS:
        raise ValueError(f"adaptive_impl must be one of {IMPLS}, got '{impl}'")
    net = copy.deepcopy(model).float().cpu().eval()
    net = net.to(memory_format=torch.contiguous_format)
    for block in net.modules():
        if isinstance(block, GroupedAdaptiveBlock):
            block.impl = impl
    return net


def deform_translation(force: bool = False) -> dict | None:
    """Custom ONNX translation of ``torchvision::deform_conv2d`` onto ``DeformConv`` (opset 19).

    onnxscript's torch_lib ships one (``torchvision_deform_conv2d``); this is used only where that
    is missing (older onnxscript), or with ``force=True``. Returns a ``custom_translation_table``
    for ``torch.onnx.export`` or ``None`` when the built-in one is there.
    """
    if not force:
        try:
            from onnxscript.function_libs.torch_lib.ops import vision

            if hasattr(vision, "torchvision_deform_conv2d"):
                return None
        except ImportError:
            pass
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)
    from onnxscript import opset19 as op

    def deform_conv2d(
        input,
        weight,
        offset,
        mask,
        bias,
        stride_h: int,
        stride_w: int,
        pad_h: int,  # noqa: A002
        pad_w: int,
        dilation_h: int,
        dilation_w: int,
        groups: int,
        offset_groups: int,
        use_mask: bool,
    ):
        return op.DeformConv(
            input,
            weight,
            offset,
            bias,
            mask if use_mask else None,
            dilations=[dilation_h, dilation_w],
            group=groups,
            offset_group=offset_groups,
            pads=[pad_h, pad_w, pad_h, pad_w],
            strides=[stride_h, stride_w],
        )

    return {torch.ops.torchvision.deform_conv2d.default: deform_conv2d}


# --------------------------------------------------------------------------- model + weights
# --------------------------------------------------------------------------- export
def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if h % 32 or w % 32 or h <= 0 or w <= 0:
        raise ValueError(f"input size {h}x{w}: height and width must be positive multiples of 32")
    return h, w


def _metadata(
    model: nn.Module, impl: str, model_kwargs: Mapping[str, Any] | None, codec: CodecConfig
) -> dict[str, str]:
    meta = {
        "dekr.adaptive_impl": impl,
        "dekr.stride": str(int(getattr(model, "stride", codec.stride))),
        "dekr.input_mean": json.dumps(list(codec.input.mean)),
        "dekr.input_std": json.dumps(list(codec.input.std)),
        "dekr.input_layout": "RGB float32 [N, 3, H, W], (rgb/255 - mean) / std, H and W multiples of 32",
        "dekr.codec": json.dumps(codec.to_dict()),
    }
    k = getattr(model, "num_keypoints", None)
    if k is not None:
        meta["dekr.num_keypoints"] = str(int(k))
    if model_kwargs is not None:
        meta["dekr.model_kwargs"] = json.dumps(dict(model_kwargs), default=str)
    return meta


def export_onnx(
    model: nn.Module,
    path: str | Path,
    impl: str = "deform",
    opset: int | None = None,
    input_size: int | Sequence[int] = 512,
    batch_size: int = 1,
    verify: bool = True,
    verify_dynamic: bool = True,
    atol: float = 1e-4,
    rtol: float = 0.0,
    model_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    force_translation: bool = False,
    codec: CodecConfig | None = None,
) -> ExportResult:
    """Export ``model`` to ``path`` and check it with ONNX Runtime.

    Args:
        model: a DEKR network (any adaptive-conv kernel; it is copied, not modified).
        path: output ``.onnx`` file (parent folders are created).
        impl: adaptive-conv graph, ``"deform"`` (``DeformConv``) or ``"grid_sample"``
            (``GridSample`` + ``MatMul``).
        opset: ONNX opset (default 19 for deform, 18 for grid_sample; minimum 19 / 16; below 18 the
            exporter converts the opset-18 graph down).
        input_size: ``S`` or ``(H, W)`` of the example and check input (multiples of 32).
        batch_size: batch of the example and check input.
        verify: compare ONNX Runtime with PyTorch on seeded random images; strongly recommended.
        verify_dynamic: also check a second shape (batch + 1, H + 32, W + 64) to prove the
            batch and image axes are dynamic.
        atol: largest allowed absolute difference on heatmaps and offsets.
        rtol: plus ``rtol`` times the largest PyTorch value of that output (default 0: absolute only;
            untrained networks without BN statistics reach 1e4 and need e.g. ``rtol=1e-5``).
        model_kwargs: constructor kwargs stored as metadata (default: the network's ``arguments``).
        seed: seed of the check images.
        force_translation: map ``deform_conv2d`` with this module's own translation
            (:func:`deform_translation`) even where onnxscript has one.
        codec: the codec the network was trained with (stride, input normalisation, decoding),
            stored as metadata; ``None``: the codec group's defaults.

    Returns:
        :class:`ExportResult` with the differences measured.

    Raises:
        ValueError: bad ``impl``/``opset``/``input_size``.
        ExportError: the exporter failed (message names the cause and a fix).
        ExportVerificationError: ONNX Runtime disagrees with PyTorch by more than ``atol``.
    """
    if impl not in IMPLS:
        raise ValueError(f"adaptive_impl must be one of {IMPLS}, got '{impl}'")
    opset = DEFAULT_OPSET[impl] if opset is None else int(opset)
    if opset < MIN_OPSET[impl]:
        hint = "DeformConv exists from opset 19" if impl == "deform" else "GridSample exists from opset 16"
        raise ValueError(
            f"opset {opset} is too old for impl={impl}: {hint}; use opset>={MIN_OPSET[impl]}"
            + (" or impl=grid_sample (opset>=16)" if impl == "deform" else "")
        )
    h, w = _size2(input_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = prepare_for_export(model, impl)
    # Trace with batch >= 2: an example batch of 1 lets torch.export specialise the batch axis to 1.
    example = torch.randn(max(batch_size, 2), 3, h, w, generator=torch.Generator().manual_seed(seed))
    dyn = torch.export.Dim.DYNAMIC  # raises at export instead of silently specialising an axis
    tmp = path.with_name(path.stem + ".unverified.onnx")
    t0 = time.perf_counter()
    for name in ("onnx_ir", "onnxscript"):  # their INFO lines (one per pass) drown the CLI output
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*opset.*")  # the down-conversion notice
            program = torch.onnx.export(
                net,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes={INPUT_NAME: {0: dyn, 2: dyn, 3: dyn}},
                optimize=True,
                verbose=False,
                custom_translation_table=deform_translation(force_translation) if impl == "deform" else None,
            )
    except Exception as err:  # the exporter raises many types; re-raise with context
        raise ExportError(
            f"torch.onnx.export(dynamo=True) failed for impl={impl}, opset={opset}: {type(err).__name__}: {err}\n"
            "fix: make sure onnxscript is installed (`pip install -e .[deploy]`); try the other "
            "adaptive-conv graph (adaptive_impl=grid_sample or deform) or another opset."
        ) from err
    if program is None:
        raise ExportError("torch.onnx.export returned no program (an old torch without the dynamo exporter?)")
    if model_kwargs is None:
        model_kwargs = getattr(model, "arguments", None)
    for key, value in _metadata(model, impl, model_kwargs, codec or default_codec_config()).items():
        program.model.metadata_props[key] = value
    program.save(tmp, external_data=False)
    export_s = time.perf_counter() - t0
    result = ExportResult(path=path, impl=impl, opset=_file_opset(tmp), export_s=export_s)
    if verify:
        t1 = time.perf_counter()
        shapes = [(batch_size, 3, h, w)]
        if verify_dynamic:
            shapes.append((batch_size + 1, 3, h + 32, w + 64))
        reference = copy.deepcopy(model).float().cpu().eval()  # the model as given, own kernel
        result.checks = verify_onnx(tmp, reference, shapes, atol=atol, rtol=rtol, seed=seed)
        result.verify_s = time.perf_counter() - t1
    else:
        log.warning("export_onnx(verify=False): %s was not checked against PyTorch", path)
    tmp.replace(path)
    log.info("%s", result.summary())
    return result


def _file_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=-1)


def verify_onnx(
    path: str | Path,
    model: nn.Module,
    shapes: Sequence[Sequence[int]],
    atol: float = 1e-4,
    seed: int = 0,
    providers: Sequence[str] | None = None,
    rtol: float = 0.0,
) -> list[dict[str, Any]]:
    """Run ``path`` with ONNX Runtime and ``model`` with PyTorch on seeded random images.

    Args:
        path: ONNX file. model: the PyTorch network it was exported from (float32, CPU).
        shapes: input shapes ``[N, 3, H, W]`` to try.
        atol, rtol: an output passes when its max abs difference is ``<= atol + rtol * max|PyTorch|``.

    Returns:
        one dict per shape: ``shape``, ``heatmaps``/``offsets`` (max abs diff) and
        ``heatmaps_scale``/``offsets_scale`` (max abs PyTorch value).

    Raises:
        ExportVerificationError: a shape fails to run or differs by more than ``atol``.
    """
    from dekr.deploy.onnx_backend import OnnxModel

    runner = OnnxModel(path, providers=providers or ["CPUExecutionProvider"])
    net = model.eval()
    checks = []
    gen = torch.Generator().manual_seed(seed + 1)
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            ref = net(x)
        try:
            got = runner(x)
        except Exception as err:
            raise ExportVerificationError(
                f"onnxruntime could not run {path} at input {tuple(shape)}: {type(err).__name__}: {err}\n"
                "fix: re-export with another adaptive_impl or opset; check the onnxruntime version supports "
                "the graph's operators (DeformConv needs onnxruntime >= 1.18 for impl=deform)."
            ) from err
        check: dict[str, Any] = {"shape": list(shape)}
        for name, r, o in zip(OUTPUT_NAMES, ref, got):
            if tuple(r.shape) != tuple(o.shape):
                raise ExportVerificationError(
                    f"{path}: {name} shape {tuple(o.shape)} from onnxruntime != {tuple(r.shape)} from PyTorch "
                    f"at input {tuple(shape)} (dynamic axes lost?)"
                )
            check[name] = float((r - o).abs().max())
            check[name + "_scale"] = float(r.abs().max())
        checks.append(check)
        limit = {n: atol + rtol * check[n + "_scale"] for n in OUTPUT_NAMES}
        bad = [n for n in OUTPUT_NAMES if not np.isfinite(check[n]) or check[n] > limit[n]]
        if bad:
            scale = max(check[n + "_scale"] for n in bad)
            hint = (
                f" The outputs reach {scale:.1e}, so this is {max(check[n] for n in bad) / scale:.0e} relative: "
                "float rounding on an untrained network (no BN statistics); export a trained checkpoint, or "
                "accept it with rtol=1e-5."
                if scale > 1e3
                else " Try the other adaptive_impl or opset, and report the versions of torch, onnxscript and "
                "onnxruntime."
            )
            raise ExportVerificationError(
                f"{path} does not match PyTorch at input {tuple(shape)}: "
                + ", ".join(
                    f"{n} max |diff| {check[n]:.3e} > {limit[n]:.1e} (values up to {check[n + '_scale']:.1e})"
                    for n in bad
                )
                + f". The unverified file is kept at {path} for inspection."
                + hint
            )
    return checks


__all__ = [
    "DEFAULT_OPSET",
    "IMPLS",
    "MIN_OPSET",
    "ExportError",
    "ExportResult",
    "ExportVerificationError",
    "export_onnx",
    "prepare_for_export",
    "verify_onnx",
]
