"""Every pruner on real torch-pruning / torch.nn.utils.prune: properties over random small conv
nets (hypothesis), the embedded ResNet- and MobileNet-style models, option errors, recovery."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pytest_pqbench.errors import NothingPruned
from pytest_pqbench.models.classifiers import (
    BasicBlock,
    InvertedResidual,
    MobileNetSmall,
    ResNetSmall,
    conv_bn,
)
from pytest_pqbench.pruners import PRUNERS, PruneContext, prune
from pytest_pqbench.pruners.zerofill import semi24_eligible
from pytest_pqbench.registry import UsageError
from tests.conftest import SMOKE

REMOVAL = ["group", "layer", "taylor"]
ZERO_FILL = ["soft", "random", "l1", "l1-global", "ln-structured", "semi24"]
NUM_CLASSES = 5


def test_every_pruner_of_the_issue_is_registered_with_its_structure():
    for name in REMOVAL:
        assert PRUNERS.get(name).structure == "removed"
    for name in ZERO_FILL:
        assert PRUNERS.get(name).structure == "zero-fill"


class Concat(nn.Module):
    """Two branches concatenated on channels: the coupling a concatenation creates."""

    def __init__(self, cin: int, left: int, right: int) -> None:
        super().__init__()
        self.left, self.right = conv_bn(cin, left, 3), conv_bn(cin, right, 1)

    def forward(self, x):
        return torch.cat([self.left(x), self.right(x)], 1)


class Net(nn.Module):
    def __init__(self, blocks: list[tuple[str, int, int]], stem: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, stem)]
        cin = stem
        for kind, width, stride in blocks:
            if kind == "residual":
                layers.append(BasicBlock(cin, width, stride))
            elif kind == "inverted":  # depthwise conv inside; a residual add when shapes allow
                layers.append(InvertedResidual(cin, width, stride, expand=2))
            elif kind == "concat":
                layers.append(Concat(cin, width, 4))
                width += 4
            else:
                layers.append(conv_bn(cin, width, 3, stride))
            cin = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, NUM_CLASSES)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


widths = st.sampled_from([4, 8, 12, 16])
block = st.tuples(st.sampled_from(["plain", "residual", "inverted", "concat"]), widths,
                  st.sampled_from([1, 2]))
nets = st.builds(Net, st.lists(block, min_size=1, max_size=3), widths)
ratios = st.floats(0.0, 0.9, allow_nan=False).map(lambda r: round(r, 3))


def context(model: nn.Module, ratio: float, **options) -> PruneContext:
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = np.arange(4) % NUM_CLASSES
    head = model.head if hasattr(model, "head") else model.fc
    return PruneContext(ratio=ratio, example_inputs=images[:2], ignored_layers=[head],
                        calibration=[(images.numpy(), labels)], options=options)


def layers(model: nn.Module) -> list[nn.Module]:
    """Conv / linear layers, the head (never pruned) left out."""
    return [m for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d | nn.Linear) and n not in ("head", "fc")]


def zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def check_zero_fraction(name: str, ratio: float, pruned: nn.Module) -> None:
    per_layer = layers(pruned)
    if name == "l1-global":  # of the whole network
        total = sum(m.weight.numel() for m in per_layer)
        assert abs(sum(zeros(m.weight) for m in per_layer) / total - ratio) <= 1 / total
    elif name in ("l1", "random"):  # of each layer
        for m in per_layer:
            assert abs(zeros(m.weight) / m.weight.numel() - ratio) <= 1 / m.weight.numel()
    elif name == "ln-structured":  # whole output channels of each layer
        for m in per_layer:
            rows = m.weight.flatten(1)
            dead = int((rows == 0).all(1).sum())
            assert abs(dead / len(rows) - ratio) <= 0.5 / len(rows) + 1e-9
    elif name == "soft":  # whole output channels, as many as torch-pruning would remove
        for m in per_layer:
            rows = m.weight.flatten(1)
            keep = int(len(rows) * (1 - ratio))
            assert int((rows == 0).all(1).sum()) == (len(rows) - keep if keep >= 1 else 0)
    elif name == "semi24":  # the fixed 2:4 pattern, whatever the ratio
        for m in per_layer:
            if semi24_eligible(m):
                runs = m.weight.movedim(1, -1).reshape(-1, 4)
                assert ((runs == 0).sum(1) >= 2).all()
                assert abs(zeros(m.weight) / m.weight.numel() - 0.5) < 0.01
            else:
                assert zeros(m.weight) == 0


@pytest.mark.parametrize("name", REMOVAL + ZERO_FILL)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=nets, ratio=ratios)
def test_pruner_properties_on_random_conv_nets(name, model, ratio):
    model.eval()
    # torch-pruning's own rule (the head keeps its outputs only): the properties below count
    # every layer; the default, head inputs kept too, is tested in test_user_models.py
    from pytest_pqbench.pruners.base import accepted_options

    outputs_only = {"protect_inputs": False} if "protect_inputs" in accepted_options(name) else {}
    ctx = context(model, ratio, **outputs_only)
    before = state(model)
    out_shape = model(ctx.example_inputs).shape
    try:
        pruned, report = prune(model, name, ctx)
    except NothingPruned as exc:  # too small a ratio to cut one weight: said, never recorded
        assert ratio > 0 and f"at ratio {ratio:g} changed no weight layer" in str(exc)
        weights = [m.weight for m in layers(model)]
        if name in ("l1", "random"):  # torch's rounding: round(ratio x size) per layer
            assert all(round(ratio * w.numel()) == 0 for w in weights)
        elif name == "l1-global":
            assert round(ratio * sum(w.numel() for w in weights)) == 0
        elif name == "ln-structured":
            assert all(round(ratio * w.shape[0]) == 0 for w in weights)
        return
    with torch.no_grad():
        assert pruned(ctx.example_inputs).shape == out_shape
    # the input model is not mutated
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    if report.structure == "removed":
        assert report.params <= report.params_before
        # torch-pruning keeps at least one channel per layer: a layer of c channels loses
        # c - int(c * (1 - ratio)) of them only if one remains
        if ratio > 0 and any(int(m.out_channels * (1 - ratio)) >= 1 for m in layers(model)):
            assert report.macs < report.macs_before
    else:
        assert report.params == report.params_before
        # masks made permanent: no weight_orig / weight_mask doubling the state_dict
        assert pruned.state_dict().keys() == after.keys()
        check_zero_fraction(name, ratio, pruned)
    if ratio == 0.0 and name != "semi24":  # 0 is a no-op for every ratio-driven pruner
        assert all(torch.equal(before[k], v) for k, v in pruned.state_dict().items())


@pytest.mark.parametrize("name", REMOVAL + ZERO_FILL)
def test_same_seed_same_weights_and_the_seed_matters_for_random(name):
    model = Net([("residual", 8, 2), ("inverted", 8, 1)], 8).eval()
    first, _ = prune(model, name, context(model, 0.4))
    second, _ = prune(model, name, context(model, 0.4))
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if name == "random":
        other = context(model, 0.4)
        other.seed = 1
        c = prune(model, name, other)[0].state_dict()
        assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("builder", [ResNetSmall, MobileNetSmall], ids=["resnet", "mobilenet"])
@pytest.mark.parametrize("name", REMOVAL + ZERO_FILL)
def test_each_pruner_keeps_resnet_and_mobilenet_consistent(builder, name):
    """Residual adds (ResNet) and depthwise convolutions (MobileNet) must stay consistent."""
    model = builder(NUM_CLASSES).eval()
    ctx = context(model, 0.5)
    ctx.example_inputs = torch.randn(2, 3, 32, 32)
    ctx.calibration = [(torch.randn(4, 3, 32, 32).numpy(), np.arange(4))]
    pruned, report = prune(model, name, ctx)
    with torch.no_grad():
        out = pruned(torch.randn(3, 3, 32, 32))  # a batch size it was not traced with
    assert out.shape == (3, NUM_CLASSES) and torch.isfinite(out).all()
    if report.structure == "removed":
        assert report.params < report.params_before and report.macs < report.macs_before
    else:
        assert 0.4 < report.zero_fraction < 0.8
        assert report.macs == report.macs_before  # dense kernels: the same work (thesis 5.4)
        if name != "soft":  # the ignored head keeps its weights (soft zeroes dead inputs only)
            assert torch.equal(pruned.fc.weight, model.fc.weight)


@pytest.mark.parametrize("builder", [ResNetSmall, MobileNetSmall], ids=["resnet", "mobilenet"])
def test_soft_zeroes_exactly_what_group_removes(builder):
    """Same importance, same channels: soft's zeros are group's removed weights, and the zeroed
    channels carry nothing, so both compute the same function."""
    model = builder(NUM_CLASSES).eval()
    ctx = context(model, 0.3)
    ctx.example_inputs = torch.randn(2, 3, 32, 32)
    soft, _ = prune(model, "soft", ctx)
    group, _ = prune(model, "group", ctx)
    count = lambda m: sum(x.weight.numel() for x in m.modules()  # noqa: E731
                          if isinstance(x, nn.Conv2d | nn.Linear))
    assert sum(zeros(m.weight) for m in soft.modules()
               if isinstance(m, nn.Conv2d | nn.Linear)) == count(model) - count(group)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(soft(x), group(x), rtol=1e-4, atol=1e-4)


def test_options_reach_the_pruners():
    model = Net([("plain", 8, 1), ("plain", 8, 1)], 8).eval()
    stem = "features.0.0.weight"
    kept = prune(model, "l1", context(model, 0.5, ignore="features.0"))[0]
    assert zeros(kept.state_dict()[stem]) == 0
    assert zeros(kept.state_dict()["features.1.0.weight"]) > 0
    local = prune(model, "l1", context(model, 0.5))[0]
    global_ = prune(model, "l1", context(model, 0.5, global_pruning=True))[0]
    assert zeros(local.state_dict()[stem]) != zeros(global_.state_dict()[stem])
    by_input = prune(model, "ln-structured", context(model, 0.5, dim=1, n=1))[0]
    w = by_input.state_dict()["features.1.0.weight"]
    assert int((w.transpose(0, 1).flatten(1) == 0).all(1).sum()) == 4
    two_steps = prune(model, "group", context(model, 0.5, iterative_steps=2))[1]
    assert two_steps.params < two_steps.params_before


@pytest.mark.parametrize(("name", "options", "words"), [
    ("l1", {"bogus": 1}, ["'bogus'", "global_pruning", "ignore"]),
    ("group", {"iterative_step": 2}, ["'iterative_step'", "iterative_steps"]),
    ("ln-structured", {"dim": 5}, ["dim=5", "0 (output channels)"]),
    ("ln-structured", {"n": "abc"}, ["n='abc'", "fro"]),
    ("group", {"iterative_steps": 0}, ["iterative_steps=0", "positive integer"]),
    ("soft", {"global_pruning": "maybe"}, ["global_pruning='maybe'", "true, false"]),
    ("l1", {"ignore": "nothere"}, ["'nothere'", "features"]),
    ("semi24", {"to_sparse": True}, ["to_sparse=true", "CUDA"]),
])
def test_bad_option_is_one_clear_error(name, options, words):
    if name == "semi24" and torch.cuda.is_available():
        pytest.skip("to_sparse is valid where a CUDA GPU exists")
    model = Net([("plain", 8, 1)], 8).eval()
    with pytest.raises(UsageError) as info:
        prune(model, name, context(model, 0.3, **options))
    assert all(w in str(info.value) for w in words), str(info.value)


def test_run_options_reach_only_the_pruners_that_take_them():
    from pytest_pqbench.config import Settings
    from pytest_pqbench.pruners.base import options_for

    def resolve(options):
        return Settings.resolve({"models": ["shapes_resnet"], "pruners": ["none", "group0.2", "l1"],
                                 "prune_options": options}, {}, {}).prune_options

    options = resolve("round_to=8,seed=3,l1:global_pruning=true,group:round_to=4")
    assert options_for("none", options) == {"seed": 3}
    assert options_for("l1", options) == {"seed": 3, "global_pruning": True}
    assert options_for("group", options) == {"seed": 3, "round_to": 4}  # scoped wins
    model = Net([("plain", 12, 1), ("plain", 12, 1)], 8).eval()
    rounded = prune(model, "group",
                    context(model, 0.3, **options_for("group", resolve("round_to=4"))))
    channels = [m.out_channels for m in rounded[0].modules() if isinstance(m, nn.Conv2d)]
    assert channels and all(c % 4 == 0 for c in channels), channels


@pytest.mark.parametrize(("options", "words"), [
    ("bogus=1", ["'bogus'", "none of the selected pruners", "round_to"]),
    ("l1:round_to=8", ["'l1:round_to'", "no option 'round_to'", "global_pruning"]),
    ("nope:round_to=8", ["unknown pruner 'nope'", "group"]),
])
def test_run_option_no_selected_pruner_takes_is_one_clear_error(options, words):
    from pytest_pqbench.config import Settings

    with pytest.raises(UsageError) as info:
        Settings.resolve({"models": ["shapes_resnet"], "pruners": ["none", "group0.2"],
                          "prune_options": options}, {}, {})
    assert all(w in str(info.value) for w in words), str(info.value)


def test_semi24_records_that_cpu_has_no_sparse_kernel():
    model = Net([("plain", 8, 1)], 8).eval()
    report = prune(model, "semi24", context(model, 0.0))[1]
    assert "no sparse kernel on CPU" in report.note and report.zero_fraction > 0.3


# ---- recovery through a real pytest run -------------------------------------------------------

TINY_CONFTEST = """
import functools
from pytest_pqbench.datasets import register_dataset
from pytest_pqbench.datasets.synthetic import shapes_dataset
from pytest_pqbench.models import ModelSpec, register_model
from pytest_pqbench.models.classifiers import ResNetSmall, classifier_head
from pytest_pqbench.models.training import train_classifier

def tiny_resnet(num_classes):
    return ResNetSmall(num_classes, widths=(8, 16))

register_dataset("shapes_tiny", functools.partial(shapes_dataset, train=768, evaluation=256,
                                                  calibration=64), replace=True)
register_model(ModelSpec(
    name="tiny_resnet", task="classify", input_shape=(3, 32, 32), builder=tiny_resnet,
    default_dataset="shapes_tiny", trainer=train_classifier, ignored_layers=classifier_head,
    train_options={"epochs": 3}), replace=True)
"""


def test_finetune_and_distill_are_recorded_and_keep_the_zeros(bench_pytester):
    bench_pytester.makeconftest(TINY_CONFTEST)
    args = [*SMOKE, "--pqbench-models=tiny_resnet", "--pqbench-workflows=torch",
            "--pqbench-precisions=fp32", "--pqbench-batch-sizes=8", "--pqbench-calibration-size=16"]
    result = bench_pytester.runpytest(*args, "--pqbench-pruners=none,group0.3,l1_0.5",
                                      "--pqbench-finetune-epochs=1", "--pqbench-distill",
                                      "--benchmark-json=out.json")
    result.assert_outcomes(passed=3)
    info = {b["extra_info"]["pruner"]: b["extra_info"]
            for b in json.loads((bench_pytester.path / "out.json").read_text())["benchmarks"]}
    assert info["none"]["finetune_epochs"] == 0 and info["none"]["distilled"] is False
    for name in ("group", "l1"):
        rec = info[name]
        assert rec["finetune_epochs"] == 1 and rec["distilled"] is True
        assert 0 <= rec["accuracy_before_recovery"] <= 1
        # the engine runs the recovered model
        assert rec["accuracy_after_recovery"] == pytest.approx(rec["accuracy"], abs=0.01)
        assert rec["recovery_seconds"] > 0
    # fine-tuning must not regrow the zero-filled weights
    assert info["l1"]["zero_fraction_after_recovery"] >= info["l1"]["zero_fraction"] - 1e-9
    assert info["l1"]["zero_fraction"] > 0.4
    # off by default: the same case without the options records no recovery
    result = bench_pytester.runpytest(*args, "--pqbench-pruners=l1_0.5",
                                      "--benchmark-json=plain.json")
    result.assert_outcomes(passed=1)
    plain = json.loads((bench_pytester.path / "plain.json").read_text())["benchmarks"][0]
    assert plain["extra_info"]["finetune_epochs"] == 0
    assert "accuracy_after_recovery" not in plain["extra_info"]
