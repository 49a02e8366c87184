"""Train DEKR. `python src/train.py` runs the quickstart; see README for recipes and sweeps."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import dekr  # noqa: F401  (registers the config resolvers)
from dekr.training import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    summary = train(cfg)
    return float(summary.get("best_AP", 0.0))  # the value Hydra sweepers optimise


if __name__ == "__main__":
    main()
