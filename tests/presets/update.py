"""Rewrite the pinned structure of the preset files, for review.

    python -m tests.presets.update                     # every preset, every case
    python -m tests.presets.update llama3 qwen2        # some presets
    python -m tests.presets.update llama3 --case fuzz  # one case
    python -m tests.presets.update --check             # write nothing; exit 1 if a pin would change

Each case runs every check of the test (conversion, oracle, verification report) before its
structure is pinned: a case that fails keeps its old pin and the command exits with 1. Exporter
cases need torch and transformers; without them their pins are kept. Only the section after the
marker line changes; the hand-written part of each file is kept byte for byte. Review the
result with `git diff tests/presets/`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

import yaml

from tests.presets.harness import CASES, dump_yaml, load_presets, render, run_case, structure_diff


def _has_exporters() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.presets.update", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="*", help="preset names (default: all)")
    parser.add_argument("--case", choices=CASES, action="append", help="only these cases (default: all)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a pin would change")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the converter's log and full tracebacks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")

    presets = load_presets()
    unknown = set(args.presets) - {p.name for p in presets}
    if unknown:
        parser.error(f"unknown presets {sorted(unknown)}; known: {', '.join(p.name for p in presets)}")
    exporters = _has_exporters()
    failed = changed = 0
    for preset in presets:
        if args.presets and preset.name not in args.presets:
            continue
        pinned = dict(preset.pinned)
        for case in preset.cases:
            if args.case and case not in args.case:
                continue
            label = f"{preset.name}/{case}"
            reason = preset.case_spec(case).get("known_failure")
            if reason:
                print(f"{label}: known failure, pin kept ({reason})")
                continue
            if case == "export" and not exporters:
                print(f"{label}: torch/transformers not installed, pin kept")
                continue
            try:
                result = run_case(preset, case)
            except Exception as exc:  # noqa: BLE001 - reported, the old pin is kept
                failed += 1
                print(f"{label}: FAILED, pin kept\n  {exc}")
                if args.verbose:
                    traceback.print_exc()
                continue
            new = yaml.safe_load(dump_yaml(({"exported_with": result.versions} if case == "export" else {}) | result.structure))
            old = pinned.get(case)
            if old == new:
                print(f"{label}: unchanged")
                continue
            changed += 1
            print(f"{label}: {'new pin' if old is None else 'CHANGED'}")
            if old is not None:
                print("  " + structure_diff(old, new).replace("\n", "\n  "))
            pinned[case] = new
        ordered = {c: pinned[c] for c in CASES if c in pinned}
        text = render(preset, ordered)
        if text != preset.path.read_text() and not args.check:
            preset.path.write_text(text)
            print(f"wrote {preset.path}")
    if args.check and changed:
        print(f"{changed} pin(s) would change")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
