"""CLI: python -m synthetic.demo OUT_DIR [--seed N] [--no-defects] [--entities N] [--mentions N]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .dataset import generate_demo_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synthetic.demo",
                                     description="Generate the deterministic mmoe-mel demo dataset (MIMIC layout).")
    parser.add_argument("out_dir", type=Path, help="directory to create or replace")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-defects", action="store_true", help="leave out the deliberately broken files")
    parser.add_argument("--entities", type=int, default=300, help="number of KB entities")
    parser.add_argument("--mentions", type=int, default=900, help="number of mentions over all splits")
    args = parser.parse_args(argv)
    try:
        summary = generate_demo_dataset(args.out_dir, seed=args.seed, num_entities=args.entities,
                                        num_mentions=args.mentions, defects=not args.no_defects)
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary.paragraph())
    return 0


if __name__ == "__main__":
    sys.exit(main())
