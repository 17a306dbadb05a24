"""The API key never appears in logs, metadata, exceptions or reprs."""

from __future__ import annotations

import logging

import pytest
from llm_support import SCHEMA, SHORT_SYSTEM, make_resource, texts

from resources.llm import BudgetScope, JobFatalError, LLMRequest

WRONG_KEY = "sk-wrong-secret-0123456789abcdef"


def test_api_key_never_leaks_into_logs_metadata_exceptions_or_repr(start_sim, tmp_path, caplog):
    sim = start_sim({"faults": {"server_error": 0.3, "drop": 0.1}, "seed": 3})
    logger = logging.getLogger("test.llm")
    caplog.set_level(logging.DEBUG)
    good = make_resource(sim, state_dir=str(tmp_path), progress_interval_s=0.05, max_attempts=10)
    outcome = good.run_prompts(
        [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(30))],
        system_prompt=SHORT_SYSTEM,
        schema=SCHEMA,
        schema_name="intent",
        scope=BudgetScope("r", "d"),
        stage="classify",
        log=logger,
    )
    assert any("progress" in r.getMessage() or "finished" in r.getMessage() for r in caplog.records)
    bad = make_resource(sim, state_dir=str(tmp_path), api_key=WRONG_KEY)
    with pytest.raises(JobFatalError) as info:
        bad.run_prompts(
            [LLMRequest(f"k{i}", t) for i, t in enumerate(texts(5))],
            system_prompt=SHORT_SYSTEM,
            schema=SCHEMA,
            schema_name="intent",
            scope=BudgetScope("r", "d"),
            stage="classify",
            log=logger,
        )
    texts_to_check = [r.getMessage() for r in caplog.records] + [repr(good), str(good), repr(bad), str(bad)]
    texts_to_check += [str(info.value), repr(info.value), info.value.description, str(info.value.metadata)]
    texts_to_check += [str(outcome.summary.to_metadata()), repr(outcome.results)]
    for text in texts_to_check:
        assert sim.api_key not in text
        assert WRONG_KEY not in text and WRONG_KEY[:12] not in text
