"""``pqbench report --format html`` on a real run: one self-contained page that parses, holds every
case with its recorded values, embeds decodable charts, marks floor failures and, with
``--baseline``, every verdict with its reason; rendered by headless Chromium where installed."""

from __future__ import annotations

import base64
import copy
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from pqbench_runs import produce_real_run, variant, write

from pytest_pqbench.cli import main

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Page(HTMLParser):
    """Tables (by id) as rows of cell texts with each row's class, images, scripts, links."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[str, list[str]]]] = {}
        self.images: dict[str, str] = {}
        self.external: list[str] = []
        self.scripts = 0
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._row_class = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr":
            self._row, self._row_class = [], a.get("class") or ""
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images[a.get("id") or ""] = a.get("src") or ""
        elif tag == "script":
            self.scripts += 1
            if a.get("src"):
                self.external.append(a["src"])
        elif tag == "link" and a.get("href"):
            self.external.append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append((self._row_class, self._row))
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    page.close()
    return page


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return produce_real_run(tmp_path_factory)


def infos(run: dict) -> dict[str, dict]:
    return {b["extra_info"]["case_id"]: b["extra_info"] for b in run["benchmarks"]
            if "case_id" in b["extra_info"]}


def report(tmp_path: Path, run: dict, *extra: str) -> Path:
    page = tmp_path / "report.html"
    assert main(["report", str(write(tmp_path / "run.json", run)), "--format", "html", "-o",
                 str(page), *extra]) == 0
    return page


def cases_by_id(page: Page) -> dict[str, tuple[str, dict[str, str]]]:
    (_, header), *rows = page.tables["cases"]
    return {cells[0]: (cls, dict(zip(header, cells, strict=True))) for cls, cells in rows}


def test_page_parses_holds_every_case_and_embeds_its_charts(real_run, tmp_path):
    page_path = report(tmp_path, real_run)
    text = page_path.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    page = parse(page_path)
    assert page.external == []  # self-contained: nothing fetched to view it
    rows = cases_by_id(page)
    # every selected case: the timed ones and the skipped eager-torch INT8 one, with its reason
    assert sorted(rows) == sorted(c["case_id"] for c in real_run["pqbench"]["cases"])
    untimed = [c for c in real_run["pqbench"]["cases"] if c["case_id"] not in infos(real_run)]
    assert untimed and all(rows[c["case_id"]][1]["outcome"] == c["outcome"]
                           and c["reason"] in rows[c["case_id"]][1]["notes"] for c in untimed)
    samples = {b["extra_info"]["case_id"]: b["stats"]["data"] for b in real_run["benchmarks"]
               if "case_id" in b["extra_info"]}
    for case_id, info in infos(real_run).items():
        cls, row = rows[case_id]
        assert row["p50 ms"] == f"{info['p50_ms']:.3f}"
        assert row["accuracy"] == f"{info['accuracy_metric']} {info['accuracy'] * 100:.1f}%"
        assert row["outcome"] == "passed"
        if "latency_speedup_not_meaningful" in info:  # its interval cannot support a figure
            assert row["speed-up"] == "not meaningful"
        elif "latency_speedup_ci" in info:
            low, high = info["latency_speedup_ci"]
            assert row["speed-up"] == f"{info['latency_speedup']:.2f}x ({low:.2f}-{high:.2f})"
        else:
            assert row["speed-up"] == f"{info['latency_speedup']:.2f}x"
        assert row["size MB"] == f"{info['model_bytes'] / 1e6:.3f}"
        assert row["floor"] == "ok" and "fail" not in cls
        if "p50_ci_ms" in info:  # the record's interval, else the middle half of its rounds
            low, high = info["p50_ci_ms"]
        else:
            low, high = np.percentile(np.asarray(samples[case_id]) * 1e3, [25, 75])
        assert row["interval ms"] == f"{low:.3f} - {high:.3f}"
    for chart in ("pareto", "latency"):
        src = page.images[chart]
        assert src.startswith("data:image/png;base64,")
        image = matplotlib.image.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])),
                                        format="png")
        assert image.shape[0] > 300 and image.shape[1] > 300 and image.std() > 0.01
    assert page.scripts == 1
    assert "not in git" in text  # the run was made outside a git checkout
    versions = real_run["machine_info"]["pqbench"]["versions"]
    assert f"torch {versions['torch']}" in text


def test_floor_failure_is_marked(real_run, tmp_path):
    run = copy.deepcopy(real_run)
    bench = run["benchmarks"][0]["extra_info"]
    bench["accuracy"] = bench["min_accuracy"] - 0.01  # below its floor (accuracy is <= 1)
    page = parse(report(tmp_path, run))
    cls, row = cases_by_id(page)[bench["case_id"]]
    assert row["floor"] == "FAIL" and "fail" in cls.split()
    assert sum(r[1]["floor"] == "FAIL" for r in cases_by_id(page).values()) == 1


def test_baseline_adds_every_verdict_with_its_reason(real_run, tmp_path):
    slower = variant(real_run, times=3.0)
    base = write(tmp_path / "base.json", real_run)
    page = parse(report(tmp_path, slower, "--baseline", str(base)))
    (_, header), *rows = page.tables["verdicts"]
    assert header[:2] == ["case", "metric"] and header[-2:] == ["verdict", "reason"]
    latency = {cells[0]: (cls, cells) for cls, cells in rows if cells[1] == "latency"}
    assert sorted(latency) == sorted(infos(real_run))
    for cls, cells in latency.values():
        assert cells[-1]  # a reason is given for every latency verdict
        if cells[-2] == "regressed":
            assert cls == "fail"


def test_baseline_needs_one_run_and_a_page_or_markdown(real_run, tmp_path, capsys):
    run = write(tmp_path / "run.json", real_run)
    assert main(["report", str(run), "--format", "csv", "--baseline", str(run)]) == 2
    assert "--baseline" in capsys.readouterr().err


needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason=f"headless Chromium not installed ({CHROMIUM} missing; Debian: apt-get install -y "
           "chromium): the page is not rendered by a browser here")


def chromium(page: Path, profile: Path, *args: str, fragment: str = "") -> str:
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--no-first-run",
         f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args,
         page.resolve().as_uri() + fragment],
        capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@needs_chromium
def test_chromium_renders_table_charts_and_sorts(real_run, tmp_path):
    page = report(tmp_path, real_run)
    dom = chromium(page, tmp_path / "profile", "--dump-dom", fragment="#sort=p50_ms:desc")
    rendered = Page()
    rendered.feed(dom)
    # the browser ran the script: both charts decoded, the table sorted as the address asks
    assert 'id="charts-decoded">2/2<' in dom
    order = [c for c in cases_by_id(rendered) if c in infos(real_run)]
    by_p50 = sorted(infos(real_run), key=lambda c: -infos(real_run)[c]["p50_ms"])
    assert order == by_p50
    assert list(cases_by_id(rendered))[-1] not in infos(real_run)  # no p50: sorted last
    shot = tmp_path / "shot.png"
    chromium(page, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,1600",
             "--hide-scrollbars")
    image = matplotlib.image.imread(shot)
    assert image.shape[:2] == (1600, 1280) and image.std() > 0.05  # not a blank page


def with_untimed_cases(run: dict) -> dict:
    """The real run plus the outcome section's entries of an errored and a skipped case (what
    a run writes for cases that never reached timing)."""
    out = copy.deepcopy(run)
    info = out["benchmarks"][0]["extra_info"]
    axes = {k: info[k] for k in ("model", "dataset", "workflow", "batch_size")}
    out["pqbench"]["cases"] = [
        {"case_id": "shapes_resnet-l1_0.3-ort-fp32-bs8", "outcome": "error", **axes,
         "pruner": "l1", "ratio": 0.3, "precision": "fp32",
         "reason": "shapes_resnet-l1_0.3-ort-fp32-bs8: fine-tuning with trainer my.loop "
                   "failed: RuntimeError: boom"},
        {"case_id": "shapes_resnet-layer0.3-ort-fp32-bs8", "outcome": "skipped", **axes,
         "pruner": "layer", "ratio": 0.3, "precision": "fp32",
         "reason": "pruner 'layer' does not apply to shapes_resnet: no BatchNorm"}]
    return out


def test_cases_without_figures_are_rows_with_their_reason(real_run, tmp_path):
    page = parse(report(tmp_path, with_untimed_cases(real_run)))
    rows = cases_by_id(page)
    assert len(rows) == len(infos(real_run)) + 2
    cls, row = rows["shapes_resnet-l1_0.3-ort-fp32-bs8"]
    assert row["outcome"] == "error" and "fail" in cls.split()
    assert "fine-tuning with trainer my.loop failed: RuntimeError: boom" in row["notes"]
    assert row["p50 ms"] == "-" and row["speed-up"] == "-"
    cls, row = rows["shapes_resnet-layer0.3-ort-fp32-bs8"]
    assert row["outcome"] == "skipped" and "skip" in cls.split()
    assert "no BatchNorm" in row["notes"]


@needs_chromium
def test_page_fits_a_1400_px_window(real_run, tmp_path):
    """Nothing behind a horizontal scrollbar at a laptop's width, with the untimed cases' long
    reasons in the table (the browser measures the page: ``data-overflow``)."""
    page = report(tmp_path, with_untimed_cases(real_run))
    dom = chromium(page, tmp_path / "profile", "--dump-dom", "--window-size=1400,1000")
    assert 'data-overflow="no"' in dom, "the page is wider than 1400 px"
    shot = tmp_path / "shot.png"
    chromium(page, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1400,1000",
             "--hide-scrollbars")
    assert matplotlib.image.imread(shot).shape[:2] == (1000, 1400)
