"""The verification report: JSON for machines, Markdown for people, a short verdict table."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from verify.compare import __doc__ as TOLERANCE_RULE

REPORT_JSON = "verification_report.json"
REPORT_MD = "verification_report.md"


def _block_failures(report: dict) -> list[str]:
    return [b["name"] for b in report.get("blocks", []) if b["status"] == "fail"]


def verdict(report: dict) -> tuple[str, str]:
    """The one verdict of a report: ``(status, text)``, status "pass" or "fail".

    The Markdown header, the console line and the exit code (pass = 0, fail = 1) all come
    from here. PASS needs at least one check that ran and none that failed; the text says
    which checks did not run and why, e.g. "PASS (onnxruntime only: float64 truth
    unavailable: ...)" or "PASS (end-to-end only: ...)". A check that could not run never
    counts as passed."""
    reasons: list[str] = []
    if report.get("failure"):
        f = report["failure"]
        reasons.append(f"failed during {f.get('stage')}: {f.get('message')}")
    failing = _block_failures(report)
    if failing:
        reasons.append(f"{len(failing)} of {len(report.get('blocks', []))} blocks fail: {', '.join(failing[:5])}")
    e2e = report.get("end_to_end") or {}
    if e2e.get("status") == "fail":
        reasons.append("end-to-end fails" + (f": {e2e['reason']}" if e2e.get("reason") else ""))
    coverage = report.get("encodings_coverage") or {}
    if coverage.get("status") == "fail":
        reasons.append(f"{coverage.get('missing_count')} SHA tensors lack their MHA tensor's encoding")
    # An unmet flag expectation fails the run only where the converter says so (``fails_run``:
    # the strict RoPE check); older reports without the field: every unmet one under strict.
    if any(e.get("fails_run", bool(report.get("strict_expectations")) and not e["found"]) for e in report.get("expectations", [])):
        reasons.append("flag expectations not met (--strict)")
    blocks_ran = [b for b in report.get("blocks", []) if b["status"] == "pass"]
    e2e_ran = e2e.get("status") == "pass"
    if not reasons and not blocks_ran and not e2e_ran:
        why = [(report.get("unmatched") or {}).get("reason") or "no block verified", e2e.get("reason") or "end-to-end not run"]
        reasons.append("nothing was verified: " + "; ".join(w for w in why if w))
    if reasons:
        return "fail", "FAIL (" + "; ".join(reasons) + ")"
    notes: list[str] = []
    if not blocks_ran:
        unmatched = (report.get("unmatched") or {})
        notes.append("end-to-end only: " + (unmatched.get("reason") or "no block could be matched"))
    no_truth = [b for b in blocks_ran if b.get("truth", "float64") != "float64"]
    if no_truth:
        notes.append(f"onnxruntime only for {len(no_truth)} of {len(blocks_ran)} blocks: float64 truth unavailable: {no_truth[0].get('truth_reason', '')}")
    if e2e_ran and e2e.get("truth", "float64") != "float64":
        notes.append("end-to-end against onnxruntime only: " + e2e.get("truth_reason", "float64 truth unavailable"))
    if blocks_ran and not e2e_ran:
        notes.append("per block only: end-to-end " + (e2e.get("reason") or "not run"))
    if (report.get("unmatched") or {}).get("blocks") and blocks_ran:
        notes.append(f"{len(report['unmatched']['blocks'])} attention cores not matched, checked end to end only")
    return "pass", "PASS" + (f" ({'; '.join(notes)})" if notes else "")


def overall_status(report: dict) -> str:
    return verdict(report)[0]


def _atomic_write(path: Path, text: str) -> None:
    """A complete file or none, with the mode the umask gives (mkstemp's 0600 would hide the
    report from other users and from containers running as another uid)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    report["status"], report["verdict"] = verdict(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / REPORT_JSON, "md": out_dir / REPORT_MD}
    _atomic_write(paths["json"], json.dumps(report, indent=1, sort_keys=False, default=str))
    _atomic_write(paths["md"], markdown(report))
    _write_html(report, out_dir, paths)
    return paths


def _write_html(report: dict, out_dir: Path, paths: dict[str, Path]) -> None:
    # The page is for looking, the JSON is the record: a page that cannot be drawn never fails a run.
    from verify.report_html import REPORT_HTML, render_html

    try:
        path = Path(out_dir) / REPORT_HTML
        _atomic_write(path, render_html(report, out_dir=Path(out_dir)))
        paths["html"] = path
    except Exception as exc:  # noqa: BLE001
        import logging

        logging.getLogger("verify").warning("verification_report.html not written: %s: %s", type(exc).__name__, exc)


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def markdown(report: dict) -> str:
    status, text = verdict(report)
    lines = [f"# Verification report: {text}", ""]
    model = report.get("model", {})
    for key in ("original", "converted", "encodings", "sha_encodings"):
        if model.get(key):
            lines.append(f"- {key}: `{model[key]}`")
    lines.append(f"- seed: {report.get('seed')}")
    if report.get("failure"):
        f = report["failure"]
        lines += ["", f"**Conversion failed at stage `{f.get('stage')}`**: {f.get('message')}"]
    lines += ["", "## Blocks", "", "| block | heads | kv heads | head dim | status | worst check | max abs | tolerance |", "|---|---|---|---|---|---|---|---|"]
    for b in report.get("blocks", []):
        worst = max(b["checks"], key=lambda c: (not c["passed"], c["max_abs"] / c["tolerance"] if c["tolerance"] not in (0, float("inf")) else 0), default=None)
        lines.append(f"| {b['name']} | {b['heads']} | {b['kv_heads']} | {b['head_dim']} | {b['status']} | {worst['check'] if worst else b.get('error', '')} | {_fmt(worst['max_abs']) if worst else ''} | {_fmt(worst['tolerance']) if worst else ''} |")
    failing = [(b["name"], c) for b in report.get("blocks", []) for c in b["checks"] if not c["passed"]]
    errors = [(b["name"], b["error"]) for b in report.get("blocks", []) if b.get("error")]
    if failing or errors:
        lines += ["", "### Failed checks", ""]
        lines += [f"- {name}: `{c['check']}` on `{c['output']}`: max abs {_fmt(c['max_abs'])} > tolerance {_fmt(c['tolerance'])} {c['note']}" for name, c in failing]
        lines += [f"- {name}: {err}" for name, err in errors]
    not_run = [(b["name"], n) for b in report.get("blocks", []) for n in b.get("not_run", [])]
    if not_run:
        lines += ["", "### Checks not run", ""]
        lines += [f"- {name}: `{n['check']}`: {n['reason']}" for name, n in not_run]
    unmatched = report.get("unmatched") or {}
    if unmatched.get("reason") or unmatched.get("blocks"):
        lines += ["", "## Blocks not matched (checked end to end only)", ""]
        if unmatched.get("reason"):
            lines.append(unmatched["reason"])
        lines += [f"- {u['name']} ({u.get('anchor', '')}): {u['reason']}" for u in unmatched.get("blocks", [])]
    expectations = report.get("expectations")
    if expectations:
        lines += ["", "## Flag expectations" + (" (strict)" if report.get("strict_expectations") else ""), ""]
        lines += [f"- {e['flag']}: expects {e['expects']}: {'found' if e['found'] else 'NOT FOUND'}" + (f" ({e['hint']})" if e.get("hint") else "") for e in expectations]
    skipped = report.get("skipped_blocks", [])
    lines += ["", "## Softmaxes not converted", ""]
    lines += [f"- {s['name']} {s['anchor']}: {s['reason']}" + (f" (stopped at {s['stopped_at']})" if s.get("stopped_at") else "") for s in skipped] or ["none"]
    e2e = report.get("end_to_end")
    if e2e:
        lines += ["", f"## End to end: {e2e.get('status')}", ""]
        if e2e.get("reason"):
            lines.append(e2e["reason"])
        for c in e2e.get("checks", []):
            lines.append(f"- `{c['check']}` `{c['output']}`: max abs {_fmt(c['max_abs'])}, tolerance {_fmt(c['tolerance'])}, {'pass' if c['passed'] else 'FAIL'}")
    coverage = report.get("encodings_coverage")
    if coverage:
        lines += ["", f"## Encodings coverage: {coverage['status']}", ""]
        if coverage["missing"]:
            lines.append(f"{coverage['missing_count']} SHA tensors stand for encoded MHA tensors but have no encoding, e.g.:")
            lines += [f"- `{sha}` (for `{mha}`)" for mha, sha in coverage["missing"][:20]]
        else:
            lines.append("every SHA tensor that stands for an encoded MHA tensor has an encoding")
    if coverage and "unmatched_count" in coverage:
        lines.append("")
        lines.append(f"{coverage['matched']} of {coverage['file_names']} names in the encodings file are tensors of the model"
                     + (f"; not in the model: {', '.join(f'`{n}`' for n in coverage['unmatched'][:20])}" if coverage["unmatched"] else ""))
    warnings = report.get("encodings_warnings")
    if warnings:
        lines += ["", "## Encodings warnings", ""] + [f"- {_text(w)}" for w in warnings[:50]]
    enc = report.get("encodings")
    if enc:
        lines += ["", "## Encodings", ""]
        for k, v in enc.items():
            if isinstance(v, list):
                lines.append(f"- {k}: {len(v)}" + (f" ({', '.join(_text(x) for x in v[:8])}{'...' if len(v) > 8 else ''})" if v else ""))
            else:
                lines.append(f"- {k}: {_text(v)}")
    lines += _contract_lines(report)
    lines += _kept_lines(report)
    lines += _htp_lines(report.get("htp"))
    timings = report.get("timings")
    if timings:
        lines += ["", "## Timings (s)", ""] + [f"- {k}: {_fmt(v)}" for k, v in timings.items()]
    lines += ["", "## Tolerance rule", "", TOLERANCE_RULE.strip(), ""]
    return "\n".join(lines)


def _htp_lines(section: dict | None) -> list[str]:
    """The "HTP" section (written by mha2sha.htp when onnxruntime-qnn is installed)."""
    if not section:
        return []
    lines = ["", f"## HTP (onnxruntime-qnn): {section.get('status')}", ""]
    if section.get("reason"):
        return lines + [section["reason"]]
    lines.append(f"SoC {section.get('soc_model')}, arch {section.get('htp_arch')}, {section.get('precision')}, CPU fallback disabled")
    lines += ["", "| model | runs whole | runlist ops | DDR read | DDR write | spill | fill |", "|---|---|---|---|---|---|---|"]
    for key in ("mha", "sha"):
        r = section.get(key) or {}
        lines.append(f"| {key.upper()} | {'yes' if r.get('runs_whole') else 'NO'} | {r.get('runlist')} | {r.get('ddr_read')} | "
                     f"{r.get('ddr_write')} | {r.get('spill')} | {r.get('fill')} |")
    for key in ("mha", "sha"):
        r = section.get(key) or {}
        if not r.get("runs_whole"):
            lines.append(f"- {key.upper()} does not run whole: {r.get('error')}")
            lines += [f"  - rejected: {x}" for x in r.get("rejected", [])]
            lines += [f"  - QNN: {x}" for x in r.get("qnn_errors", [])[:5]]
    diffs = section.get("max_abs_sha_vs_mha")
    if diffs:
        lines.append("- SHA vs MHA on HTP, max abs: " + ", ".join(f"`{k}` {_fmt(v)}" for k, v in diffs.items()))
    return lines


def _text(x) -> str:
    """A value as Markdown text, never a Python repr."""
    if isinstance(x, (list, tuple)):
        return " -> ".join(_text(i) for i in x) if len(x) == 2 and all(isinstance(i, str) for i in x) else ", ".join(_text(i) for i in x)
    if isinstance(x, dict):
        return ", ".join(f"{k}: {_text(v)}" for k, v in x.items())
    if isinstance(x, float):
        return _fmt(x)
    if x is None:
        return "none"
    return str(x)


def _shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]" if shape is not None else "unknown"


def _contract_lines(report: dict) -> list[str]:
    contract = report.get("io_contract")
    if not contract:
        return []
    lines = ["", "## I/O contract", ""]
    for kind in ("inputs", "outputs"):
        for when in ("before", "after"):
            lines += [f"{kind.capitalize()} {when} ({'original' if when == 'before' else 'converted'} model):", "",
                      "| name | shape | dtype |", "|---|---|---|"]
            lines += [f"| `{t['name']}` | {_shape(t['shape'])} | {t['dtype'] or 'unknown'} |" for t in contract[kind][when]]
            lines.append("")
    before, after = contract["op_counts"]["before"], contract["op_counts"]["after"]
    lines += ["### Op counts", "", "| op | before | after |", "|---|---|---|"]
    lines += [f"| {op} | {before.get(op, 0)} | {after.get(op, 0)} |" for op in sorted(set(before) | set(after))]
    return lines


def _kept_lines(report: dict) -> list[str]:
    kept = [("--optimize-o-proj", k) for k in (report.get("optimize_o_proj") or {}).get("kept", [])]
    kept += [("--kv-cache-io head-major", k) for k in report.get("head_major_cache_io_kept", [])]
    if not kept:
        return []
    return ["", "## Kept as they were", ""] + [f"- {flag}: `{k[0]}`: {k[1]}" for flag, k in kept]


def verdict_table(report: dict) -> str:
    rows = []
    for b in report.get("blocks", []):
        checks = b["checks"]
        worst = max((c["max_abs"] / c["tolerance"] for c in checks if c["tolerance"] not in (0, float("inf"))), default=0.0)
        rows.append(f"  {b['name']:<10} {b['status']:<5} worst error/tolerance {worst:.3g}" + (f"  {b['error']}" if b.get("error") else ""))
    e2e = report.get("end_to_end", {})
    rows.append(f"  end-to-end {e2e.get('status', 'n/a')}" + (f" ({e2e['reason']})" if e2e.get("reason") else ""))
    coverage = report.get("encodings_coverage")
    if coverage:
        rows.append(f"  encodings  {coverage['status']}" + (f" ({coverage['missing_count']} SHA tensors without the encoding of their MHA tensor)" if coverage["status"] != "pass" else ""))
    hinted = [e for e in report.get("expectations", []) if not e["found"] and e.get("hint")]
    for e in hinted:
        rows.append(f"  flags      {'fail' if e.get('fails_run') else 'note'}: {e['hint']}")
    unmet = [e["flag"] for e in report.get("expectations", []) if not e["found"] and not e.get("hint")]
    if unmet:
        strict = report.get("strict_expectations")
        rows.append(f"  flags      {'fail' if strict else 'warn'} ({', '.join(unmet)} given, but the model has no {', no '.join(e['expects'] for e in report['expectations'] if not e['found'])}"
                    + ("; --strict" if strict else "") + ")")
    if report.get("failure"):
        rows.append(f"  failed during {report['failure']['stage']}: {report['failure']['message']}")
    return "verification:\n" + "\n".join(rows) + f"\n  overall: {verdict(report)[1]}"
