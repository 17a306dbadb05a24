"""Regenerate the reference part of docs/pipeline-spec.md from the spec models: `python -m scripts.spec_reference`.

`--check` writes nothing and exits 1 when the file is stale (what the test suite checks)."""

from __future__ import annotations

import argparse
import sys

from llm_assets.spec_reference import DOC_PATH, render_doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the doc is stale; write nothing")
    args = parser.parse_args(argv)
    current = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
    wanted = render_doc(current)
    if args.check:
        if current != wanted:
            print(f"{DOC_PATH} is stale; run: python -m scripts.spec_reference", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        DOC_PATH.write_text(wanted, encoding="utf-8")
        print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
