"""`mha2sha-onnx-converter`: the reference tool's command line."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mha2sha-onnx-converter")
    parser.add_argument("--exported-model-path", required=True)
    parser.parse_args(argv)
    return 0
