"""What a pipeline spec costs the code location's import: the shipped folder against the same plus 20 specs.

Each variant imports `llm_assets.definitions` in a fresh Python process (as `dagster dev`, a run worker or
`dagster definitions validate` does) with `CHUNKWISE_PIPELINES` pointing at its folder, `--repeats` times,
interleaved so machine noise hits both alike; the median wall time of each and their difference are printed and
written to docs/benchmarks.md. Target (issue 12): 20 specs add under 2 s.

    .venv/bin/python -m bench.spec_load [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.docs import replace_section

ROOT = Path(__file__).resolve().parent.parent
TWO_STAGES = """\
name: {name}
description: A two-stage pipeline of team {name}, for the load-time benchmark.
input:
  columns: {{id: ticket_id, text: [subject, details], team: queue}}
providers:
  default:
    provider: openai
    base_url: ${{CHUNKWISE_LLM_BASE_URL:-http://127.0.0.1:8765/v1}}
    api_key_env: CHUNKWISE_LLM_API_KEY
stages:
  - name: triage
    model: gpt-6-luna
    provider: default
    system_prompt: Triage the ticket. Answer only with JSON matching the schema.
    user_template: "{{text}}"
    output_schema:
      type: object
      properties:
        priority: {{type: string, enum: [p1, p2, p3]}}
        needs_person: {{type: boolean}}
      required: [priority, needs_person]
      additionalProperties: false
    gates:
      sampled_quality:
        field: priority
        gold_column: null
        sample_size: 10
        judge: {{provider: default, model: gpt-6.2-sol, rubric: "Triage the ticket. Answer only with JSON."}}
  - name: fix
    model: gpt-6.2-sol
    provider: default
    route: triage.needs_person
    system_prompt: Suggest the first steps. Answer only with JSON matching the schema.
    user_template: "{{triage.priority}}: {{text}}"
    output_schema:
      type: object
      properties:
        steps: {{type: array, items: {{type: string}}}}
      required: [steps]
      additionalProperties: false
"""
ENV = {
    "CHUNKWISE_LLM_API_KEY": "sk-unused",
    "CHUNKWISE_ANTHROPIC_API_KEY": "sk-unused",
    "DAGSTER_HOME": "",
}


def import_seconds(folder: Path) -> float:
    env = {**os.environ, **ENV, "CHUNKWISE_PIPELINES": str(folder)}
    env.pop("DAGSTER_HOME")
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import llm_assets.definitions"], cwd=ROOT, env=env, check=True, timeout=300
    )
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        shipped = Path(tmp) / "shipped" / "pipelines"
        shutil.copytree(ROOT / "pipelines", shipped)
        shutil.copytree(ROOT / "data", shipped.parent / "data")
        many = Path(tmp) / "many" / "pipelines"
        shutil.copytree(ROOT / "pipelines", many)
        shutil.copytree(ROOT / "data", many.parent / "data")
        for n in range(20):
            (many / f"team{n:02d}.yaml").write_text(TWO_STAGES.format(name=f"team{n:02d}"))
        times: dict[str, list[float]] = {"shipped": [], "plus_20": []}
        import_seconds(shipped)  # warm the file cache and bytecode once
        for _ in range(args.repeats):
            times["shipped"].append(import_seconds(shipped))
            times["plus_20"].append(import_seconds(many))
    base = statistics.median(times["shipped"])
    more = statistics.median(times["plus_20"])
    added = more - base
    lines = [
        "## Code location load time with 20 more pipeline specs (`bench/spec_load.py`)",
        "",
        f"Fresh-process `import llm_assets.definitions`, median of {args.repeats} interleaved runs each "
        f"({os.cpu_count()}-core shared machine):",
        "",
        "| pipelines in the folder | import s |",
        "| --- | ---: |",
        f"| the 2 shipped specs | {base:.2f} |",
        f"| the 2 shipped + 20 two-stage specs | {more:.2f} |",
        "",
        f"20 specs add **{added:.2f} s** ({added / 20 * 1000:.0f} ms per spec; target under 2 s for 20).",
    ]
    text = "\n".join(lines)
    print(text)
    replace_section(ROOT / "docs" / "benchmarks.md", "spec_load", text)


if __name__ == "__main__":
    main()
