"""Sensors work out of the box (issue 13): the code location creates every folder a sensor watches under
CHUNKWISE_HOME, each sensor is on by default and its first tick does not fail, and each description says what it
watches, what it launches and what it needs (the name of a webhook variable, never its value). A configured
folder outside CHUNKWISE_HOME is not created: the tick fails naming `input.watch`."""

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recovery_support import tick  # noqa: E402

from llm_assets.location import build_defs  # noqa: E402
from llm_assets.spec import PipelineSpec, load_pipeline  # noqa: E402
from tests.spec_pipelines import BANKING77_SPEC, REVIEWS_SPEC, point_at  # noqa: E402

SECRET_URL = "https://hooks.example.invalid/services/T000/B000/very-secret-token"
NOWHERE = SimpleNamespace(
    openai_base_url="http://127.0.0.1:9/v1", base_url="http://127.0.0.1:9", api_key="sk-x"
)


def _shipped() -> list[PipelineSpec]:
    return [load_pipeline(BANKING77_SPEC), load_pipeline(REVIEWS_SPEC)]


def _location(specs: list[PipelineSpec], home: Path, **kwargs) -> dict[str, dg.SensorDefinition]:
    defs = build_defs(specs, home=home, **kwargs)
    return defs, {sensor.name: sensor for sensor in defs.sensors or []}


@pytest.fixture
def shipped_env(monkeypatch: pytest.MonkeyPatch) -> None:
    point_at(NOWHERE, monkeypatch)  # nothing is called: no run is launched here
    for name in ("CHUNKWISE_WATCH_URI", "CHUNKWISE_REVIEWS_WATCH_URI"):
        monkeypatch.delenv(name, raising=False)


def test_loading_creates_the_inboxes_and_every_sensors_first_tick_succeeds(shipped_env, tmp_path):
    home = tmp_path / "home"
    defs, sensors = _location(_shipped(), home)
    assert (home / "inbox" / "banking77").is_dir() and (home / "inbox" / "reviews").is_dir()
    assert set(sensors) == {
        "banking77__new_dataset_sensor",
        "reviews__new_dataset_sensor",
        "chunk_backfill_sensor",
        "dataset_completion_sensor",
        "batch_poll_sensor",
        "check_alert_sensor",
        "banking77__refresh_stale",
        "reviews__refresh_stale",
    }
    with dg.instance_for_test() as instance:
        for name, sensor in sensors.items():
            if name.endswith("__refresh_stale"):
                continue  # an automation condition sensor: the daemon evaluates it, there is no tick function
            requests, _, skip = tick(sensor, instance, defs, None)
            assert requests == [] and skip, name
        # Someone removed the inbox after the code location loaded: the next tick makes it again.
        shutil.rmtree(home / "inbox" / "banking77")
        _, _, skip = tick(sensors["banking77__new_dataset_sensor"], instance, defs, None)
        assert skip.startswith("0 data files") and (home / "inbox" / "banking77").is_dir()


def test_every_sensor_is_on_by_default(shipped_env, tmp_path):
    _, sensors = _location(_shipped(), tmp_path / "home")
    # Re-running stale chunks costs money: the user opts in to `<pipeline>__refresh_stale` (docs/partitions.md).
    expected = {
        name: dg.DefaultSensorStatus.STOPPED
        if name.endswith("__refresh_stale")
        else dg.DefaultSensorStatus.RUNNING
        for name in sensors
    }
    assert {name: s.default_status for name, s in sensors.items()} == expected


def test_descriptions_say_what_each_sensor_watches_launches_and_needs_by_name_only(
    shipped_env, tmp_path, monkeypatch
):
    for name in (
        "CHUNKWISE_ALERT_WEBHOOK_URL",
        "CHUNKWISE_COMPLETION_WEBHOOK_URL",
        "REVIEWS_ALERT_WEBHOOK_URL",
    ):
        monkeypatch.setenv(name, SECRET_URL)
    home = tmp_path / "home"
    _, sensors = _location(_shipped(), home)
    text = {name: sensor.description or "" for name, sensor in sensors.items()}
    assert all(SECRET_URL not in d and "very-secret-token" not in d for d in text.values())

    banking = text["banking77__new_dataset_sensor"]
    for part in (str(home / "inbox" / "banking77"), "banking77__register_job", "banking77__chunks",
                 "banking77__chunk_job", "$CHUNKWISE_LLM_API_KEY", "daemon"):  # fmt: skip
        assert part in banking, part
    assert "$CHUNKWISE_ANTHROPIC_API_KEY" in text["reviews__new_dataset_sensor"]  # its aspects stage's key
    backfill = text["chunk_backfill_sensor"]
    assert "failed chunk runs" in backfill and "banking77__chunk_job" in backfill
    assert "$CHUNKWISE_ALERT_WEBHOOK_URL" in backfill and "$REVIEWS_ALERT_WEBHOOK_URL" in backfill
    completion = text["dataset_completion_sensor"]
    assert "banking77__completion_job" in completion and "$CHUNKWISE_COMPLETION_WEBHOOK_URL" in completion
    batches = text["batch_poll_sensor"]
    assert "batches" in batches and "reviews__chunk_job" in batches and "reviews__aspects__llm" in batches
    alerts = text["check_alert_sensor"]
    assert "failed asset-check" in alerts and "Launches no run" in alerts
    assert "$CHUNKWISE_ALERT_WEBHOOK_URL" in alerts and "$CHUNKWISE_ALERT_MIN_SEVERITY" in alerts


def test_a_configured_folder_under_home_is_created_and_one_elsewhere_is_named_by_its_spec_field(
    shipped_env, tmp_path
):
    home = tmp_path / "home"
    landing = home / "landing" / "tickets"
    banking = load_pipeline(BANKING77_SPEC, overrides={"input": {"watch": str(landing)}})
    _, sensors = _location([banking], home)
    assert landing.is_dir() and not (home / "inbox" / "banking77").exists()

    elsewhere = tmp_path / "shared" / "drop"  # outside CHUNKWISE_HOME: Chunkwise does not make it
    banking = load_pipeline(BANKING77_SPEC, overrides={"input": {"watch": str(elsewhere)}})
    defs, sensors = _location([banking], home)  # the code location still loads
    assert not elsewhere.exists()
    with dg.instance_for_test() as instance, pytest.raises(Exception, match=r"input\.watch") as failed:
        tick(sensors["banking77__new_dataset_sensor"], instance, defs, None)
    assert str(elsewhere) in str(failed.value) and "does not exist" in str(failed.value)
