"""The one way to build the DEKR network: from a composed ``model`` config, from what a checkpoint
stores, or from a checkpoint's weights alone.

Used by training, ``eval.py``, ``predict.py``, ``export.py``, ``python -m dekr.convert`` and the
ONNX path. Nothing is instantiated by name: a config's ``_target_`` must be :class:`DEKR`, and stored
arguments are checked against :class:`DEKR`'s signature and type hints (unknown keys, wrong types and
nested mappings are refused). The keypoint count comes from the layout; a network or checkpoint
whose count differs fails in :func:`dekr.keypoints.check_num_keypoints`, with the fix.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dekr.keypoints import KeypointSpec, check_num_keypoints
from dekr.model.checkpoint import (
    CheckpointMismatchError,
    StoredCheckpoint,
    check_state_dict,
    diagnose_state_dict,
    read_checkpoint,
)
from dekr.model.network import DEKR
from dekr.plaindata import check_arguments, plain

log = logging.getLogger(__name__)

#: the only ``_target_`` a model config may name
NETWORK_TARGET = "dekr.model.DEKR"


def network_arguments(model: Mapping[str, Any] | Any, origin: str = "model config", stored: bool = False) -> dict:
    """Checked :class:`DEKR` keyword arguments from a model config node (``_target_`` optional, and
    only :data:`NETWORK_TARGET`) or, with ``stored``, from a file's plain data (no ``_target_`` at all)."""
    node = plain(model)
    if not isinstance(node, Mapping):
        raise ValueError(f"{origin}: expected a mapping of DEKR arguments, got {type(node).__name__}")
    node = dict(node)
    if stored:
        return check_arguments(DEKR, node, origin)
    target = node.pop("_target_", NETWORK_TARGET)
    if target not in (NETWORK_TARGET, "dekr.model.network.DEKR"):
        raise ValueError(
            f"{origin}: _target_ must be {NETWORK_TARGET}, got {target!r} (only the DEKR network is built from configs)"
        )
    if node.get("num_keypoints", 0) is None:  # from the layout (build_network)
        del node["num_keypoints"]
    return check_arguments(DEKR, node, origin)


def _count(state: Mapping[str, Any], pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def arguments_from_weights(state: Mapping[str, Any], origin: str = "checkpoint") -> dict[str, Any]:
    """DEKR arguments implied by this project's ``state_dict`` (keypoints, width, head sizes) of a
    disentangled network (one keypoint per branch, as the official and MMPose ones), for files that
    store none (plain ``state_dict`` files, converted official / MMPose weights)."""
    needed = ("heatmap_head.final.weight", "backbone.body.transition1.0.0.weight", "offset_head.final.weight")
    if not all(k in state for k in needed):
        hints = diagnose_state_dict(state)
        raise CheckpointMismatchError(
            f"{origin} is not a DEKR checkpoint of this project (no {', '.join(k for k in needed if k not in state)})"
            + (
                ": " + "; ".join(hints)
                if hints
                else "; pass a training .ckpt or a file made by `python -m dekr.convert`"
            )
        )
    k = state["heatmap_head.final.weight"].shape[0] - 1
    width = int(state["backbone.body.transition1.0.0.weight"].shape[0])
    stage2_blocks = _count(state, r"backbone\.body\.stage2\.0\.branches\.0\.(\d+)\.")
    if width == 16:
        backbone = "hrnet_w18_small"
    elif width == 18 and stage2_blocks == 2:
        backbone = "hrnet_w18_small_v2"
    else:
        backbone = f"hrnet_w{width}"
    return {
        "num_keypoints": int(k),
        "backbone": backbone,
        "channels_per_keypoint": int(state["offset_head.final.weight"].shape[1]),  # one keypoint per branch
        "offset_blocks": _count(state, r"offset_head\.blocks\.(\d+)\."),
        "heatmap_channels": int(state["heatmap_head.final.weight"].shape[1]),
    }


def build_network(
    spec: KeypointSpec,
    model: Mapping[str, Any] | Any | None = None,
    checkpoint: str | Path | StoredCheckpoint | None = None,
    prefer_stored: bool = True,
) -> DEKR:
    """The network for ``spec``, with the checkpoint's weights when one is given.

    Args:
        spec: the keypoint layout; sets ``num_keypoints`` (a config's explicit value must agree).
        model: a composed ``model`` node or DEKR arguments; used when the checkpoint stores no
            arguments, or always with ``prefer_stored=False``.
        checkpoint: a file (or :func:`read_checkpoint` result): a training ``.ckpt``, a
            ``python -m dekr.convert`` output or a plain ``state_dict`` (then the architecture is read
            from the weights' shapes when no ``model`` is given). Loaded strictly.
        prefer_stored: build the architecture the checkpoint stores rather than ``model``.
    """
    stored = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    if stored is not None and stored.network is not None and (prefer_stored or model is None):
        args = network_arguments(stored.network, f"{stored.path} (stored network arguments)", stored=True)
        origin = str(stored.path)
        if model is not None:
            log.info("building the network stored in %s: %s", stored.path, args)
    elif model is not None:
        args = network_arguments(model)
        origin = "model config"
    elif stored is not None:
        args = arguments_from_weights(stored.state, str(stored.path))
        origin = f"{stored.path} (weights)"
    else:
        raise ValueError("build_network needs a model config or a checkpoint")
    if args.get("num_keypoints") is None:
        args["num_keypoints"] = spec.num_keypoints
    check_num_keypoints(args["num_keypoints"], spec, origin)
    net = DEKR(**args)
    if stored is not None:
        check_state_dict(net, stored.state, origin=str(stored.path))
        net.load_state_dict(stored.state)
    return net


__all__ = ["NETWORK_TARGET", "arguments_from_weights", "build_network", "network_arguments"]
