"""Child process for the SIGTERM test: runs one chunk through LLMResource.run_prompts against a (slow) simulator
and appends every result handed to on_result to a JSON-lines file, fsynced, the way a checkpoint would keep it.

    python sigterm_child.py BASE_URL API_KEY OUT_FILE STATE_DIR ITEMS CONCURRENCY

Prints `started` once run_prompts is about to send, then `stopped <reason>` (JobFatalError) or `done <n>`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from resources.llm import BudgetScope, JobFatalError, LLMRequest, LLMResource  # noqa: E402


def main() -> int:
    base_url, api_key, out_file, state_dir, n_items, concurrency = sys.argv[1:7]
    resource = LLMResource(
        base_url=base_url,
        api_key=api_key,
        model="gpt-6-luna",
        max_output_tokens=64,
        max_concurrency=int(concurrency),
        state_dir=state_dir,
        progress_interval_s=3600,
    )
    out = open(out_file, "a")  # noqa: SIM115 - kept open for the whole run, closed below

    def record(result) -> None:
        out.write(json.dumps({"key": result.key, "ok": result.ok}) + "\n")
        out.flush()
        os.fsync(out.fileno())

    print("started", flush=True)
    try:
        outcome = resource.run_prompts(
            [LLMRequest(f"k{i}", f"where is my card, ticket {i}") for i in range(int(n_items))],
            system_prompt="Classify the message.",
            schema=None,
            schema_name="text",
            scope=BudgetScope("run-sigterm", "ds-sigterm"),
            stage="classify",
            on_result=record,
        )
    except JobFatalError as exc:
        print(f"stopped {exc.reason}: {exc.description}", flush=True)
        return 3
    finally:
        out.close()
    print(f"done {len(outcome.results)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
