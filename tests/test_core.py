"""Unit tests of the spine: datasets, case ids and parsing, the artefact cache, ONNX + INT8."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pytest_pqbench.cache import ArtefactCache, atomic_write_bytes
from pytest_pqbench.case import Case, PrunerSpec, parse_pruner
from pytest_pqbench.datasets.synthetic import render_shapes, shapes_dataset
from pytest_pqbench.models.classifiers import ResNetSmall
from pytest_pqbench.pruners import PRUNERS, PruneContext, fixed_ratio_names, prune
from pytest_pqbench.registry import UsageError
from pytest_pqbench.workflows import BuildContext, get_workflow

KNOWN = ["none", "group", "l1", "l1-global", "semi24", "ln-structured"]
FIXED = fixed_ratio_names()  # the pruner objects declare it (``fixed_ratio = True``)


# ---- datasets ----------------------------------------------------------------------------------
def test_shapes_dataset_is_deterministic_and_splits_are_disjoint():
    a = shapes_dataset(seed=3, train=200, evaluation=100, calibration=50)
    b = shapes_dataset(seed=3, train=200, evaluation=100, calibration=50)
    np.testing.assert_array_equal(a.evaluation.images, b.evaluation.images)
    assert a.fingerprint == b.fingerprint
    assert a.num_classes >= 10 and set(np.unique(a.train.labels)) == set(range(a.num_classes))
    digests = {}
    for name in ("train", "evaluation", "calibration"):
        digests[name] = {hashlib.sha1(img.tobytes()).hexdigest()
                         for img in getattr(a, name).images}
    assert not digests["train"] & digests["evaluation"]
    assert not digests["train"] & digests["calibration"]
    assert not digests["evaluation"] & digests["calibration"]
    c = shapes_dataset(seed=4, train=200, evaluation=100, calibration=50)
    assert c.fingerprint != a.fingerprint
    assert not np.array_equal(c.evaluation.images, a.evaluation.images)


def test_rendered_shapes_differ_by_class():
    images, labels = render_shapes(400, seed=1, noise=0.0)
    assert images.min() >= 0.0 and images.max() <= 1.0
    # the fraction of foreground pixels depends on the shape: classes are not interchangeable
    fill = {c: [] for c in range(10)}
    for img, lab in zip(images, labels, strict=True):
        bg = img[:, 0, 0][:, None, None]
        fill[int(lab)].append(float((np.abs(img - bg).sum(0) > 0.1).mean()))
    means = sorted(np.mean(v) for v in fill.values())
    assert means[-1] > 2 * means[0]


# ---- cases -------------------------------------------------------------------------------------
def test_fixed_ratio_is_declared_by_the_pruners():
    assert FIXED >= {"none", "semi24"} and not FIXED & {"group", "l1", "l1-global"}


@pytest.mark.parametrize(("text", "spec"), [
    ("none", PrunerSpec("none", 0.0)), ("group0.2", PrunerSpec("group", 0.2)),
    ("group", PrunerSpec("group", 0.2)), ("l1-global0.5", PrunerSpec("l1-global", 0.5)),
    ("l1.3", PrunerSpec("l1", 0.3)), ("l1_0.3", PrunerSpec("l1", 0.3)),
    ("semi24", PrunerSpec("semi24", 0.0)),
])
def test_parse_pruner(text, spec):
    assert parse_pruner(text, KNOWN, fixed=FIXED) == spec


@pytest.mark.parametrize("text", ["bogus", "group1.0", "groupx", "semi2"])
def test_parse_pruner_rejects_with_choices(text):
    with pytest.raises(UsageError, match="group"):
        parse_pruner(text, KNOWN, fixed=FIXED)


@pytest.mark.parametrize(("text", "words"), [
    ("l10.3", "did you mean l1_0.3"), ("group-0.1", "'-0.1'.*negative"),
    ("groupnan", "'nan'.*plain decimal"), ("group1e-3", "'1e-3'.*plain decimal")])
def test_parse_pruner_ambiguous_and_invalid_ratios_are_one_clear_error(text, words):
    with pytest.raises(UsageError, match=words):
        parse_pruner(text, KNOWN, fixed=FIXED)


def test_case_ids_spell_fixed_and_ratio_pruners_as_before():
    tokens = [parse_pruner(t, KNOWN, fixed=FIXED).token
              for t in ("none", "semi24", "group0.2", "l1_0.3", "group0")]
    assert tokens == ["none", "semi24", "group0.2", "l1_0.3", "group0"]
    # rebuilt from a record (fixed not known): a zero ratio reads as fixed, a ratio is kept
    assert [PrunerSpec("semi24", 0.0).token, PrunerSpec("l1", 0.3).token] == ["semi24", "l1_0.3"]


def test_a_user_pruner_declares_its_fixed_ratio():
    from pytest_pqbench.config import Settings

    class Fixed:
        structure, options, fixed_ratio = "zero-fill", frozenset(), True

        def __call__(self, model, ctx):
            return model

    class Ratio(Fixed):
        fixed_ratio = False

    PRUNERS.register("mine", Fixed())
    PRUNERS.register("mine2", Ratio())
    try:
        settings = Settings.resolve({"pruners": "mine,mine2,mine2_0.3"}, {}, {})
        assert [p.token for p in settings.pruner_specs()] == ["mine", "mine2_0.2", "mine2_0.3"]
        with pytest.raises(UsageError, match="unknown pruner 'mine0.3'"):
            Settings.resolve({"pruners": "mine0.3"}, {}, {})
    finally:
        PRUNERS.unregister("mine")
        PRUNERS.unregister("mine2")


@given(name=st.sampled_from(KNOWN), ratio=st.floats(0.0, 0.99, allow_nan=False))
def test_pruner_token_round_trips(name, ratio):
    sep = "_" if name[-1].isdigit() else ""  # 'l10.5' is ambiguous: an error
    spec = parse_pruner(name if name in FIXED else f"{name}{sep}{ratio:.6f}", KNOWN, fixed=FIXED)
    assert parse_pruner(spec.token, KNOWN, fixed=FIXED) == spec


def test_case_id_and_baseline():
    case = Case("m", "d", PrunerSpec("group", 0.2), "ort", "int8", 32)
    assert case.id == "m-group0.2-ort-int8-bs32"
    assert case.baseline.id == "m-none-torch-fp32-bs32"
    assert hash(case) == hash(Case("m", "d", PrunerSpec("group", 0.2), "ort", "int8", 32))


# ---- artefact cache ----------------------------------------------------------------------------
def test_cache_builds_once_then_hits(tmp_path):
    cache = ArtefactCache(tmp_path)
    calls = []

    def build(d: Path):
        calls.append(1)
        (d / "blob").write_bytes(b"x" * 100)
        return {"answer": 42}

    key = cache.key("thing", {"a": 1})
    first = cache.get_or_build("thing", key, build)
    second = cache.get_or_build("thing", key, build)
    assert len(calls) == 1 and not first.hit and second.hit
    assert second.meta["answer"] == 42 and second.file("blob").read_bytes() == b"x" * 100
    assert cache.key("thing", {"a": 2}) != key


def test_cache_rebuilds_truncated_entry_with_warning(tmp_path):
    cache = ArtefactCache(tmp_path)
    key = cache.key("thing", {})
    entry = cache.get_or_build("thing", key, lambda d: (d / "blob").write_bytes(b"abc" * 1000)
                               and None)
    entry.file("blob").write_bytes(b"abc")  # truncated behind the cache's back
    with pytest.warns(UserWarning, match="content hash mismatch"):
        again = ArtefactCache(tmp_path).get_or_build(
            "thing", key, lambda d: (d / "blob").write_bytes(b"abc" * 1000) and None)
    assert not again.hit and again.file("blob").read_bytes() == b"abc" * 1000


def test_failed_build_leaves_nothing(tmp_path):
    cache = ArtefactCache(tmp_path)

    def explode(d: Path):
        (d / "half").write_bytes(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.get_or_build("thing", "k", explode)
    assert cache.lookup("thing", "k") is None
    assert not [p for p in (tmp_path / "thing").iterdir() if p.is_dir()]


def _writer(path: str, n: int) -> None:
    for _ in range(n):
        atomic_write_bytes(Path(path), json.dumps({"payload": "y" * 50_000}).encode())


def test_trained_model_is_rebuilt_when_its_trainer_code_changes(tmp_path, monkeypatch):
    # A trainer edited between runs (another stopping rule) must not reuse the old model.
    import importlib
    import sys

    from pytest_pqbench.models import ModelSpec, load_model

    monkeypatch.syspath_prepend(str(tmp_path))
    data = shapes_dataset(seed=1, size=16, train=32, evaluation=16, calibration=8)
    cache = ArtefactCache(tmp_path / "cache")

    def run(body: str) -> dict:
        (tmp_path / "my_trainer.py").write_text(
            "import torch\n"
            "def train(model, dataset, seed=0):\n"
            f"    {body}\n"
            "    return {}\n")
        sys.modules.pop("my_trainer", None)
        module = importlib.import_module("my_trainer")
        spec = ModelSpec(name="tiny", task="classify", input_shape=(3, 16, 16),
                         builder=lambda n: torch.nn.Sequential(
                             torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, n)),
                         default_dataset="shapes",
                         trainer=module.train)
        return load_model(spec, data, cache)[1]

    assert run("pass")["cache_hit"] is False
    assert run("pass")["cache_hit"] is True
    assert run("torch.manual_seed(seed)")["cache_hit"] is False


def test_atomic_write_never_exposes_a_partial_file(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_bytes(target, json.dumps({"payload": ""}).encode())
    proc = multiprocessing.get_context("fork").Process(target=_writer, args=(str(target), 200))
    proc.start()
    while proc.is_alive():
        json.loads(target.read_text())  # raises if a half-written file is ever visible
    proc.join()
    assert not list(tmp_path.glob(".*tmp"))


# ---- pruning and ONNX on a tiny net ------------------------------------------------------------
def test_group_pruner_keeps_shape_reduces_params_and_leaves_input_alone(tiny_images):
    model = ResNetSmall(10, (8, 16, 16)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.from_numpy(tiny_images)
    pruned, report = prune(model, "group", PruneContext(0.3, x[:2], [model.fc]))
    assert pruned(x).shape == model(x).shape == (8, 10)
    assert report.params < report.params_before and report.macs < report.macs_before
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"input model mutated at {k}"


@pytest.fixture(scope="module")
def trained_small():
    """A tiny ResNet trained briefly on a small shapes set: enough to score INT8 against FP32."""
    from pytest_pqbench.models.training import train_classifier

    data = shapes_dataset(seed=7, train=2000, evaluation=256, calibration=64)
    torch.manual_seed(0)
    model = ResNetSmall(10, (8, 16, 32))
    info = train_classifier(model, data, epochs=6, lr=1e-2, target=0.9)
    return model.eval(), data, info


def test_onnx_int8_has_qdq_nodes_and_keeps_accuracy(trained_small, tmp_path):
    from pytest_pqbench.metrics.accuracy import evaluate
    from pytest_pqbench.models import get_spec

    model, data, info = trained_small
    spec = get_spec("shapes_resnet")
    ort_wf = get_workflow("ort")
    calib = list(data.calibration_batches(32))
    scores = {}
    for precision in ("fp32", "int8"):
        ctx = BuildContext(cache=ArtefactCache(tmp_path), model_key="t", threads=1)
        engine = ort_wf.build(model, precision, calib, data.batch(8), ctx)
        scores[precision] = evaluate(engine, data, spec, 32)["accuracy"]
        if precision == "int8":
            graph = onnx.load(engine.facts["artefact"]["path"]).graph
            ops = [n.op_type for n in graph.node]
            assert ops.count("QuantizeLinear") > 5 and ops.count("DequantizeLinear") > 5
            assert engine.facts["precision_engaged"] > 0.9
    assert scores["fp32"] > 0.5, info
    assert abs(scores["fp32"] - scores["int8"]) <= 0.03


# ---- engine facts in the record ------------------------------------------------------------------
def test_record_copies_every_engine_fact_and_sums_prep_stages_by_their_cache_hits():
    from pytest_pqbench.results.record import CaseRecord
    from pytest_pqbench.stages.record import CaseFacts, make_record
    from pytest_pqbench.workflows.base import PREP_STAGES

    case = Case("shapes_resnet", "shapes", PrunerSpec("group", 0.2), "ort", "int8", 8)
    facts = {"provider": "CPUExecutionProvider", "user_fact": {"kernels": 3},  # unknown key
             "handle": object(),  # not JSON: left out, not an error
             "model": "not-the-model",  # a case field keeps its value
             "export_seconds": 2.0, "export_cache_hit": True,  # paid by an earlier run
             "calibrate_seconds": 1.0, "calibrate_cache_hit": False, "build_seconds": 0.5}
    prune_report = {"params": 1, "macs": 2, "params_before": 3, "macs_before": 4,
                    "zero_fraction": 0.0, "prune_seconds": 0.25, "structure": "removed",
                    "model_bytes": 10}
    made = make_record(CaseFacts(
        case, task="classify", deadline_ms=33.3, device="cpu", threads=1, versions={},
        engine_facts=facts, prune_report=prune_report, recovery={"recovery_seconds": 4.0},
        accuracy={"accuracy": 0.9}, reference={"accuracy": 0.95},
        floor={"min_accuracy": 0.0, "max_drop": 1.0}, train_info={}), None)
    record = made.extra_info()
    assert record["user_fact"] == {"kernels": 3} and "handle" not in record
    assert record["model"] == "shapes_resnet"
    assert record["accuracy_drop"] == pytest.approx(0.05)
    # written once, read back once: the same record
    back = CaseRecord.from_benchmark(json.loads(json.dumps({"extra_info": record, "stats": {}})))
    assert back == made
    assert set(PREP_STAGES) == {"export_seconds", "calibrate_seconds", "build_seconds"}
    assert record["prep_seconds"] == pytest.approx(0.25 + 4.0 + 1.0 + 0.5)  # export was a hit
