"""The TensorBoard layout helpers: HParams flattening, the FP32-vs-quantized overlay layout."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from diffquant.config import Config
from diffquant.reporting.dashboards import flatten, hparams_of, overlay_layout


def test_flatten_joins_keys_and_stringifies_lists_and_none() -> None:
    assert flatten("q", {"a": 1, "b": {"c": [1, 2], "d": None}, "e": "x"}) == {
        "q.a": 1,
        "q.b.c": "[1, 2]",
        "q.b.d": "None",
        "q.e": "x",
    }


def test_hparams_hold_every_quantization_and_backend_knob() -> None:
    cfg = Config()
    header = {"method": "ptq", "execution": "int8", "reduce_range": False}
    params = hparams_of(header, cfg.quant, cfg.backend, cfg.model, cfg.dataset, cfg.sampler, cfg.eval)
    expected = set(flatten("quant", dataclasses.asdict(cfg.quant))) | set(flatten("backend", dataclasses.asdict(cfg.backend)))
    assert expected <= set(params)
    assert {"quant.weight_bits", "quant.act_bits", "quant.observer", "quant.calib.timesteps", "quant.skip"} <= set(params)
    assert params["run.execution"] == "int8" and params["eval.fid.extractor"] == "classifier"
    assert (params["eval.seeds"], params["eval.bootstrap"]) == ("[1234]", 1000)
    assert all(isinstance(v, (int, float, str, bool)) for v in params.values())


def test_overlay_pairs_each_metric_with_its_fp32_twin() -> None:
    tags = [
        "eval/fid_cls",
        "eval/fid_cls_fp32",
        "eval/eps_rel_err",
        "perf/sample_s",
        "perf/sample_s_fp32",
        "eval/traj_eps_mse_by_t",
        "eval/eps_loss_by_t",
        "eval/eps_loss_by_t_fp32",
    ]
    layout = overlay_layout(tags)
    assert layout["FP32 vs quantized"] == {
        "eval/eps_loss_by_t": ["eval/eps_loss_by_t", "eval/eps_loss_by_t_fp32"],
        "eval/fid_cls": ["eval/fid_cls", "eval/fid_cls_fp32"],
        "perf/sample_s": ["perf/sample_s", "perf/sample_s_fp32"],
    }
    assert layout["Where the error comes from"] == {"eval/traj_eps_mse_by_t": ["eval/traj_eps_mse_by_t"]}


def test_intervals_become_low_and_high_scalars_charted_with_their_delta() -> None:
    from diffquant.evaluation.uncertainty import interval_scalars

    metrics = {
        "eval/fid_cls_delta": 0.2,
        "eval/fid_cls_delta_ci95": [0.1, 0.3],
        "eval/psnr_vs_fp32": 30.0,
        "eval/psnr_vs_fp32_ci95": [29.5, 30.5],
        "eval/is_cls_delta_ci95": None,
    }
    flat = interval_scalars(metrics)
    assert flat == {
        "eval/fid_cls_delta": 0.2,
        "eval/fid_cls_delta_ci95_low": 0.1,
        "eval/fid_cls_delta_ci95_high": 0.3,
        "eval/psnr_vs_fp32": 30.0,
        "eval/psnr_vs_fp32_ci95_low": 29.5,
        "eval/psnr_vs_fp32_ci95_high": 30.5,
        "eval/is_cls_delta_ci95": None,
    }
    assert overlay_layout(list(flat))["Paired delta vs FP32 (95% interval)"] == {
        "eval/fid_cls_delta": ["eval/fid_cls_delta", "eval/fid_cls_delta_ci95_low", "eval/fid_cls_delta_ci95_high"],
        "eval/psnr_vs_fp32": ["eval/psnr_vs_fp32", "eval/psnr_vs_fp32_ci95_low", "eval/psnr_vs_fp32_ci95_high"],
    }


@pytest.mark.parametrize(("count", "channels", "nrow"), [(16, 1, 8), (5, 3, 4), (3, 1, 8)])
def test_image_grids_lay_out_as_torchvision_make_grid(count, channels, nrow) -> None:
    from torchvision.utils import make_grid

    from diffquant.reporting.tensorboard import to_grid

    images = torch.rand(count, channels, 6, 5, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected = make_grid((images + 1) / 2, nrow=nrow, padding=1, pad_value=1.0)
    torch.testing.assert_close(to_grid(images, nrow=nrow), expected, rtol=0, atol=0)


def test_png_files_read_back_as_torchvision_decodes_them(tmp_path) -> None:
    import matplotlib.pyplot as plt
    from torchvision.io import ImageReadMode, decode_png, read_file

    from diffquant.reporting.dashboards import png_tensor

    plt.imsave(tmp_path / "x.png", np.random.default_rng(0).random((7, 9, 3)))
    expected = decode_png(read_file(str(tmp_path / "x.png")), mode=ImageReadMode.RGB).float() / 255
    torch.testing.assert_close(png_tensor(tmp_path / "x.png"), expected, rtol=0, atol=1e-6)
