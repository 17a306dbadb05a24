"""Each shipped pipeline, run by `make demo` against a real llama.cpp server (llama-cpp-python 0.3.36 serving the
Gemma 3 270M GGUF from PyPI) through a profile, on 40 seeded rows in chunks of 20.

Counted from the server's side: a recording proxy (recording_proxy.py) sits between Chunkwise and the server and
keeps every request's output cap and every reply's usage as the server reported it. `make test-real-server` builds
and installs the server (`make real-server-env`) and runs this file; `.ci/run` calls it after `make test`.
Measurements go to docs/real-servers.md (the table between the markers), rewritten by every run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import pytest

from scripts import llamacpp_server
from tests.real_server.recording_proxy import Exchange, RecordingProxy

pytestmark = [pytest.mark.real_server, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "real-servers.md"
ROWS = 40
CHUNK = 20
SEED = 7
TABLE_START = "<!-- real-server-table:start (written by tests/real_server/test_llamacpp.py) -->"
TABLE_END = "<!-- real-server-table:end -->"
DEMO_TIMEOUT_S = 2400  # ~5 min each on a quiet 2-core machine; ~20 min when it is shared


@dataclass(frozen=True)
class Case:
    pipeline: str
    data: str
    profile: str
    gold_stage: str  # the stage whose answer is scored against the gold column
    gold_field: str
    caps: dict[str, int]  # stage -> output cap the profile sets


CASES = [
    Case(
        "banking77",
        "data/banking77/test.csv",
        "pipelines/profiles/llamacpp-banking77.yaml",
        "classified",
        "label",
        {"classified": 128, "enriched": 192},
    ),
    Case(
        "reviews",
        "data/reviews/reviews.csv",
        "pipelines/profiles/llamacpp-reviews.yaml",
        "sentiment",
        "sentiment",
        {"sentiment": 160, "aspects": 160, "reply_draft": 320},
    ),
]
RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    server = llamacpp_server.start(tmp_path_factory.mktemp("llamacpp") / "server.log")
    yield server
    peak_rss_mb = _peak_rss_mb(server.process.pid)
    server.stop()
    if set(RESULTS) == {c.pipeline for c in CASES}:  # a partial run (-k) leaves the table as it was
        _write_docs_table(RESULTS, peak_rss_mb)


@pytest.mark.timeout(DEMO_TIMEOUT_S + 120)
@pytest.mark.parametrize("case", CASES, ids=[c.pipeline for c in CASES])
def test_shipped_pipeline_runs_on_a_real_llamacpp_server(case: Case, llama, tmp_path):
    data = tmp_path / f"{case.pipeline}-{ROWS}.csv"
    pd.read_csv(ROOT / case.data).sample(n=ROWS, random_state=SEED).to_csv(data, index=False)
    home = tmp_path / "home"
    proxy = RecordingProxy(llama.base_url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CHUNKWISE_", "DAGSTER_"))},
        "CHUNKWISE_HOME": str(home),
        "LLAMACPP_BASE_URL": proxy.base_url,
        "LLAMACPP_API_KEY": "sk-local-not-checked",
    }
    started = time.monotonic()
    try:
        done = subprocess.run(
            [
                "make",
                "--no-print-directory",
                "demo",
                f"PIPELINE=pipelines/{case.pipeline}.yaml",
                f"PROFILE={case.profile}",
                f"DATA={data}",
                f"CHUNK={CHUNK}",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=DEMO_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        partial = "".join(
            part.decode(errors="replace") if isinstance(part, bytes) else (part or "")
            for part in (exc.stdout, exc.stderr)
        )
        pytest.fail(
            f"make demo did not finish within {DEMO_TIMEOUT_S} s; {_statuses(proxy.exchanges)}; console:\n"
            f"{partial[-4000:]}"
        )
    finally:
        proxy.close()
    wall_s = time.monotonic() - started
    console = done.stdout + done.stderr
    (tmp_path / "demo.log").write_text(console)
    (tmp_path / "exchanges.json").write_text(json.dumps([asdict(e) for e in proxy.exchanges], indent=1))
    RESULTS[case.pipeline] = check_run(
        case, home, done.returncode, done.stdout, console, proxy.exchanges, wall_s
    )


def check_run(
    case: Case,
    home: Path,
    returncode: int,
    stdout: str,
    console: str,
    exchanges: list[Exchange],
    wall_s: float,
) -> dict:
    """The assertions on one `make demo` run (apart from running it, so a kept run can be checked again);
    returns the measurements for docs/real-servers.md."""
    # The job completes: exit 0, the report path is the last line, no traceback anywhere on the console.
    assert returncode == 0, f"make demo exited {returncode}:\n{console[-4000:]}"
    assert "Traceback" not in console, console[-4000:]
    report_path = Path(stdout.strip().splitlines()[-1])
    assert report_path.is_file(), stdout[-2000:]
    report = json.loads(report_path.read_text())
    dataset = report["dataset_id"]

    # Every row is in exactly one bucket, with a reason.
    stages = list(case.caps)
    final = _stage_rows(home, case.pipeline, stages[-1], dataset)
    letters = _dead_letters(home, dataset)
    succeeded = set(final["item_id"])
    dead = set(letters["item_id"]) if len(letters) else set()
    assert not succeeded & dead, f"items both succeeded and dead-lettered: {sorted(succeeded & dead)[:5]}"
    assert len(letters) == len(dead), "an item was dead-lettered twice"
    assert report["total_items"] == ROWS
    assert report["succeeded"] == len(succeeded)
    assert report["dead_lettered"] == len(dead)
    assert sum(report["buckets"].values()) == ROWS
    assert (
        report["quarantined"] == 0 and report["not_processed"] == 0
    )  # gates warn; every row reached the model
    assert len(succeeded) + len(dead) == ROWS
    if len(letters):
        assert letters["error_class"].notna().all() and (letters["error_class"] != "").all()
        assert letters["error_message"].str.len().gt(0).all()
    assert sum(report["dead_lettered_by_reason"].values()) == report["dead_lettered"]

    # The output cap was honoured on every request, as the server reported its own usage.
    chat = [e for e in exchanges if e.path.endswith("/chat/completions")]
    assert chat, "no request reached the server"
    assert {e.model for e in chat} == {"gemma-3-270m"}
    assert {e.max_tokens for e in chat} <= set(case.caps.values()), {e.max_tokens for e in chat}
    assert all(e.max_completion_tokens is None for e in chat), "llama.cpp reads max_tokens only"
    answered = [e for e in chat if e.status == 200]
    over = [e for e in answered if e.completion_tokens is None or e.completion_tokens > e.max_tokens]
    assert not over, f"replies over the cap: {over[:3]}"
    assert not [e for e in chat if e.status not in (200, None)], _statuses(chat)

    # Spend is $0 with allow_unpriced, and the report says so.
    assert report["total_cost_usd"] == 0
    zero = {(p["stage"], p["model"]) for p in report["priced_at_zero"]}
    assert zero >= {
        (stage, "gemma-3-270m")
        for stage in stages
        if stage in _stages_that_sent(letters, home, case, dataset)
    }
    assert "allow_unpriced" in report_path.with_suffix(".md").read_text()
    assert "priced at $0" in stdout

    # Tokens: the report's input tokens are the server's prompt tokens of the replies Chunkwise received.
    received = [e for e in answered if not e.client_gone]
    assert report["input_tokens"] == sum(e.prompt_tokens or 0 for e in received), _statuses(chat)

    return _measure(case, home, dataset, report, chat, wall_s, letters)


def _stages_that_sent(letters: pd.DataFrame, home: Path, case: Case, dataset: str) -> set[str]:
    """Stages that sent at least one request (a route may select no row of 40)."""
    sent = set(letters["stage"]) if len(letters) else set()
    for stage in case.caps:
        rows = _stage_rows(home, case.pipeline, stage, dataset)
        if len(rows) and rows["routed"].any():
            sent.add(stage)
    return sent


def _stage_rows(home: Path, pipeline: str, stage: str, dataset: str) -> pd.DataFrame:
    files = sorted((home / "outputs" / pipeline / stage).glob(f"{dataset}__c*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def _dead_letters(home: Path, dataset: str) -> pd.DataFrame:
    files = sorted((home / "dead_letters" / f"dataset={dataset}").glob("stage=*/*.parquet"))
    if not files:
        return pd.DataFrame(columns=["item_id", "stage", "error_class", "error_message"])
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def _statuses(chat: list[Exchange]) -> str:
    counts: dict[str, int] = {}
    for e in chat:
        key = f"{e.status}{' (client gone)' if e.client_gone else ''}"
        counts[key] = counts.get(key, 0) + 1
    return f"statuses {counts}"


def _measure(case, home, dataset, report, chat, wall_s, letters) -> dict:
    per_stage = []
    for stage in case.caps:
        rows = _stage_rows(home, case.pipeline, stage, dataset)
        valid = int(rows["routed"].sum()) if len(rows) else 0
        failed = letters[letters["stage"] == stage] if len(letters) else letters
        sent = valid + len(failed)
        classes = failed["error_class"].value_counts().to_dict() if len(failed) else {}
        per_stage.append(
            {
                "stage": stage,
                "sent": sent,
                "schema_valid_rate": round(valid / sent, 3) if sent else None,
                "dead_letters": {str(k): int(v) for k, v in classes.items()},
            }
        )
    scored = _stage_rows(home, case.pipeline, case.gold_stage, dataset)
    correct = int((scored[case.gold_field] == scored["gold_label"]).sum()) if len(scored) else 0
    answered = [e for e in chat if e.status == 200 and e.completion_tokens is not None]
    return {
        "requests": len(chat),
        "timeouts": sum(1 for e in chat if e.client_gone),
        "max_completion_tokens_seen": max((e.completion_tokens for e in answered), default=0),
        "caps": sorted(set(case.caps.values())),
        "stages": per_stage,
        "accuracy": round(correct / ROWS, 3),
        "correct": correct,
        "seconds_per_item": round(wall_s / ROWS, 1),
        "wall_s": round(wall_s, 1),
        "succeeded": report["succeeded"],
    }


def _peak_rss_mb(pid: int) -> int | None:
    """The server's peak resident memory (Linux VmHWM), MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def _write_docs_table(results: dict[str, dict], peak_rss_mb: int | None) -> None:
    lines = [
        TABLE_START,
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `make test-real-server`: llama-cpp-python 0.3.36 (portable "
        f"build, 2 threads), Gemma 3 270M Q4_K_M, {ROWS} seeded rows (seed {SEED}) in chunks of {CHUNK}, one "
        f"server slot, on a {os.cpu_count()}-core machine. Accuracy is over all rows sent (a dead letter counts as wrong); "
        "it is a number for this tiny model, not a target. The server's peak resident memory: "
        f"{peak_rss_mb if peak_rss_mb is not None else 'not read'} MB.",
        "",
        "| pipeline | stage | items sent | schema-valid | dead letters by class |",
        "|---|---|---:|---:|---|",
    ]
    for pipeline, r in results.items():
        for s in r["stages"]:
            classes = ", ".join(f"{k} {v}" for k, v in s["dead_letters"].items()) or "none"
            rate = "n/a" if s["schema_valid_rate"] is None else f"{s['schema_valid_rate']:.0%}"
            lines.append(f"| {pipeline} | {s['stage']} | {s['sent']} | {rate} | {classes} |")
    lines += [
        "",
        "| pipeline | succeeded | requests | client timeouts | largest reply (tokens) vs caps | seconds per item "
        "| accuracy vs gold |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for pipeline, r in results.items():
        lines.append(
            f"| {pipeline} | {r['succeeded']}/{ROWS} | {r['requests']} | {r['timeouts']} | "
            f"{r['max_completion_tokens_seen']} vs {r['caps']} | {r['seconds_per_item']} | "
            f"{r['accuracy']:.3f} ({r['correct']}/{ROWS}) |"
        )
    lines += ["", TABLE_END]
    text = DOCS.read_text()
    pattern = re.compile(re.escape(TABLE_START) + r".*?" + re.escape(TABLE_END), re.S)
    DOCS.write_text(pattern.sub(lambda _: "\n".join(lines), text))
