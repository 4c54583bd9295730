"""`diffquant-summary DIR`: rebuild summary.csv / .md / .png from any folder of runs (a sweep, or many)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from diffquant.sweep.summary import find_job_dirs, write_summary


def main(argv: Optional[list[str]] = None) -> None:
    """Parse the arguments, write the summary, print the markdown table; exit 2 on bad input."""
    parser = argparse.ArgumentParser(prog="diffquant-summary", description=__doc__)
    parser.add_argument("dir", type=Path, help="a folder holding runs (searched recursively), e.g. a sweep dir")
    parser.add_argument("--out", type=Path, default=None, help="where to write the summary files (default: DIR)")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        print(f"diffquant-summary: error: {args.dir} is not a folder", file=sys.stderr)
        sys.exit(2)
    if not find_job_dirs(args.dir):
        print(
            f"diffquant-summary: error: no runs under {args.dir} (looked for .hydra/overrides.yaml, results.json, status.json)",
            file=sys.stderr,
        )
        sys.exit(2)
    _, paths = write_summary(args.dir, args.out)
    print(paths[1].read_text(), end="")
    print("\n".join(f"wrote {p}" for p in paths))


if __name__ == "__main__":
    main()
