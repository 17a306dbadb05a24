"""End to end: BANKING77's spec (items, classified, enriched) against the simulator, with faults injected, on a
real Dagster instance."""

from __future__ import annotations

import collections

import dagster as dg
import pytest
from pipeline_support import meta, raw_meta, write_dataset

from io_managers.parquet_files import read_parquet
from resources.dead_letters import DeadLetterStore
from tests.spec_pipelines import layout_of, point_at, register_file, run_chunk, spec_defs, test_spec

pytestmark = pytest.mark.slow

FAULTS = {
    "rate_limit": 0.05,
    "server_error": 0.05,
    "unavailable": 0.03,
    "timeout": 0.01,
    "hang_s": 3,
    "malformed_json": 0.01,
}
PLOTTED = ("cost_usd", "input_tokens", "output_tokens", "items_succeeded", "items_failed", "dead_letters")
NUMERIC = (dg.FloatMetadataValue, dg.IntMetadataValue)
ENRICH_MODEL = "gpt-6.2-sol"


def test_every_item_lands_exactly_once_in_outputs_or_dead_letters(start_sim, tmp_path, monkeypatch):
    sim = start_sim({"seed": 3, "faults": FAULTS, "latency": {"base_ms": 5, "jitter_ms": 5}})
    point_at(sim, monkeypatch)
    kinds = write_dataset(tmp_path / "tiny.csv", 118, poison_every=15, invalid=True)
    home = tmp_path / "home"
    # 1 in 15 items is poison by design here; the default 0.95 gate would (rightly) block those chunks.
    rate = {"gates": {"success_rate": {"min": 0.8}}}
    spec = test_spec(
        stages={"classified": rate, "enriched": {"route": "all", **rate}},
        providers={"default": {"timeout_s": 1.0, "max_concurrency": 8}},
    )
    layout = layout_of(spec)
    defs = spec_defs(spec, home)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "tiny.csv", instance, home, chunk_size=40)
        assert dataset.n_chunks == 3  # 120 rows: 118 items + 2 invalid rows
        for key in dataset.partition_keys:
            assert run_chunk(defs, spec, instance, key).success

        outputs = {stage: [] for stage in ("items", "classified", "enriched")}
        store = DeadLetterStore(str(home / "dead_letters"))
        for key in dataset.partition_keys:
            for stage in outputs:
                recorded = meta(instance, layout, stage, key)
                frame = read_parquet(recorded["uri"])
                outputs[stage].append(frame)
                if stage != "items":
                    # Metadata counts equal the files' row counts.
                    assert recorded["items_succeeded"] == len(frame)
                    # Each materialization counts its dead letters, previews them and links their file; with
                    # none there is no file, and no link to it.
                    letters = store.query(dataset.dataset_id, key, stage)
                    assert recorded["dead_letters"] == len(letters)
                    if len(letters):
                        assert recorded["dead_letters_uri"] == store.uri_for(
                            dataset.dataset_id, key, stage=stage
                        )
                        preview = [r.data["item_id"] for r in recorded["dead_letters_preview"].records]
                        assert preview == letters["item_id"].astype(str).tolist()[:10]
                    else:
                        assert "dead_letters_uri" not in recorded and "dead_letters_preview" not in recorded
                    # The UI plots numeric metadata per partition: cost, tokens and counts must be numbers.
                    for name in PLOTTED:
                        assert isinstance(raw_meta(instance, layout, stage, key)[name], NUMERIC), (
                            stage,
                            name,
                        )
        classified_ids = collections.Counter(i for f in outputs["classified"] for i in f["item_id"])
        enriched_ids = collections.Counter(i for f in outputs["enriched"] for i in f["item_id"])
        dead = store.query(dataset.dataset_id)

    assert sorted(classified_ids) == sorted(kinds["ok"]) and set(classified_ids.values()) == {1}
    assert sorted(enriched_ids) == sorted(kinds["ok"]) and set(enriched_ids.values()) == {1}
    poison_dead = dead[dead["stage"] == "classified"]
    assert sorted(poison_dead["item_id"]) == sorted(kinds["poison"])
    assert set(poison_dead["error_class"]) == {"invalid_prompt"}
    invalid_dead = dead[dead["stage"] == "items"]
    assert sorted(invalid_dead["item_id"]) == sorted(kinds["invalid"])  # the empty text and the repeated id
    assert set(invalid_dead["error_class"]) == {"invalid_input"}
    assert dead[dead["stage"] == "enriched"].empty
    assert dead[["run_id", "partition_key", "first_attempt_at", "last_attempt_at"]].notna().all().all()
    stats = sim.stats()
    assert (
        stats["by_status"].get("429", 0) > 0 and stats["by_status"].get("500", 0) > 0
    )  # faults really happened


def test_rematerializing_a_partition_overwrites_never_appends(start_sim, tmp_path, monkeypatch):
    sim = start_sim({"seed": 1})
    point_at(sim, monkeypatch)
    write_dataset(tmp_path / "tiny.csv", 30)
    home = tmp_path / "home"
    spec = test_spec(stages={"enriched": {"route": "all"}})
    layout = layout_of(spec)
    defs = spec_defs(spec, home)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "tiny.csv", instance, home, chunk_size=30)
        key = dataset.partition_keys[0]
        assert run_chunk(defs, spec, instance, key).success
        by_model = sim.stats()["by_model"]
        # 30 classified (cheap model); 30 enriched + the quality gate's judge on its sample (stronger model).
        assert by_model["gpt-6-luna"]["requests_billed"] == 30
        # The checkpoint outlives the run (removed only when the dataset completes), so re-materializing the
        # partition before then pays nothing again; the output is overwritten: one row per item, never appended.
        left = home / "checkpoints" / dataset.dataset_id / key
        assert {p.name for p in left.iterdir()} >= {"classified", "enriched"}
        billed = sim.stats()["requests_billed"]
        assert run_chunk(defs, spec, instance, key).success
        frame = read_parquet(meta(instance, layout, "classified", key)["uri"])
        assert len(frame) == 30 and frame["idempotency_key"].is_unique
        assert sim.stats()["requests_billed"] - billed <= by_model.get(ENRICH_MODEL, {}).get(
            "requests_billed", 0
        )
        assert (
            sim.stats()["by_model"]["gpt-6-luna"]["requests_billed"] == 30
        )  # the classifier was not paid again


def test_default_routing_enriches_low_confidence_items_and_carries_the_rest_through_marked(
    sim, tmp_path, monkeypatch
):
    point_at(sim, monkeypatch)
    write_dataset(tmp_path / "tiny.csv", 60)
    home = tmp_path / "home"
    spec = test_spec()  # the shipped route: classified.confidence < 0.3
    assert spec.stage("enriched").route == "classified.confidence < 0.3"
    layout = layout_of(spec)
    defs = spec_defs(spec, home)
    with dg.instance_for_test() as instance:
        dataset = register_file(spec, tmp_path / "tiny.csv", instance, home, chunk_size=60)
        (key,) = dataset.partition_keys
        assert run_chunk(defs, spec, instance, key).success
        classified = read_parquet(meta(instance, layout, "classified", key)["uri"])
        enriched = read_parquet(meta(instance, layout, "enriched", key)["uri"])
        recorded = meta(instance, layout, "enriched", key)

    assert sorted(enriched["item_id"]) == sorted(classified["item_id"])  # every item once, routed or not
    routed, passed = enriched[enriched["routed"]], enriched[~enriched["routed"]]
    assert len(routed) == recorded["items_routed"] and len(routed) > 0 and len(passed) > 0
    # Routed: exactly the items the classifier was unsure of, answered by the stronger model.
    confidence = classified.set_index("item_id")["confidence"]
    assert set(routed["item_id"]) == set(confidence[confidence < 0.3].index)
    assert (routed["model"] == ENRICH_MODEL).all() and routed["summary"].notna().all()
    assert passed["summary"].isna().all() and (passed["model"] == "").all()
    # Not routed: the team carried through, no enrichment, and zero in every usage column (no NaN).
    teams = classified.set_index("item_id")["team"]
    assert (passed.set_index("item_id")["team"] == teams[passed["item_id"]]).all()
    assert passed["urgency"].isna().all() and passed["entities"].isna().all()
    for column in ("cost_usd", "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
                   "cache_savings_usd", "attempts", "latency_s"):  # fmt: skip
        assert (passed[column] == 0).all(), column
