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
