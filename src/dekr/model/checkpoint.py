"""Reading DEKR weights: Lightning checkpoints, converted reference checkpoints, plain state_dicts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model it is loaded into."""


def diagnose_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module | None = None) -> list[str]:
    """Likely causes of a mismatch: another keypoint count or width than ``model``, or an unconverted
    official / MMPose file."""
    hints = []
    own = model.state_dict() if model is not None else {}
    hm = state.get("heatmap_head.final.weight")
    if hm is not None and "heatmap_head.final.weight" in own and hm.shape != own["heatmap_head.final.weight"].shape:
        hints.append(
            f"keypoint count differs: checkpoint has {hm.shape[0] - 1} keypoints, model has "
            f"{own['heatmap_head.final.weight'].shape[0] - 1} (set the data config / model.num_keypoints)"
        )
    key = "backbone.body.transition1.0.0.weight"
    if key in state and key in own and state[key].shape != own[key].shape:
        hints.append(
            f"backbone width differs: checkpoint is HRNet-W{state[key].shape[0]}, model is "
            f"HRNet-W{own[key].shape[0]} (choose model=dekr_w{state[key].shape[0]})"
        )
    if any(k.startswith(("offset_feature_layers.", "module.offset_feature_layers.")) for k in state):
        hints.append(
            "this is an official HRNet/DEKR checkpoint: convert it first with "
            "`python -m dekr.convert SRC DST --source official`"
        )
    elif any(k.startswith("head.displacement_conv_layers") or k.startswith("keypoint_head.") for k in state):
        hints.append(
            "this is an MMPose checkpoint: convert it first with `python -m dekr.convert SRC DST --source mmpose`"
        )
    return hints


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], origin: str = "checkpoint") -> None:
    """Raise :class:`CheckpointMismatchError` naming missing/unexpected/mis-shaped keys and the
    likely cause, unless ``state`` fits ``model`` exactly."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if not (missing or unexpected or shapes):
        return
    lines = [f"{origin} does not match the model:"]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            lines.append(f"  {label}: {shown}")
    hints = diagnose_state_dict(state, model)
    if hints:
        lines.append("  likely cause: " + "; ".join(hints))
    raise CheckpointMismatchError("\n".join(lines))


@dataclass(frozen=True)
class StoredCheckpoint:
    """What a checkpoint file holds, read once with ``weights_only=True`` and never instantiated.

    Attributes:
        path: the file.
        state: the network's weights (``state_dict`` keys of :class:`dekr.model.DEKR`).
        network: the stored network constructor arguments (plain data, unchecked here: the builder
            checks them against the constructor's signature), or ``None`` for a plain ``state_dict``.
        keypoints: the stored keypoint layout (plain data) or ``None``.
        codec: the stored codec settings (plain data) or ``None``.
        raw_keys: top-level keys of the file (what a reader may want to report).
    """

    path: Path
    state: dict[str, torch.Tensor]
    network: dict[str, Any] | None
    keypoints: Any
    codec: Any
    raw_keys: tuple[str, ...] = ()


def read_checkpoint(path: str | Path) -> StoredCheckpoint:
    """Read a Lightning ``.ckpt`` (``net.*``/``model.*`` keys), a converted checkpoint
    (``{"state_dict": ..., "model": {...}}``) or a plain ``state_dict`` file, with ``weights_only=True``
    (tensors and plain containers only: a file cannot run code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path}. Pass a trained .ckpt or a file made by `python -m dekr.convert`."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointMismatchError(
            f"could not read {path} as a torch checkpoint ({type(err).__name__}: {err}). The file may be "
            "truncated (a killed write) or not a checkpoint; use another file, e.g. the run's last.prev.ckpt."
        ) from err
    state = payload.get("state_dict", payload) if isinstance(payload, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(f"{path} holds no state_dict of tensors")
    for prefix in ("net.", "model."):  # Lightning checkpoint: keep the network's weights
        if any(k.startswith(prefix) for k in state) and not any(k.startswith("backbone.") for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            break
    stored = payload.get("dekr") if isinstance(payload.get("dekr"), Mapping) else {}
    network = stored.get("network")
    if network is None:  # older training runs ("dekr_model") and converted files ("model")
        for key in ("dekr_model", "model"):
            value = payload.get(key)
            if isinstance(value, Mapping) and "num_keypoints" in value:
                network = {k: v for k, v in value.items() if k != "pretrained"}
                break
    if network is not None and not isinstance(network, Mapping):
        raise CheckpointMismatchError(f"{path}: the stored network arguments are not a mapping: {network!r}")
    return StoredCheckpoint(
        path=path,
        state=dict(state),
        network=None if network is None else dict(network),
        keypoints=stored.get("keypoints"),
        codec=stored.get("codec"),
        raw_keys=tuple(map(str, payload)),
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The network weights of a checkpoint file (see :func:`read_checkpoint`)."""
    return read_checkpoint(path).state


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load ``path`` into ``model`` strictly, with a clear error on any mismatch."""
    state = read_state_dict(path)
    check_state_dict(model, state, origin=str(path))
    model.load_state_dict(state)
    return model
