"""The one timer every benchmark script uses."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(
    fn: Callable[[], object], repeats: int, warmup: int = 1, sync: Callable[[], None] | None = None
) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` untimed runs.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called after the warm-up and after each run, so
    asynchronous device work is inside the measurement.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_targets(k: int, size: int, batch: int, device, people: int = 2):
    """A training batch's targets (random values, the shapes and sparsity of ``people`` people per
    image) for timing the loss and training step; see ``CONVENTIONS.md``."""
    import torch

    h = size // 4
    g = torch.Generator().manual_seed(0)
    per_image = people * 64  # an 8 x 8 offset window per person
    pixel = torch.cat([torch.randperm(h * h, generator=g)[:per_image] + i * h * h for i in range(batch)])
    return {
        "heatmaps": torch.rand(batch, k + 1, h, h, generator=g).to(device),
        "heatmap_mask": torch.ones(batch, h, h).to(device),
        "offset_pixel": pixel.to(device),
        "offset_target": torch.randn(pixel.numel(), k, 2, generator=g).to(device),
        "offset_weight": torch.full((pixel.numel(), k), 0.02).to(device),
    }


def training_step(model, images, targets, lr: float = 1e-3):
    """``step()``: one optimizer step of ``model`` (forward, the DEKR loss with the settings of
    ``conf/train.yaml``, backward, Adam) on a fixed batch, for timing."""
    import torch
    from hydra.utils import instantiate

    from dekr.config import compose_train

    loss_fn = instantiate(compose_train([]).module.loss)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step() -> None:
        heatmaps, offsets = model(images)
        loss = loss_fn(heatmaps, offsets, targets)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step
