"""``python -m dekr.rescore``: see :mod:`dekr.rescore.cli`."""

import sys

from dekr.rescore.cli import main

if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
