"""lowbit.mixed_precision: per-layer precisions under an output-error budget (CPU)."""
import pytest
import torch
from torch import nn

from lowbit.mixed import FULL, apply_plan, mixed_precision, sensitivity
from lowbit.nn import QuantizedExperts
from lowbit_testing import EXPERT_LAYOUTS, Experts


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(),
                      nn.Linear(128, 64))
    with torch.no_grad():  # one sensitive layer: an outlier input channel for layer 2
        m[0].weight[7].mul_(40)
    return m


DATA = [torch.randn(16, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]


def _err(q, ref):
    with torch.no_grad():
        a = torch.cat([q(x).flatten() for x in DATA]).double()
        b = torch.cat([ref(x).flatten() for x in DATA]).double()
    return ((a - b).norm() / b.norm()).item()


def test_sensitivity_orders_the_schemes():
    s = sensitivity(_model(), DATA, group_size=32)
    assert set(s) == {"0", "2", "4"}
    for errs in s.values():
        assert set(errs) == {"int4", "int8", "fp8"}
        assert errs["int4"] > errs["int8"] > 0 and errs["fp8"] > 0


@pytest.mark.parametrize("budget", [1.0, 0.05, 0.012, 0.0])
def test_plan_meets_the_budget_with_the_bytes_it_reports(budget):
    ref = _model()
    plan = mixed_precision(ref, DATA, budget, group_size=32)
    assert plan.error <= budget
    q = _model()
    apply_plan(q, plan, group_size=32)
    assert _err(q, ref) == pytest.approx(plan.error, rel=1e-9, abs=1e-12)
    if budget == 1.0:
        assert set(plan.schemes.values()) == {"int4"}
    if budget == 0.0:
        assert set(plan.schemes.values()) == {FULL} and plan.bytes == plan.bytes_full
    else:
        assert plan.bytes < plan.bytes_full
    assert "budget" in str(plan)


def test_a_tighter_budget_costs_more_bytes():
    ref = _model()
    loose = mixed_precision(ref, DATA, 0.05, group_size=32)
    tight = mixed_precision(ref, DATA, 0.005, group_size=32)
    assert tight.bytes >= loose.bytes and tight.error <= 0.005


def test_errors():
    with pytest.raises(ValueError, match="schemes"):
        mixed_precision(_model(), DATA, 0.1, schemes=["int2"])
    with pytest.raises(ValueError, match="budget"):
        mixed_precision(_model(), DATA, -1.0)
    with pytest.raises(ValueError, match="empty"):
        mixed_precision(_model(), [], 0.1)


def test_apply_plan_checks_its_plan():
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    with pytest.raises(ValueError, match=r"apply_plan: plan's schemes must be 'none' or one of "
                                         r".*; got \['fp16'\]"):
        apply_plan(m, {"0": "fp16"})
    with pytest.raises(ValueError, match=r"apply_plan: plan names layers the model does not "
                                         r"have: \['nope'\]"):
        apply_plan(m, {"nope": "int8", "0": "int8"})


def test_layers_the_model_keeps_stay_full_in_the_plan():
    """A layer quantize_ would keep (the model's _keep_in_fp32_modules) is planned at full
    precision, so the plan's bytes are what apply_plan gives."""
    class Kept(nn.Sequential):
        _keep_in_fp32_modules = ["2"]

    ref = Kept(*_model())
    plan = mixed_precision(ref, DATA, 1.0, group_size=32)
    assert plan.schemes == {"0": "int4", "2": FULL, "4": "int4"}
    q = Kept(*_model())
    s = apply_plan(q, plan, group_size=32)
    assert sorted(n for summary in s for n in summary.swapped) == ["0", "4"]
    assert _err(q, ref) == pytest.approx(plan.error, rel=1e-9, abs=1e-12)


class _MoE(nn.Module):
    """A Linear, then MoE experts routed to experts 0 and 1 (the plan's unplanned part)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(64, 64)
        self.experts = Experts(**EXPERT_LAYOUTS["mixtral"])

    def forward(self, x):
        index = torch.tensor([[0, 1]]).expand(x.shape[0], 2)
        return self.experts(self.proj(x), index, torch.full((x.shape[0], 2), 0.5))


def test_experts_are_not_planned_and_a_hand_plan_may_name_them():
    ref = _MoE()
    plan = mixed_precision(ref, DATA, 1.0, group_size=32)
    assert set(plan.schemes) == {"proj"}
    assert plan.experts == {"experts": 4 * (4 * 192 * 64 + 4 * 64 * 96)}
    assert "1 experts modules not planned, in full precision (0.28 MiB)" in str(plan)
    m = _MoE()
    apply_plan(m, plan, group_size=32)
    assert isinstance(m.experts, Experts)
    plan.schemes["experts"] = "int8"  # planned by hand: no longer reported as unplanned
    assert "not planned" not in str(plan)
    m = _MoE()
    apply_plan(m, {"proj": FULL, "experts": "int8"})
    assert isinstance(m.experts, QuantizedExperts) and type(m.proj) is nn.Linear
