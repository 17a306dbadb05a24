"""Two machines that share nothing but PostgreSQL and S3 (issue #14, item 3): two worker processes, each with its
own CHUNKWISE_HOME and DAGSTER_HOME (tests/deploy/worker_child.py), the same code location, Dagster's instance on
the shared database (deploy/dagster-postgres.yaml), Chunkwise's state there too (CHUNKWISE_STATE_URL), and the
data, outputs, dead letters and reports in one bucket of a local S3 server (moto). Everything is counted at the
simulator (its request log and ledger), not by Chunkwise:

1. a chunk killed with kill -9 on one worker is finished by the other, which re-pays at most the requests that
   were in flight; at three seeded points (early, middle, late in the chunk: KILL_SEEDS), each its own test so
   only this phase is repeated, and the completion report (a third process) counts what the simulator billed but
   the replies A never saw;
2. both run chunks at once under one provider limit: the simulator refuses (429) at most 1% of their requests
   (each alone would send the whole limit, and about half would be refused);
3. one budget caps both: with `budgets.dataset_usd` below the dataset's cost, what the simulator billed for it
   stays under the cap.
Then the completion report, written by a third process, lands in the bucket, and so do the dead letters.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import pytest

from io_managers.s3_config import s3_from_env
from llm_assets.location import OUTPUTS_URI_ENV, defs_from_env
from llm_assets.pipeline_assets import register
from tests.spec_pipelines import ROOT, point_at, run_completion, test_spec

pytestmark = pytest.mark.slow
CONCURRENCY = 8
LIMIT_PER_S = 20
"""The simulator's request limit for the classifying model, per second: the workers' profile asks for 95% of it."""
MODEL = "gpt-6-luna"
CHUNK = 50
KILL_SEEDS = {"early": 14, "middle": 7, "late": 17}
"""Seeds of the kill point: `kill_at` below draws 11, 25 and 38 paid items of 50 from them."""
CHILD = Path(__file__).with_name("worker_child.py")
POSTGRES_CONFIG = ROOT / "deploy" / "dagster-postgres.yaml"


def overrides(budget_usd: float | None = None) -> dict:
    """The spec both workers and the test build: `classified` only, the shared limit, an optional dataset cap."""
    return {
        "stages": {"enriched": {"route": "none"}},
        "providers": {
            "default": {"max_concurrency": CONCURRENCY, "requests_per_minute": int(LIMIT_PER_S * 60 * 0.95)}
        },
        **({"budgets": {"dataset_usd": budget_usd}} if budget_usd is not None else {}),
    }


def upload_rows(bucket: str, key: str, start: int, n: int, empty: int | None = None) -> str:
    """BANKING77 rows [start, start + n) as the tests' `id,text,team,label` CSV, uploaded; its s3:// URI. Row
    `empty` (an index into the file) gets no text: the items stage dead-letters it."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "text", "team", "label"])
    with (ROOT / "data" / "banking77" / "test.csv").open(newline="") as src:
        for i, row in enumerate(csv.DictReader(src)):
            if start <= i < start + n:
                text = "" if i == empty else row["text"]
                writer.writerow([f"item-{i:04d}", text, "cards" if i % 2 else "payments", row["category"]])
    s3_from_env().get_client().put_object(Bucket=bucket, Key=key, Body=out.getvalue().encode())
    return f"s3://{bucket}/{key}"


class Machine:
    """One worker's private folders; `run(keys)` starts its process on those chunks."""

    def __init__(self, root: Path, name: str) -> None:
        self.home = root / name / "chunkwise"
        self.dagster_home = root / name / "dagster"
        self.dagster_home.mkdir(parents=True)
        shutil.copyfile(POSTGRES_CONFIG, self.dagster_home / "dagster.yaml")

    def run(self, keys: list[str], budget_usd: float | None = None) -> subprocess.Popen:
        env = {**os.environ, "CHUNKWISE_HOME": str(self.home), "DAGSTER_HOME": str(self.dagster_home)}
        return subprocess.Popen(
            [sys.executable, str(CHILD), json.dumps(overrides(budget_usd)), ",".join(keys)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip


def finished(process: subprocess.Popen) -> list[dict]:
    out, err = process.communicate(timeout=300)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert process.returncode == 0 and lines, f"worker failed ({process.returncode}): {err[-3000:]}"
    return lines


def model_requests(sim, since_seq: int = 0) -> list[dict]:
    return [r for r in sim.requests() if r["model"] == MODEL and r["seq"] > since_seq]


def kill_at(seed: int) -> int:
    """The paid items after which A is killed: a seeded point, not a convenient one."""
    return random.Random(seed).randint(5, CHUNK - 5)


def completion_report(
    bucket: str, spec, instance: dg.DagsterInstance, home: Path, dataset_id: str
) -> tuple[dict, set[str]]:
    """The dataset's completion report, run from a third process's view (its own home), read from the bucket;
    and the bucket's keys under `out/`."""
    defs = defs_from_env(home, specs=[spec])
    assert run_completion(defs, spec, instance, dataset_id).success
    client = s3_from_env().get_client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix="out/")
    names = {obj["Key"] for obj in listed.get("Contents", [])}
    report_key = f"out/_reports/{dataset_id}/completion_report.json"
    assert report_key in names
    return json.loads(client.get_object(Bucket=bucket, Key=report_key)["Body"].read()), names


@pytest.fixture
def shared(postgres_dsn, s3_env, start_sim, monkeypatch, tmp_path):
    """The shared services and the environment both workers inherit: the simulator, PostgreSQL for Dagster and
    Chunkwise, a bucket for data and payloads."""
    sim = start_sim(
        {
            "seed": 11,
            "latency": {"base_ms": 40, "jitter_ms": 40},
            "limits": {"rpm": LIMIT_PER_S, "per": "second"},
        }
    )
    point_at(sim, monkeypatch)
    url = urlparse(postgres_dsn)
    for name, value in {
        "CHUNKWISE_PG_HOST": url.hostname or "",
        "CHUNKWISE_PG_PORT": str(url.port),
        "CHUNKWISE_PG_USER": url.username or "",
        "CHUNKWISE_PG_PASSWORD": url.password or "",
        "CHUNKWISE_PG_DB": url.path.lstrip("/"),
        "CHUNKWISE_STATE_URL": postgres_dsn,
    }.items():
        monkeypatch.setenv(name, value)
    bucket = f"shared-{uuid.uuid4().hex[:8]}"
    s3_from_env().get_client().create_bucket(Bucket=bucket)
    monkeypatch.setenv(OUTPUTS_URI_ENV, f"s3://{bucket}/out")
    return sim, bucket


@pytest.mark.parametrize("kill_seed", list(KILL_SEEDS.values()), ids=list(KILL_SEEDS))
def test_a_chunk_killed_on_one_worker_is_finished_by_the_other_repaying_at_most_what_was_in_flight(
    shared, tmp_path, kill_seed
):
    sim, bucket = shared
    a, b = Machine(tmp_path, "a"), Machine(tmp_path, "b")
    spec = test_spec(**overrides())
    with dg.DagsterInstance.from_config(str(a.dagster_home)) as instance:
        # One chunk, registered on machine A: the manifest goes to the shared database, the partition to Dagster's.
        dataset = register(spec, upload_rows(bucket, "in/killed.csv", 0, CHUNK), instance, a.home,
                           s3=s3_from_env(), chunk_size=CHUNK)  # fmt: skip
        assert not (a.home / "datasets").exists(), "the manifest was written under a home, not shared"
        (key,) = dataset.partition_keys

        # 1. Killed on A mid-chunk, finished on B.
        killed = a.run([key])
        deadline = time.monotonic() + 120
        point = kill_at(kill_seed)
        while (paid_at_kill := len([r for r in model_requests(sim) if str(r["status"]) == "200"])) < point:
            assert killed.poll() is None, f"A ended before the kill: {killed.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "A made no progress"
            time.sleep(0.02)
        killed_at = time.time()  # the simulator's ledger times are this machine's wall clock
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        killed.stdout.close()
        killed.stderr.close()
        time.sleep(0.5)  # what A had in flight still finishes, and bills, at the provider
        paid_by_a = {r["user_sha256"] for r in model_requests(sim) if str(r["status"]) == "200"}
        assert 0 < len(paid_by_a) < CHUNK, "the kill did not land mid-chunk"
        # Billed, and the reply still held by the simulator when A died: [t, t + latency_s] spans the kill.
        held = [r for r in model_requests(sim) if str(r["status"]) == "200" and r["t"] <= killed_at < r["t"] + r["latency_s"]]  # fmt: skip
        assert finished(b.run([key])) == [{"key": key, "success": True, "failure": None}]
        billed = [r for r in model_requests(sim) if str(r["status"]) == "200" and r["billed_usd"] > 0]
        per_item = collections.Counter(r["user_sha256"] for r in billed)
        assert len(per_item) == CHUNK
        repaid = sum(n - 1 for n in per_item.values())
        print(
            f"seed {kill_seed}: killed A at {paid_at_kill} billed items (kill point {point}), {len(held)} of their "
            f"replies still at the simulator; {len(paid_by_a)} billed to A in all; B finished the chunk; {repaid} "
            f"items paid twice (at most {CONCURRENCY} in flight)"
        )
        assert repaid <= CONCURRENCY, f"{repaid} items paid twice; at most {CONCURRENCY} were in flight on A"

        # The completion report, from a third process's view, in the bucket.
        billed_usd = sim.stats()["billed_usd"]
        report, names = completion_report(
            bucket, spec, instance, tmp_path / "c" / "chunkwise", dataset.dataset_id
        )
    assert f"out/banking77/classified/{key}.parquet" in names
    assert report["total_items"] == report["succeeded"] == CHUNK
    # The shared ledger has every attempt both workers recorded: all the simulator billed but the replies that
    # came back to A after it was killed (at most what it had in flight).
    largest = max(r["billed_usd"] for r in sim.requests())
    assert billed_usd - CONCURRENCY * largest <= report["total_cost_usd"] <= billed_usd + 1e-9


def test_two_workers_sharing_only_postgres_and_s3_split_one_limit_one_budget_and_one_bucket(shared, tmp_path):
    sim, bucket = shared
    a, b = Machine(tmp_path, "a"), Machine(tmp_path, "b")
    spec = test_spec(**overrides())
    with dg.DagsterInstance.from_config(str(a.dagster_home)) as instance:
        # Registered once, on machine A: the manifest goes to the shared database, the partitions to Dagster's.
        first = register(spec, upload_rows(bucket, "in/first.csv", 0, 6 * CHUNK, empty=6 * CHUNK - 1), instance, a.home,
                         s3=s3_from_env(), chunk_size=CHUNK)  # fmt: skip
        assert not (a.home / "datasets").exists(), "the manifest was written under a home, not shared"
        keys = first.partition_keys
        assert len(keys) == 6

        # 2. Both at once, under the one limit they share through PostgreSQL (the kill phase, 1., is the test
        # above).
        on_a, on_b = a.run(keys[0::2]), b.run(keys[1::2])
        results = finished(on_a) + finished(on_b)
        assert sorted(r["key"] for r in results) == sorted(keys) and all(r["success"] for r in results)
        during = model_requests(sim)
        refused = [r for r in during if str(r["status"]) == "429"]
        paid = [r for r in during if str(r["status"]) == "200"]
        assert len(paid) >= 6 * CHUNK - 1  # the last chunk's empty row is never sent
        print(f"both at once: {len(paid)} paid, {len(refused)} of {len(during)} requests refused (429)")
        assert len(refused) <= 0.01 * len(during), f"{len(refused)} of {len(during)} requests refused (429)"
        per_item_usd = sum(r["billed_usd"] for r in paid) / len(paid)

        # 3. One budget for both: a second dataset whose cap is 40% of what it would cost.
        cap = round(0.4 * 4 * CHUNK * per_item_usd, 6)
        capped_spec = test_spec(**overrides(cap))
        second = register(capped_spec, upload_rows(bucket, "in/second.csv", 1000, 4 * CHUNK), instance, a.home,
                          s3=s3_from_env(), chunk_size=CHUNK)  # fmt: skip
        billed_before = sim.stats()["billed_usd"]
        skeys = second.partition_keys
        on_a, on_b = a.run(skeys[0::2], budget_usd=cap), b.run(skeys[1::2], budget_usd=cap)
        results = finished(on_a) + finished(on_b)
        billed_second = sim.stats()["billed_usd"] - billed_before
        print(f"one budget: billed ${billed_second:.6f} of a ${cap:.6f} cap; {results}")
        assert billed_second <= cap, f"the simulator billed ${billed_second:.6f} past the ${cap:.6f} cap"
        assert billed_second > 0.5 * cap, "the cap was never approached: nothing was tested"
        assert any(r["failure"] == "job_fatal" for r in results), "no chunk stopped at the budget"

        # The completion report of the first dataset, from a third process's view: in the bucket.
        report, names = completion_report(
            bucket, spec, instance, tmp_path / "c" / "chunkwise", first.dataset_id
        )
    assert {f"out/banking77/classified/{k}.parquet" for k in keys} <= names
    assert report["total_items"] == 6 * CHUNK and report["succeeded"] == 6 * CHUNK - 1
    assert report["failed_items_uri"].startswith(f"s3://{bucket}/out/_dead_letters/")
    assert f"out/_dead_letters/dataset={first.dataset_id}/stage=items/{keys[-1]}.parquet" in names
    # The shared ledger has every attempt both workers recorded: all the simulator billed for the first dataset.
    largest = max(r["billed_usd"] for r in sim.requests())
    assert billed_before - CONCURRENCY * largest <= report["total_cost_usd"] <= billed_before + 1e-9
