"""The tiny CLI run of the end-to-end tests: `diffquant experiment=tiny ...` through the session's warm CLI driver."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from helpers import TINY_OVERRIDES
from helpers.cli_fork import cli_server


def diffquant(tmp_path: Path, *overrides: str, run_dir: str = "run") -> subprocess.CompletedProcess[str]:
    """Run the CLI into tmp_path with the tiny model; the cache is shared by runs of one test.

    Each call is its own process, forked from one interpreter that imported the CLI once
    (helpers/cli_fork.py); `test_forked_calls_match_a_plain_cli_process` pins that it behaves as
    `python -m diffquant.run`.
    """
    flags = [o for o in overrides if o.startswith("-")]
    overrides = tuple(o for o in overrides if not o.startswith("-"))
    argv = [
        *flags,
        f"hydra.run.dir={tmp_path / run_dir}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *TINY_OVERRIDES,
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread is faster and leaves a core to pytest
    return cli_server().run(argv, cwd=tmp_path, env=env)
