"""The Hydra entry point (`diffquant`): compose the config, run the pipeline, report errors in one line."""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from diffquant.config import register_configs, to_config
from diffquant.errors import DiffquantError
from diffquant.training.distributed import init_distributed, shutdown


# The configs ship inside the package (package data); the checkout's top-level conf/ links here.
@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Run one job; return eval/fid_cls for sweepers that optimize it (NaN for a failed sweep job)."""
    from diffquant.sweep.job import JobInfo, run_job

    # torch 2.14 flags quantized tensor creation as deprecated on every int8 conversion; the README
    # says so once instead of a warning block per run. Set here, in the job: sweep workers are
    # separate processes. Tests keep seeing it.
    warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel", category=UserWarning)
    hc = HydraConfig.get()
    job = JobInfo(
        dir=Path(hc.runtime.output_dir),
        overrides=list(hc.overrides.task),
        multirun=hc.mode == RunMode.MULTIRUN,
        seed=cfg.seed,
        skip_done=cfg.sweep.skip_done,
        size_budget_bytes=cfg.sweep.size_budget_bytes,
    )
    info = init_distributed(cfg.device)  # torchrun: join the process group; else rank 0 of 1
    try:
        if not info.is_main:  # the other ranks train with rank 0 and leave the run's files to it
            validate_then_run(cfg, job.overrides)
            return None
        return run_job(lambda: validate_then_run(cfg, job.overrides), job)
    except DiffquantError as exc:  # a single run only: run_job records a sweep job's failure and returns NaN
        logging.getLogger("diffquant").error("%s", exc)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":  # the debug switch: the traceback as well as the line
            traceback.print_exc()
        print(f"diffquant: error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        shutdown()


def validate_then_run(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Validate the config before importing the pipeline: a bad setting fails without paying for those imports.

    `overrides` (the command line's) tell a `model.` / `dataset.` key typed there from one inherited.
    """
    config = to_config(cfg, overrides)
    from diffquant.pipeline import run_experiment

    return run_experiment(config)


def main() -> None:
    """Console-script entry: register the schemas, then hand over to Hydra."""
    register_configs()
    hydra_main()


if __name__ == "__main__":
    main()
