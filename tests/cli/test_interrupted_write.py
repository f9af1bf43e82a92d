"""A conversion killed while writing leaves nothing that looks finished."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from llama_gen import generate

from tests.cli.conftest import tree_hashes


def test_kill_during_save_leaves_no_finished_output(tmp_path):
    model = generate(tmp_path / "in", layers=2, hidden=512, heads=8, kv_heads=8, intermediate=2048, vocab=8192, name="big")
    before = tree_hashes(model.parent)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "mha2sha", "convert", str(model), "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed_mid_write = False
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        partial = list(out.glob(".mha2sha-partial-*/*.data")) if out.exists() else []
        if partial and partial[0].stat().st_size > 0:
            proc.send_signal(signal.SIGKILL)
            killed_mid_write = True
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    assert killed_mid_write, "the conversion finished before it could be interrupted; use a larger model"
    finished = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert not finished, finished
    assert tree_hashes(model.parent) == before
