"""Two spec pipelines in one code location (llm_assets/location.py `build_defs`), served by the one set of sensors
it builds (sensors/recovery.py): each pipeline's
new-dataset sensor registers through its own registration job into its own partitions and launches its own job; the backfill sensor re-runs a
failed chunk on the job it failed on; the batch poll sensor polls through the LLM resource of the pipeline that
owns the stage (two pipelines share the stage name `classified`); the completion sensor requests each dataset's
report from its own pipeline's completion job; a halted provider holds the runs of the pipelines that call it."""

import csv
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
from dagster._core.definitions.partitions.context import partition_loading_context

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recovery_support import evaluate, launch, register_landed, tick  # noqa: E402

from llm_assets.chunk_status import PROVIDER_TAG, ChunkState, chunk_states  # noqa: E402
from llm_assets.layout import PipelineLayout  # noqa: E402
from llm_assets.location import build_defs  # noqa: E402
from llm_assets.pipeline_assets import register, spec_layout  # noqa: E402
from llm_assets.spec import PipelineSpec, load_pipeline  # noqa: E402
from sensors.batches import BATCH_STAGE_TAG  # noqa: E402
from sensors.chunk_runs import chunk_run_request  # noqa: E402
from sensors.completion import CompletionCursor  # noqa: E402
from tests.spec_pipelines import BANKING77_SPEC, REVIEWS_SPEC, point_at  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
INTENTS_SPEC = """
name: intents
description: A one-stage copy of the BANKING77 idea on Anthropic's wire format, in batch mode.
input:
  columns: {id: null, text: text}
providers:
  anthropic_sim:
    provider: anthropic
    base_url: ${CHUNKWISE_ANTHROPIC_BASE_URL}
    api_key_env: CHUNKWISE_ANTHROPIC_API_KEY
    structured_output: json_schema
stages:
  - name: classified
    provider: anthropic_sim
    model: claude-haiku-5-5
    mode: batch
    system_prompt: Label the customer message as card, transfer or other. Answer only with JSON.
    user_template: "{text}"
    output_schema:
      type: object
      properties:
        label: {type: string, enum: [card, transfer, other]}
      required: [label]
      additionalProperties: false
"""


def _quick(spec: PipelineSpec, chunk_size: int) -> PipelineSpec:
    """`spec` with small chunks, no in-run retries, items that give up after two attempts (the breaker opens
    after three failures), so an outage fails a run in about a second, and a failed chunk re-run at once (at
    most three runs)."""
    providers = {
        name: profile.model_copy(update={"max_attempts": 2, "circuit_breaker_failures": 3})
        for name, profile in spec.providers.items()
    }
    return spec.model_copy(
        update={
            "input": spec.input.model_copy(update={"chunk_size": chunk_size}),
            "retry": spec.retry.model_copy(update={"max_retries": 0}),
            "backfill": spec.backfill.model_copy(update={"max_attempts": 3, "backoff_base_s": 0.0}),
            "providers": providers,
        }
    )


def _shipped(path: Path, chunk_size: int) -> PipelineSpec:
    return _quick(load_pipeline(path), chunk_size)


def _code_location(
    specs: list[PipelineSpec], home: Path
) -> tuple[dg.Definitions, dict[str, dg.SensorDefinition]]:
    """The code location of `specs` (llm_assets/location.py, with its sensors: new files land in
    `<home>/inbox/<pipeline>`), checked loadable as the daemon loads it; and the sensors by name."""
    defs = build_defs(specs, home=home)
    dg.Definitions.validate_loadable(defs)
    return defs, {sensor.name: sensor for sensor in defs.sensors or []}


def _write_banking(path: Path, n: int) -> None:
    """n BANKING77 messages with their gold intent (columns `text,category`, as the banking77 spec reads)."""
    with (ROOT / "data" / "banking77" / "test.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))[::37][:n]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows(rows)


def _write_reviews(path: Path, n: int) -> None:
    lines = (ROOT / "data" / "reviews" / "reviews.csv").read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: n + 1]))


def _drop(inbox: Path, pipeline: str, name: str, write) -> None:
    folder = inbox / pipeline
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / name)
    (folder / f"{name}._SUCCESS").write_text("")


def test_each_pipeline_registers_its_own_files_runs_its_own_job_and_gets_its_own_report(
    start_sim, monkeypatch, tmp_path
):
    sim = start_sim({"seed": 9})
    point_at(sim, monkeypatch)
    home = tmp_path / "home"
    inbox = home / "inbox"
    specs = [_shipped(BANKING77_SPEC, 15), _shipped(REVIEWS_SPEC, 20)]
    defs, sensors = _code_location(specs, home)
    banking, reviews = (spec_layout(spec) for spec in specs)
    with dg.instance_for_test() as instance:
        assert (inbox / "reviews").is_dir()  # created when the code location loaded: the first tick is quiet
        requests, _, skip = tick(sensors["reviews__new_dataset_sensor"], instance, defs, None)
        assert requests == [] and skip.startswith("0 data files")
        _drop(inbox, "banking77", "tickets.csv", lambda p: _write_banking(p, 30))
        _drop(inbox, "reviews", "tickets.csv", lambda p: _write_reviews(p, 20))  # same name, other pipeline
        requested: dict[str, list[dg.RunRequest]] = {}
        for layout in (banking, reviews):
            sensor = sensors[f"{layout.name}__new_dataset_sensor"]
            [registration], cursor, _ = tick(sensor, instance, defs, None)
            assert registration.job_name == f"{layout.name}__register_job"  # each pipeline's own columns
            assert launch(defs, instance, sensor, registration).success
            data = evaluate(sensor, instance, defs, cursor)
            requested[layout.name] = list(data.run_requests)
            keys = [r.partition_key for r in requested[layout.name]]
            assert {r.job_name for r in requested[layout.name]} == {layout.chunk_job}
            assert [
                (r.partitions_def_name, sorted(r.partition_keys)) for r in data.dynamic_partitions_requests
            ] == [(layout.chunks_partitions, sorted(keys))]
            assert sorted(instance.get_dynamic_partitions(layout.chunks_partitions)) == sorted(keys)
            assert all(key.startswith(f"{layout.name}-tickets-") for key in keys)
        assert len(requested["banking77"]) == 2 and len(requested["reviews"]) == 1
        assert {r.tags[PROVIDER_TAG] for r in requested["reviews"]} == {"openai"}  # its first stage's

        for layout in (banking, reviews):
            sensor = sensors[f"{layout.name}__new_dataset_sensor"]
            assert all(launch(defs, instance, sensor, r).success for r in requested[layout.name])
            keys = [r.partition_key for r in requested[layout.name]]
            states = chunk_states(instance, keys, layout)
            assert {s.state for s in states.values()} == {ChunkState.SUCCEEDED}
            assert instance.get_materialized_partitions(layout.final_key) == set(keys)

        completion = sensors["dataset_completion_sensor"]
        data = evaluate(completion, instance, defs, None)
        finished, cursor = list(data.run_requests), data.cursor
        by_job = {r.job_name: r for r in finished}
        assert set(by_job) == {banking.completion_job, reviews.completion_job}
        # Each dataset's partition is added by Dagster from the tick's request, not by the tick.
        assert sorted(
            (r.partitions_def_name, list(r.partition_keys)) for r in data.dynamic_partitions_requests
        ) == [
            (layout.datasets_partitions, [by_job[layout.completion_job].partition_key])
            for layout in (banking, reviews)
        ]
        for layout in (banking, reviews):
            request = by_job[layout.completion_job]
            dataset_id = request.partition_key
            assert dataset_id.startswith(f"{layout.name}-tickets-")
            assert instance.get_dynamic_partitions(layout.datasets_partitions) == [dataset_id]
            assert launch(defs, instance, completion, request).success
            assert instance.get_materialized_partitions(layout.completion_key) == {dataset_id}
        again, cursor, _ = tick(completion, instance, defs, cursor)
        assert again == []
        assert len(CompletionCursor.from_json(cursor).done) == 2  # reported (nobody to notify: no webhook)


def test_a_failed_chunk_is_rerun_by_the_backfill_sensor_on_its_own_pipelines_job(
    start_sim, monkeypatch, tmp_path
):
    sim = start_sim({"seed": 9})
    point_at(sim, monkeypatch)
    home = tmp_path / "home"
    specs = [_shipped(BANKING77_SPEC, 10), _shipped(REVIEWS_SPEC, 10)]
    defs, sensors = _code_location(specs, home)
    backfill = sensors["chunk_backfill_sensor"]
    _write_banking(tmp_path / "banking.csv", 10)
    _write_reviews(tmp_path / "reviews.csv", 10)
    with dg.instance_for_test() as instance:
        first: dict[str, str] = {}
        sim.set_faults(outage=True)
        for spec, data in zip(specs, ("banking.csv", "reviews.csv"), strict=True):
            layout = spec_layout(spec)
            [key] = register(spec, str(tmp_path / data), instance, home).partition_keys
            request = chunk_run_request(key, 1, layout.providers[0], "new_dataset", job_name=layout.chunk_job)
            assert not launch(defs, instance, backfill, request).success
            first[layout.chunk_job] = key
        sim.set_faults(outage=False)

        requests, _, _ = tick(backfill, instance, defs, None)
        assert {r.job_name: r.partition_key for r in requests} == first
        assert {r.run_key for r in requests} == {f"{key}:attempt-2" for key in first.values()}
        assert all(launch(defs, instance, backfill, r).success for r in requests)
        for spec in specs:
            layout = spec_layout(spec)
            key = first[layout.chunk_job]
            assert chunk_states(instance, [key], layout)[key].state == ChunkState.SUCCEEDED


def _collect_requests(sensor, instance, defs, partitions: set[str], timeout_s: float = 30.0):
    """Tick the batch poll sensor until it requested a collecting run for each of `partitions` (their batches
    ended at the simulator): (the requests, the status observations it recorded)."""
    cursor = None
    requests: dict[str, dg.RunRequest] = {}
    events: list[dg.AssetObservation] = []
    resources = {k: v for k, v in defs.resources.items() if k in sensor.required_resource_keys}
    deadline = time.monotonic() + timeout_s
    while set(requests) != partitions:
        assert time.monotonic() < deadline, f"collecting runs after {timeout_s}s: {sorted(requests)}"
        time.sleep(0.3)
        with (
            dg.build_sensor_context(
                instance=instance, cursor=cursor, definitions=defs, resources=resources
            ) as context,
            partition_loading_context(dynamic_partitions_store=instance),
        ):
            data = sensor.evaluate_tick(context)
        cursor = data.cursor
        events += list(data.asset_events or [])
        requests.update({r.partition_key: r for r in data.run_requests or []})
    return list(requests.values()), events


def test_the_batch_poll_sensor_polls_a_shared_stage_name_through_its_own_pipelines_llm(
    start_sim, monkeypatch, tmp_path
):
    sim = start_sim({"seed": 9, "batch": {"complete_after_s": 1.0}})
    point_at(sim, monkeypatch)
    monkeypatch.setenv("CHUNKWISE_MODE", "batch")  # the banking77 spec's stages, through the Batch API
    (tmp_path / "intents.yaml").write_text(INTENTS_SPEC)
    specs = [_shipped(BANKING77_SPEC, 10), _quick(load_pipeline(tmp_path / "intents.yaml"), 10)]
    home = tmp_path / "home"
    defs, sensors = _code_location(specs, home)
    poll = sensors["batch_poll_sensor"]
    layouts: dict[str, PipelineLayout] = {spec.name: spec_layout(spec) for spec in specs}
    assert {layouts["banking77"].llm_key("classified"), layouts["intents"].llm_key("classified")} <= set(
        poll.required_resource_keys
    )
    _write_banking(tmp_path / "messages.csv", 10)
    with dg.instance_for_test() as instance:
        keys: dict[str, str] = {}
        for spec in specs:
            layout = layouts[spec.name]
            [key] = register(spec, str(tmp_path / "messages.csv"), instance, home).partition_keys
            request = chunk_run_request(key, 1, layout.providers[0], "new_dataset", job_name=layout.chunk_job)
            assert launch(defs, instance, poll, request).success  # submits the `classified` batch and ends
            keys[spec.name] = key

        requests, events = _collect_requests(poll, instance, defs, set(keys.values()))
        for request in requests:
            name = next(n for n, key in keys.items() if key == request.partition_key)
            layout = layouts[name]
            assert request.job_name == layout.chunk_job and request.tags[BATCH_STAGE_TAG] == "classified"
            assert request.asset_selection == [layout.key(s) for s in layout.stages]
            # Polled (and collected) by the pipeline's own resource: banking77's on OpenAI, intents' on Anthropic.
            assert request.tags[PROVIDER_TAG] == {"banking77": "openai", "intents": "anthropic"}[name]
            result = defs.resolve_job_def(request.job_name).execute_in_process(
                instance=instance,
                partition_key=request.partition_key,
                asset_selection=request.asset_selection,
                tags=request.tags,
                raise_on_error=False,
            )
            assert result.success
            assert request.partition_key in instance.get_materialized_partitions(layout.key("classified"))
        assert {(e.asset_key, e.partition) for e in events} >= {
            (layouts[name].key("classified"), key) for name, key in keys.items()
        }


def test_a_halted_provider_holds_the_runs_of_every_pipeline_that_calls_it_and_only_those(
    monkeypatch, tmp_path
):
    from resources.llm.resource import spend_ledger_for
    from sensors.halts import clear_provider

    nowhere = SimpleNamespace(
        openai_base_url="http://127.0.0.1:9/v1", base_url="http://127.0.0.1:9", api_key="sk-x"
    )
    point_at(nowhere, monkeypatch)  # nothing is called: no run is launched
    home = tmp_path / "home"
    inbox = home / "inbox"
    specs = [
        _shipped(BANKING77_SPEC, 20),
        _shipped(REVIEWS_SPEC, 20),
    ]  # reviews' second stage calls Anthropic
    defs, sensors = _code_location(specs, home)
    banking_sensor, reviews_sensor = (sensors[f"{s.name}__new_dataset_sensor"] for s in specs)
    _drop(inbox, "banking77", "tickets.csv", lambda p: _write_banking(p, 20))
    _drop(inbox, "reviews", "tickets.csv", lambda p: _write_reviews(p, 20))
    with dg.instance_for_test() as instance:
        ledger = spend_ledger_for(instance.storage_directory())
        ledger.halt("anthropic|http://127.0.0.1:9|key:0123456789ab", "auth", "authentication failed (401)")
        requested, cursor, _ = tick(reviews_sensor, instance, defs, None)
        held, cursor, skip = register_landed(reviews_sensor, instance, defs, cursor, requested)
        assert held == [] and "1 chunk runs held: provider anthropic is stopped (auth" in skip
        assert len(instance.get_dynamic_partitions("reviews__chunks")) == 1  # registered, not launched
        requested, banking_cursor, _ = tick(banking_sensor, instance, defs, None)
        launched, _, _ = register_landed(banking_sensor, instance, defs, banking_cursor, requested)
        assert [r.job_name for r in launched] == ["banking77__chunk_job"]  # banking77 never calls Anthropic

        clear_provider(instance, "anthropic")
        released, _, _ = tick(reviews_sensor, instance, defs, cursor)
        assert [r.partition_key for r in released] == instance.get_dynamic_partitions("reviews__chunks")
        assert [r.job_name for r in released] == ["reviews__chunk_job"]
