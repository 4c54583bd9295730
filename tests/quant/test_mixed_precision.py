"""Mixed precision under a budget: an optimal solver, budgets met, sensitive layers kept wide, a reusable plan."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from torch import nn

import diffquant
from diffquant.config import to_config
from diffquant.errors import DiffquantError
from diffquant.quant.api import quant_settings
from diffquant.quant.engine import resolve_int8_numerics, set_engine
from diffquant.quant.methods import MethodInputs, ptq, qat
from diffquant.quant.mixed_precision import Budget, Layer, choose_bits, layer_bytes, solve
from diffquant.quant.plan import QuantOutcome
from diffquant.quant.qconfig import QuantSpec
from helpers import calibration_context, random_pairs

SETTINGS = {"observer": "minmax", "dynamic_input": False, "bias_correction": 0, "sensitivity": False, "keep_float": []}
WIDTH = 64  # every layer 64 x 64: at 4 bits 2048 + 64 scales x 8 = 2560 bytes, at 8 bits 4608
FIXED = 4 * WIDTH * 4  # the four biases, float32
MIN_BYTES = FIXED + 4 * 2560


class OneSensitive(nn.Module):
    """Four equal Linears; `fc.1` has one weight per output row 30x the rest: its 4-bit grid rounds the others to 0."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Sequential(*(nn.Linear(WIDTH, WIDTH) for _ in range(4)))
        with torch.no_grad():
            self.fc[1].weight[:, 7] *= 30.0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1) + t.float().view(-1, 1) / 1000
        for layer in self.fc:
            h = torch.tanh(layer(h))
        return h.view_as(x)


def quantized(method: str = "ptq", **settings: object) -> QuantOutcome:
    """OneSensitive quantized by the strategy `quant=<method>` builds from these settings, on 64 random pairs."""
    set_engine("fbgemm")
    # quant.symmetric pinned to the default's choice on a VNNI CPU (symmetric when quant.weight_bits is 8): the
    # default follows the int8 scheme (affine on AVX2's w7a8), and these expectations should not
    symmetric = settings.get("weight_bits", 8) == 8
    quant = quant_settings(method, "fbgemm", {**SETTINGS, "symmetric": symmetric, **settings})
    factory = {"ptq": ptq, "qat": qat}[method]
    strategy = factory(MethodInputs(quant, "fbgemm", "auto", resolve_int8_numerics("fbgemm", "auto"), torchscript=False))
    data = random_pairs(64, (1, 8, 8), seed=1)
    return strategy.quantize(OneSensitive().eval(), calibration_context(data.x, data.t))


def grid_width(quant_min: int, quant_max: int) -> int:
    """Bits of an integer grid [quant_min, quant_max]."""
    return int(quant_max - quant_min + 1).bit_length() - 1


def eight_bit_width() -> int:
    """Bits of the grid an 8-bit layer gets on this machine's int8 scheme: 7 on w7a8 (the self-test's pick without VNNI)."""
    scheme = resolve_int8_numerics("fbgemm", "auto").scheme
    return grid_width(*QuantSpec(weight_bits=8, reduce_weight_range=scheme.reduce_weight_range).weight_range())


def model_bits(outcome: QuantOutcome) -> dict[str, int]:
    """Each wrapped layer's weight width, read off its fake quantizer's grid; the 8-bit layers' grid counts as 8."""
    narrowed = eight_bit_width()
    bits = {}
    for name in outcome.wrapped_layers:
        fq = outcome.model.get_submodule(name).module.weight_fake_quant
        width = grid_width(fq.quant_min, fq.quant_max)
        bits[name] = 8 if width == narrowed else width
    return bits


def brute_force(costs: list[list[int]], errors: list[list[float]], budget: int) -> float:
    feasible = (
        sum(e[k] for e, k in zip(errors, pick))
        for pick in itertools.product(*(range(len(row)) for row in costs))
        if sum(c[k] for c, k in zip(costs, pick)) <= budget
    )
    return min(feasible)


@pytest.mark.parametrize("seed", range(6))
def test_the_solver_finds_the_brute_force_optimum(seed: int) -> None:
    rng = random.Random(seed)
    costs = [[rng.randint(1, 40) for _ in range(3)] for _ in range(7)]
    errors = [[rng.random() for _ in range(3)] for _ in range(7)]
    low, high = sum(map(min, costs)), sum(map(max, costs))
    for budget in (low, rng.randint(low, high), high):
        choice, exact = solve(costs, errors, budget)
        assert exact
        assert sum(c[k] for c, k in zip(costs, choice)) <= budget
        assert sum(e[k] for e, k in zip(errors, choice)) == pytest.approx(brute_force(costs, errors, budget), abs=1e-12)
        coarse, exact = solve(costs, errors, budget, max_cells=8)  # costs rounded up to a coarse grid: still feasible
        assert sum(c[k] for c, k in zip(costs, coarse)) <= budget
        assert sum(e[k] for e, k in zip(errors, coarse)) >= brute_force(costs, errors, budget) - 1e-12


def test_bigger_budgets_never_cost_loss_and_stay_within_budget() -> None:
    rng = random.Random(3)
    layers = []
    for i in range(8):
        numel, base = rng.choice([64, 256, 1024, 4096]), rng.random()
        layers.append(Layer(f"l{i}", numel, 8, tuple(base * 4.0 ** -(b - 2) for b in (2, 4, 6, 8))))
    fixed = 100
    low = fixed + sum(layer_bytes(la.numel, 8, 2) for la in layers)
    high = fixed + sum(layer_bytes(la.numel, 8, 8) for la in layers)
    previous = None
    for budget in range(low, high + 1, (high - low) // 25):
        plan = choose_bits(layers, Budget(budget, None, (2, 4, 6, 8)), fixed)
        assert plan.min_bytes == low and plan.achieved_bytes <= budget and plan.exact
        if previous is not None:
            assert plan.est_loss <= previous.est_loss + 1e-15
            assert plan.avg_weight_bits >= previous.avg_weight_bits
        previous = plan
    assert previous is not None and set(choose_bits(layers, Budget(high, None, (2, 4, 6, 8)), fixed).layer_bits.values()) == {8}


def test_the_sensitive_layer_gets_the_one_upgrade_the_budget_allows() -> None:
    outcome = quantized(size_budget_bytes=MIN_BYTES + 4608 - 2560)
    plan = outcome.mixed_precision
    assert plan["layer_bits"] == {"fc.0": 4, "fc.1": 8, "fc.2": 4, "fc.3": 4}
    assert (plan["min_bytes"], plan["achieved_bytes"], plan["avg_weight_bits"]) == (MIN_BYTES, MIN_BYTES + 2048, 5.0)
    errors = plan["layer_errors"]
    assert errors["fc.1"]["4"] > 10 * max(errors[n]["4"] for n in ("fc.0", "fc.2", "fc.3"))
    # 50x less error on [-128, 127]; each bit fewer (w7a8's [-64, 63] without VNNI) doubles the step: 4x the error
    assert all(e["8"] < e["4"] / (50 / 4 ** (8 - eight_bit_width())) for e in errors.values())
    assert plan["est_loss"] == pytest.approx(errors["fc.1"]["8"] + sum(errors[n]["4"] for n in ("fc.0", "fc.2", "fc.3")))
    assert model_bits(outcome) == plan["layer_bits"] and outcome.execution == "fakequant"


def test_an_average_width_picks_the_most_sensitive_layers_first() -> None:
    plan = quantized(avg_weight_bits=6, weight_bits=4).mixed_precision
    assert plan["budget_bytes"] is None and plan["budget_avg_bits"] == 6 and plan["avg_weight_bits"] == 6.0
    assert plan["layer_bits"]["fc.1"] == 8 and sorted(plan["layer_bits"].values()) == [4, 4, 8, 8]
    errs = {n: e["4"] - e["8"] for n, e in plan["layer_errors"].items()}  # what an upgrade saves
    assert {n for n, b in plan["layer_bits"].items() if b == 8} == set(sorted(errs, key=errs.get)[-2:])


def test_the_printed_plan_passed_back_as_layer_bits_gives_the_same_model(compose_cfg) -> None:
    chosen = quantized(size_budget_bytes=MIN_BYTES + 2 * 2048 + 100)
    plan = chosen.mixed_precision
    assert plan["achieved_bytes"] == MIN_BYTES + 2 * 2048
    override = OverridesParser.create().parse_override(f"+quant.layer_bits={layer_bits_text(plan)}")
    assert override.value() == plan["layer_bits"]
    cfg = to_config(compose_cfg("quant=ptq", f"+quant.layer_bits={layer_bits_text(plan)}"))
    assert cfg.quant.layer_bits == plan["layer_bits"]
    again = quantized(layer_bits=cfg.quant.layer_bits)
    assert model_bits(again) == model_bits(chosen) == plan["layer_bits"] and not again.mixed_precision
    size = FIXED + sum(layer_bytes(WIDTH * WIDTH, WIDTH, b) for b in model_bits(again).values())
    assert size == plan["achieved_bytes"]
    x, t = random_pairs(8, (1, 8, 8), seed=5).inputs()
    with torch.no_grad():
        assert torch.equal(again.model(x, t), chosen.model(x, t))


def layer_bits_text(plan: dict[str, object]) -> str:
    """The `{...}` of the override `MixedPlan.summary` logs (what a user copies)."""
    layer_bits = plan["layer_bits"]
    assert isinstance(layer_bits, dict)
    return "{" + ", ".join(f"{n}: {b}" for n, b in layer_bits.items()) + "}"


def test_w8_everywhere_within_budget_keeps_the_int8_kernels() -> None:
    outcome = quantized(size_budget_bytes=10**6)
    assert set(outcome.mixed_precision["layer_bits"].values()) == {8}
    assert outcome.execution == "int8"


def test_qat_chooses_its_widths_before_fine_tuning() -> None:
    qat_settings = {"steps": 2, "data_free": True, "batch_size": 16, "checkpoint_every": 0}
    outcome = quantized("qat", size_budget_bytes=MIN_BYTES + 2048, qat=qat_settings)
    assert outcome.mixed_precision["layer_bits"] == {"fc.0": 4, "fc.1": 8, "fc.2": 4, "fc.3": 4}
    assert model_bits(outcome) == outcome.mixed_precision["layer_bits"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"size_budget_bytes": 1000, "avg_weight_bits": 5},
            r"quant\.size_budget_bytes=1000 and quant\.avg_weight_bits=5\.0 are both set",
        ),
        (
            {"size_budget_bytes": 1000, "layer_bits": {"fc.0": 8}},
            r"quant\.size_budget_bytes=1000 cannot combine with quant\.layer_bits=\{'fc\.0': 8\}",
        ),
        ({"mixed": {"bits": [4, 9]}}, r"quant\.mixed\.bits=9 is out of range; allowed: 2\.\.8"),
        ({"mixed": {"bits": [1, 8]}}, r"quant\.mixed\.bits=1 is out of range; allowed: 2\.\.8"),
        ({"avg_weight_bits": 3}, r"quant\.avg_weight_bits=3\.0 is out of range; allowed: >= 4"),
        ({"size_budget_bytes": 0}, r"quant\.size_budget_bytes=0 is out of range; allowed: >= 1"),
        (
            {"size_budget_bytes": 10**6, "weight_format": "fp8_e4m3"},
            r"quant\.size_budget_bytes=1000000 cannot combine with quant\.weight_format=fp8_e4m3",
        ),
    ],
    ids=["both-budgets", "with-layer-bits", "bits-9", "bits-1", "avg-below-lowest", "budget-0", "float-format"],
)
def test_bad_budgets_are_refused_in_one_line(settings: dict[str, object], message: str) -> None:
    with pytest.raises(DiffquantError, match=message) as info:
        quant_settings("ptq", "fbgemm", settings)
    assert "\n" not in str(info.value)


def test_a_budget_below_every_layer_at_its_lowest_width_names_the_minimum() -> None:
    with pytest.raises(
        DiffquantError, match=rf"quant\.size_budget_bytes=5000 is below the smallest achievable size, {MIN_BYTES} bytes"
    ):
        quantized(size_budget_bytes=5000)


def test_the_api_returns_the_plan_with_the_model() -> None:
    data = random_pairs(64, (1, 8, 8), seed=1)
    settings = {**SETTINGS, "avg_weight_bits": 5, "weight_bits": 4}
    qmodel = diffquant.quantize(OneSensitive().eval(), data, method="ptq", backend="fbgemm", **settings)
    plan = qmodel.diffquant_recipe["mixed_precision"]
    assert plan["layer_bits"] == {"fc.0": 4, "fc.1": 8, "fc.2": 4, "fc.3": 4} and plan["avg_weight_bits"] == 5.0
    assert qmodel.diffquant_recipe["execution"] == "fakequant"


@pytest.mark.parametrize("extra", [{"smooth_alpha": 0.5}, {"group_size": 16}], ids=["smoothing", "groups"])
def test_input_transforms_and_groups_are_measured_once(extra: dict[str, object]) -> None:
    """A wrapper's smoothing runs when it is called: its measured input must be the untransformed one (else
    errors near 1); group scales count 8 bytes per group of 16 weights."""
    plan = quantized(avg_weight_bits=5, **extra).mixed_precision
    assert plan["layer_bits"]["fc.1"] == 8 and max(e["4"] for e in plan["layer_errors"].values()) < 0.05
    groups = WIDTH * WIDTH // 16 if "group_size" in extra else WIDTH
    assert plan["min_bytes"] == FIXED + 4 * (WIDTH * WIDTH // 2 + 8 * groups)
