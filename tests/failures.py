"""Prints the failures of a pytest JUnit XML report, last: `make test` calls it when a test failed.

A CI log is often read from its tail, and pytest's own failure sections come before a long warnings summary, so
the reason a test failed scrolls out of view. This repeats each failed or errored test's name and the end of its
traceback after everything else.

    python -m tests.failures REPORT.xml [--lines 40]
"""

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def failures(report: Path, lines: int) -> list[str]:
    """One block per failed or errored test case: its id and the last `lines` lines of its traceback."""
    blocks = []
    for case in ET.parse(report).getroot().iter("testcase"):
        for problem in (*case.findall("failure"), *case.findall("error")):
            text = (problem.text or problem.get("message") or "").rstrip().splitlines()
            name = f"{case.get('classname')}::{case.get('name')} ({problem.tag})"
            blocks.append("\n".join([f"==== {name}", *text[-lines:]]))
    return blocks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("report", type=Path)
    parser.add_argument("--lines", type=int, default=40)
    args = parser.parse_args(argv)
    if not args.report.exists():
        print(f"no test report at {args.report} (pytest did not get as far as writing it)")
        return 1
    blocks = failures(args.report, args.lines)
    print("\n\n".join(blocks) if blocks else f"{args.report}: no failed test recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
