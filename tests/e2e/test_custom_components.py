"""A user's own model and data set through the real CLI, chosen by `_target_` (no diffquant code changed).

`helpers.custom_model` stands for a user package: the CLI subprocess finds it on PYTHONPATH. The runs
share one cache, so the FP32 model trains once; `experiment=tiny` keeps each run small, and its UNet
fields are inherited keys the user model ignores.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from helpers.cli_fork import cli_server

pytestmark = pytest.mark.slow  # real CLI processes: the inner loop skips them with -m 'not slow'

TESTS_DIR = Path(__file__).resolve().parents[1]
USER_MODEL = ("model._target_=helpers.custom_model.SkipNet", "+model.width=16")
USER_DATA = ("dataset._target_=helpers.custom_model.load_blobs",)


def diffquant(tmp: Path, run_dir: str, *overrides: str) -> subprocess.CompletedProcess[str]:
    """`diffquant experiment=tiny ...` into tmp/run_dir with the shared cache tmp/cache (helpers/cli_fork.CliServer)."""
    argv = ["experiment=tiny", f"hydra.run.dir={tmp / run_dir}", f"paths.cache_dir={tmp / 'cache'}", *overrides]
    path = os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    return cli_server().run(argv, cwd=tmp, env=env)  # a forked child of the session's warm CLI driver


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("custom_components")


def check_run(tmp: Path, run_dir: str, proc: subprocess.CompletedProcess[str], method: str, backend: str) -> dict:
    """The results and TensorBoard events of a finished run; int8 execution with the float layers counted honestly."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp / run_dir / "results.json").read_text())
    assert (results["method"], results["backend"], results["execution"]) == (method, backend, "int8")
    metrics = results["metrics"]
    for key in ("eval/fid_cls", "eval/fid_cls_fp32", "eval/eps_rel_err", "eval/psnr_vs_fp32", "model/size_bytes"):
        assert math.isfinite(metrics[key]), key
    # ConvTranspose2d, nn.MultiheadAttention and the input / output layers stay float: int8 carries part of the MACs
    assert 0.5 < metrics["model/int8_mac_fraction"] == metrics["model/quantized_mac_fraction"] < 1.0
    assert metrics["model/size_bytes"] < metrics["model/size_bytes_fp32"]
    assert list((tmp / run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert "Kept in float, never called as modules (their parent reads the weights): attn.out_proj" in proc.stdout
    return results


def test_user_model_and_loader_run_ptq_int8_on_fbgemm(shared: Path) -> None:
    proc = diffquant(shared, "ptq_fbgemm", *USER_MODEL, *USER_DATA, "quant=ptq", "backend=fbgemm")
    results = check_run(shared, "ptq_fbgemm", proc, "ptq", "fbgemm")
    assert "model._target_=helpers.custom_model.SkipNet does not take base_channels" in proc.stdout  # tiny's UNet keys
    assert "Data load_blobs (helpers.custom_model.load_blobs): 256 train / 64 held-out images of 1x8x8" in proc.stdout
    assert (shared / "cache" / "fp32" / results["fp32_cache_key"] / "model.pt").is_file()


@pytest.mark.parametrize(("quant", "backend"), [("ptq", "x86"), ("ptq", "qnnpack"), ("qat", "fbgemm")])
def test_user_model_and_loader_on_other_backends_and_qat(shared: Path, quant: str, backend: str) -> None:
    run_dir = f"{quant}_{backend}"
    qat = ("quant.qat.steps=4", "quant.qat.freeze_observer_step=2") if quant == "qat" else ()
    proc = diffquant(shared, run_dir, *USER_MODEL, *USER_DATA, f"quant={quant}", f"backend={backend}", *qat)
    check_run(shared, run_dir, proc, quant, backend)


def test_a_model_file_in_a_search_path_folder_is_selectable(shared: Path) -> None:
    """`hydra.searchpath=[file://my_conf]` adds my_conf/model/my_unet.yaml as `model=my_unet`."""
    folder = shared / "my_conf" / "model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my_unet.yaml").write_text("_target_: helpers.custom_model.SkipNet\nname: my_unet\nwidth: 16\ncheckpoint: null\n")
    searchpath = f"hydra.searchpath=[file://{shared / 'my_conf'}]"
    proc = diffquant(shared, "searchpath", searchpath, "model=my_unet", *USER_DATA, "quant=fp32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((shared / "searchpath" / "results.json").read_text())
    assert results["execution"] == "fp32" and math.isfinite(results["metrics"]["eval/fid_cls"])
    config = (shared / "searchpath" / ".hydra" / "config.yaml").read_text()
    assert "_target_: helpers.custom_model.SkipNet" in config and "name: my_unet" in config
