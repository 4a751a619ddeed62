"""A pytest plugin for the history benchmark (``history_benchmark.py``): real extra work planted
in one case's *artefact*, so that re-timing the run's recorded engine later still does it.

``PQBENCH_PLANT_CASE=<case id> PQBENCH_PLANT_WIDTH=<m> pytest benchmarks -p history_plant_plugin``

``slowdown_plugin`` (the gate calibration's) slows the engine in memory only: a later paired
re-timing of the run's ONNX file would not see it. Here the case's ONNX file gets extra nodes:
the flattened batch ``[N, D]`` times a ``[D, m]`` matrix (``ConstantOfShape``: a few bytes in
the file, folded into a weight when the session loads it), reduced to a scalar, multiplied by
zero and added to the output. The output is unchanged; the work, ``N * D * m`` multiply-adds
on every call, is done by ONNX Runtime, which cannot fold it (it depends on the input). The
planted file is stored in the artefact cache (kind ``planted``, content-addressed by the
original's sha256 and ``m``) and recorded as the run's artefact. The case keeps the original's
``model_bytes`` (the planted file is larger by a few nodes): a benchmark device, not a model
change. Only ONNX workflows (``ort``) are planted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TARGET = os.environ.get("PQBENCH_PLANT_CASE", "")
WIDTH = int(os.environ.get("PQBENCH_PLANT_WIDTH", "0") or 0)
SCALE = 1e-3  # the planted weight's value (any finite value: its product is multiplied by 0)


def plant(source: Path, width: int, out: Path) -> None:
    """Write ``source`` with ``N * D * width`` extra multiply-adds per call to ``out``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    shape = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]]
    features = 1
    for d in shape:
        features *= d
    output = graph.output[0].name
    unplanted = f"{output}_unplanted"
    for node in graph.node:  # the output's producer (and any reader) now use the new name
        node.output[:] = [unplanted if o == output else o for o in node.output]
        node.input[:] = [unplanted if i == output else i for i in node.input]
    import numpy as np

    graph.initializer.extend([
        numpy_helper.from_array(np.array([features, width], dtype=np.int64), "planted_shape"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "planted_zero")])
    value = helper.make_tensor("planted_value", TensorProto.FLOAT, [1], [SCALE])
    graph.node.extend([
        helper.make_node("Flatten", [graph.input[0].name], ["planted_flat"], axis=1),
        helper.make_node("ConstantOfShape", ["planted_shape"], ["planted_weight"], value=value),
        helper.make_node("MatMul", ["planted_flat", "planted_weight"], ["planted_work"]),
        helper.make_node("ReduceMean", ["planted_work"], ["planted_mean"], keepdims=0),
        helper.make_node("Mul", ["planted_mean", "planted_zero"], ["planted_nothing"]),
        helper.make_node("Add", [unplanted, "planted_nothing"], [output]),
    ])
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def planted_artefact(artefact: dict[str, Any], width: int, cache_root: Path) -> dict[str, Any]:
    """The portable artefact of ``artefact``'s ONNX file with ``width`` planted, from the cache."""
    from pytest_pqbench.cache import ArtefactCache, stable_hash
    from pytest_pqbench.workflows.ort import portable_artefact

    cache = ArtefactCache(cache_root)
    key = stable_hash({"source": artefact["sha256"], "width": width})[:32]
    entry = cache.get_or_build("planted", key, lambda tmp: plant(
        Path(artefact["path"]), width, tmp / "model.onnx") or {"width": width})
    return portable_artefact(entry.file("model.onnx"), artefact.get("providers") or [])


def pytest_configure(config) -> None:
    if not TARGET or WIDTH <= 0:
        return
    from pytest_pqbench.stages.build import Builder
    from pytest_pqbench.workflows import get_workflow

    original = Builder.engine

    def engine(self, case):
        built = original(self, case)
        if case.id != TARGET or built.facts.get("planted_work"):
            return built
        artefact = built.facts.get("artefact") or {}
        if case.workflow != "ort" or artefact.get("format") != "onnx":
            raise RuntimeError(f"history_plant_plugin plants ONNX (ort) cases only, not {case.id}")
        planted = planted_artefact(artefact, WIDTH, self.prep.cache.root)
        loaded = get_workflow("ort").load_portable(planted, self.threads, self.device)
        built._run = loaded._run
        built.facts["artefact"] = planted
        built.facts["planted_work"] = {"width": WIDTH, "source_sha256": artefact["sha256"]}
        return built

    Builder.engine = engine
