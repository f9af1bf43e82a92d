"""Run a model on Qualcomm's HTP backend, the real consumer of the SHA models.

onnxruntime-qnn (optional: ``pip install onnxruntime-qnn==2.7.0``) bundles QAIRT's HTP
backend as an x86 emulator: every op is validated by QNN, the graph is finalized by the
real HTP graph preparer and executed functionally. Nothing here is needed by the
converter; everything answers "unavailable" when the package is absent.

Each model runs in a child process (``python -m mha2sha.htp``) because

- the preparer's log is the only place its cost estimates appear, and QNN writes it
  through onnxruntime's process-wide default logger, which must be verbose *before* the
  QNN library is registered and writes to the process's stderr;
- a backend failure must not take the caller down.

The session demands the whole graph on HTP: CPU fallback disabled in the session options
and ``InferenceSession.disable_fallback()`` (otherwise a failed QNN run silently reruns on
the CPU). Float graphs run in fp16 (``enable_htp_fp16_precision``); ``soc_model`` 60 with
``htp_arch`` 73 is a chip with fp16 (without a SoC the emulator assumes one without).

Timing is meaningless on x86; the preparer's log gives deterministic signals instead:

    runlist       ops kept in the final run list ("finalize_runlist: ... runlist = N + ...")
    in_runlist    ops entering the run list before the preparer's own fusions
    ddr_read / ddr_write   estimated DDR traffic of one inference, bytes
    spill / fill  bytes spilled to and filled back from DDR (VTCM overflow)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SOC_MODEL = "60"
HTP_ARCH = "73"
_RUNLIST = re.compile(r"finalize_runlist: in_runlist=(\d+), runlist = (\d+) \+ (\d+) vec \+ (\d+) mtx \+ (\d+) elt")
_BYTES = re.compile(r"^(spill_bytes|fill_bytes|write_total_bytes|read_total_bytes)=(\d+)\s*$")
_BENIGN = re.compile(r"unexpected GraphHtpSettings option")  # the EP passes an option this backend ignores
_QNN_ERROR = re.compile(r"QnnLogging\]\s+<E>\s+(.*)$")
# onnxruntime's QNN EP validates node units one by one ("Validation FAILED for ... /
# Operator type: T Node name: N / REASON : why") and then lists what it will not take.
_FAILED_NODE = re.compile(r"Operator type: (\S+) Node name: (.*?) Node index")
_REASON = re.compile(r"REASON : (.*)$")
_UNSUPPORTED = re.compile(r"\{ name: (.*?), type: (\S+) \}")


def unavailable_reason() -> str | None:
    """None when onnxruntime-qnn can run models here, else why not (one line)."""
    try:
        import onnxruntime_qnn  # noqa: F401
    except ImportError:
        return "onnxruntime-qnn is not installed (pip install onnxruntime-qnn==2.7.0)"
    try:
        import onnxruntime as ort

        if not hasattr(ort, "register_execution_provider_library"):
            return f"onnxruntime {ort.__version__} cannot load execution provider libraries"
    except ImportError:
        return "onnxruntime is not installed"
    return None


@dataclass
class HtpRun:
    """What the HTP backend made of one model."""

    runs_whole: bool                  # session created with CPU fallback disabled, and ran
    error: str | None = None          # the first line of the failure, when not
    qnn_errors: list[str] = field(default_factory=list)   # QNN's own error messages
    rejected: list[str] = field(default_factory=list)     # nodes QNN refused, with reasons
    runlist: int | None = None
    in_runlist: int | None = None
    ddr_read: int | None = None
    ddr_write: int | None = None
    spill: int | None = None
    fill: int | None = None
    context_bytes: int | None = None  # size of the compiled context binary, when asked
    outputs: dict[str, np.ndarray] | None = None

    def signals(self) -> dict:
        d = asdict(self)
        d.pop("outputs")
        return d


def parse_log(lines) -> dict:
    """The preparer's figures and QNN's errors from a verbose onnxruntime-qnn log."""
    out: dict = {"qnn_errors": [], "rejected": []}
    reasons: dict[str, str] = {}
    failed_node = None
    unsupported: list[tuple[str, str]] = []
    names = {"spill_bytes": "spill", "fill_bytes": "fill", "write_total_bytes": "ddr_write",
             "read_total_bytes": "ddr_read"}
    for line in lines:
        m = _RUNLIST.search(line)
        if m:
            # A model split into several QNN graphs reports one run list each: sum them.
            out["in_runlist"] = out.get("in_runlist", 0) + int(m.group(1))
            out["runlist"] = out.get("runlist", 0) + sum(int(g) for g in m.group(2, 3, 4, 5))
            continue
        text = line.split("QnnLogging] ", 1)[-1]
        m = _BYTES.match(text)
        if m:
            key = names[m.group(1)]
            out[key] = out.get(key, 0) + int(m.group(2))
            continue
        m = _QNN_ERROR.search(line)
        if m and m.group(1).strip() not in out["qnn_errors"] and not _BENIGN.search(m.group(1)):
            out["qnn_errors"].append(m.group(1).strip())
            continue
        if "Validation FAILED" in line:
            failed_node = ""
            continue
        if failed_node is not None:
            m = _FAILED_NODE.search(line)
            if m:
                failed_node = m.group(2)
                continue
            m = _REASON.search(line)
            if m and failed_node:
                reasons.setdefault(failed_node, m.group(1).strip())
                failed_node = None
                continue
        if "Unsupported nodes in QNN EP" in line:
            for name, op in _UNSUPPORTED.findall(line):
                if (name, op) not in unsupported:
                    unsupported.append((name, op))
    out["rejected"] = [f"{op} {name}: {reasons.get(name, 'no reason logged')}" for name, op in unsupported]
    return out


def static_copy(model_path: str | Path, shapes: dict[str, tuple[int, ...]], out_path: Path) -> Path:
    """A copy of the model with every graph input fixed to the given shape (QNN needs static
    shapes); symbolic dims elsewhere are dropped so that onnxruntime infers them again."""
    import onnx

    model = onnx.load(str(model_path))
    for info in model.graph.input:
        if info.name in shapes:
            dims = info.type.tensor_type.shape.dim
            for d, v in zip(dims, shapes[info.name]):
                d.Clear()
                d.dim_value = int(v)
    del model.graph.value_info[:]
    for info in model.graph.output:
        for d in info.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.Clear()
    big = model.ByteSize() > 1_500_000_000 or any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    onnx.save(model, str(out_path), save_as_external_data=big, location=out_path.name + ".data" if big else None)
    return out_path


def run(model_path: str | Path, feeds: dict[str, np.ndarray], *, context: str | Path | None = None,
        keep_outputs: bool = True, timeout: float = 900, workdir: str | Path | None = None,
        log: str | Path | None = None) -> HtpRun:
    """Run ``model_path`` on HTP (child process) with ``feeds``; raises RuntimeError when
    onnxruntime-qnn is unavailable (callers check :func:`unavailable_reason` first).

    ``context``: also compile the graph to a QNN context binary and write the context model
    (an EPContext node embedding the binary) there; ``context_bytes`` is its size.
    ``log``: keep the verbose onnxruntime/QNN log there."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    with tempfile.TemporaryDirectory(prefix="mha2sha_htp_", dir=workdir) as tmp:
        tmp = Path(tmp)
        model = static_copy(model_path, {k: v.shape for k, v in feeds.items()}, tmp / "model.onnx")
        np.savez(tmp / "feeds.npz", **feeds)
        request = {"model": str(model), "feeds": str(tmp / "feeds.npz"), "outputs": str(tmp / "outputs.npz"),
                   "context": str(Path(context).resolve()) if context else None}
        (tmp / "request.json").write_text(json.dumps(request))
        log_path = tmp / "log.txt"
        with open(log_path, "wb") as log_file:
            try:
                proc = subprocess.run([sys.executable, "-m", "mha2sha.htp", str(tmp / "request.json")],
                                      stdout=subprocess.PIPE, stderr=log_file, timeout=timeout,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"})
            except subprocess.TimeoutExpired:
                return HtpRun(runs_whole=False, error=f"HTP run exceeded {timeout:.0f} s")
        with open(log_path, errors="replace") as f:
            found = parse_log(f)
        if log:
            import shutil

            shutil.copyfile(log_path, log)
        try:
            status = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            status = {"ok": False, "error": f"HTP child exited with {proc.returncode}: {tail[0][:300]}"}
        result = HtpRun(runs_whole=bool(status.get("ok")), error=status.get("error"),
                        context_bytes=status.get("context_bytes"), **found)
        if result.runs_whole and keep_outputs:
            with np.load(tmp / "outputs.npz") as z:
                result.outputs = {k: z[k] for k in z.files}
        return result


def _child(request_path: str) -> int:
    """Runs in the child process: build the session, run once, print one JSON line."""
    req = json.loads(Path(request_path).read_text())
    import onnxruntime as ort

    ort.set_default_logger_severity(0)  # QNN's log goes through the default logger: before registering
    import onnxruntime_qnn as qnn

    try:
        ort.register_execution_provider_library("QNNExecutionProvider", qnn.get_library_path())
    except Exception as e:  # noqa: BLE001 - already registered in this process
        if "already" not in str(e):
            raise
    devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
    options = {"backend_path": qnn.get_qnn_htp_path(), "soc_model": SOC_MODEL, "htp_arch": HTP_ARCH,
               "enable_htp_fp16_precision": "1"}
    so = ort.SessionOptions()
    so.log_severity_level = 0  # the EP sets QNN's own log level from the session's
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if req.get("context"):
        so.add_session_config_entry("ep.context_enable", "1")
        so.add_session_config_entry("ep.context_file_path", req["context"])
        so.add_session_config_entry("ep.context_embed_mode", "1")
    so.add_provider_for_devices(devices, options)
    status: dict = {"ok": False}
    try:
        session = ort.InferenceSession(req["model"], so)
        session.disable_fallback()
        if "QNNExecutionProvider" not in session.get_providers():
            raise RuntimeError(f"QNN was not used: providers {session.get_providers()}")
        with np.load(req["feeds"]) as z:
            feeds = {k: z[k] for k in z.files}
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, feeds)
        np.savez(req["outputs"], **dict(zip(names, values)))
        status["ok"] = True
        if req.get("context") and Path(req["context"]).exists():
            status["context_bytes"] = Path(req["context"]).stat().st_size
    except Exception as e:  # noqa: BLE001 - reported to the parent, which decides
        status["error"] = " ".join(str(e).split())[:2000]
    sys.stderr.flush()
    print(json.dumps(status), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))


# -- the report's "HTP" section ---------------------------------------------------------
REPORT_LIMIT_BYTES = 300_000_000  # larger models: the section says why it is absent
DISABLE_ENV = "MHA2SHA_NO_HTP"  # set to 1 to leave the section out (the default test suite does)


def report_section(original: Path, converted: Path, specs, *, seed: int, weight_bytes: int) -> dict | None:
    """The report's HTP entry: do MHA and SHA run whole on HTP, and what does the preparer
    keep for each (runlist, DDR, spill/fill); None when onnxruntime-qnn is absent."""
    if unavailable_reason() is not None or os.environ.get(DISABLE_ENV) == "1":
        return None
    if weight_bytes > REPORT_LIMIT_BYTES:
        return {"status": "skipped", "reason": f"model weights above {REPORT_LIMIT_BYTES // 1_000_000} MB "
                                               "(bench/bench_htp.py measures large models)"}
    import onnx

    from verify.run import consistent_graph_feeds

    _, feeds = consistent_graph_feeds(original, seed=seed, weight_bytes=weight_bytes)
    wanted = [i.name for i in onnx.load(str(converted), load_external_data=False).graph.input]
    sha_feeds = specs.graph_feeds(feeds, wanted)  # specs: the verify.correspondence.Correspondence
    mha = run(original, feeds)
    sha = run(converted, sha_feeds)
    section = {"status": "pass" if sha.runs_whole else "fail", "soc_model": SOC_MODEL, "htp_arch": HTP_ARCH,
               "precision": "fp16", "mha": mha.signals(), "sha": sha.signals()}
    if mha.outputs and sha.outputs:
        got = specs.graph_values(dict(sha.outputs))
        diffs = {k: float(np.max(np.abs(got[k].astype(np.float64) - v))) for k, v in mha.outputs.items()
                 if k in got and np.issubdtype(v.dtype, np.floating)}
        section["max_abs_sha_vs_mha"] = diffs
    return section
