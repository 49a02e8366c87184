"""The Hydra config tree: where it is, composing it outside an entry point, and the OmegaConf
resolvers it uses (registered when :mod:`dekr` is imported).

* ``${dekr.default_adaptive_impl:}``: ``grid_sample`` on CPU-only machines (faster there: see
  ``benchmarks/bench_model.py``), ``deform`` (torchvision's kernel, as the reference) with CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

#: the project's ``conf/`` (the repository checkout; the package is installed from it with ``pip install -e``)
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def read_group_default(group: str) -> tuple[dict[str, Any], str]:
    """``conf/<group>/default.yaml`` as plain data (``yaml.safe_load``: no code runs), with its path
    for error messages; a clear error when the checkout's ``conf/`` is not there."""
    import yaml

    path = CONF_DIR / group / "default.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"the {group} defaults {path} are missing: install the project from its checkout "
            f"(`pip install -e .`, see README) or pass the {group} settings explicitly"
        )
    return yaml.safe_load(path.read_text()), str(path)


def compose_train(overrides: Sequence[str], config_dir: str | Path | None = None) -> Any:
    """``conf/train.yaml`` composed with Hydra ``overrides``, as ``python src/train.py`` would; a
    ``config_dir`` joins the search path after ``conf/`` (as Hydra's ``--config-dir``: e.g. a folder
    holding the user's ``data/NAME.yaml``)."""
    from hydra import compose, initialize_config_dir

    overrides = list(overrides)
    if config_dir is not None:
        overrides.append(f"hydra.searchpath=[file://{Path(config_dir).resolve()}]")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _default_adaptive_impl() -> str:
    import torch

    return "deform" if torch.cuda.is_available() else "grid_sample"


def register_resolvers() -> None:
    """Register the project's resolvers once (idempotent)."""
    if not OmegaConf.has_resolver("dekr.default_adaptive_impl"):
        OmegaConf.register_new_resolver("dekr.default_adaptive_impl", _default_adaptive_impl)
