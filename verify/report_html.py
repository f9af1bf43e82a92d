"""The verification report as one self-contained HTML page (``verification_report.html``),
rendered from the JSON report: per block, the error/tolerance bar of every check; a drawing of
one block before (MHA) and after (one head of SHA); the I/O contract; the glossary of checks.

Inline SVG and CSS only: no script, nothing fetched from the network, so the page opens from
a QAIRT container or an air-gapped machine. Every key is read with a default: the page
renders whatever the JSON holds, from any version of the report.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

REPORT_HTML = "verification_report.html"

# What each check compares (docs/user-guide.md has the same glossary).
CHECKS = {
    "sha_ort_vs_truth": "the converted block run by onnxruntime, against the truth (the original block evaluated in float64 by refimpl)",
    "sha_refimpl_vs_truth": "the converted block evaluated in float32 by refimpl (an independent numpy implementation), against the truth",
    "sha_float64_vs_truth": "the converted block evaluated in float64 by refimpl, against the truth: the rewrite itself must be exact up to constants folded in the model's dtype",
    "mha_ort_vs_truth": "the original block run by onnxruntime, against the truth: its error sets the float32 error budget of the other checks (never fails)",
    "sha_ort_vs_mha_ort": "the converted block against the original, both run by onnxruntime: used where no float64 truth is available",
    "quant_sim_sha_vs_mha": "simulated quantization (the AIMET encodings applied by refimpl) of the converted block against that of the original; tolerance half a quantization step",
    "e2e_sha_ort_vs_truth": "the whole converted model run by onnxruntime, against the whole original model evaluated in float64",
    "e2e_mha_ort_vs_truth": "the whole original model run by onnxruntime, against its float64 evaluation: the end-to-end error budget (never fails)",
    "e2e_sha_ort_vs_mha_ort": "the whole converted model against the whole original, both run by onnxruntime (where no float64 truth is available)",
}

# Bars are drawn on a log scale of error / tolerance, from 1e-4 to 10; 1 is the tolerance.
_LOG_MIN, _LOG_MAX = -4.0, 1.0
_BAR_W = 360

_CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1.pass { color: #1b7f3b; } h1.fail { color: #b3261e; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.fail td { background: #fde7e7; }
.block { border: 1px solid #ddd; border-radius: 6px; padding: .5em 1em; margin: 1em 0; }
.drawings { display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }
.drawing { border: 1px solid #eee; padding: .5em; overflow: auto; max-width: 100%; }
.status-pass { color: #1b7f3b; font-weight: bold; } .status-fail { color: #b3261e; font-weight: bold; }
.muted { color: #666; font-size: 13px; }
code { background: #f6f6f6; padding: 0 3px; }
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x) -> str:
    if isinstance(x, float):
        return "inf" if math.isinf(x) else f"{x:.3g}"
    return str(x)


def ratio(check: dict) -> float | None:
    """error / tolerance of a check; None where the check has no limit (it sets the budget)."""
    err, tol = check.get("max_abs"), check.get("tolerance")
    if not isinstance(err, (int, float)) or not isinstance(tol, (int, float)):
        return None
    if math.isinf(tol) or "sets the float32 error budget" in str(check.get("note", "")):
        return None
    if tol == 0:
        return 0.0 if err == 0 else math.inf
    return float(err) / float(tol)


def bar_width(r: float | None) -> float:
    """Pixels of a bar for error/tolerance ``r`` on the log scale (0 for no error)."""
    if r is None or r <= 0:
        return 0.0
    if not math.isfinite(r):
        return float(_BAR_W)
    frac = (math.log10(r) - _LOG_MIN) / (_LOG_MAX - _LOG_MIN)
    return round(_BAR_W * min(max(frac, 0.0), 1.0), 1)


def _bars(checks: list[dict]) -> str:
    """One row per check: label, a bar of error/tolerance, the tolerance line at 1."""
    label_w, row_h = 430, 20
    width, height = label_w + _BAR_W + 90, row_h * len(checks) + 34
    one = label_w + bar_width(1.0)
    out = [f'<svg class="bars" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    for p in range(int(_LOG_MIN), int(_LOG_MAX) + 1):
        x = label_w + _BAR_W * (p - _LOG_MIN) / (_LOG_MAX - _LOG_MIN)
        out.append(f'<line x1="{x}" y1="4" x2="{x}" y2="{height - 26}" stroke="#e4e4e4"/>'
                   f'<text x="{x}" y="{height - 12}" font-size="10" text-anchor="middle" fill="#666">1e{p}</text>')
    out.append(f'<text x="{label_w + _BAR_W / 2}" y="{height - 1}" font-size="10" text-anchor="middle" fill="#666">error / tolerance (log scale; the red line is the tolerance)</text>')
    for k, c in enumerate(checks):
        y = 4 + k * row_h
        r = ratio(c)
        passed = bool(c.get("passed"))
        colour = "#2e7d32" if passed else "#c62828"
        label = f"{c.get('check', '?')}  {c.get('output', '')}"
        if len(label) > 62:
            label = label[:59] + "..."
        value = "budget" if r is None else _fmt(r)
        out.append(f'<text x="0" y="{y + 13}" font-size="11" font-family="monospace">{_e(label)}</text>')
        out.append(f'<rect class="bar" data-check="{_e(c.get("check", ""))}" data-output="{_e(c.get("output", ""))}" '
                   f'data-ratio="{"" if r is None else repr(r)}" data-passed="{str(passed).lower()}" x="{label_w}" y="{y + 3}" '
                   f'width="{bar_width(r)}" height="{row_h - 7}" fill="{colour if r is not None else "#9e9e9e"}"/>')
        out.append(f'<text x="{label_w + _BAR_W + 6}" y="{y + 13}" font-size="11">{_e(value)}</text>')
    out.append(f'<line class="tolerance" x1="{one}" y1="2" x2="{one}" y2="{height - 26}" stroke="#d32f2f" stroke-width="2"/>')
    out.append("</svg>")
    return "\n".join(out)


def _checks_table(checks: list[dict]) -> str:
    rows = ["<table><tr><th>check</th><th>output</th><th>max abs</th><th>tolerance</th><th>error / tolerance</th><th>result</th><th>note</th></tr>"]
    for c in checks:
        r = ratio(c)
        rows.append(f'<tr class="{"pass" if c.get("passed") else "fail"}"><td><code>{_e(c.get("check"))}</code></td><td><code>{_e(c.get("output"))}</code></td>'
                    f'<td class="num">{_fmt(c.get("max_abs"))}</td><td class="num">{_fmt(c.get("tolerance"))}</td>'
                    f'<td class="num">{"budget" if r is None else _fmt(r)}</td><td>{"pass" if c.get("passed") else "FAIL"}</td><td>{_e(c.get("note", ""))}</td></tr>')
    rows.append("</table>")
    return "\n".join(rows)


def _block_section(b: dict) -> str:
    status = b.get("status", "?")
    features = ", ".join(f"{k} {v}" for k, v in (b.get("features") or {}).items())
    parts = [f'<section class="block" id="block-{_e(b.get("name"))}">',
             f'<h3>{_e(b.get("name"))}: <span class="status-{_e(status)}">{_e(status)}</span></h3>',
             f'<p class="muted">{_e(b.get("heads"))} heads, {_e(b.get("kv_heads"))} kv heads, head dim {_e(b.get("head_dim"))}'
             + (f"; {_e(features)}" if features else "") + (f"; inputs {_e(b['feeds'])}" if b.get("feeds") else "") + "</p>"]
    if b.get("error"):
        parts.append(f"<p class=\"status-fail\">{_e(b['error'])}</p>")
    checks = b.get("checks") or []
    if checks:
        parts += [_bars(checks), "<details><summary>every check in numbers</summary>", _checks_table(checks), "</details>"]
    parts.append("</section>")
    return "\n".join(parts)


def _tensor_table(title: str, before: list[dict], after: list[dict]) -> str:
    def cells(t):
        if t is None:
            return "<td></td><td></td><td></td>"
        shape = t.get("shape")
        return f'<td><code>{_e(t.get("name"))}</code></td><td>{_e(shape if shape is not None else "?")}</td><td>{_e(t.get("dtype"))}</td>'

    rows = [f"<h3>{_e(title)}</h3><table><tr><th colspan=3>before (MHA)</th><th colspan=3>after (SHA)</th></tr>",
            "<tr><th>name</th><th>shape</th><th>dtype</th><th>name</th><th>shape</th><th>dtype</th></tr>"]
    for k in range(max(len(before), len(after))):
        rows.append(f"<tr>{cells(before[k] if k < len(before) else None)}{cells(after[k] if k < len(after) else None)}</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _io_contract(contract: dict | None) -> str:
    if not contract:
        return '<p class="muted">This report holds no I/O contract.</p>'
    parts = []
    for key in ("inputs", "outputs"):
        side = contract.get(key) or {}
        parts.append(_tensor_table(f"graph {key}", side.get("before") or [], side.get("after") or []))
    ops = contract.get("op_counts") or {}
    before, after = ops.get("before") or {}, ops.get("after") or {}
    if before or after:
        parts.append("<h3>op counts</h3><table><tr><th>op</th><th>before</th><th>after</th></tr>")
        parts += [f'<tr><td>{_e(op)}</td><td class="num">{before.get(op, 0)}</td><td class="num">{after.get(op, 0)}</td></tr>'
                  for op in sorted(set(before) | set(after))]
        parts.append("</table>")
    return "\n".join(parts)


def _model_file(key: str, path: str, out_dir: Path | None) -> str:
    # A conversion writes its report into the staging folder beside the converted model, which
    # reaches the path the report names only when the run is committed: draw the staged file.
    if key == "converted" and out_dir is not None and (Path(out_dir) / Path(path).name).is_file():
        return str(Path(out_dir) / Path(path).name)
    return path


def _drawings(report: dict, draw: bool, out_dir: Path | None = None) -> str:
    model = report.get("model") or {}
    if not draw:
        return '<p class="muted">Drawings not made.</p>'
    from verify.drawing import block_svg

    out = ['<div class="drawings">']
    for key, title in (("original", "before: the first attention block (MHA)"), ("converted", "after: one head of it (SHA)")):
        path = model.get(key)
        if not path:
            out.append(f'<div class="drawing"><p class="muted">{_e(title)}: no {key} model in this report</p></div>')
            continue
        svg, how = block_svg(_model_file(key, str(path), out_dir), title)
        out.append(f'<div class="drawing" data-model="{key}">' + (svg or "") + f'<p class="muted">{_e(how if svg else title + ": " + how)}</p></div>')
    out.append("</div>")
    return "\n".join(out)


def render_html(report: dict, *, draw: bool = True, out_dir: Path | None = None) -> str:
    """The page for ``report``; ``out_dir``: the folder the report is written into."""
    status = str(report.get("status", "?"))
    verdict = report.get("verdict") or status.upper()
    model = report.get("model") or {}
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Verification report: {_e(status.upper())}</title>", f"<style>{_CSS}</style></head><body>",
             f'<h1 class="{_e(status)}">Verification report: {_e(verdict)}</h1>', "<ul>"]
    parts += [f"<li>{_e(key)}: <code>{_e(model[key])}</code></li>" for key in ("original", "converted", "encodings", "sha_encodings") if model.get(key)]
    parts.append(f"<li>seed: {_e(report.get('seed'))}</li></ul>")
    if report.get("failure"):
        f = report["failure"]
        parts.append(f'<p class="status-fail">Conversion failed at stage <code>{_e(f.get("stage"))}</code>: {_e(f.get("message"))}</p>')

    blocks = report.get("blocks") or []
    parts.append(f"<h2>Blocks ({len(blocks)})</h2>")
    parts += [_block_section(b) for b in blocks] or ['<p class="muted">No block was verified.</p>']

    e2e = report.get("end_to_end") or {}
    if e2e:
        parts.append(f'<h2>End to end: <span class="status-{_e(e2e.get("status"))}">{_e(e2e.get("status"))}</span></h2>')
        if e2e.get("reason"):
            parts.append(f"<p>{_e(e2e['reason'])}</p>")
        if e2e.get("checks"):
            parts += [_bars(e2e["checks"]), "<details><summary>every check in numbers</summary>", _checks_table(e2e["checks"]), "</details>"]

    parts += ["<h2>One block before and after</h2>", _drawings(report, draw, out_dir)]
    parts += ["<h2>I/O contract</h2>", _io_contract(report.get("io_contract"))]

    coverage = report.get("encodings_coverage")
    if coverage:
        parts.append(f'<h2>Encodings coverage: <span class="status-{_e(coverage.get("status"))}">{_e(coverage.get("status"))}</span></h2>')
        missing = coverage.get("missing") or []
        if missing:
            parts.append(f"<p>{_e(coverage.get('missing_count'))} SHA tensors stand for encoded MHA tensors but have no encoding, e.g.:</p><ul>")
            parts += [f"<li><code>{_e(pair[1] if len(pair) > 1 else pair)}</code> (for <code>{_e(pair[0])}</code>)</li>" for pair in missing[:20]]
            parts.append("</ul>")
        else:
            parts.append("<p>Every SHA tensor that stands for an encoded MHA tensor has an encoding.</p>")

    skipped = report.get("skipped_blocks") or []
    parts.append("<h2>Softmaxes not converted</h2>")
    parts += ["<ul>"] + [f"<li>{_e(s.get('name'))} {_e(s.get('anchor', ''))}: {_e(s.get('reason'))}"
                         + (f" (stopped at {_e(s['stopped_at'])})" if s.get("stopped_at") else "") + "</li>" for s in skipped] + ["</ul>"] if skipped else ["<p>none</p>"]

    used = sorted({c.get("check") for b in blocks for c in b.get("checks") or []} | {c.get("check") for c in e2e.get("checks") or []})
    parts.append("<h2>Glossary of checks</h2><table><tr><th>check</th><th>what it compares</th></tr>")
    parts += [f"<tr><td><code>{_e(name)}</code></td><td>{_e(CHECKS.get(name, 'see docs/user-guide.md'))}</td></tr>" for name in used if name]
    parts.append("</table>")
    from verify.compare import __doc__ as tolerance_rule

    parts += ["<h2>Tolerance rule</h2>", f"<pre>{_e((tolerance_rule or '').strip())}</pre>", "</body></html>"]
    return "\n".join(parts)
