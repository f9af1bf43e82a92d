"""Long stages report progress: plain log lines when not on a terminal, a tqdm bar on one."""

from __future__ import annotations

import logging

import onnx

from fuzz import AttentionConfig, build
from mha2sha.api import ConvertOptions, convert
from mha2sha.progress import StageProgress


def test_stages_log_their_progress_without_a_terminal(tmp_path, caplog):
    path = tmp_path / "m.onnx"
    onnx.save(build(AttentionConfig(layers=3, mlp=False), seed=0).model, path)
    with caplog.at_level(logging.INFO, logger="mha2sha"):
        convert(path, tmp_path / "out", ConvertOptions(progress=False))
    lines = [r.getMessage() for r in caplog.records]
    assert "finding and splitting attention blocks: 3/3" in lines
    assert "verifying blocks: 3/3" in lines


def test_a_bar_counts_to_the_total(capsys):
    p = StageProgress("work", bar=True)
    for i in range(1, 6):
        p(i, 5)
    assert p.bar.n == 5 and p.bar.total == 5
    p.close()
    assert "work" in capsys.readouterr().err
