"""Adding a pipeline needs no Python (issue 12): copy a spec file into the pipelines folder, and the code location
serves it: Dagster's own tooling loads it, its new-dataset sensor (on by default) registers a file dropped in its
inbox (created when the code location loads) through its registration job, and its chunk job runs a chunk
through every stage. Also: 20 specs load into one code location, each its own assets."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from llm_assets.location import defs_from_env
from llm_assets.spec import load_pipelines
from tests.sensors.recovery_support import register_landed, tick

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TICKETS_SPEC = """\
# Written by a team that never opened the Python code: IT tickets, triaged, then a fix suggested for the
# ones that need a person.
name: tickets
description: IT helpdesk tickets, triaged by priority; a suggested fix for the ones that need a person.
owners: ["team:it-helpdesk"]
input:
  columns: {id: ticket_id, text: [subject, details], team: queue}
  chunk_size: 15
providers:
  default:
    provider: openai
    base_url: ${CHUNKWISE_LLM_BASE_URL}
    api_key_env: CHUNKWISE_LLM_API_KEY
stages:
  - name: triage
    model: gpt-6-luna
    provider: default
    system_prompt: Triage the IT ticket. Answer only with JSON matching the schema.
    user_template: "Queue {queue}: {text}"
    output_schema:
      type: object
      properties:
        priority: {type: string, enum: [p1, p2, p3]}
        needs_person: {type: boolean}
        minutes: {type: integer, minimum: 1, maximum: 480}
      required: [priority, needs_person, minutes]
      additionalProperties: false
  - name: fix
    model: gpt-6.2-sol
    provider: default
    route: triage.needs_person or triage.priority == "p1"
    system_prompt: Suggest the first steps to fix the ticket. Answer only with JSON matching the schema.
    user_template: "Priority {triage.priority}: {text}"
    output_schema:
      type: object
      properties:
        steps: {type: array, items: {type: string}, minItems: 1, maxItems: 4}
      required: [steps]
      additionalProperties: false
"""


def _write_tickets(path: Path, n: int) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["ticket_id", "subject", "details", "queue"])
        for i in range(n):
            out.writerow(
                [f"T-{i:04d}", f"VPN drops #{i}", f"The VPN disconnects every {i + 2} minutes.", "network"]
            )


def test_a_spec_copied_into_the_folder_is_served_without_python(spec_sim, tmp_path, monkeypatch):
    sim = spec_sim
    folder = tmp_path / "pipelines"
    folder.mkdir()
    for shipped in (ROOT / "pipelines").glob(
        "*.yaml"
    ):  # the shipped specs reference ../data: keep that layout
        shutil.copy(shipped, folder / shipped.name)
    shutil.copytree(ROOT / "data", tmp_path / "data")
    (folder / "tickets.yaml").write_text(TICKETS_SPEC)
    home = tmp_path / "home"
    monkeypatch.setenv("CHUNKWISE_PIPELINES", str(folder))
    monkeypatch.setenv("CHUNKWISE_HOME", str(home))

    # Dagster's own tooling loads the code location with the new pipeline in it.
    checked = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "llm_assets.definitions"],
        cwd=ROOT,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    defs = defs_from_env(home)
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert {"tickets/items", "tickets/triage", "tickets/fix", "tickets/completion_report"} <= keys
    assert {"banking77/classified", "reviews/reply_draft"} <= keys  # side by side with the shipped ones

    # A file dropped in the new pipeline's inbox (made when the code location loaded) becomes its dataset and runs.
    sensor = defs.resolve_sensor_def("tickets__new_dataset_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    inbox = home / "inbox" / "tickets"
    assert inbox.is_dir()
    _write_tickets(inbox / "monday.csv", 20)
    with dg.instance_for_test() as instance:
        seen, cursor, _ = tick(sensor, instance, defs, None)
        assert seen == []
        [registration], cursor, _ = tick(sensor, instance, defs, cursor)  # unchanged: fully written
        assert registration.job_name == "tickets__register_job"
        requests, cursor, _ = register_landed(sensor, instance, defs, cursor, [registration])
        assert len(requests) == 2  # 20 rows in chunks of 15
        assert sorted(instance.get_dynamic_partitions("tickets__chunks")) == sorted(
            r.partition_key for r in requests
        )
        assert {r.job_name for r in requests} == {"tickets__chunk_job"}
        result = defs.resolve_job_def("tickets__chunk_job").execute_in_process(
            instance=instance, partition_key=requests[0].partition_key, tags=requests[0].tags
        )
        assert result.success
        materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert materialized == {"tickets/items", "tickets/triage", "tickets/fix"}
        checks = {e.asset_check_key.name for e in result.get_asset_check_evaluations()}
        assert {"outputs_valid", "success_rate"} <= checks
    assert {r["model"] for r in sim.requests()} >= {"gpt-6-luna"}


def test_twenty_specs_load_into_one_code_location(spec_sim, tmp_path):
    """bench/spec_load.py measures the load time; here: 20 specs, each its own assets, jobs and sensor."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    for n in range(20):
        (folder / f"team{n:02d}.yaml").write_text(TICKETS_SPEC.replace("name: tickets", f"name: team{n:02d}"))
    specs = load_pipelines(folder)
    defs = defs_from_env(tmp_path / "home", specs=specs)
    repository = defs.get_repository_def()
    assert len(repository.assets_defs_by_key) == 20 * 5  # items, triage, fix, cost_ledger, completion_report
    assert {f"team{n:02d}__chunk_job" for n in range(20)} <= {job.name for job in repository.get_all_jobs()}
    assert sum(s.name.endswith("__new_dataset_sensor") for s in repository.sensor_defs) == 20
