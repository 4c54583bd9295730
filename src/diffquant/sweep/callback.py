"""The Hydra callback that writes the sweep summary when a multirun ends (registered in conf/hydra/default.yaml)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from diffquant.sweep.summary import SIG_VS_FP32, write_summary


class SummaryCallback(Callback):
    """On multirun end: `<sweep_dir>/summary.csv`, `summary.md` and `summary.png`, one row per job."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        log = logging.getLogger("diffquant")
        try:
            records, paths = write_summary(sweep_dir)
        except Exception as exc:  # noqa: BLE001 - the jobs' results are on disk; `diffquant-summary` can retry
            log.exception("Could not write the sweep summary of %s", sweep_dir)
            print(
                f"diffquant: the sweep summary failed ({type(exc).__name__}: {exc}); retry with: diffquant-summary {sweep_dir}",
                file=sys.stderr,
            )
            return
        failed = [r.job for r in records if r.status != "ok"]
        message = f"Sweep summary: {len(records)} jobs, {len(records) - len(failed)} ok"
        message += f", failed or incomplete: {', '.join(failed)}" if failed else ""
        marked = [r.job for r in records if SIG_VS_FP32 in r.sig]
        message += f"; fid_cls differs from FP32 beyond its 95 % interval in {len(marked)}: {', '.join(marked)}" if marked else ""
        log.info("%s -> %s", message, ", ".join(str(p) for p in paths))
