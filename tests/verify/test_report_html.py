"""The HTML report (verification_report.html), written beside the JSON and Markdown ones.

Oracles: the JSON report it renders (every check gets a bar whose length is its error /
tolerance), the example model's configuration (8 heads of dimension 8 over a hidden size of
64: one head's projection weight is 64x8), the models' own graph inputs and outputs, and a
real headless browser (Debian's chromium) that lays the page out: passing bars must end left
of the tolerance line, failing ones right of it, and both drawings must have a size."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import onnx
import pytest

import mha2sha
from fuzz.examples import write_example
from verify import drawing
from verify.report_html import REPORT_HTML, bar_width, ratio, render_html

HIDDEN, HEADS = 64, 8  # llama3-tiny (fuzz/examples.py)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("html")
    paths = write_example("llama3-tiny", base / "ex")
    result = mha2sha.convert(paths["model"], base / "out", encodings=paths["encodings"])
    assert result.ok
    return base / "out", json.loads((base / "out" / "verification_report.json").read_text())


class _Bars(HTMLParser):
    def __init__(self):
        super().__init__()
        self.bars: list[dict] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "rect" and a.get("class") == "bar":
            self.bars.append(a)


def _all_checks(report: dict) -> list[dict]:
    return [c for b in report["blocks"] for c in b["checks"]] + list(report.get("end_to_end", {}).get("checks", []))


def test_the_page_is_written_beside_the_json_and_has_one_bar_per_check(converted):
    out, report = converted
    page = (out / REPORT_HTML).read_text()
    parser = _Bars()
    parser.feed(page)
    checks = _all_checks(report)
    assert len(parser.bars) == len(checks) > 0
    for bar, check in zip(parser.bars, checks):
        assert bar["data-check"] == check["check"] and bar["data-output"] == check["output"]
        if "budget" in check["note"]:
            assert bar["data-ratio"] == ""
        else:
            expected = check["max_abs"] / check["tolerance"]
            assert math.isclose(float(bar["data-ratio"]), expected, rel_tol=1e-12)
            assert (expected < 1) == (float(bar["width"]) < bar_width(1.0)) == check["passed"]
    # self-contained: no script, nothing loaded from anywhere (namespace URIs are not loads)
    assert re.search(r"<script|\bsrc=|href=\"(?!#)|@import|url\(", page) is None


def _weights_in(svg: str) -> set[str]:
    return set(re.findall(r"weight (\d+x\d+)", svg))


def test_the_drawings_show_the_mha_block_and_one_head_of_it(converted, monkeypatch):
    out, report = converted
    for use_dot in (True, False):
        if use_dot and shutil.which("dot") is None:
            continue
        if not use_dot:
            monkeypatch.setattr(drawing.shutil, "which", lambda name: None)
        mha, how_mha = drawing.block_svg(report["model"]["original"], "MHA")
        sha, how_sha = drawing.block_svg(report["model"]["converted"], "SHA")
        assert how_mha == how_sha == ("graphviz" if use_dot else "plain layout (graphviz `dot` not installed)")
        head = HIDDEN // HEADS
        assert f"{HIDDEN}x{HIDDEN}" in _weights_in(mha) and not any(w.endswith(f"x{head}") for w in _weights_in(mha))
        assert f"{HIDDEN}x{head}" in _weights_in(sha)  # one head's slice of the projections
        assert "Softmax" in mha and "Softmax" in sha


def test_no_attention_op_means_no_drawing_and_the_reason(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph), tmp_path / "relu.onnx")
    assert drawing.block_svg(str(tmp_path / "relu.onnx"), "x") == (None, "no Softmax or Attention op in the model")


def test_the_io_contract_table_lists_every_graph_input_and_output(converted):
    out, report = converted
    if "io_contract" not in report:
        pytest.skip("this report has no io_contract (the verifier adds it: issue 15)")
    page = (out / REPORT_HTML).read_text()
    for key in ("original", "converted"):
        graph = onnx.load(report["model"][key], load_external_data=False).graph
        weights = {t.name for t in graph.initializer}
        for v in [i for i in graph.input if i.name not in weights] + list(graph.output):
            assert f"<code>{v.name}</code>" in page


def test_ratio_of_a_check_without_a_limit_is_none_and_zero_tolerance_is_exact():
    assert ratio({"max_abs": 1.0, "tolerance": float("inf"), "note": ""}) is None
    assert ratio({"max_abs": 0.0, "tolerance": 0.0}) == 0.0 and ratio({"max_abs": 1e-9, "tolerance": 0.0}) == math.inf
    assert bar_width(0.0) == 0.0 and bar_width(1e-9) == 0.0 and bar_width(math.inf) == bar_width(1e6)


# --- in a real browser ------------------------------------------------------------------------

_LAYOUT_PROBE = """<pre id="layout"></pre><script>
window.addEventListener('load', () => {
  const line = document.querySelectorAll('line.tolerance');
  const bars = [...document.querySelectorAll('rect.bar')].map(r => {
    const b = r.getBoundingClientRect();
    const t = r.ownerSVGElement.querySelector('line.tolerance').getBoundingClientRect();
    return {ratio: r.dataset.ratio, passed: r.dataset.passed, left: b.left, right: b.right, width: b.width, tol: t.left + t.width / 2};
  });
  const drawings = [...document.querySelectorAll('.drawing svg')].map(s => {
    const b = s.getBoundingClientRect(); return {width: b.width, height: b.height};
  });
  document.getElementById('layout').textContent = JSON.stringify({bars, drawings, lines: line.length});
});
</script>"""


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    return exe


def _layout_in_browser(page: str, tmp_path: Path) -> dict:
    exe = _chromium()
    # The probe is added to a copy only: the report itself has no script.
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _LAYOUT_PROBE + "</body>"))
    run = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                          "--window-size=1300,2000", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="layout">(.*?)</pre>', run.stdout, re.S)
    assert found and found.group(1), f"chromium did not lay the page out (exit {run.returncode}): {run.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(found.group(1)))


def test_in_headless_chromium_passing_bars_end_before_the_tolerance_line_and_failing_ones_after(converted, tmp_path):
    out, report = converted
    failing = json.loads(json.dumps(report))
    check = failing["blocks"][0]["checks"][0]  # one check made to fail by 3x its tolerance
    check["max_abs"], check["passed"], failing["blocks"][0]["status"], failing["status"] = 3 * check["tolerance"], False, "fail", "fail"
    layout = _layout_in_browser(render_html(failing), tmp_path)
    checks = _all_checks(failing)
    assert len(layout["bars"]) == len(checks) and layout["lines"] == len(failing["blocks"]) + 1
    assert len(layout["drawings"]) == 2 and all(d["width"] > 100 and d["height"] > 100 for d in layout["drawings"])
    for bar, c in zip(layout["bars"], checks):
        if bar["ratio"] == "":
            continue  # the error budget: no limit, no bar
        r = float(bar["ratio"])
        if r < 1e-4:
            assert bar["width"] == 0
        elif c["passed"]:
            assert 0 < bar["width"] and bar["right"] < bar["tol"]
        else:
            assert bar["right"] > bar["tol"] + 10
    assert sum(1 for b in layout["bars"] if b["passed"] == "false") == 1
