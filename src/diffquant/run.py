"""The Hydra entry point (`diffquant`): compose the config, run the pipeline, report errors in one line."""
from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from diffquant.config import register_configs, to_config
from diffquant.errors import DiffquantError


# The top-level conf/ of the checkout (the package is installed editable: `pip install -e .`).
@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parents[2] / "conf"), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Run one job; return eval/fid_cls for sweepers that optimize it."""
    from diffquant.pipeline import run_experiment

    try:
        results = run_experiment(to_config(cfg))
    except DiffquantError as exc:
        logging.getLogger("diffquant").error("%s", exc)
        print(f"diffquant: error: {exc}", file=sys.stderr)
        sys.exit(2)
    return results["metrics"]["eval/fid_cls"]


def main() -> None:
    """Console-script entry: register the schemas, then hand over to Hydra."""
    # torch 2.14 flags quantized tensor creation as deprecated on every int8 conversion; the README
    # says so once instead of a warning block per run. Tests keep seeing it.
    warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel", category=UserWarning)
    register_configs()
    hydra_main()


if __name__ == "__main__":
    main()
