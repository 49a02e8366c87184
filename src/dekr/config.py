"""OmegaConf resolvers used by the Hydra configs (registered when :mod:`dekr` is imported).

* ``${dekr.num_keypoints:${data.keypoints}}``: K of a data config's keypoint spec.
* ``${dekr.default_adaptive_impl:}``: ``grid_sample`` on CPU-only machines (faster there: see
  ``benchmarks/bench_model.py``), ``deform`` (torchvision's kernel, as the reference) with CUDA.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from dekr.keypoints import build_keypoint_spec


def _num_keypoints(keypoints: Any) -> int:
    if isinstance(keypoints, DictConfig):
        keypoints = OmegaConf.to_container(keypoints, resolve=True)
    return build_keypoint_spec(keypoints).num_keypoints


def _default_adaptive_impl() -> str:
    import torch

    return "deform" if torch.cuda.is_available() else "grid_sample"


def register_resolvers() -> None:
    """Register the project's resolvers once (idempotent)."""
    for name, fn in (("dekr.num_keypoints", _num_keypoints), ("dekr.default_adaptive_impl", _default_adaptive_impl)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
