"""The Python API: diffquant.calibration_pairs / quantize / save / load, against the CLI's own code paths."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import diffquant
from diffquant.config import to_config
from diffquant.diffusion.config import build_diffusion, build_sampler
from diffquant.errors import DiffquantError
from diffquant.models.unet import UNet
from diffquant.pipeline import CachedCalibration
from diffquant.quant.api import RECIPE_ATTR, quant_settings
from diffquant.quant.engine import resolve_int8_numerics
from diffquant.quant.execution.scripted import ScriptedInt8

SRC = str(Path(diffquant.__file__).resolve().parents[1])


def tiny_unet() -> UNet:
    return UNet(base_channels=8, channel_mults=(1, 2), image_size=8, groups=4).eval()


@pytest.fixture(scope="module")
def tiny() -> tuple[UNet, diffquant.quant.calibration.CalibrationData]:
    torch.manual_seed(0)
    model = tiny_unet()
    return model, diffquant.calibration_pairs(model, shape=(1, 8, 8), steps=10, num_samples=8, timesteps=5)


@pytest.fixture(scope="module")
def int8(tiny) -> torch.nn.Module:
    """The default quantization of the tiny model (real int8 on this machine's exact grids), quantized once."""
    return diffquant.quantize(*tiny)


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()))


def test_calibration_pairs_equal_the_cli_pairs(compose_cfg, tmp_path, tiny) -> None:
    model, _ = tiny
    cfg = to_config(compose_cfg("sampler.steps=10", "quant.calib.num_samples=8", "quant.calib.timesteps=5"))
    sample = build_sampler(cfg.sampler, build_diffusion(cfg.diffusion))
    cli = CachedCalibration(cfg, tmp_path, lambda **kw: sample(model, **kw), 1, 8).get()
    api = diffquant.calibration_pairs(model, shape=(1, 8, 8), steps=10, num_samples=8, timesteps=5, seed=cfg.seed)
    torch.testing.assert_close(api.x, cli.x, rtol=0, atol=0)
    assert torch.equal(api.t, cli.t) and len(api.t.unique()) == 5


@pytest.mark.parametrize("backend", ["fbgemm", "x86_inductor"])
def test_settings_default_to_what_the_cli_composes(compose_cfg, backend) -> None:
    cli = to_config(compose_cfg(f"backend={backend}")).quant
    assert quant_settings("ptq", backend, {}) == cli
    qat = to_config(compose_cfg("quant=qat", "quant.qat.steps=9", "quant.weight_bits=4")).quant
    assert quant_settings("qat", "fbgemm", {"qat": {"steps": 9}, "weight_bits": 4}) == qat


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"wieght_bits": 4}, "quant.wieght_bits=4 is not a setting; did you mean quant.weight_bits?"),
        ({"weight_bits": 1}, "quant.weight_bits"),
        ({"observer": "minmx"}, "quant.observer"),
        ({"recon": {"method": "gptq"}}, "quant.recon.method"),
    ],
)
def test_bad_settings_get_the_cli_message(compose_cfg, tiny, settings, message) -> None:
    with pytest.raises(DiffquantError, match=message.replace("?", r"\?")):
        diffquant.quantize(tiny[0], tiny[1], **settings)


def test_quantize_runs_int8_and_leaves_the_model(tiny, int8) -> None:
    model, cal = tiny
    torch.manual_seed(0)  # the fixture's seed: `before` is the model as built, before quantize saw it
    before = tiny_unet().state_dict()
    qmodel = int8
    recipe = getattr(qmodel, RECIPE_ATTR)
    assert recipe["execution"] == "int8" and isinstance(qmodel, ScriptedInt8)
    assert recipe["int8_scheme"] == resolve_int8_numerics("fbgemm", "auto").scheme.name  # this machine's exact grids
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    x, t = cal.x[:16], cal.t[:16]
    with torch.no_grad():
        assert sqnr_db(model(x, t), qmodel(x, t)) > 20


@contextmanager
def user_net_class(folder: Path) -> Iterator[type]:
    """A UNet subclass in a module only this process can import (while the context lasts: saving pickles by name)."""
    (folder / "user_net.py").write_text("from diffquant.models.unet import UNet\n\n\nclass UserNet(UNet):\n    pass\n")
    sys.path.insert(0, str(folder))
    try:
        from user_net import UserNet

        yield UserNet
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("user_net", None)


@pytest.fixture(scope="module")
def fresh_loads(tiny, int8, tmp_path_factory) -> dict[str, list[str]]:
    """Each kind of model saved here, then loaded in one fresh Python process: its class and whether its outputs match."""
    model, cal = tiny
    folder = tmp_path_factory.mktemp("fresh")
    (folder / "pkg").mkdir()
    with user_net_class(folder / "pkg") as user_net:  # importable while saving, not in the loading process
        torch.manual_seed(0)
        user = user_net(base_channels=8, channel_mults=(1, 2), image_size=8, groups=4).eval()
        user_cal = diffquant.calibration_pairs(user, shape=(1, 8, 8), steps=10, num_samples=8, timesteps=5)
        cases = {
            "int8": (int8, cal.x[:8], cal.t[:8]),
            "fakequant-w4": (diffquant.quantize(model, cal, weight_bits=4), cal.x[:8], cal.t[:8]),
            "weight-only": (diffquant.quantize(model, cal, act_bits=None), cal.x[:8], cal.t[:8]),
            # the loading process cannot import UserNet: the frozen graph traced at quantize's batch (40 pairs) serves
            "no-class": (diffquant.quantize(user, user_cal), user_cal.x[:40], user_cal.t[:40]),
        }
        for name, (qmodel, x, t) in cases.items():
            with torch.no_grad():
                torch.save({"x": x, "t": t, "out": qmodel(x, t)}, folder / f"{name}_ref.pt")
            diffquant.save(qmodel, folder / f"{name}.pt")
    script = textwrap.dedent(f"""
        import torch, diffquant
        for name in {list(cases)!r}:
            ref = torch.load({str(folder)!r} + f"/{{name}}_ref.pt")
            model = diffquant.load({str(folder)!r} + f"/{{name}}.pt")
            with torch.no_grad():
                print(name, type(model).__name__, torch.equal(model(ref["x"], ref["t"]), ref["out"]))
    """)
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return {line.split()[0]: line.split()[1:] for line in run.stdout.splitlines() if line.split()[0] in cases}


@pytest.mark.parametrize(
    ("name", "kind"),
    [("int8", "ScriptedInt8"), ("fakequant-w4", "UNet"), ("weight-only", "UNet"), ("no-class", "FrozenGraphs")],
)
@pytest.mark.slow
def test_a_saved_model_loads_bit_for_bit_in_a_fresh_process(fresh_loads, name, kind) -> None:
    assert fresh_loads[name] == [kind, "True"]


def test_a_qat_model_saves_and_loads(tiny, tmp_path) -> None:
    model, cal = tiny
    qmodel = diffquant.quantize(model, cal, method="qat", weight_bits=4, qat={"steps": 3, "data_free": True, "batch_size": 8})
    assert getattr(qmodel, RECIPE_ATTR)["quant"]["method"] == "qat"
    diffquant.save(qmodel, tmp_path / "qat.pt")
    loaded = diffquant.load(tmp_path / "qat.pt")
    with torch.no_grad():
        assert torch.equal(loaded(cal.x[:4], cal.t[:4]), qmodel(cal.x[:4], cal.t[:4]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"torch": "1.13.1"}, "was saved with torch 1.13.1, this is torch"),
        ({"engine": "onednn_vnni9"}, "holds an int8 model for engine onednn_vnni9, which this machine lacks"),
        ({"format": "other"}, "is not a diffquant quantized-model file"),
    ],
)
def test_load_refuses_files_this_machine_cannot_run(int8, tmp_path, change, message) -> None:
    diffquant.save(int8, tmp_path / "q.pt")
    payload = torch.load(tmp_path / "q.pt", weights_only=True)
    torch.save({**payload, **change}, tmp_path / "q.pt")
    with pytest.raises(DiffquantError, match=message):
        diffquant.load(tmp_path / "q.pt")


def test_load_of_a_truncated_file_is_one_line_and_save_never_leaves_half_a_file(int8, tmp_path) -> None:
    path = diffquant.save(int8, tmp_path / "q.pt")
    whole = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DiffquantError, match=r"cut\.pt is not a diffquant quantized-model file \("):
        diffquant.load(tmp_path / "cut.pt")
    with pytest.raises(DiffquantError):
        diffquant.save(torch.nn.Linear(2, 2), path)  # refused (no recipe): the good file stays as it was
    assert path.read_bytes() == whole


def test_save_refuses_a_model_without_a_recipe(tiny, tmp_path) -> None:
    with pytest.raises(DiffquantError, match="carries no recipe"):
        diffquant.save(tiny[0], tmp_path / "q.pt")
    assert not (tmp_path / "q.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["x86", "qnnpack"])
def test_int8_models_of_the_other_eager_engines_round_trip(tiny, tmp_path, engine) -> None:
    model, cal = tiny
    qmodel = diffquant.quantize(model, cal, backend=engine)
    assert getattr(qmodel, RECIPE_ATTR)["execution"] == "int8"
    diffquant.save(qmodel, tmp_path / "q.pt")
    torch.backends.quantized.engine = "fbgemm"  # load selects the file's engine itself
    try:
        loaded = diffquant.load(tmp_path / "q.pt")
        assert torch.backends.quantized.engine == engine
        with torch.no_grad():
            assert torch.equal(loaded(cal.x[:8], cal.t[:8]), qmodel(cal.x[:8], cal.t[:8]))
    finally:
        torch.backends.quantized.engine = "fbgemm"
