"""Job-level failures halt the chunk without automatic retries and say what to fix; completed work is kept."""

from __future__ import annotations

import dagster as dg
from pipeline_support import write_dataset

from tests.spec_pipelines import point_at, register_file, run_chunk, spec_defs, test_spec


def _step_failures(result: dg.ExecuteInProcessResult) -> list[dg.DagsterEvent]:
    return [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]


def test_bad_api_key_fails_once_without_retry_and_never_leaks_the_key(start_sim, tmp_path, monkeypatch):
    sim = start_sim({"seed": 2})
    point_at(sim, monkeypatch)
    wrong_key = "sk-wrong-0123456789abcdef"
    monkeypatch.setenv("CHUNKWISE_LLM_API_KEY", wrong_key)  # the variable the spec's provider profile names
    write_dataset(tmp_path / "tiny.csv", 40)
    home = tmp_path / "home"
    spec = test_spec(providers={"default": {"max_concurrency": 4}})
    defs = spec_defs(spec, home)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "tiny.csv", instance, home, chunk_size=40)
        result = run_chunk(defs, spec, instance, dataset.partition_keys[0], raise_on_error=False)
        assert not result.success
        retries = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
        assert retries == []  # job-fatal: the RetryPolicy is bypassed
        failures = _step_failures(result)
        assert [f.step_key for f in failures] == ["banking77__classified"]
        message = str(failures[0].event_specific_data.error)
        assert "401" in message or "auth" in message.lower()
        logs = "\n".join(str(e.message) for e in instance.all_logs(result.run_id))
        assert wrong_key not in message and wrong_key not in logs
    # At most the requests already in flight were sent after the first 401.
    assert sim.stats()["requests_total"] <= 4
