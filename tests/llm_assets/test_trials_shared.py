"""Model trials' answers on the shared backend (CHUNKWISE_STATE_URL, resources/trial_answers_pg.py): two homes,
one PostgreSQL database. What was bought is counted at the simulator (its request log and bill), not by Chunkwise:

- a trial run on home A, then the same trial on home B: B sends nothing; a larger sample on B pays only for the
  items A did not buy;
- the same trial launched on both homes at the same instant (two processes): each answer is bought once;
- the database unreachable or the setting wrong: one line naming CHUNKWISE_STATE_URL, password masked, nothing
  sent.
"""

from __future__ import annotations

import collections
import csv
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import psycopg2
import pytest

from llm_assets.pipeline_assets import register
from llm_assets.spec import PipelineSpec, load_pipeline
from llm_assets.trials import ANSWERS_DB, TRIALS_DIR, TrialError, run_trial
from llm_sim.launcher import PROJECT_ROOT, SimHandle
from resources.llm.resource import spend_ledger_for
from resources.state_url import STATE_URL_ENV
from scripts.postgres_server import free_port

BANKING77_CSV = PROJECT_ROOT / "data" / "banking77" / "test.csv"
BANKING77_SPEC = PROJECT_ROOT / "pipelines" / "banking77.yaml"
SAMPLE = 30
MORE = 10
CANDIDATES = 2  # banking77's classified: gpt-6-luna and gpt-6.2-sol
PASSWORD = "trial-pw-7f3"

pytestmark = pytest.mark.slow

# One "machine": its own home and Dagster instance, the shared database and the simulator from the environment.
# It loads the registered dataset from the shared manifests, says it is ready, waits for the go file (both
# processes then start the trial at once), runs the trial and prints what it bought.
CHILD = """
import sys, time
from pathlib import Path
import dagster as dg
from llm_assets.spec import load_pipeline
from llm_assets.trials import run_trial
home, dataset_id, sample, ready, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5])
spec = load_pipeline(sys.argv[6])
with dg.instance_for_test() as instance:
    ready.touch()
    while not go.exists():
        time.sleep(0.005)
    result = run_trial(spec, "classified", dataset_id, instance, Path(home), sample_size=sample)
print(result.requests_sent, result.spent_usd)
"""


def _small_data(folder: Path) -> Path:
    """Every 30th row of BANKING77's test split (103 items), with its gold `category`."""
    with open(BANKING77_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[::30]
    path = folder / "small.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def trial_sim(start_sim: Callable[..., SimHandle], monkeypatch: pytest.MonkeyPatch) -> SimHandle:
    sim = start_sim({"seed": 3, "latency": {"base_ms": 20, "jitter_ms": 20}})
    monkeypatch.setenv("CHUNKWISE_LLM_BASE_URL", sim.openai_base_url)
    monkeypatch.setenv("CHUNKWISE_LLM_API_KEY", sim.api_key)
    return sim


@pytest.fixture
def shared_db(postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(STATE_URL_ENV, postgres_dsn)
    return postgres_dsn


def _spec() -> PipelineSpec:
    return load_pipeline(BANKING77_SPEC)


def _bought(sim: SimHandle) -> collections.Counter[tuple[str, str]]:
    """(model, sha256 of the user message) -> how many times the simulator billed it: what was paid for."""
    billed = [r for r in sim.requests() if str(r["status"]) == "200" and r["billed_usd"] > 0]
    return collections.Counter((r["model"], r["user_sha256"]) for r in billed)


def _stored_answers(url: str) -> int:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM chunkwise_trial_answers")
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_a_trial_on_a_second_home_reuses_the_first_homes_answers_and_sends_nothing(
    trial_sim, shared_db, tmp_path
):
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    spec = _spec()
    with dg.instance_for_test() as instance_a:
        dataset = register(spec, str(_small_data(tmp_path)), instance_a, home_a)
        first = run_trial(spec, "classified", dataset, instance_a, home_a, sample_size=SAMPLE)
        ledger = spend_ledger_for(instance_a.storage_directory()).rows(f"{dataset.dataset_id}__trial")
    after_a = trial_sim.stats()
    log_a = trial_sim.requests()
    bought_a = _bought(trial_sim)
    assert after_a["requests_total"] == first.requests_sent == CANDIDATES * SAMPLE
    assert len(bought_a) == CANDIDATES * SAMPLE and set(bought_a.values()) == {1}
    assert first.spent_usd == pytest.approx(after_a["billed_usd"], abs=1e-9)
    assert ledger[ledger["event"] == "billed"]["cost_usd"].sum() == pytest.approx(
        after_a["billed_usd"], abs=1e-9
    )
    assert _stored_answers(shared_db) == CANDIDATES * SAMPLE

    # Home B: its own folder and Dagster instance; the dataset and the answers only through the database.
    with dg.instance_for_test() as instance_b:
        again = run_trial(spec, "classified", dataset.dataset_id, instance_b, home_b, sample_size=SAMPLE)
        assert trial_sim.requests() == log_a and trial_sim.stats() == after_a  # not one request
        assert again.requests_sent == 0 and again.spent_usd == 0.0
        assert again.candidates == first.candidates and again.recommendation == first.recommendation
        assert Path(again.json_path).is_relative_to(home_b)

        # A larger sample on B (bottom-k: the first SAMPLE items and MORE new ones) pays for the new ones only.
        larger = run_trial(
            spec, "classified", dataset.dataset_id, instance_b, home_b, sample_size=SAMPLE + MORE
        )
    bought = _bought(trial_sim)
    new = bought.keys() - bought_a.keys()
    print(
        f"home A bought {len(bought_a)} answers; home B sent {again.requests_sent} requests for the same trial, "
        f"then {len(trial_sim.requests()) - len(log_a)} for {MORE} more items"
    )
    assert len(new) == CANDIDATES * MORE and set(bought.values()) == {1}  # nothing bought twice
    assert larger.requests_sent == CANDIDATES * MORE
    assert larger.spent_usd == pytest.approx(
        trial_sim.stats()["billed_usd"] - after_a["billed_usd"], abs=1e-9
    )
    for home in (home_a, home_b):
        assert not (home / TRIALS_DIR / ANSWERS_DB).exists(), "answers were kept under a home, not shared"


def test_the_same_trial_started_on_two_homes_at_once_buys_each_answer_once(trial_sim, shared_db, tmp_path):
    spec_file = str(BANKING77_SPEC)
    with dg.instance_for_test() as instance:
        dataset = register(_spec(), str(_small_data(tmp_path)), instance, tmp_path / "registrar")
    go = tmp_path / "go"
    children = []
    for name in ("a", "b"):
        ready = tmp_path / f"{name}.ready"
        command = [
            sys.executable,
            "-c",
            CHILD,
            str(tmp_path / name),
            dataset.dataset_id,
            str(SAMPLE),
            str(ready),
        ]
        command += [str(go), spec_file]
        children.append(
            (ready, subprocess.Popen(command, cwd=PROJECT_ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while not all(ready.exists() for ready, _ in children):
        for _, child in children:
            assert child.poll() is None, child.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the trial processes never got ready"
        time.sleep(0.01)
    go.touch()
    sent = []
    for _, child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-3000:]
        sent.append(int(out.split()[-2]))
    bought = _bought(trial_sim)
    print(f"requests sent by the two homes: {sent}; answers billed at the simulator: {sum(bought.values())}")
    # One waited on the trial's lock in the database, then found every answer the other had bought.
    assert sorted(sent) == [0, CANDIDATES * SAMPLE]
    assert len(bought) == CANDIDATES * SAMPLE and set(bought.values()) == {1}
    assert trial_sim.stats()["requests_total"] == CANDIDATES * SAMPLE


@pytest.mark.parametrize(
    ("url", "by_id", "expected"),
    [
        (
            f"postgresql://chunkwise:{PASSWORD}@127.0.0.1:{{port}}/chunkwise",
            False,
            "cannot reach the state database",
        ),
        (
            f"postgresql://chunkwise:{PASSWORD}@127.0.0.1:{{port}}/chunkwise",
            True,
            "cannot reach the state database",
        ),
        (f"mysql://chunkwise:{PASSWORD}@127.0.0.1:{{port}}/chunkwise", False, "is not a postgresql:// URL"),
    ],
    ids=["unreachable", "unreachable-by-dataset-id", "not-postgres"],
)
def test_a_bad_state_url_stops_the_trial_with_one_line_naming_the_setting_and_sends_nothing(
    trial_sim, tmp_path, monkeypatch, url, by_id, expected
):
    spec = _spec()
    with dg.instance_for_test() as instance:
        # Registered on the embedded backend (a manifest file), then the setting points at no database.
        dataset = register(spec, str(_small_data(tmp_path)), instance, tmp_path)
        monkeypatch.setenv(STATE_URL_ENV, url.format(port=free_port()))
        with pytest.raises(TrialError) as caught:
            run_trial(
                spec,
                "classified",
                dataset.dataset_id if by_id else dataset,
                instance,
                tmp_path,
                sample_size=5,
            )
    message = str(caught.value)
    print(message)
    assert expected in message and STATE_URL_ENV in message and "\n" not in message, message
    assert PASSWORD not in message and "chunkwise:***@127.0.0.1:" in message, message
    assert caught.value.__cause__ is None
    assert trial_sim.stats()["requests_total"] == 0
    assert not (tmp_path / TRIALS_DIR / ANSWERS_DB).exists()  # no silent fallback to this machine's file
