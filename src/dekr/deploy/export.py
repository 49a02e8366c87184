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
import torch.nn.functional as F
from torch import nn

from dekr.model import adaptive
from dekr.model.adaptive import GroupedAdaptiveBlock, sampling_displacements

log = logging.getLogger(__name__)

IMPLS = ("deform", "grid_sample")
MIN_OPSET = {"deform": 19, "grid_sample": 16}
DEFAULT_OPSET = {"deform": 19, "grid_sample": 18}
INPUT_NAME = "images"
OUTPUT_NAMES = ("heatmaps", "offsets")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


# --------------------------------------------------------------------------- export-only graph pieces
class _MatmulAdaptiveBlock(nn.Module):
    """Export form of :class:`GroupedAdaptiveBlock` for the ``grid_sample`` graph.

    Same parameters (shared, not copied) and the same function: the 9 taps of every branch are
    sampled by one ``grid_sample`` and contracted with the weights by one batched ``matmul``
    ``[1, G, Co, C*9] @ [N, G, C*9, H*W]`` instead of an ``einsum``.
    """

    def __init__(self, block: GroupedAdaptiveBlock) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, G*C, H, W] -> [N, G*C, H, W]``."""
        b = self.block
        dy, dx = sampling_displacements(b.transform(x), b.grid.to(x.dtype), b.groups)
        n, g, _, h, w = dy.shape
        c = x.shape[1] // g
        co = b.weight.shape[0] // g
        ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, 1, h, 1)
        xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, 1, w)
        grid = b.grid.to(x.dtype) * b.dilation  # [2, 9] rows (y, x)
        py = ys + grid[0].view(1, 1, 9, 1, 1) + dy
        px = xs + grid[1].view(1, 1, 9, 1, 1) + dx
        sample_grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), dim=-1)
        sampled = F.grid_sample(
            x.reshape(n * g, c, h, w), sample_grid.reshape(n * g, 9 * h, w, 2),
            mode="bilinear", padding_mode="zeros", align_corners=False,
        )  # [N*G, C, 9*H, W], channel-major then tap: matches weight.view(G, Co, C*9)
        out = torch.matmul(b.weight.reshape(1, g, co, c * 9), sampled.reshape(n, g, c * 9, h * w))
        return F.relu(b.bn(out.reshape(n, g * co, h, w)) + x)


def _native_matmul_kernel() -> bool:
    """Whether the model's own ``grid_sample`` kernel already contracts with a matmul (no ``einsum``)."""
    return hasattr(adaptive, "sampling_grid")


def prepare_for_export(model: nn.Module, impl: str = "deform") -> nn.Module:
    """A CPU, float32, eval-mode copy of ``model`` whose adaptive convolutions use ``impl``'s graph.

    For ``grid_sample`` the blocks are wrapped in :class:`_MatmulAdaptiveBlock` unless the model's own
    kernel is already GridSample + MatMul. ``model`` itself is left untouched. Raises ``ValueError``
    for an unknown ``impl``.
    """
    if impl not in IMPLS:
        raise ValueError(f"adaptive_impl must be one of {IMPLS}, got '{impl}'")
    net = copy.deepcopy(model).float().cpu().eval()
    net = net.to(memory_format=torch.contiguous_format)
    blocks = [(name, m) for name, m in net.named_modules() if isinstance(m, GroupedAdaptiveBlock)]
    for name, block in blocks:
        block.impl = impl
        if impl == "grid_sample" and not _native_matmul_kernel():
            parent_name, _, child = name.rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
            setattr(parent, child, _MatmulAdaptiveBlock(block))
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

    def deform_conv2d(input, weight, offset, mask, bias, stride_h: int, stride_w: int, pad_h: int,  # noqa: A002
                      pad_w: int, dilation_h: int, dilation_w: int, groups: int, offset_groups: int,
                      use_mask: bool):
        return op.DeformConv(
            input, weight, offset, bias, mask if use_mask else None,
            dilations=[dilation_h, dilation_w], group=groups, offset_group=offset_groups,
            pads=[pad_h, pad_w, pad_h, pad_w], strides=[stride_h, stride_w],
        )

    return {torch.ops.torchvision.deform_conv2d.default: deform_conv2d}


# --------------------------------------------------------------------------- model + weights
def build_model(
    model: nn.Module | Mapping[str, Any] | None = None,
    checkpoint: str | Path | None = None,
    model_from_checkpoint: bool = False,
) -> nn.Module:
    """A DEKR network with weights, for export.

    Args:
        model: an ``nn.Module``; or DEKR constructor kwargs; or a Hydra node with
            ``_target_: dekr.model.DEKR`` (a node holding the network under ``net``/``network`` also
            works). ``None`` requires ``checkpoint`` and ``model_from_checkpoint``.
        checkpoint: a Lightning ``.ckpt``, a file made by ``python -m dekr.convert`` or a plain
            ``state_dict``; loaded strictly (clear error on any mismatch).
        model_from_checkpoint: build the architecture from the checkpoint itself (the ``model``
            kwargs a converted file stores, else :func:`dekr.convert.infer_model_kwargs`) instead of
            ``model``; ``adaptive_impl`` is irrelevant for export.
    """
    from dekr.model import DEKR
    from dekr.model.checkpoint import load_weights, read_state_dict, stored_model_kwargs

    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"checkpoint not found: {checkpoint}. Pass a trained .ckpt, a file made by "
                "`python -m dekr.convert`, or checkpoint=null to export untrained weights."
            )
    if model_from_checkpoint:
        if checkpoint is None:
            raise ValueError("model_from_checkpoint=true needs a checkpoint")
        from dekr.convert import infer_model_kwargs

        kwargs = stored_model_kwargs(checkpoint) or infer_model_kwargs(read_state_dict(checkpoint))
        net: nn.Module = DEKR(**dict(kwargs))
    elif isinstance(model, nn.Module):
        net = model
    elif isinstance(model, Mapping):
        net = _instantiate(model)
    else:
        raise ValueError("build_model needs a model (module, kwargs or config) or model_from_checkpoint=True")
    if checkpoint is not None:
        load_weights(net, checkpoint)
    return net.eval()


def _instantiate(node: Mapping[str, Any]) -> nn.Module:
    """DEKR from kwargs or a Hydra node (``_target_`` at the top or under ``net``/``network``)."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            node = OmegaConf.to_container(node, resolve=True)  # type: ignore[assignment]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    node = dict(node)
    target = node.get("_target_")
    if target is None:
        for key in ("net", "network"):
            if isinstance(node.get(key), Mapping):
                return _instantiate(node[key])
        from dekr.model import DEKR

        return DEKR(**node)
    import hydra

    net = hydra.utils.instantiate(node)
    if not isinstance(net, nn.Module):
        raise TypeError(f"model config _target_ {target} built a {type(net).__name__}, not a network")
    return net


# --------------------------------------------------------------------------- export
def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if h % 32 or w % 32 or h <= 0 or w <= 0:
        raise ValueError(f"input size {h}x{w}: height and width must be positive multiples of 32")
    return h, w


def _metadata(model: nn.Module, impl: str, model_kwargs: Mapping[str, Any] | None) -> dict[str, str]:
    meta = {
        "dekr.adaptive_impl": impl,
        "dekr.stride": "4",
        "dekr.input_mean": json.dumps(list(IMAGENET_MEAN)),
        "dekr.input_std": json.dumps(list(IMAGENET_STD)),
        "dekr.input_layout": "RGB float32 [N, 3, H, W], ImageNet-normalised, H and W multiples of 32",
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
        model_kwargs: constructor kwargs stored as metadata (informational).
        seed: seed of the check images.
        force_translation: map ``deform_conv2d`` with this module's own translation
            (:func:`deform_translation`) even where onnxscript has one.

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
        hint = ("DeformConv exists from opset 19" if impl == "deform" else "GridSample exists from opset 16")
        raise ValueError(f"opset {opset} is too old for impl={impl}: {hint}; use opset>={MIN_OPSET[impl]}"
                         + (" or impl=grid_sample (opset>=16)" if impl == "deform" else ""))
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
                net, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES), dynamic_shapes={INPUT_NAME: {0: dyn, 2: dyn, 3: dyn}},
                optimize=True, verbose=False,
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
    for key, value in _metadata(model, impl, model_kwargs).items():
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
                "accept it with rtol=1e-5." if scale > 1e3 else
                " Try the other adaptive_impl or opset, and report the versions of torch, onnxscript and onnxruntime."
            )
            raise ExportVerificationError(
                f"{path} does not match PyTorch at input {tuple(shape)}: "
                + ", ".join(f"{n} max |diff| {check[n]:.3e} > {limit[n]:.1e} (values up to {check[n + '_scale']:.1e})"
                            for n in bad)
                + f". The unverified file is kept at {path} for inspection." + hint
            )
    return checks


__all__ = [
    "DEFAULT_OPSET", "IMPLS", "MIN_OPSET", "ExportError", "ExportResult", "ExportVerificationError",
    "build_model", "export_onnx", "prepare_for_export", "verify_onnx",
]
