"""quant._target_: the built-in method factories and a user's own method (tests/helpers/custom_method.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffquant.config import to_config
from diffquant.errors import DiffquantError
from diffquant.pipeline import build_strategy
from diffquant.quant.engine import resolve_int8_numerics
from diffquant.quant.strategies import FP32Strategy, PTQStrategy, QATStrategy
from helpers.custom_method import RoundWeights, round_per_channel


@pytest.mark.parametrize(
    ("overrides", "kind"), [(("quant=fp32",), FP32Strategy), ((), PTQStrategy), (("quant=qat",), QATStrategy)]
)
def test_each_quant_file_names_its_factory(compose_cfg, overrides, kind) -> None:
    strategy = build_strategy(to_config(compose_cfg(*overrides)), resolve_int8_numerics("fbgemm", "auto"))
    assert type(strategy) is kind


def test_the_factory_reads_the_group_settings(compose_cfg) -> None:
    cfg = to_config(compose_cfg("quant=qat", "quant.qat.steps=7", "quant.weight_bits=4", "train.log_every=3"))
    strategy = build_strategy(cfg, resolve_int8_numerics("fbgemm", "auto"))
    assert (strategy.settings.steps, strategy.settings.log_every, strategy.plan.spec.weight_bits) == (7, 3, 4)


def test_a_user_method_quantizes_as_its_reference_and_leaves_the_model(compose_cfg) -> None:
    cfg = to_config(compose_cfg("quant._target_=helpers.custom_method.round_weights", "quant.weight_bits=3"))
    strategy = build_strategy(cfg, resolve_int8_numerics("fbgemm", "auto"))
    assert isinstance(strategy, RoundWeights) and strategy.bits == 3
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 2 * 2, 3))
    before = [p.clone() for p in model.parameters()]
    outcome = strategy.quantize(model, None)  # this method needs no context
    assert outcome.execution == "fakequant" and outcome.wrapped_layers == ["0", "2"]
    torch.testing.assert_close(outcome.model[0].weight, round_per_channel(before[0], 3), rtol=0, atol=0)
    assert len(torch.unique(outcome.model[2].weight[0])) <= 8  # 3 bits: at most 8 levels per channel
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("helpers.custom_method.no_such_method", "module 'helpers.custom_method' has no attribute 'no_such_method'"),
        ("no_such_pkg.method", "quant._target_=no_such_pkg.method: no module named 'no_such_pkg'"),
    ],
)
def test_a_method_target_that_does_not_import_is_one_line(compose_cfg, target, message) -> None:
    with pytest.raises(DiffquantError, match=message):
        to_config(compose_cfg(f"quant._target_={target}"))


def test_a_factory_that_returns_no_strategy_is_refused(compose_cfg) -> None:
    cfg = to_config(compose_cfg("quant._target_=helpers.custom_method.not_a_strategy"))
    with pytest.raises(DiffquantError, match="returned a int; expected an object with quantize"):
        build_strategy(cfg, resolve_int8_numerics("fbgemm", "auto"))


def test_the_method_types_stay_importable_from_their_earlier_module() -> None:
    """A user's method written against the earlier layout imports QuantContext / QuantOutcome from strategies."""
    from diffquant.quant import plan, strategies

    assert (strategies.QuantContext, strategies.QuantOutcome, strategies.QuantPlan) == (
        plan.QuantContext,
        plan.QuantOutcome,
        plan.QuantPlan,
    )
    assert {"QuantContext", "QuantOutcome", "PTQStrategy"} <= set(strategies.__all__)
