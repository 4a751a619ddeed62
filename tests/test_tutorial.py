"""The docs' "Tutorial: your own model" (docs/tutorial/your-own-model.md), done as a newcomer
would: every file the tutorial prints is written from that page itself, its images are PNGs
written here, and its commands run as separate processes in the project folder (``pytest`` with
smoke timing added). Nothing may print a traceback, and the results must hold the user's model
with its accuracy, deadline and INT8 coverage."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TUTORIAL = Path(__file__).parents[1] / "docs" / "tutorial" / "your-own-model.md"
SMOKE_TIMING = ["--pqbench-timing-profile=smoke", "--pqbench-min-rounds=3",
                "--pqbench-min-time=0", "--pqbench-warmup-rounds=1", "-p", "no:cacheprovider"]


def tutorial() -> tuple[dict[str, str], list[str]]:
    """The files (path -> text) and the commands of the tutorial page, up to its "Next" links."""
    text = TUTORIAL.read_text()
    section = text[:text.index("\n## Next")]
    files, commands = {}, []
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S):
        first, _, rest = body.partition("\n")
        if lang == "bash":
            commands += [line for line in body.splitlines() if line.strip()]
        elif first.startswith("# ") and first[2:].strip().endswith((".py", ".toml")):
            files[first[2:].strip()] = body if lang == "python" else rest
    return files, commands


def write_images(root: Path, size: int = 40) -> None:
    """The user's own images: two classes (flowers with a red or a yellow centre on green)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 40), ("val", 16)):
        for name, centre in (("poppy", (220, 30, 30)), ("sunflower", (240, 210, 20))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = np.empty((size, size, 3))
                img[:] = (40, 120 + rng.integers(-30, 30), 40)
                cy, cx = rng.integers(10, size - 10, size=2)
                r = int(rng.integers(5, 9))
                yy, xx = np.mgrid[:size, :size]
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = centre
                img += rng.normal(0, 12, img.shape)
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    args = shlex.split(command)
    if args[0] == "python":
        args = [sys.executable, *args[1:]]
    elif args[0] == "pytest":
        args = [sys.executable, "-m", "pytest", *args[1:], *SMOKE_TIMING]
    elif args[0] == "pqbench":
        args = [sys.executable, "-m", "pytest_pqbench.cli", *args[1:]]
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900)


def test_tutorial_runs_first_time_without_a_traceback(tmp_path):
    files, commands = tutorial()
    assert set(files) == {"mynets.py", "pyproject.toml", "make_weights.py",
                          "benchmarks/conftest.py", "benchmarks/test_matrix.py"}
    assert [c.split()[0] for c in commands] == ["python", "pytest", "pqbench", "pqbench"]
    project = tmp_path / "myproject"
    for name, text in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    write_images(project / "data" / "flowers")

    outputs = {}
    for command in commands:
        proc = run(command, project)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{command}:\n{out[-4000:]}"
        assert "Traceback" not in out, f"{command}:\n{out[-4000:]}"
        outputs[command.split()[0] + (command.split()[1] if command.startswith("pq") else "")] = out

    # the run: 6 cases ran, 2 skipped (eager torch has no INT8), none failed
    summary = next(line for line in outputs["pytest"].splitlines() if " passed" in line)
    assert "6 passed" in summary and "2 skipped" in summary and "failed" not in summary, summary
    records = {b["extra_info"]["case_id"]: b["extra_info"] for b in
               json.loads((project / "results.json").read_text())["benchmarks"]}
    assert set(records) == {f"mymodel-{p}-{w}-{q}-bs8" for p in ("none", "group0.3")
                            for w, q in (("torch", "fp32"), ("ort", "fp32"), ("ort", "int8"))}
    for record in records.values():
        assert record["dataset"] == "flowers" and record["accuracy"] >= 0.85
        assert record["deadline_ms"] == pytest.approx(33.3)  # the default deadline, user spec too
    group = records["mymodel-group0.3-ort-int8-bs8"]
    assert group["params"] < group["params_before"] and group["finetune_epochs"] == 3
    for case in ("mymodel-none-ort-int8-bs8", "mymodel-group0.3-ort-int8-bs8"):
        int8 = records[case]
        assert int8["quant_format"] == "QDQ per-channel U8S8"
        assert int8["int8_mac_share"] > 0.9 and int8["qdq_pairs"] >= 1
        print(case, {k: int8[k] for k in ("int8_mac_share", "qdq_pairs", "quant_format",
                                          "p50_ms")})
    fp32 = records["mymodel-none-ort-fp32-bs8"]
    assert fp32["int8_mac_share"] == 0.0 and fp32["qdq_pairs"] == 0

    # pqbench list sees the model registered in benchmarks/conftest.py
    listing = outputs["pqbenchlist"]
    assert "mymodel-group0.3-ort-int8-bs8" in listing
    assert listing.strip().splitlines()[-1].startswith("8 cases, 6 run here, 2 skipped")
    # pqbench report shows every case of the user's model: its two pruners x three engines
    report = outputs["pqbenchreport"]
    assert "mymodel / none" in report and "mymodel / group0.3" in report
    assert all(column in report for column in ("torch fp32", "ort fp32", "ort int8"))
