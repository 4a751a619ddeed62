"""Users' own models, datasets and pruners, without editing this package: registered from a
conftest.py, or from an installed package's entry points, and run through the matrix by real
pytest runs (pytester)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import SMOKE

USER_MODELS = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))
'''

CONFTEST = '''
from my_models import TinyNet

from pytest_pqbench.models import ModelSpec, register_model

# replace=True: pytester runs this conftest several times in one process
register_model(ModelSpec(
    name="my_net", task="classify", input_shape=(3, 24, 24), builder=TinyNet,
    default_dataset="imagefolder", weights={weights!r}, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    min_accuracy=0.0, max_drop=1.0, ignored_layers=lambda model: [model.fc],
), replace=True)
'''


def write_image_folder(root: Path) -> Path:
    for split, n in (("train", 2), ("val", 8)):
        for cls, colour in (("red", (230, 20, 20)), ("blue", (20, 20, 230))):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (30, 20), colour).save(folder / f"{i}.png")
    return root


def test_model_registered_in_conftest_runs_through_the_matrix(bench_pytester, tmp_path):
    bench_pytester.makepyfile(my_models=USER_MODELS)
    bench_pytester.syspathinsert()
    from my_models import TinyNet

    torch.manual_seed(0)
    weights = tmp_path / "my_net.pt"
    torch.save(TinyNet(2).state_dict(), weights)
    bench_pytester.makeconftest(CONFTEST.format(weights=str(weights)))
    data = write_image_folder(tmp_path / "flowers")
    result = bench_pytester.runpytest(
        "--pqbench-models=my_net", "--pqbench-pruners=none,group0.25",
        "--pqbench-workflows=torch,ort", "--pqbench-precisions=fp32,int8",
        "--pqbench-batch-sizes=4", "--pqbench-dataset", f"imagefolder={data}",
        "--benchmark-json=out.json", *SMOKE)
    outcomes = result.parseoutcomes()
    # every case ran, or was skipped with its reason where this machine cannot run it (e.g. INT8
    # in eager torch); none failed
    assert "failed" not in outcomes and "errors" not in outcomes, result.outlines[-20:]
    assert outcomes["passed"] + outcomes.get("skipped", 0) == 8 and outcomes["passed"] >= 6
    records = [b["extra_info"] for b in
               json.loads((bench_pytester.path / "out.json").read_text())["benchmarks"]]
    assert {r["case_id"] for r in records} >= {"my_net-none-torch-fp32-bs4",
                                                "my_net-group0.25-ort-int8-bs4"}
    assert all(r["model"] == "my_net" and r["dataset"] == "imagefolder" for r in records)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in records)
    group = next(r for r in records if r["pruner"] == "group")
    assert group["params"] < group["params_before"]  # the user's model really was pruned


def test_missing_weights_file_is_named(bench_pytester, tmp_path):
    bench_pytester.makepyfile(my_models=USER_MODELS)
    bench_pytester.syspathinsert()
    missing = tmp_path / "nowhere.pt"
    bench_pytester.makeconftest(CONFTEST.format(weights=str(missing)))
    data = write_image_folder(tmp_path / "flowers")
    result = bench_pytester.runpytest(
        "--pqbench-models=my_net", "--pqbench-pruners=none", "--pqbench-workflows=torch",
        "--pqbench-precisions=fp32", "--pqbench-batch-sizes=4", "--pqbench-dataset",
        f"imagefolder={data}", *SMOKE)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*weights file {str(missing)!r} does not exist*"])


ENTRY_POINT_PACKAGE = '''
from torch import nn

from pytest_pqbench.datasets.synthetic import shapes_dataset
from pytest_pqbench.models import ModelSpec


class EpNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def ep_data(seed: int = 0, **_):
    data = shapes_dataset(seed=seed, train=16, evaluation=16, calibration=8)
    data.name = "ep_data"
    return data


class KeepAll:
    """A user's pruner that removes nothing (enough to prove it was found and called)."""

    structure = "none"
    options = frozenset()

    def __call__(self, model, ctx):
        return model


SPEC = ModelSpec(name="ep_net", task="classify", input_shape=(3, 32, 32), builder=EpNet,
                 default_dataset="ep_data", min_accuracy=0.0, max_drop=1.0)
PRUNER = KeepAll()
'''


def test_entry_points_register_model_dataset_and_pruner(bench_pytester, monkeypatch):
    site = bench_pytester.mkdir("site")
    (site / "userpkg").mkdir()
    (site / "userpkg" / "__init__.py").write_text(ENTRY_POINT_PACKAGE)
    info = site / "userpkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: userpkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [pqbench.models]
        ep_net = userpkg:SPEC
        [pqbench.datasets]
        ep_data = userpkg:ep_data
        [pqbench.pruners]
        keepall = userpkg:PRUNER
        """))
    # a fresh interpreter: entry points are read once per process, as for an installed package
    monkeypatch.setenv("PYTHONPATH", f"{site}:{Path(__file__).parents[1]}")
    result = bench_pytester.runpytest_subprocess(
        "--pqbench-models=ep_net", "--pqbench-pruners=keepall0.1", "--pqbench-workflows=torch",
        "--pqbench-precisions=fp32", "--pqbench-batch-sizes=2", *SMOKE)
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("flag", ["--pqbench-models=not_registered"])
def test_unregistered_user_model_lists_the_valid_ones(bench_pytester, flag):
    result = bench_pytester.runpytest("--collect-only", flag)
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*unknown model 'not_registered'*scenes_yolo*shapes_resnet*"])


# ---- one message per user mistake ------------------------------------------------------------
# A MobileNetV3-style classifier, as a user would write it: depthwise convolutions, squeeze-excite
# multiply, hard-swish, inverted residuals (docs/tutorial/your-own-model.md uses the same net).
MOBILE_NET = '''
from torch import nn
from torch.nn import functional as F


def conv_bn(cin, cout, k=1, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.Hardswish()) if act else nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.reduce = nn.Conv2d(channels, max(8, channels // 4), 1)
        self.expand = nn.Conv2d(max(8, channels // 4), channels, 1)

    def forward(self, x):
        scale = self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * F.hardsigmoid(scale)


class InvertedResidual(nn.Module):
    def __init__(self, cin, hidden, cout, stride):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(cin, hidden), conv_bn(hidden, hidden, 3, stride, groups=hidden),
            SqueezeExcite(hidden), conv_bn(hidden, cout, act=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.body(x)
        return x + out if self.residual else out


class MyNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16, 3, 2), InvertedResidual(16, 32, 16, 1),
            InvertedResidual(16, 48, 24, 2), InvertedResidual(24, 64, 24, 1), conv_bn(24, 96))
        self.fc = nn.Linear(96, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))
'''


def mobile_net(num_classes: int):
    namespace: dict = {}
    exec(compile(MOBILE_NET, "my_models.py", "exec"), namespace)  # the test's own source text
    return namespace["MyNet"](num_classes)


@pytest.mark.parametrize("pruner", ["group", "layer", "taylor", "soft"])
def test_ignored_layer_keeps_its_shape_on_both_sides(pruner):
    """torch-pruning's ignored_layers keeps only a layer's outputs: the head's inputs were cut
    from 96 to 67 features. Protected now means both sides; protect_inputs=false is the old
    outputs-only behaviour."""
    import numpy as np

    from pytest_pqbench.pruners import PruneContext, prune

    model = mobile_net(3).eval()
    x = torch.randn(2, 3, 24, 24)
    calibration = [(np.random.default_rng(0).normal(size=(4, 3, 24, 24)).astype(np.float32),
                    np.array([0, 1, 2, 0]))]
    shapes = {}
    for protect in (True, False):
        ctx = PruneContext(ratio=0.3, example_inputs=x, ignored_layers=[model.fc],
                           calibration=calibration, options={"protect_inputs": protect})
        pruned, report = prune(model, pruner, ctx)
        weight = pruned.fc.weight
        live_inputs = int((weight.abs().sum(0) != 0).sum())  # zero-fill zeroes, removal cuts
        shapes[protect] = (tuple(weight.shape), live_inputs, report)
        assert pruned(x).shape == (2, 3)
    (shape, live, report), (_, live_unprotected, _) = shapes[True], shapes[False]
    assert shape == (3, 96) and live == 96
    assert live_unprotected < 96  # without protection the head's inputs are pruned
    if pruner != "soft":
        assert report.params < report.params_before  # the rest of the network was pruned


def test_l10_3_is_an_error_that_suggests_l1_0_3(bench_pytester):
    result = bench_pytester.runpytest("--collect-only", "--pqbench-pruners=l10.3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pruner 'l10.3': a name ending in a digit takes '_' before "
                                 "its ratio; did you mean l1_0.3?*"])


MISTAKE_CONFTEST = '''
from my_models import MyNet

from pytest_pqbench.models import ModelSpec, register_model

register_model(ModelSpec(
    name="mymodel", task="classify", input_shape=(3, 24, 24), builder={builder},
    default_dataset="flowers", weights={weights!r}, min_accuracy=0.0, max_drop=1.0,
    ignored_layers=lambda model: [model.fc],
), replace=True)
'''


def run_mistake(pytester, tmp_path, *, builder="MyNet", weights=None, extra=()):
    pytester.makepyfile(my_models=MOBILE_NET)
    pytester.syspathinsert()
    pytester.makeconftest(MISTAKE_CONFTEST.format(builder=builder, weights=weights))
    data = write_image_folder(tmp_path / "flowers")
    return pytester.runpytest(
        "--pqbench-models=mymodel", "--pqbench-workflows=torch", "--pqbench-precisions=fp32",
        "--pqbench-batch-sizes=4", "--pqbench-dataset", f"flowers={data}", *extra, *SMOKE)


def assert_one_line(result, message: str) -> None:
    """The message is there, once per failing case, without a traceback into this package."""
    result.stdout.fnmatch_lines([f"*{message}*"])
    out = result.stdout.str()
    assert "Traceback" not in out and "pytest_pqbench/" not in out, out[-3000:]


def test_weights_that_do_not_fit_name_the_file_and_the_keys(bench_pytester, tmp_path):
    bench_pytester.makepyfile(my_models=MOBILE_NET)
    bench_pytester.syspathinsert()
    weights = tmp_path / "five_classes.pt"
    torch.save(mobile_net(5).state_dict(), weights)
    result = run_mistake(bench_pytester, tmp_path, weights=str(weights),
                         extra=["--pqbench-pruners=none"])
    result.assert_outcomes(errors=1)
    assert_one_line(result, f"model 'mymodel': weights file {str(weights)!r} does not fit MyNet "
                            "built for the 2 classes of dataset 'flowers': shape mismatch "
                            "fc.weight (5, 96) in the file vs (2, 96) in the model, fc.bias (5,)")


def test_wrong_class_count_names_the_model_its_width_and_the_dataset(bench_pytester, tmp_path):
    result = run_mistake(bench_pytester, tmp_path, builder="lambda num_classes: MyNet(7)",
                         extra=["--pqbench-pruners=none"])
    result.assert_outcomes(errors=1)
    assert_one_line(result, "model 'mymodel' outputs (1, 7) per batch (7 classes) but dataset "
                            "'flowers' (*flowers) has 2 classes (blue, red)")


def test_model_without_trainer_in_a_finetuning_run_fails_its_pruned_cases_in_one_line(
        bench_pytester, tmp_path):
    bench_pytester.makepyfile(my_models=MOBILE_NET)
    bench_pytester.syspathinsert()
    weights = tmp_path / "mymodel.pt"
    torch.save(mobile_net(2).state_dict(), weights)
    result = run_mistake(bench_pytester, tmp_path, weights=str(weights),
                         extra=["--pqbench-pruners=none,group0.3,l1_0.3",
                                "--pqbench-finetune-epochs=1", "--benchmark-json=out.json"])
    result.assert_outcomes(passed=1, errors=2)
    assert_one_line(result, "model 'mymodel' has no trainer, so pruned case "
                            "mymodel-group0.3-torch-fp32-bs4 cannot be fine-tuned "
                            "(finetune_epochs=1, distill=False): give ModelSpec(trainer=...)")
    records = json.loads((bench_pytester.path / "out.json").read_text())["benchmarks"]
    assert [r["extra_info"]["case_id"] for r in records] == ["mymodel-none-torch-fp32-bs4"]


def test_relative_weights_resolve_from_the_declaring_conftest(bench_pytester, tmp_path):
    """weights="weights/mymodel.pt" in benchmarks/conftest.py is benchmarks/weights/mymodel.pt,
    whatever the current directory."""
    bench_pytester.makepyfile(my_models=MOBILE_NET)
    bench_pytester.syspathinsert()
    bench = bench_pytester.mkdir("benchmarks")
    (bench / "weights").mkdir()
    torch.save(mobile_net(2).state_dict(), bench / "weights" / "mymodel.pt")
    (bench / "conftest.py").write_text(MISTAKE_CONFTEST.format(builder="MyNet",
                                                              weights="weights/mymodel.pt"))
    (bench / "test_matrix.py").write_text((bench_pytester.path / "test_matrix.py").read_text())
    (bench_pytester.path / "test_matrix.py").unlink()
    data = write_image_folder(tmp_path / "flowers")
    result = bench_pytester.runpytest(
        "benchmarks", "--pqbench-models=mymodel", "--pqbench-workflows=torch",
        "--pqbench-precisions=fp32", "--pqbench-pruners=none", "--pqbench-batch-sizes=4",
        "--pqbench-dataset", f"flowers={data}", *SMOKE)
    result.assert_outcomes(passed=1)


# ---- the truth of the record: calibration method and INT8 coverage ----------------------------
def build_engine(workflow: str, precision: str, tmp_path, method: str = "minmax"):
    import numpy as np

    from pytest_pqbench.cache import ArtefactCache
    from pytest_pqbench.workflows import BuildContext, get_workflow

    model = mobile_net(3).eval()
    images = np.random.default_rng(0).normal(size=(8, 3, 24, 24)).astype(np.float32)
    ctx = BuildContext(cache=ArtefactCache(tmp_path), model_key=f"{workflow}-{precision}-{method}",
                       threads=1, batch_sizes=(4,),
                       options={"calibration_method": method})
    return get_workflow(workflow).build(model, precision, [images], images, ctx)


def test_ort_records_int8_coverage_of_the_graph_it_executes(tmp_path):
    int8 = build_engine("ort", "int8", tmp_path)
    fp32 = build_engine("ort", "fp32", tmp_path)
    # every conv / gemm of the MobileNetV3-style net runs in INT8, but the hard-sigmoid and
    # squeeze-excite multiplies stay float: each leaves a quantize / dequantize pair
    assert int8.facts["int8_mac_share"] > 0.99 and int8.facts["int8_coverage_basis"] == "macs"
    assert int8.facts["qdq_pairs"] >= 8
    assert int8.facts["quant_format"] == "QDQ per-channel U8S8"
    assert fp32.facts["int8_mac_share"] == 0.0 and fp32.facts["qdq_pairs"] == 0
    assert fp32.facts["quant_format"] is None
    print("ort int8", {k: int8.facts[k] for k in ("int8_mac_share", "qdq_pairs", "quant_format")})


def test_inductor_int8_records_the_calibration_it_used_and_its_coverage(tmp_path):
    pytest.importorskip("torchao")
    engine = build_engine("inductor", "int8", tmp_path)
    facts = engine.facts
    assert facts["calibration_method"] == "minmax"  # was "histogram" whatever was asked
    assert facts["int8_mac_share"] > 0.99 and facts["qdq_pairs"] >= 1
    assert facts["quant_format"] == "PT2E QDQ per-channel U8S8"
    print("inductor int8", {k: facts[k] for k in ("int8_mac_share", "qdq_pairs",
                                                  "quant_format")})
    with pytest.raises(pytest.skip.Exception, match="inductor INT8 cannot calibrate with "
                                                    "'entropy'.*use the ort workflow"):
        build_engine("inductor", "int8", tmp_path, method="entropy")
