"""Execution plans (memory layout, precision, torch.compile) chosen by measurement (issue 14)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from mmhvae import runtime
from mmhvae.runtime import ExecutionPlan, candidate_plans, choose_by_timing, default_plan

CPU = torch.device("cpu")


def test_fixed_settings_give_one_plan_auto_several(monkeypatch):
    assert candidate_plans("contiguous", "fp32", CPU) == [ExecutionPlan("contiguous", "fp32")]
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: False)
    assert {p.memory_format for p in candidate_plans("auto", "auto", CPU)} == {"contiguous", "channels_last"}
    assert {p.amp for p in candidate_plans("auto", "auto", CPU)} == {"fp32"}  # no bf16 instructions: fp32 only
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: True)
    assert len(candidate_plans("auto", "auto", CPU)) == 4
    assert {p.amp for p in candidate_plans("channels_last", "auto", CPU)} == {"fp32", "bf16"}
    assert candidate_plans("auto", "auto", torch.device("cuda")) == [
        ExecutionPlan("contiguous", "bf16"), ExecutionPlan("channels_last", "bf16")]
    with pytest.raises(ValueError, match="memory format"):
        candidate_plans("nhwc", "fp32", CPU)
    with pytest.raises(ValueError, match="amp"):
        candidate_plans("auto", "fp16", CPU)


def test_default_plan_without_measuring():
    assert default_plan("auto", "auto", CPU) == ExecutionPlan("contiguous", "fp32")
    assert default_plan("channels_last", "bf16", CPU) == ExecutionPlan("channels_last", "bf16")


def test_choose_by_timing_keeps_the_fastest_and_times_each_candidate():
    plans = candidate_plans("auto", "fp32", CPU)
    cost = {plans[0]: 3.0, plans[1]: 1.0}
    now = itertools.count()
    clock_value = [0.0]
    calls = []

    def clock():
        next(now)
        return clock_value[0]

    def run(plan):
        calls.append(plan)
        clock_value[0] += cost[plan]

    best, times = choose_by_timing(plans, run, repeats=2, warmup=1, clock=clock)
    assert best == plans[1] and times == {plans[0]: 3.0, plans[1]: 1.0}
    assert len(calls) == 2 * 3  # one warm-up and two timed runs each, interleaved
    assert calls[2:] == [plans[0], plans[1], plans[0], plans[1]]
    cost = {plans[0]: 1.0, plans[1]: 0.95}  # 5 % faster: noise, the reference is kept
    calls.clear()
    assert choose_by_timing(plans, run, clock=clock)[0] == plans[0]
    only, none = choose_by_timing(plans[:1], lambda p: pytest.fail("must not run"))
    assert only == plans[0] and none == {}


def test_plan_round_trips_and_refuses_unknown_values():
    plan = ExecutionPlan("channels_last", "bf16")
    assert ExecutionPlan.from_dict(plan.to_dict()) == plan
    assert plan.torch_memory_format is torch.channels_last and plan.autocast_dtype is torch.bfloat16
    with pytest.raises(ValueError):
        ExecutionPlan("nhwc", "fp32")


def test_compile_cells_marks_the_cells_and_uncompile_restores_eager():
    from mmhvae.config import preset
    from mmhvae.models.mmhvae import MMHVAE

    model = MMHVAE.from_config(preset("tiny").model)
    count = runtime.compile_cells(model)
    assert count > 0
    assert sum(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules()) == count
    runtime.uncompile(model)
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in model.modules())


def test_compile_failures_are_told_apart_from_model_errors():
    class FakeDynamoError(Exception):
        pass

    FakeDynamoError.__module__ = "torch._dynamo.exc"
    assert runtime.is_compile_failure(FakeDynamoError("backend failed"))
    assert runtime.is_compile_failure(RuntimeError("Dynamo is not supported on Python 3.14+"))
    assert not runtime.is_compile_failure(ValueError("shape mismatch in the model"))


def _trainer(tmp_path, name, *overrides):
    from mmhvae.config import apply_overrides, preset
    from mmhvae.train.batches import ArraySliceDataset
    from mmhvae.train.trainer import Trainer

    cfg = apply_overrides(preset("tiny"), ["train.steps=3", "train.checkpoint_every=3", "train.validate_every=3",
                                           *overrides])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 32, 32, generator=g)
    available = torch.ones(12, 3, dtype=torch.bool)
    available[::3, 1] = False
    return Trainer(cfg, tmp_path / name, ArraySliceDataset(x, available), None, progress=False)


def test_timing_the_plans_leaves_the_run_as_if_the_chosen_plan_were_fixed(tmp_path, capsys):
    measured = _trainer(tmp_path, "auto", "train.memory_format=auto", "train.amp=auto")
    assert len(measured.candidates) >= 2
    measured.fit()
    plan = measured.plan
    assert "execution plan:" in capsys.readouterr().out
    fixed = _trainer(tmp_path, "fixed", f"train.memory_format={plan.memory_format}", f"train.amp={plan.amp}")
    fixed.fit()
    for (k, a), (_, b) in zip(measured.model.state_dict().items(), fixed.model.state_dict().items()):
        assert torch.equal(a, b), k  # the timed steps were undone: weights, optimizer, RNG, memories
    from mmhvae.checkpoint import load_state

    assert load_state(tmp_path / "auto" / "checkpoints" / "last_state.pt")["execution"] == plan.to_dict()


def test_resume_keeps_the_measured_plan(tmp_path, monkeypatch):
    first = _trainer(tmp_path, "run", "train.memory_format=auto", "train.amp=fp32")
    first.fit()
    again = _trainer(tmp_path, "run", "train.memory_format=auto", "train.amp=fp32", "train.steps=4")
    assert again.plan is None and again.resume() and again.plan == first.plan
    monkeypatch.setattr(runtime, "choose_by_timing", lambda *a, **k: pytest.fail("a resumed run must not re-time"))
    assert again.choose_plan() == first.plan
    assert again.memory_format is first.plan.torch_memory_format


def test_compile_failure_falls_back_to_eager_with_a_warning(tmp_path, compile_raises):
    compile_raises("C++ compile error: no compiler", from_module="torch._inductor.exc")
    trainer = _trainer(tmp_path, "compiled", "train.compile=true")
    assert trainer.compiled
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        trainer.fit()
    assert not trainer.compiled and trainer.step == 3


def test_a_model_error_under_compile_is_not_swallowed(tmp_path, compile_raises):
    compile_raises("a bug in the model")
    with pytest.raises(ValueError, match="a bug in the model"):
        _trainer(tmp_path, "compiled", "train.compile=true").fit()
