"""Where a quickstart training step's time goes, and what each size lever costs.

    python benchmarks/bench_quickstart.py                 # the lever table (about 1 min on 2 cores)
    python benchmarks/bench_quickstart.py --profile       # + op-level profile of the quickstart's step

One optimizer step of the tiny DEKR (``hrnet_tiny``, 16 heatmap channels) with the DEKR loss and Adam,
on random images and targets shaped like the quickstart's, for each (input size, offset-branch width
``channels_per_keypoint``, batch) row: seconds per step and milliseconds per training image, with the
given number of torch threads. ``--profile`` prints torch.profiler's table for the configuration in
``conf/experiment/quickstart.yaml`` and the one before it (size 256, width 8, batch 8). The loader row
times the quickstart's own data pipeline (synthetic images, augmentation, targets) in-process.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from timing import median_seconds, random_targets, training_step

from dekr.model import DEKR

ROWS = [  # (input size, channels_per_keypoint, batch)
    (256, 8, 8),
    (224, 8, 8),
    (192, 8, 8),
    (256, 6, 8),
    (256, 4, 8),
    (224, 4, 8),
    (256, 8, 4),
    (256, 6, 4),
    (256, 4, 4),
    (256, 4, 2),
]


def quickstart_step(size: int, width: int, batch: int):
    torch.manual_seed(0)
    net = DEKR(17, "hrnet_tiny", heatmap_channels=16, channels_per_keypoint=width, adaptive_impl="grid_sample")
    return training_step(net, torch.randn(batch, 3, size, size), random_targets(17, size, batch, "cpu"))


def loader_ms(root: Path, batch: int) -> float:
    """Milliseconds per training batch of the quickstart's pipeline in this process (1 thread)."""
    from hydra.utils import instantiate

    from dekr.config import compose_train
    from dekr.training import build_spec_and_codec

    cfg = compose_train([f"data.root={root}", "data.num_workers=0", f"data.batch_size={batch}"])
    spec, codec = build_spec_and_codec(cfg)
    dm = instantiate(cfg.data, _partial_=True)(keypoints=spec, codec=codec)
    dm.prepare_data()
    dm.setup("fit")
    batches = iter(dm.train_dataloader())
    next(batches)
    t0 = time.perf_counter()
    for _ in range(20):
        next(batches)
    return (time.perf_counter() - t0) / 20 * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--data-root", default="data/synthetic", help="the quickstart's generated images")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads\n")
    print("| input | offset width | batch | s / step | ms / image |")
    print("|---|---|---|---|---|")
    for size, width, batch in ROWS:
        seconds = median_seconds(quickstart_step(size, width, batch), args.repeats, warmup=2)
        print(f"| {size} | {width} | {batch} | {seconds:.3f} | {1000 * seconds / batch:.0f} |")
    root = Path(args.data_root)
    if (root / "synthetic_meta.json").is_file():
        torch.set_num_threads(1)
        print(f"\nloader (in process, 1 thread): {loader_ms(root, 4):.1f} ms per batch of 4")
        torch.set_num_threads(args.threads)
    else:
        print(f"\nloader: skipped ({root} holds no generated data; run `make quickstart` once)")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for size, width, batch in ((256, 8, 8), (256, 4, 4)):
            step = quickstart_step(size, width, batch)
            step()
            step()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    step()
            print(f"\n## profile: input {size}, offset width {width}, batch {batch} (3 steps)")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
