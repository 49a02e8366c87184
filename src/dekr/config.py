"""OmegaConf resolvers used by the Hydra configs (registered when :mod:`dekr` is imported).

* ``${dekr.default_adaptive_impl:}``: ``grid_sample`` on CPU-only machines (faster there: see
  ``benchmarks/bench_model.py``), ``deform`` (torchvision's kernel, as the reference) with CUDA.
"""

from __future__ import annotations

from omegaconf import OmegaConf


def _default_adaptive_impl() -> str:
    import torch

    return "deform" if torch.cuda.is_available() else "grid_sample"


def register_resolvers() -> None:
    """Register the project's resolvers once (idempotent)."""
    if not OmegaConf.has_resolver("dekr.default_adaptive_impl"):
        OmegaConf.register_new_resolver("dekr.default_adaptive_impl", _default_adaptive_impl)
