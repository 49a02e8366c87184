"""Import DEKR checkpoints from the official code (HRNet/DEKR) and from MMPose.

Usage::

    python -m dekr.convert pose_dekr_hrnetw32_coco.pth dekr_w32_coco.pth --source official
    python -m dekr.convert dekr_hrnet-w32_8xb10-140e_coco-512x512.pth out.pth --source mmpose

The output is ``{"state_dict": <this project's DEKR keys>, "dekr": {"network": <DEKR arguments>},
"source": ...}``, which :func:`dekr.model.build.build_network` (used by eval, predict, export and
fine-tuning) reads. Backbone parameter names are shared by the official HRNet, MMPose's HRNet and timm's
``features_only`` HRNet, so only the heads are rearranged:

* official: the K per-keypoint regression branches are stacked into grouped tensors; the adaptive
  block's ``transform_matrix_conv`` (4 ch) and ``translation_conv`` (2 ch) are concatenated into
  one 6-channel group; ``regular_matrix`` buffers are dropped.
* MMPose 1.x: the affine ``[[a, b, ty], [c, d, tx]]`` acts on ``(gy, gx, 1)`` without subtracting
  the regular grid, so ``1`` is added to the diagonal biases; displacements are
  ``keypoint - pixel``, so the final regression layer is negated. MMPose 0.x checkpoints
  (``offset_conv_layers``, centre heatmap first) are recognised and handled too.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from dekr.model.build import arguments_from_weights
from dekr.model.checkpoint import check_state_dict
from dekr.model.network import DEKR

Tensor = torch.Tensor
StateDict = dict[str, Tensor]

_BACKBONE_KEY = re.compile(r"^(conv1|bn1|conv2|bn2|layer1|transition\d+|stage\d+)\.")


def _strip(state: Mapping[str, Tensor], prefix: str) -> StateDict:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def _unwrap(obj: object) -> StateDict:
    """Return the tensor dict inside a checkpoint file's payload."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                return dict(inner)
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
    raise ValueError("checkpoint holds no state_dict (expected a dict of tensors, or one under 'state_dict'/'model')")


def _count_branches(state: Mapping[str, Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def official_to_dekr(state: Mapping[str, Tensor]) -> StateDict:
    """Map an official HRNet/DEKR ``state_dict`` onto :class:`dekr.model.DEKR` keys."""
    src = _strip(state, "module.")
    num_kpts = _count_branches(src, r"offset_final_layer\.(\d+)\.")
    if num_kpts == 0 or "transition_heatmap.0.weight" not in src:
        raise ValueError(
            "not an official DEKR checkpoint: no 'offset_final_layer.*' / 'transition_heatmap.*' keys. "
            "Use --source mmpose for MMPose files."
        )
    num_blocks = _count_branches(src, r"offset_feature_layers\.0\.(\d+)\.")
    out: StateDict = {}
    for key, value in src.items():
        if _BACKBONE_KEY.match(key):
            out["backbone.body." + key] = value
    for i in range(2):
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            if i == 0 and name != "weight":
                continue
            out[f"heatmap_head.transition.{i}.{name}"] = src[f"transition_heatmap.{i}.{name}"]
            out[f"offset_head.transition.{i}.{name}"] = src[f"transition_offset.{i}.{name}"]
    for key, value in src.items():
        if key.startswith("head_heatmap.0."):
            out["heatmap_head.blocks." + key[len("head_heatmap.0.") :]] = value
    out["heatmap_head.final.weight"] = src["head_heatmap.1.weight"]
    out["heatmap_head.final.bias"] = src["head_heatmap.1.bias"]

    def stack(fmt: str) -> Tensor:
        return torch.cat([src[fmt.format(j=j)] for j in range(num_kpts)], dim=0)

    for b in range(num_blocks):
        pre = "offset_feature_layers.{j}." + str(b)
        dst = f"offset_head.blocks.{b}"
        for name in ("weight", "bias"):
            out[f"{dst}.transform.{name}"] = torch.cat(
                [
                    torch.cat(
                        (
                            src[f"offset_feature_layers.{j}.{b}.transform_matrix_conv.{name}"],
                            src[f"offset_feature_layers.{j}.{b}.translation_conv.{name}"],
                        )
                    )
                    for j in range(num_kpts)
                ]
            )
        out[f"{dst}.weight"] = stack(pre + ".adapt_conv.weight")
        for name in ("weight", "bias", "running_mean", "running_var"):
            out[f"{dst}.bn.{name}"] = stack(pre + ".bn." + name)
        out[f"{dst}.bn.num_batches_tracked"] = src[f"offset_feature_layers.0.{b}.bn.num_batches_tracked"]
    out["offset_head.final.weight"] = stack("offset_final_layer.{j}.weight")
    out["offset_head.final.bias"] = stack("offset_final_layer.{j}.bias")
    return out


def dekr_to_official(state: Mapping[str, Tensor], num_keypoints: int) -> StateDict:
    """Inverse of :func:`official_to_dekr` (fully disentangled heads only), for round trips."""
    out: StateDict = {}
    for key, value in state.items():
        if key.startswith("backbone.body."):
            out[key[len("backbone.body.") :]] = value
        elif key.startswith("heatmap_head.transition."):
            out["transition_heatmap." + key[len("heatmap_head.transition.") :]] = value
        elif key.startswith("offset_head.transition."):
            out["transition_offset." + key[len("offset_head.transition.") :]] = value
        elif key.startswith("heatmap_head.blocks."):
            out["head_heatmap.0." + key[len("heatmap_head.blocks.") :]] = value
        elif key.startswith("heatmap_head.final."):
            out["head_heatmap.1." + key[len("heatmap_head.final.") :]] = value
    k = num_keypoints
    grid = torch.tensor([[-1, -1, -1, 0, 0, 0, 1, 1, 1], [-1, 0, 1, -1, 0, 1, -1, 0, 1]], dtype=torch.float32)
    num_blocks = _count_branches(state, r"offset_head\.blocks\.(\d+)\.")
    for b in range(num_blocks):
        pre = f"offset_head.blocks.{b}"
        for name in ("weight", "bias"):
            per_kpt = state[f"{pre}.transform.{name}"].chunk(k)
            for j, t in enumerate(per_kpt):
                out[f"offset_feature_layers.{j}.{b}.transform_matrix_conv.{name}"] = t[:4].clone()
                out[f"offset_feature_layers.{j}.{b}.translation_conv.{name}"] = t[4:].clone()
        for j, t in enumerate(state[f"{pre}.weight"].chunk(k)):
            out[f"offset_feature_layers.{j}.{b}.adapt_conv.weight"] = t.clone()
            out[f"offset_feature_layers.{j}.{b}.regular_matrix"] = grid.clone()
        for name in ("weight", "bias", "running_mean", "running_var"):
            for j, t in enumerate(state[f"{pre}.bn.{name}"].chunk(k)):
                out[f"offset_feature_layers.{j}.{b}.bn.{name}"] = t.clone()
        for j in range(k):
            out[f"offset_feature_layers.{j}.{b}.bn.num_batches_tracked"] = state[
                f"{pre}.bn.num_batches_tracked"
            ].clone()
    for name in ("weight", "bias"):
        for j, t in enumerate(state[f"offset_head.final.{name}"].chunk(k)):
            out[f"offset_final_layer.{j}.{name}"] = t.clone()
    return out


def mmpose_to_dekr(state: Mapping[str, Tensor]) -> StateDict:
    """Map an MMPose DEKR (HRNet backbone + ``DEKRHead``) ``state_dict`` onto DEKR keys."""
    src = {k: v for k, v in state.items() if not k.startswith(("data_preprocessor.", "rescore_net."))}
    legacy = any(".offset_conv_layers." in k for k in src)
    if legacy:  # MMPose 0.x: 'offset_conv_layers', displacements pixel - keypoint, centre first
        src = {k.replace(".offset_conv_layers.", ".displacement_conv_layers."): v for k, v in src.items()}
    hm = "keypoint_head." if any(k.startswith("keypoint_head.") for k in src) else "head."
    if f"{hm}heatmap_conv_layers.0.conv.weight" not in src:
        raise ValueError("not an MMPose DEKR checkpoint: no 'head.heatmap_conv_layers.*' keys")
    out: StateDict = {}
    for key, value in src.items():
        if key.startswith("backbone."):
            out["backbone.body." + key[len("backbone.") :]] = value

    def module(dst: str, srcp: str, names: tuple[str, ...]) -> None:
        for name in names:
            out[f"{dst}.{name}"] = src[f"{srcp}.{name}"]

    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    h = f"{hm}heatmap_conv_layers"
    d = f"{hm}displacement_conv_layers"
    module("heatmap_head.transition.0", f"{h}.0.conv", ("weight",))
    module("heatmap_head.transition.1", f"{h}.0.bn", bn)
    for name in ("conv1.weight", "conv2.weight"):
        out[f"heatmap_head.blocks.0.{name}"] = src[f"{h}.1.{name}"]
    for sub in ("bn1", "bn2"):
        alias = {"bn1": ("bn1", "norm1"), "bn2": ("bn2", "norm2")}[sub]
        found = next(a for a in alias if f"{h}.1.{a}.weight" in src)
        module(f"heatmap_head.blocks.0.{sub}", f"{h}.1.{found}", bn)
    w, b = src[f"{h}.2.weight"], src[f"{h}.2.bias"]
    if legacy:  # centre channel first -> last
        w, b = torch.cat((w[1:], w[:1])), torch.cat((b[1:], b[:1]))
    out["heatmap_head.final.weight"], out["heatmap_head.final.bias"] = w, b
    module("offset_head.transition.0", f"{d}.0.conv", ("weight",))
    module("offset_head.transition.1", f"{d}.0.bn", bn)
    n_layers = _count_branches(src, re.escape(d) + r"\.(\d+)\.")
    for blk, layer in enumerate(range(1, n_layers - 1)):
        pre = f"{d}.{layer}"
        tw, tb = src[f"{pre}.transform_matrix_conv.weight"], src[f"{pre}.transform_matrix_conv.bias"]
        g = tw.shape[0] // 6
        order = torch.tensor([0, 1, 3, 4, 2, 5])
        tw = tw.view(g, 6, *tw.shape[1:])[:, order].reshape_as(tw)
        tb = tb.view(g, 6)[:, order].clone()
        tb[:, 0] += 1.0
        tb[:, 3] += 1.0
        out[f"offset_head.blocks.{blk}.transform.weight"] = tw
        out[f"offset_head.blocks.{blk}.transform.bias"] = tb.reshape(-1)
        out[f"offset_head.blocks.{blk}.weight"] = src[f"{pre}.adapt_conv.weight"]
        module(f"offset_head.blocks.{blk}.bn", f"{pre}.norm", bn)
    fw, fb = src[f"{d}.{n_layers - 1}.weight"], src[f"{d}.{n_layers - 1}.bias"]
    sign = 1.0 if legacy else -1.0
    out["offset_head.final.weight"], out["offset_head.final.bias"] = sign * fw, sign * fb
    return out


CONVERTERS = {"official": official_to_dekr, "mmpose": mmpose_to_dekr}


def convert_file(src: str | Path, dst: str | Path, source: str = "official") -> dict:
    """Convert ``src`` (official or MMPose checkpoint) to this project's format at ``dst``."""
    src, dst = Path(src), Path(dst)
    if source not in CONVERTERS:
        raise ValueError(f"--source must be one of {sorted(CONVERTERS)}, got '{source}'")
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint not found: {src}")
    try:
        payload = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"could not read {src} as a torch checkpoint ({err})") from err
    state = CONVERTERS[source](_unwrap(payload))
    kwargs = arguments_from_weights(state, str(src))
    check_state_dict(DEKR(**kwargs), state, origin=str(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    torch.save({"state_dict": state, "dekr": {"network": DEKR(**kwargs).arguments}, "source": source}, tmp)
    tmp.replace(dst)
    return kwargs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dekr.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="official (pose_dekr_hrnetw32_coco.pth, ...) or MMPose checkpoint")
    parser.add_argument("dst", help="output file for this project")
    parser.add_argument("--source", choices=sorted(CONVERTERS), default="official")
    args = parser.parse_args(argv)
    try:
        kwargs = convert_file(args.src, args.dst, args.source)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst}: DEKR({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
