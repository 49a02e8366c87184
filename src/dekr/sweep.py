"""Collect a Hydra multirun folder into one table: swept values vs AP.

    python -m dekr.sweep outputs/train/multirun/ablation_branches [--csv table.csv] [--sort AP]

Each run folder holds ``summary.json`` (written by ``src/train.py``) and Hydra's
``.hydra/overrides.yaml``; runs that did not finish are listed with their status.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import yaml


def collect(sweep_dir: str | Path) -> list[dict]:
    """One row per run folder: the overrides that vary across runs, best AP, last AP/AR, status."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder not found: {sweep_dir}")
    rows = []
    for run in sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()):
        overrides = {}
        ov_file = run / ".hydra" / "overrides.yaml"
        if ov_file.is_file():
            for item in yaml.safe_load(ov_file.read_text()) or []:
                key, _, value = str(item).partition("=")
                overrides[key.lstrip("+~")] = value
        summary_file = run / "summary.json"
        row: dict = {"run": run.name, **overrides}
        if summary_file.is_file():
            s = json.loads(summary_file.read_text())
            row.update(
                {
                    "status": "done",
                    "best_AP": s.get("best_AP"),
                    "AP": s.get("val", {}).get("val/AP"),
                    "AR": s.get("val", {}).get("val/AR"),
                    "epochs": s.get("epochs"),
                }
            )
        else:
            row["status"] = "unfinished"
        rows.append(row)
    if not rows:
        raise ValueError(f"no Hydra runs (folders with .hydra/) under {sweep_dir}")
    keys = {k for r in rows for k in r if k not in ("run", "status", "best_AP", "AP", "AR", "epochs")}
    varying = sorted(k for k in keys if len({str(r.get(k)) for r in rows}) > 1)
    return [
        {
            "run": r["run"],
            **{k: r.get(k) for k in varying},
            "best_AP": r.get("best_AP"),
            "AP": r.get("AP"),
            "AR": r.get("AR"),
            "epochs": r.get("epochs"),
            "status": r["status"],
        }
        for r in rows
    ]


def format_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dekr.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir")
    parser.add_argument("--csv", help="also write the table as CSV")
    parser.add_argument("--sort", default="best_AP", help="column to sort by (descending)")
    args = parser.parse_args(argv)
    try:
        rows = collect(args.sweep_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.sort in rows[0]:
        rows.sort(key=lambda r: (r.get(args.sort) is None, -(r.get(args.sort) or 0.0)))
    print(format_table(rows))
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
