"""The `mha2sha` command line."""

from __future__ import annotations

import argparse

from mha2sha import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mha2sha", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mha2sha {__version__}")
    parser.add_subparsers(dest="command")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
    return 0
