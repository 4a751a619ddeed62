"""A user's own models of three kinds (MobileNetV3-style with squeeze-excite, ConvNeXt-style
with channels-last LayerNorm and layer scale, a small ViT with ``nn.MultiheadAttention``), from
first run to report (issue 27): every pruner and CPU workflow with zero tracebacks, every
selected case in the JSON and in every report with its outcome, no silent no-op pruner, masks
that survive a training loop, what each pruner did and did not prune."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from user_kinds import INPUT, build, set_up

from pytest_pqbench.cli import main
from pytest_pqbench.errors import NothingPruned, StepFailed, UsageError
from pytest_pqbench.pruners import PruneContext, prune
from pytest_pqbench.pruners.recovery import HeldZeros
from pytest_pqbench.pruners.scope import prunable_tensors
from tests.conftest import SMOKE

HEADS = {"mobile": "fc", "convnext": "fc", "vit": "head"}
ZERO_FILL = ("random", "l1", "l1-global", "ln-structured", "semi24", "soft")
# every built-in pruner at 0.3 (semi24 fixes its own 50%), as the case ids spell them
PRUNERS = ("none", "random0.3", "l1_0.3", "l1-global0.3", "ln-structured0.3", "semi24",
           "soft0.3", "group0.3", "layer0.3", "taylor0.3")


def context(model: nn.Module, kind: str, **options) -> PruneContext:
    rng = np.random.default_rng(0)
    calibration = [(rng.normal(size=(4, 3, INPUT, INPUT)).astype(np.float32),
                    np.array([0, 1, 0, 1]))]
    return PruneContext(ratio=0.3, example_inputs=torch.randn(2, 3, INPUT, INPUT),
                        ignored_layers=[getattr(model, HEADS[kind])], calibration=calibration,
                        options=options)


# ---- masks that survive a training loop --------------------------------------------------------
@pytest.mark.parametrize("kind", ["vit", "convnext"])
@pytest.mark.parametrize("pruner", ZERO_FILL)
def test_zero_fill_zeros_survive_a_users_training_loop(kind, pruner):
    """Several optimizer steps with weight decay through nn.MultiheadAttention (which reads its
    out_proj.weight without calling out_proj): no 'backward through the graph a second time',
    and every pruned entry is still zero afterwards."""
    torch.manual_seed(0)
    model = build(kind).eval()
    pruned, report = prune(model, pruner, context(model, kind))
    zeros_before = [(t == 0).clone() for t in prunable_tensors(pruned)]
    x, y = torch.randn(8, 3, INPUT, INPUT), torch.tensor([0, 1] * 4)
    with HeldZeros(pruned, model) as held:
        opt = torch.optim.AdamW(pruned.train().parameters(), lr=1e-2, weight_decay=0.1)
        for _ in range(5):
            loss = nn.functional.cross_entropy(pruned(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert held.count > 0
    for before, tensor in zip(zeros_before, prunable_tensors(pruned), strict=True):
        assert bool((tensor[before] == 0).all())
    moved = sum(int((t != b).sum()) for t, b in zip(prunable_tensors(pruned),
                                                      prunable_tensors(model), strict=True))
    assert moved > 0  # it did train: the unpruned weights moved


def test_unstructured_pruners_reach_the_attention_projections():
    torch.manual_seed(0)
    model = build("vit").eval()
    for pruner in ("l1", "random", "semi24"):
        pruned, report = prune(model, pruner, context(model, "vit"))
        in_proj = pruned.blocks[0].attn.in_proj_weight
        assert float((in_proj == 0).float().mean()) == pytest.approx(
            0.5 if pruner == "semi24" else 0.3, abs=0.02)
        assert report.pruned_layers["attention"] == [2, 2]


def test_held_zeros_leave_a_bias_that_was_zero_before_pruning_free():
    torch.manual_seed(0)
    model = build("vit").eval()  # nn.MultiheadAttention initialises its biases at zero
    pruned, _ = prune(model, "l1", context(model, "vit"))
    bias = pruned.blocks[0].attn.out_proj.bias
    assert bool((bias == 0).all())
    with HeldZeros(pruned, model):
        opt = torch.optim.SGD(pruned.train().parameters(), lr=0.1)
        loss = pruned(torch.randn(4, 3, INPUT, INPUT)).square().mean()
        loss.backward()
        opt.step()
    assert bool((bias != 0).any())


# ---- what was and was not pruned, per case ----------------------------------------------------
def test_group_on_a_vit_says_attention_was_not_pruned():
    torch.manual_seed(0)
    model = build("vit").eval()
    pruned, report = prune(model, "group", context(model, "vit"))
    assert report.params < report.params_before
    assert report.pruned_layers["linear"] == [4, 4]  # the MLP hidden width
    assert report.pruned_layers["attention"] == [0, 2]
    assert "not pruned: conv (patch); attention (blocks.0.attn, blocks.1.attn)" in report.scope
    assert report.scope.endswith("protected: head")
    assert pruned(torch.randn(2, 3, INPUT, INPUT)).shape == (2, 2)


def test_unwrapped_layer_scale_is_a_note_and_an_option():
    torch.manual_seed(0)
    model = build("convnext").eval()
    _, report = prune(model, "group", context(model, "convnext"))
    assert "outside any layer (stage1.gamma, stage2.gamma)" in report.note
    assert "unwrapped=NAME:DIM" in report.note
    _, given = prune(model, "group", context(model, "convnext",
                                             unwrapped="stage1.gamma:0+stage2.gamma:0"))
    assert "outside any layer" not in given.note and given.params < given.params_before
    with pytest.raises(UsageError, match="unwrapped: 'nowhere:0' is not NAME:DIM"):
        prune(model, "group", context(model, "convnext", unwrapped="nowhere:0"))


@pytest.mark.parametrize("kind", ["convnext", "vit"])
def test_layer_without_batchnorm_does_not_apply(kind):
    model = build(kind).eval()
    with pytest.raises(NothingPruned, match="ranks channels by their BatchNorm scale and "
                                            ".* has no BatchNorm .*LayerNorm.*use group or taylor"):
        prune(model, "layer", context(model, kind))


def test_a_pruner_that_changes_nothing_is_not_recorded_as_pruned():
    class Idle:
        """A user's pruner that forgets to prune."""

        structure = "removed"
        options = frozenset()

        def __call__(self, model, ctx):
            return model

    from pytest_pqbench.pruners import register_pruner

    register_pruner("idle", Idle(), replace=True)
    model = build("mobile").eval()
    with pytest.raises(NothingPruned, match="pruner 'idle' at ratio 0.3 changed no weight layer"):
        prune(model, "idle", context(model, "mobile"))


def test_a_pruner_that_cannot_cut_the_graph_is_one_line_with_what_to_try():
    """torch-pruning on a token-mixing Linear (an MLP-Mixer layer across the spatial positions)
    raised IndexError from deep inside; the case gets one line naming the pruner, the model,
    the error and the option that keeps such a layer whole."""

    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.down = nn.Conv2d(16, 16, 4, 4)
            self.mix = nn.Linear(36, 36)  # across the 6 x 6 positions, not the channels
            self.head = nn.Linear(16, 2)

        def forward(self, x):
            tokens = self.down(self.stem(x)).flatten(2)  # (B, C, T)
            return self.head(self.mix(tokens).mean(2))

    model = Mixer().eval()
    ctx = PruneContext(ratio=0.3, example_inputs=torch.randn(2, 3, INPUT, INPUT),
                       ignored_layers=[model.head])
    try:
        prune(model, "group", ctx)
    except StepFailed as exc:
        message = str(exc)
        assert message.startswith("pruner 'group' failed on Mixer: ")
        assert "\n" not in message and "ignore=NAME (modules: down, head, mix, stem)" in message
    else:  # torch-pruning cut it after all: then it must really have pruned something
        pruned, report = prune(model, "group", ctx)
        assert report.params < report.params_before
    ctx.options = {"ignore": "mix"}
    _, report = prune(model, "group", ctx)  # what the message suggests works
    assert report.params < report.params_before


# ---- from first run to report: real pytest runs ------------------------------------------------
def outcomes_of(path) -> dict[str, dict]:
    return {c["case_id"]: c for c in json.loads(path.read_text())["pqbench"]["cases"]}


def test_every_pruner_and_cpu_workflow_on_the_three_kinds(bench_pytester, tmp_path):
    """120 cases: each passes, or is skipped with its reason (eager torch has no INT8; layer has
    no BatchNorm to rank in ConvNeXt and ViT); none fails, no traceback; every one is in the
    JSON and in every report format with its outcome."""
    data = set_up(bench_pytester, tmp_path)
    out = bench_pytester.path / "run.json"
    result = bench_pytester.runpytest(
        "--pqbench-models=mobile,convnext,vit", f"--pqbench-pruners={','.join(PRUNERS)}",
        "--pqbench-workflows=torch,ort",
        "--pqbench-precisions=fp32,int8", "--pqbench-batch-sizes=4",
        "--pqbench-finetune-epochs=1", "--pqbench-dataset", f"flowers={data}",
        "--pqbench-timing-profile=smoke", f"--benchmark-json={out}", *SMOKE)
    text = result.stdout.str()
    assert "Traceback" not in text and "backward through the graph" not in text, text[-4000:]
    result.assert_outcomes(passed=84, skipped=36)
    cases = outcomes_of(out)
    assert len(cases) == 120
    skipped = {c: o["reason"] for c, o in cases.items() if o["outcome"] == "skipped"}
    assert "has no BatchNorm" in skipped["vit-layer0.3-ort-fp32-bs4"]
    assert "has no BatchNorm" in skipped["convnext-layer0.3-torch-fp32-bs4"]
    assert "mobile-layer0.3-ort-int8-bs4" not in skipped  # MobileNet has BatchNorm
    records = {b["extra_info"]["case_id"]: b["extra_info"]
               for b in json.loads(out.read_text())["benchmarks"]}
    assert len(records) == 84
    group = records["vit-group0.3-ort-fp32-bs4"]
    assert group["pruned_layers"]["attention"] == [0, 2]
    assert "not pruned:" in group["prune_scope"]
    l1 = records["vit-l1_0.3-ort-fp32-bs4"]  # zeros held through the fine-tune
    assert l1["zeros_held"] > 0 and l1["zero_fraction_after_recovery"] == pytest.approx(
        l1["zero_fraction"])
    assert "outside any layer (stage1.gamma, stage2.gamma)" in \
        records["convnext-group0.3-torch-fp32-bs4"]["prune_note"]
    # every INT8 case is set against its FP32 twin (the note when INT8 is slower)
    for info in records.values():
        if info["precision"] == "int8":
            twin = records[info["case_id"].replace("-int8-", "-fp32-")]
            assert info["int8_vs_fp32"] == pytest.approx(twin["p50_ms"] / info["p50_ms"],
                                                         rel=0.05)
    # every report format holds every case with its outcome
    csv_out = bench_pytester.path / "report.csv"
    assert main(["report", str(out), "--format", "csv", "-o", str(csv_out)]) == 0
    rows = {r["case_id"]: r for r in csv.DictReader(io.StringIO(csv_out.read_text()))}
    assert len(rows) == 120
    assert rows["vit-layer0.3-ort-fp32-bs4"]["outcome"] == "skipped"
    assert "has no BatchNorm" in rows["vit-layer0.3-ort-fp32-bs4"]["reason"]
    md = bench_pytester.path / "report.md"
    assert main(["report", str(out), "-o", str(md)]) == 0
    markdown = md.read_text()
    assert "120 cases: 84 passed, 36 skipped" in markdown
    assert "SKIPPED: pruner 'layer' does not apply to vit" in markdown
    page = bench_pytester.path / "report.html"
    assert main(["report", str(out), "--format", "html", "-o", str(page)]) == 0
    cases_table = page.read_text().split('id="cases">', 1)[1].split("</table>", 1)[0]
    assert cases_table.count("<tr") == 121  # the header and every case


def test_a_fourth_kind_with_groupnorm_and_concatenated_skips(bench_pytester, tmp_path):
    """DenseGN (GroupNorm, no BatchNorm; grouped and depthwise convolutions; concatenated
    skips), first tried by hand over every pruner x torch / ort / inductor x fp32 / int8 (45
    passed, 15 skipped, no traceback); kept here on ort: every pruner passes or skips with its
    reason, and the structural pruners say what they left whole."""
    data = set_up(bench_pytester, tmp_path, kinds=("densegn",))
    out = bench_pytester.path / "run.json"
    result = bench_pytester.runpytest(
        "--pqbench-models=densegn", f"--pqbench-pruners={','.join(PRUNERS)}",
        "--pqbench-workflows=ort", "--pqbench-precisions=fp32,int8", "--pqbench-batch-sizes=4",
        "--pqbench-finetune-epochs=1", "--pqbench-dataset", f"flowers={data}",
        "--pqbench-timing-profile=smoke", f"--benchmark-json={out}", *SMOKE)
    text = result.stdout.str()
    assert "Traceback" not in text, text[-4000:]
    result.assert_outcomes(passed=18, skipped=2)
    cases = outcomes_of(out)
    assert "has no BatchNorm (its GroupNorm are not ranked)" in \
        cases["densegn-layer0.3-ort-fp32-bs4"]["reason"]
    records = {b["extra_info"]["case_id"]: b["extra_info"]
               for b in json.loads(out.read_text())["benchmarks"]}
    assert "not pruned: depthwise conv (block2.conv)" in \
        records["densegn-group0.3-ort-fp32-bs4"]["prune_scope"]
    assert records["densegn-group0.3-ort-fp32-bs4"]["params"] < \
        records["densegn-none-ort-fp32-bs4"]["params"]


def test_a_failing_trainer_is_one_line_in_the_terminal_json_and_reports(bench_pytester,
                                                                       tmp_path):
    data = set_up(bench_pytester, tmp_path, kinds=("mobile",), trainer="broken")
    out = bench_pytester.path / "run.json"
    result = bench_pytester.runpytest(
        "--pqbench-models=mobile", "--pqbench-pruners=none,l1_0.3", "--pqbench-workflows=torch",
        "--pqbench-precisions=fp32", "--pqbench-batch-sizes=4", "--pqbench-finetune-epochs=1",
        "--pqbench-dataset", f"flowers={data}", f"--benchmark-json={out}", *SMOKE)
    result.assert_outcomes(passed=1, errors=1)
    text = result.stdout.str()
    assert "Traceback" not in text and "pytest_pqbench/" not in text, text[-3000:]
    reason = ("mobile-l1_0.3-torch-fp32-bs4: fine-tuning with trainer conftest.broken failed: "
              "RuntimeError: boom: the user's loop failed")
    result.stdout.fnmatch_lines([f"*{reason}*"])
    # the summary names it under the table, with its reason
    result.stdout.fnmatch_lines(["not in the table: 1 error",
                                 "ERROR mobile-l1_0.3-torch-fp32-bs4: fine-tuning with trainer*"])
    case = outcomes_of(out)["mobile-l1_0.3-torch-fp32-bs4"]
    assert case["outcome"] == "error" and reason in case["reason"]
    assert case["pruner"] == "l1" and case["ratio"] == 0.3
    md = bench_pytester.path / "report.md"
    assert main(["report", str(out), "-o", str(md)]) == 0
    assert "ERROR: mobile-l1_0.3-torch-fp32-bs4: fine-tuning with trainer" in md.read_text()
    assert "**error** mobile-l1_0.3-torch-fp32-bs4: fine-tuning with trainer" in md.read_text()


def test_inductor_int8_on_a_vit_tells_one_story(bench_pytester, tmp_path, monkeypatch):
    """int8_mac_share and precision_engaged agree: the attention projections stay FP32 in
    inductor (int8_mac_share read 0.975 with half the linear MACs in FP32)."""
    pytest.importorskip("torchao")
    data = set_up(bench_pytester, tmp_path, kinds=("vit",))
    out = bench_pytester.path / "run.json"
    # a fresh process: an in-process run would unload the inductor modules a compile imports
    # first, and the next compile in this process would register them twice
    monkeypatch.setenv("PYTHONPATH", f"{bench_pytester.path}:{Path(__file__).parents[1]}:"
                                     + os.environ.get("PYTHONPATH", ""))
    result = bench_pytester.runpytest_subprocess(
        "--pqbench-models=vit", "--pqbench-pruners=none", "--pqbench-workflows=inductor",
        "--pqbench-precisions=int8", "--pqbench-batch-sizes=4", "--pqbench-dataset",
        f"flowers={data}", f"--benchmark-json={out}", *SMOKE)
    result.assert_outcomes(passed=1)
    info = json.loads(out.read_text())["benchmarks"][0]["extra_info"]
    share, engaged = info["int8_mac_share"], info["precision_engaged"]
    # MLP and patch embedding in INT8, q/k/v and output projections in FP32: half the MACs
    assert 0.3 < share < 0.8, share
    assert abs(share - engaged) < 0.25, (share, engaged)


def test_the_hosts_chatter_is_filtered(pytester):
    """What torch raises on every inductor compile (~14 torch.jit.script_method deprecations)
    and on every export concerns no user: the plugin filters it; a warning of the user's own
    still shows."""
    pytester.makepyfile(test_chatter='''
        import warnings

        def test_compile():
            for _ in range(14):
                warnings.warn("`torch.jit.script_method` is deprecated. Please switch to "
                              "`torch.compile` or `torch.export`.", DeprecationWarning)
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...",
                          FutureWarning)
            warnings.warn("the user's own warning", UserWarning)
        ''')
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    text = result.stdout.str()
    assert "script_method" not in text and "LeafSpec" not in text
    assert "the user's own warning" in text


NOISY = '''
import warnings


def noisy(cls):
    def build(classes):
        for _ in range(3):
            warnings.warn("`torch.jit.script_method` is deprecated. Please switch to "
                          "`torch.compile` or `torch.export`.", DeprecationWarning)
        warnings.warn("the user's own builder warning", UserWarning)
        return cls(classes)
    return build
'''


def test_the_hosts_chatter_is_filtered_in_the_timing_phase_too(bench_pytester, tmp_path,
                                                               monkeypatch):
    """The timing phase builds every engine before the tests run, outside pytest's warning
    capture: a torch compile's deprecations went straight to the terminal there. A fresh
    process, as a user's run: the model's builder raises them while the phase builds it."""
    data = set_up(bench_pytester, tmp_path, kinds=("mobile",))
    conftest = bench_pytester.path / "conftest.py"
    conftest.write_text(NOISY + conftest.read_text().replace("builder=globals()[cls]",
                                                             "builder=noisy(globals()[cls])"))
    monkeypatch.setenv("PYTHONPATH", f"{bench_pytester.path}:{Path(__file__).parents[1]}:"
                                     + os.environ.get("PYTHONPATH", ""))
    result = bench_pytester.runpytest_subprocess(
        "--pqbench-models=mobile", "--pqbench-pruners=none", "--pqbench-workflows=torch",
        "--pqbench-precisions=fp32", "--pqbench-batch-sizes=4", "--pqbench-dataset",
        f"flowers={data}", *SMOKE)
    result.assert_outcomes(passed=1)
    text = result.stdout.str() + result.stderr.str()
    assert "script_method" not in text
    assert "the user's own builder warning" in text


def test_help_says_what_pqbench_does(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    description = out.split("\n\n")[1].replace("\n", " ")
    assert description.startswith("Read pytest-pqbench runs:") and description.endswith(".")
    assert "``" not in out and "Exit status: 0 success" in out
