"""Model trials: which candidate model should a stage run on? Measured on a seeded sample, not guessed.

A stage lists `candidates` (model + provider profile) and a `trial` section (sample size, seed, cascade
thresholds) in its pipeline spec. `run_trial` sends the same seeded sample of a registered dataset through every
candidate, with the stage's own system prompt, user template and output schema, through the candidate's own LLM
resource (rate limits, budgets, prices, spend ledger: resources/llm/). Per candidate it records:

- accuracy of the stage's `gates.sampled_quality.field` against the gold column (as the sampled_quality gate
  scores), or, for sampled items with no gold answer, agreement with the gate's judge model (llm_assets/judge.py),
  with the two-sided Wilson 95% interval (llm_assets/quality_stats.py). An item the candidate failed on counts
  as wrong: in a run it would be a dead letter, not a right answer;
- schema-valid rate (replies that parsed and matched the schema, after the one repair), refusal rate
  (refusal, content filter) and error rate (any other item failure);
- cost per 1,000 items online (what the provider billed for the sample, prompt caching included) and batch (the
  same times the price table's `batch_multiplier`), and the projected cost of the whole dataset (its valid items
  times the cost per item);
- latency p50 / p95, seconds per item (every attempt of the item), as measured when the answer was bought.

The recommendation is the candidate with the lowest projected cost whose Wilson lower bound reaches the stage's
`gates.sampled_quality.min_accuracy`; when none does, the trial says so and names the best lower bound.

The cascade (when there are two candidates or more and the schema has the `trial.confidence_field` number): the
cheapest candidate answers every item, the most accurate other candidate re-answers the items whose confidence is
below the threshold (or that the cheap one failed on), at every threshold of `trial.thresholds`. It is computed
from answers already bought (no extra request), with the same accuracy, interval and cost columns; the
recommended threshold is the cheapest that meets the gate. This is how the later stage's `route:` threshold is
chosen from measurements.

Idempotent: every answer is kept in one table keyed by the candidate (profile name, wire format, model,
structured-output mode, output cap), the stage's prompt version and the sha256 of the item's user message; judge
verdicts likewise. A re-run with the same sample and models sends nothing. Runs of the same trial take a lock,
so two at once (two candidate partitions launched together in the UI) never pay twice for the same answer. Where
the table is follows `CHUNKWISE_STATE_URL` (resources/state_url.py, `open_trial_answers`): unset, a SQLite file
per machine (`<home>/trials/answers.sqlite`) and a file lock in the trial's folder; a `postgresql://` URL, a
table of the shared database (resources/trial_answers_pg.py) and an advisory lock there, so a trial run on one
machine reuses the answers bought on any other, and the same trial launched on two machines at once runs one
after the other. trial.json and trial.md are written under the home of the machine that ran the trial.

Spend: every request goes through the candidate's (or the judge's) LLM resource, so the pipeline's run and day caps
apply and every attempt is in the spend ledger, under the dataset id `<dataset_id>__trial` and stage
`<stage>__trial` (the judge's: `judge`): the dataset's completion report counts what processing the dataset
cost, not its trials (they would read as wasted there), and the pipeline's per-dataset cap applies to the trial
as a dataset of its own.

Before anything is sent, the worst case of what is still to buy (estimated input tokens with the budget margin,
the full output cap, the dearest input rate: `ModelPrice.worst_case_usd`) is compared with `budget_usd`; a bigger
worst case refuses the trial and spends nothing. Bad input (an empty sample, a sample larger than the dataset, a
stage with no candidates, nothing to score by, a candidate with no price row, a budget smaller than the trial)
raises `TrialError` with one line, before any request.

Outputs: `<home>/trials/<pipeline>/<stage>/<dataset_id>/trial.json` and `trial.md` (Markdown tables and the
recommendation). In Dagster, `trial_assets` builds one asset per stage with candidates, `trials/<pipeline>/<stage>`,
partitioned by candidate, so the UI plots accuracy and cost per candidate; it never belongs to a chunk job.
"""

import contextlib
import fcntl
import hashlib
import json
import math
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import BaseModel

from llm_assets.datasets import DatasetError, RegisteredDataset, load_dataset, read_chunk
from llm_assets.judge import judge_items
from llm_assets.pipeline_assets import build_llm_resource, stage_prompt, stage_values
from llm_assets.pipeline_checks import judge_llm_resource, judge_prompt
from llm_assets.quality_stats import sample_item_ids, wilson_interval
from llm_assets.settings import PipelineSettings
from llm_assets.spec import CandidateSpec, PipelineSpec, StageSpec
from llm_assets.spec_template import render
from llm_assets.stages import idempotency_key
from llm_assets.validation import validate_chunk
from resources.llm import BudgetScope, ItemResult, LLMRequest, LLMResource
from resources.llm.errors import UnknownModelPriceError
from resources.llm.prices import ModelPrice
from resources.llm.runner import percentile
from resources.llm.tokens import conservative_input_tokens, count_tokens, estimate_prompt_tokens
from resources.local_sqlite import open_shared_sqlite
from resources.state_url import StateUrlError, state_url
from resources.trial_answers_pg import PostgresTrialAnswers

TRIALS_DIR = "trials"
TRIAL_SUFFIX = "__trial"
"""A trial's requests are in the spend ledger under dataset `<dataset_id>__trial` and stage `<stage>__trial`."""
ANSWERS_DB = "answers.sqlite"
REFUSALS = ("refusal", "content_filter")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS trial_answers (
    key TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""


class TrialError(ValueError):
    """A trial that cannot run as asked; the message is one line that says what to change. Nothing was sent."""


# ------------------------------------------------------------------------------------------------ records


class CandidateMetrics(BaseModel):
    """One candidate's measurements on the sample. Money in USD, times in seconds, rates in 0..1."""

    label: str
    """The candidate's name in tables, plots and partition keys: its model, or `<profile>__<model>`."""
    model: str
    provider: str
    """The provider profile's name."""
    items: int
    scored: int
    """Sample items with a gold answer or a judge verdict: the accuracy's denominator."""
    correct: int
    accuracy: float
    wilson_low: float
    wilson_high: float
    schema_valid_rate: float
    refusal_rate: float
    error_rate: float
    sample_cost_usd: float
    """What the provider billed for this candidate's answers to the sample (whenever they were bought)."""
    cost_per_1k_usd: float
    cost_per_1k_usd_batch: float
    latency_p50_s: float
    latency_p95_s: float
    projected_cost_usd: float
    projected_cost_usd_batch: float
    meets_gate: bool


class CascadePoint(BaseModel):
    """The cheap candidate on every item, the strong one on those below `threshold` (or failed by the cheap)."""

    threshold: float
    routed: int
    routed_share: float
    correct: int
    scored: int
    accuracy: float
    wilson_low: float
    wilson_high: float
    cost_per_1k_usd: float
    projected_cost_usd: float
    meets_gate: bool


class TrialResult(BaseModel):
    """Everything a trial measured and recommends; `trial.json` is this model."""

    pipeline: str
    stage: str
    dataset_id: str
    dataset_items: int
    """Valid items of the dataset: what the projected costs are for."""
    sample_size: int
    seed: int
    scored_by: str
    """`gold`, `judge` or `gold+judge`."""
    field: str
    min_accuracy: float
    judge_model: str | None = None
    """The judge's model when it scored any item (agreement with it is the accuracy of those items)."""
    candidates: list[CandidateMetrics]
    recommendation: str | None
    """The recommended candidate's label; None when none meets the gate."""
    recommendation_text: str
    cascade_cheap: str | None = None
    cascade_strong: str | None = None
    confidence_field: str | None = None
    cascade: list[CascadePoint] = []
    cascade_recommendation: float | None = None
    cascade_text: str = ""
    judge_cost_usd: float = 0.0
    """What the judge was billed in this run."""
    spent_usd: float = 0.0
    """What this run bought (candidates and judge); 0 on a re-run of the same sample and models."""
    requests_sent: int = 0
    worst_case_usd: float = 0.0
    """The worst case of what this run had to buy, checked against the budget before sending."""
    finished_at: str = ""
    json_path: str = ""
    markdown_path: str = ""

    def candidate(self, label: str) -> CandidateMetrics:
        for metrics in self.candidates:
            if metrics.label == label:
                return metrics
        raise KeyError(
            f"no candidate {label!r} in this trial ({', '.join(c.label for c in self.candidates)})"
        )

    def markdown(self) -> str:
        """The candidates table, the recommendation, and the cascade table when there is one."""
        lines = [
            f"## Model trial: `{self.pipeline}/{self.stage}` on {self.dataset_id}",
            "",
            f"{self.sample_size} items (seed {self.seed}) scored on `{self.field}` by {self.scored_by}; gate: "
            f"Wilson 95% lower bound >= {self.min_accuracy:.2f}; projected for {self.dataset_items:,} items.",
            "",
            "| candidate | accuracy (95% CI) | scored | schema-valid | refusals | errors | $ / 1k online | "
            "$ / 1k batch | latency p50 / p95 (s) | projected $ online / batch | gate |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for c in self.candidates:
            lines.append(
                f"| {c.label} | {c.accuracy:.3f} ({c.wilson_low:.3f}-{c.wilson_high:.3f}) | {c.scored} | "
                f"{c.schema_valid_rate:.1%} | {c.refusal_rate:.1%} | {c.error_rate:.1%} | {c.cost_per_1k_usd:.4f} | "
                f"{c.cost_per_1k_usd_batch:.4f} | {c.latency_p50_s:.3f} / {c.latency_p95_s:.3f} | "
                f"{c.projected_cost_usd:.4f} / {c.projected_cost_usd_batch:.4f} | "
                f"{'meets' if c.meets_gate else 'below'} |"
            )
        same = [c.label for c in self.candidates if self.judge_model and c.model == self.judge_model]
        if same and "judge" in self.scored_by:
            lines += [
                "",
                f"Note: `{same[0]}` is the judge's own model: its agreement with the judge is not evidence of "
                "accuracy (a model agrees with itself). Score it against gold answers, or use another judge.",
            ]
        lines += ["", f"**Recommendation:** {self.recommendation_text}"]
        if self.cascade:
            lines += [
                "",
                f"### Cascade: `{self.cascade_cheap}` on every item, `{self.cascade_strong}` where "
                f"`{self.confidence_field}` < threshold",
                "",
                "| threshold | routed to strong | accuracy (95% CI) | $ / 1k online | projected $ online | gate |",
                "| ---: | ---: | --- | ---: | ---: | --- |",
            ]
            for p in self.cascade:
                lines.append(
                    f"| {p.threshold:.2f} | {p.routed} ({p.routed_share:.0%}) | {p.accuracy:.3f} "
                    f"({p.wilson_low:.3f}-{p.wilson_high:.3f}) | {p.cost_per_1k_usd:.4f} | "
                    f"{p.projected_cost_usd:.4f} | {'meets' if p.meets_gate else 'below'} |"
                )
            lines += ["", f"**Cascade:** {self.cascade_text}"]
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ answers


class TrialAnswers:
    """Every answer a trial bought, keyed by who answered what (`answer_key`): the idempotency of trials. The
    embedded backend, one SQLite file per machine; `PostgresTrialAnswers` is the shared one (same methods)."""

    def __init__(self, home: Path) -> None:
        self._home = home
        self._conn = open_shared_sqlite(home / TRIALS_DIR / ANSWERS_DB, _SCHEMA)

    def get(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            rows = self._conn.execute(
                f"SELECT key, record FROM trial_answers WHERE key IN ({','.join('?' * len(part))})", part
            ).fetchall()
            found.update({key: json.loads(record) for key, record in rows})
        return found

    def put(self, key: str, record: dict[str, Any]) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO trial_answers (key, record, created_at) VALUES (?, ?, ?)",
            (key, json.dumps(record, sort_keys=True), datetime.now(UTC).isoformat()),
        )

    @contextlib.contextmanager
    def exclusive(self, trial: str) -> Iterator[None]:
        """One run of `trial` (`pipeline/stage/dataset_id`) at a time on this machine: the second waits, then
        finds the first one's answers and buys nothing again. A file lock in the trial's folder."""
        folder = self._home / TRIALS_DIR / trial
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def close(self) -> None:
        self._conn.close()


def open_trial_answers(home: Path) -> TrialAnswers | PostgresTrialAnswers:
    """The answers in the backend `CHUNKWISE_STATE_URL` selects: unset, `<home>/trials/answers.sqlite`; a
    `postgresql://` URL, the shared table. TrialError (one line naming the setting, password masked) when the
    setting is wrong or the database cannot be reached: nothing has been sent then."""
    try:
        url = state_url()
        return TrialAnswers(home) if url is None else PostgresTrialAnswers(url)
    except StateUrlError as error:
        raise TrialError(str(error)) from None


def answer_key(who: str, prompt_version: str, text: str) -> str:
    """The cache key of one answer: who answered (candidate or judge), the prompt version, the message's sha256."""
    return f"{who}|{prompt_version}|{hashlib.sha256(text.encode('utf-8')).hexdigest()}"


def _answer_record(result: ItemResult) -> dict[str, Any]:
    usage = result.usage
    return {
        "ok": result.ok,
        "output": result.output,
        "error_class": result.error_class,
        "cost_usd": usage.cost_usd,
        "latency_s": usage.latency_s,
        "attempts": result.attempts,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
    }


# ------------------------------------------------------------------------------------------------ the trial


class _Candidate:
    """A candidate resolved against the spec: its LLM resource, price and cache identity."""

    def __init__(
        self, spec: PipelineSpec, stage: StageSpec, candidate: CandidateSpec, home: Path, label: str
    ):
        self.spec = candidate
        self.label = label
        self.profile_name = candidate.provider or stage.provider
        profile = spec.providers[self.profile_name]
        as_stage = stage.model_copy(
            update={
                "provider": self.profile_name,
                "model": candidate.model,
                "max_output_tokens": stage.max_output_tokens or profile.max_output_tokens,
            }
        )
        self.resource = build_llm_resource(spec, as_stage, home)
        self.max_output_tokens = as_stage.max_output_tokens or profile.max_output_tokens
        try:
            self.price: ModelPrice = self.resource.price()
        except UnknownModelPriceError as exc:
            raise TrialError(f"candidate {label}: {exc}") from None
        mode = profile.structured_output or self.resource.effective_structured_output()
        self.who = f"{self.profile_name}|{profile.provider}|{candidate.model}|{mode}|{self.max_output_tokens}"


def candidate_labels(stage: StageSpec) -> list[str]:
    """Each candidate's label: its model, or `<profile>__<model>` when a model is listed on two profiles."""
    models = [c.model for c in stage.candidates]
    return [
        c.model if models.count(c.model) == 1 else f"{c.provider or stage.provider}__{c.model}"
        for c in stage.candidates
    ]


def trial_dir(home: Path, pipeline: str, stage: str, dataset_id: str) -> Path:
    return home / TRIALS_DIR / pipeline / stage / dataset_id


def run_trial(
    spec: PipelineSpec,
    stage_name: str,
    dataset: RegisteredDataset | str,
    instance: dg.DagsterInstance,
    home: Path,
    sample_size: int | None = None,
    seed: int | None = None,
    budget_usd: float | None = None,
    *,
    run_id: str | None = None,
    log: Any = None,
) -> TrialResult:
    """Run (or re-read) the model trial of `stage_name` on a registered dataset and write trial.json / trial.md.

    `sample_size` and `seed` default to the stage's `trial` section; `budget_usd` caps the worst case of what
    is still to buy (None: only the pipeline's budgets apply, request by request). Raises TrialError (bad input,
    nothing sent) and what `LLMResource.run_prompts` raises (JobFatalError for a spent budget or a bad key,
    ChunkRetryableError for an outage); answers that arrived before such an error are kept, so running the
    trial again pays only for the rest."""
    stage = trial_stage(spec, stage_name)
    trial = stage.trial
    size = trial.sample_size if sample_size is None else sample_size
    chosen_seed = trial.seed if seed is None else seed
    if size < 1:
        raise TrialError(
            f"the sample is empty (sample size {size}); ask for 1 item or more (default {trial.sample_size})"
        )
    if budget_usd is not None and budget_usd < 0:
        raise TrialError(f"budget ${budget_usd} is negative; give a budget in USD, 0 or more")
    gate = stage.gates.sampled_quality
    assert gate is not None  # the loader requires it with candidates
    if isinstance(dataset, str):
        try:
            dataset = load_dataset(dataset, home)
        except (DatasetError, StateUrlError) as exc:  # not registered; the shared manifests unreachable
            raise TrialError(str(exc)) from None
    labels = candidate_labels(stage)
    candidates = [
        _Candidate(spec, stage, c, home, label) for c, label in zip(stage.candidates, labels, strict=True)
    ]
    items = _dataset_items(spec, dataset)
    if size > len(items):
        raise TrialError(
            f"a sample of {size} items is larger than dataset {dataset.dataset_id} ({len(items)} valid items); "
            f"ask for {len(items)} or fewer"
        )
    sample = sample_item_ids(items["item_id"].astype(str), f"trial|{chosen_seed}", size)
    values = stage_values(spec, items[items["item_id"].astype(str).isin(set(sample))], {})
    texts = {i: render(stage.user_template, values.loc[i].to_dict()) for i in sample}
    gold = _gold(values, gate.gold_column, sample)
    unlabelled = [i for i in sample if i not in gold]
    if not gold and gate.judge is None:
        raise TrialError(
            f"nothing to score stage {stage.name!r} by: no sampled item of {dataset.dataset_id} has a gold "
            f"`{gate.gold_column}` and gates.sampled_quality has no judge; register a file with gold answers or "
            "add a judge"
        )
    prompt = stage_prompt(stage)
    folder = trial_dir(home, spec.name, stage.name, dataset.dataset_id)
    folder.mkdir(parents=True, exist_ok=True)
    answers = open_trial_answers(home)
    run = run_id or f"trial-{uuid.uuid4().hex[:12]}"
    # Its own ledger "dataset": the dataset's completion report counts its processing, not its trials.
    spend_id = f"{dataset.dataset_id}{TRIAL_SUFFIX}"
    scope = BudgetScope(run_id=run, dataset_id=spend_id, partition_key=f"trial:{stage.name}")
    spent, sent, judge_cost = 0.0, 0, 0.0
    try:
        with answers.exclusive(f"{spec.name}/{stage.name}/{dataset.dataset_id}"):
            keys = {
                c.label: {i: answer_key(c.who, prompt.version, texts[i]) for i in sample} for c in candidates
            }
            have = {c.label: answers.get(list(keys[c.label].values())) for c in candidates}
            missing = {
                c.label: [i for i in sample if keys[c.label][i] not in have[c.label]] for c in candidates
            }
            judge = (
                _JudgePlan(spec, stage, home, values, unlabelled, answers)
                if unlabelled and gate.judge is not None
                else None
            )
            worst = sum(
                _worst_case_usd(
                    c.price,
                    prompt.system_prompt,
                    prompt.schema,
                    [texts[i] for i in missing[c.label]],
                    c.max_output_tokens,
                )
                for c in candidates
            ) + (judge.worst_case_usd() if judge else 0.0)
            if budget_usd is not None and worst > budget_usd:
                todo = sum(len(m) for m in missing.values()) + (len(judge.missing) if judge else 0)
                raise TrialError(
                    f"the trial's worst case is ${worst:.4f} ({todo} requests still to buy) but the budget is "
                    f"${budget_usd:.4f}; raise the budget or ask for a smaller sample"
                )
            todo_any = any(missing.values()) or (judge is not None and judge.missing)
            if todo_any:
                resources = {f"c{n}": c.resource for n, c in enumerate(candidates) if missing[c.label]}
                if judge is not None and judge.missing:
                    resources["judge"] = judge.resource
                with dg.build_resources(resources, instance=instance) as built:
                    for n, c in enumerate(candidates):
                        if not missing[c.label]:
                            continue
                        cost, count = _buy_answers(
                            getattr(built, f"c{n}"), c, prompt, stage, spend_id, scope,
                            {i: texts[i] for i in missing[c.label]}, keys[c.label], answers, log,
                        )  # fmt: skip
                        spent += cost
                        sent += count
                    if judge is not None and judge.missing:
                        judge_cost, count = judge.buy(built.judge, spend_id, run, stage.name, log)
                        spent += judge_cost
                        sent += count
                have = {c.label: answers.get(list(keys[c.label].values())) for c in candidates}
            verdicts = judge.verdicts() if judge else {}
    finally:
        answers.close()
    references = {**verdicts, **gold}
    scored_by = "+".join(name for name, used in (("gold", bool(gold)), ("judge", bool(verdicts))) if used)
    rows = len(items)
    metrics = [
        _metrics(c, sample, {i: have[c.label].get(keys[c.label][i]) for i in sample}, references, gate.field, gate.min_accuracy, rows)
        for c in candidates
    ]  # fmt: skip
    result = TrialResult(
        pipeline=spec.name,
        stage=stage.name,
        dataset_id=dataset.dataset_id,
        dataset_items=rows,
        sample_size=size,
        seed=chosen_seed,
        scored_by=scored_by or "nothing",
        field=gate.field,
        min_accuracy=gate.min_accuracy,
        judge_model=gate.judge.model if verdicts and gate.judge else None,
        candidates=metrics,
        recommendation=None,
        recommendation_text="",
        judge_cost_usd=judge_cost,
        spent_usd=spent,
        requests_sent=sent,
        worst_case_usd=worst,
        finished_at=datetime.now(UTC).isoformat(),
    )
    _recommend(result)
    confidence = stage.trial.confidence_field
    if len(metrics) >= 2 and confidence in stage.resolved_schema().get("properties", {}):
        answers_by = {c.label: {i: have[c.label].get(keys[c.label][i]) for i in sample} for c in candidates}
        _cascade(result, answers_by, references, stage.trial.thresholds, confidence, sample)
    result.json_path = str(folder / "trial.json")
    result.markdown_path = str(folder / "trial.md")
    _write_atomic(Path(result.json_path), result.model_dump_json(indent=2) + "\n")
    _write_atomic(Path(result.markdown_path), result.markdown())
    return result


def trial_stage(spec: PipelineSpec, name: str) -> StageSpec:
    """The stage `name` of `spec`, with candidates; TrialError (one line) if there is none."""
    try:
        stage = spec.stage(name)
    except KeyError:
        raise TrialError(
            f"pipeline {spec.name!r} has no stage {name!r} (stages: {', '.join(s.name for s in spec.stages)})"
        ) from None
    if not stage.candidates:
        with_candidates = [s.name for s in spec.stages if s.candidates]
        raise TrialError(
            f"stage {name!r} of pipeline {spec.name!r} lists no candidates; add `candidates:` to it in the spec"
            + (f" (stages with candidates: {', '.join(with_candidates)})" if with_candidates else "")
        )
    if stage.gates.sampled_quality is None:
        raise TrialError(
            f"stage {name!r} of pipeline {spec.name!r} has no gates.sampled_quality: a model trial scores its "
            "candidates by it (its field, gold_column or judge, and min_accuracy as the gate); add one to the stage"
        )
    return stage


def _dataset_items(spec: PipelineSpec, dataset: RegisteredDataset) -> pd.DataFrame:
    """Every valid item of the dataset, as the `items` asset validates them (the length policy applied)."""
    frames = []
    for index in range(dataset.n_chunks):
        checked = validate_chunk(
            read_chunk(dataset, index),
            chunk_index=index,
            max_input_tokens=spec.length_policy.max_input_tokens,
            length_policy=spec.length_policy.action,
            count_tokens=count_tokens,
            duplicate_rows=dataset.duplicate_rows,
        )
        frames.append(checked.valid)
    if not frames:
        return pd.DataFrame(columns=["item_id", "text", "team", "gold_label", "extra_json"])
    return pd.concat(frames, ignore_index=True)


def _gold(values: pd.DataFrame, column: str | None, sample: list[str]) -> dict[str, str]:
    if column is None or column not in values.columns:
        return {}
    gold: dict[str, str] = {}
    for i in sample:
        value = values.at[i, column]
        if value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value) != "":
            gold[i] = str(value)
    return gold


def _worst_case_usd(
    price: ModelPrice, system_prompt: str, schema: dict, texts: list[str], max_output_tokens: int
) -> float:
    """Worst case of sending `texts` once each, as budgets reserve it: the estimated input with the reservation
    margin at the dearest input rate, and the full output cap. Retries and repairs can add to it; the pipeline's
    caps still bound every request."""
    total = 0.0
    for text in texts:
        tokens = conservative_input_tokens(estimate_prompt_tokens([system_prompt, text], schema))
        total += price.worst_case_usd(tokens, max_output_tokens)
    return total


def _buy_answers(
    llm: LLMResource,
    candidate: _Candidate,
    prompt: Any,
    stage: StageSpec,
    dataset_id: str,
    scope: BudgetScope,
    texts: dict[str, str],
    keys: dict[str, str],
    answers: TrialAnswers | PostgresTrialAnswers,
    log: Any,
) -> tuple[float, int]:
    """Send `texts` (item id -> message) to the candidate; each answer is stored the moment it arrives."""
    by_request = {
        idempotency_key(dataset_id, i, f"{stage.name}__trial", prompt.version, candidate.spec.model): i
        for i in texts
    }
    paid = {"usd": 0.0}

    def keep(result: ItemResult) -> None:
        item = by_request[result.key]
        paid["usd"] += result.usage.cost_usd
        answers.put(keys[item], _answer_record(result))

    outcome = llm.run_prompts(
        [LLMRequest(key=key, text=texts[i]) for key, i in by_request.items()],
        system_prompt=prompt.system_prompt,
        schema=prompt.schema,
        schema_name=prompt.schema_name,
        scope=scope,
        stage=f"{stage.name}__trial",
        on_result=keep,
        log=log,
        normalize=dict(stage.normalize) or None,
    )
    requests = outcome.summary.requests if outcome.summary is not None else len(texts)
    return paid["usd"], requests


class _JudgePlan:
    """The judge's verdicts for the sampled items with no gold answer: cached like candidates' answers."""

    def __init__(
        self,
        spec: PipelineSpec,
        stage: StageSpec,
        home: Path,
        values: pd.DataFrame,
        unlabelled: list[str],
        answers: TrialAnswers | PostgresTrialAnswers,
    ) -> None:
        gate = stage.gates.sampled_quality
        assert gate is not None
        self.gate = gate
        self.answers = answers
        self.prompt = judge_prompt(stage)
        judge = gate.judge
        assert judge is not None  # a plan is made only for a judge
        self.resource = judge_llm_resource(spec, stage, home)
        self.texts = {i: render(judge.user_template, values.loc[i].to_dict()) for i in unlabelled}
        try:
            self.price = self.resource.price()
        except UnknownModelPriceError as exc:
            raise TrialError(f"judge: {exc}") from None
        who = f"judge|{judge.provider}|{judge.model}"
        self.keys = {i: answer_key(who, self.prompt.version, t) for i, t in self.texts.items()}
        found = answers.get(list(self.keys.values()))
        self.missing = [i for i in self.texts if self.keys[i] not in found]

    def worst_case_usd(self) -> float:
        texts = [self.texts[i] for i in self.missing]
        return _worst_case_usd(
            self.price, self.prompt.system_prompt, self.prompt.schema, texts, self.resource.max_output_tokens
        )

    def buy(self, llm: LLMResource, dataset_id: str, run_id: str, stage: str, log: Any) -> tuple[float, int]:
        verdicts = judge_items(
            llm,
            self.prompt,
            {i: self.texts[i] for i in self.missing},
            dataset_id=dataset_id,
            run_id=run_id,
            partition_key=f"trial:{stage}",
            log=log,
            answer_field=(self.gate.judge.answer_field if self.gate.judge else None) or self.gate.field,
            message_prefix="",  # the judge's user template is its whole message
        )
        for i, label in verdicts.labels.items():
            self.answers.put(self.keys[i], {"label": label})
        return verdicts.cost_usd, len(self.missing)

    def verdicts(self) -> dict[str, str]:
        found = self.answers.get(list(self.keys.values()))
        return {i: str(found[k]["label"]) for i, k in self.keys.items() if k in found}


def _correct(record: dict[str, Any] | None, field: str, reference: str) -> bool:
    return bool(
        record and record["ok"] and record["output"] and str(record["output"].get(field)) == reference
    )


def _metrics(
    candidate: _Candidate,
    sample: list[str],
    records: dict[str, dict[str, Any] | None],
    references: dict[str, str],
    field: str,
    min_accuracy: float,
    rows: int,
) -> CandidateMetrics:
    n = len(sample)
    got = [records[i] for i in sample if records[i] is not None]
    ok = sum(1 for r in got if r["ok"])
    refused = sum(1 for r in got if not r["ok"] and r["error_class"] in REFUSALS)
    scored = [i for i in sample if i in references]
    correct = sum(_correct(records[i], field, references[i]) for i in scored)
    low, high = wilson_interval(correct, len(scored))
    cost = sum(float(r["cost_usd"]) for r in got)
    per_item = cost / n if n else 0.0
    latencies = sorted(float(r["latency_s"]) for r in got)
    batch = candidate.price.batch_multiplier
    return CandidateMetrics(
        label=candidate.label,
        model=candidate.spec.model,
        provider=candidate.profile_name,
        items=n,
        scored=len(scored),
        correct=correct,
        accuracy=correct / len(scored) if scored else 0.0,
        wilson_low=low,
        wilson_high=high,
        schema_valid_rate=ok / n if n else 0.0,
        refusal_rate=refused / n if n else 0.0,
        error_rate=(n - ok - refused) / n if n else 0.0,
        sample_cost_usd=cost,
        cost_per_1k_usd=per_item * 1000,
        cost_per_1k_usd_batch=per_item * 1000 * batch,
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
        projected_cost_usd=per_item * rows,
        projected_cost_usd_batch=per_item * rows * batch,
        meets_gate=bool(scored) and low >= min_accuracy,
    )


def _recommend(result: TrialResult) -> None:
    passing = [c for c in result.candidates if c.meets_gate]
    if passing:
        best = min(passing, key=lambda c: (c.projected_cost_usd, -c.wilson_low))
        result.recommendation = best.label
        result.recommendation_text = (
            f"`{best.label}`: the cheapest candidate whose accuracy lower bound ({best.wilson_low:.3f}) meets the "
            f"gate ({result.min_accuracy:.2f}); ${best.projected_cost_usd:.4f} projected online, "
            f"${best.projected_cost_usd_batch:.4f} batch, for {result.dataset_items:,} items."
        )
        return
    top = max(result.candidates, key=lambda c: c.wilson_low)
    result.recommendation = None
    result.recommendation_text = (
        f"none meets the gate: no candidate's accuracy lower bound reaches {result.min_accuracy:.2f}; the best is "
        f"`{top.label}` at {top.wilson_low:.3f} (accuracy {top.accuracy:.3f} on {top.scored} items). Try a stronger "
        "model, a better prompt, or a larger sample if the bound is close."
    )


def _cascade(
    result: TrialResult,
    answers_by: dict[str, dict[str, dict[str, Any] | None]],
    references: dict[str, str],
    thresholds: list[float],
    confidence: str,
    sample: list[str],
) -> None:
    """Cheap on every item, strong on the ones whose confidence is below each threshold (or failed)."""
    by_label = {c.label: c for c in result.candidates}
    cheap = min(result.candidates, key=lambda c: (c.cost_per_1k_usd, c.label))
    others = [c for c in result.candidates if c.label != cheap.label]
    strong = max(others, key=lambda c: (c.accuracy, c.cost_per_1k_usd))
    cheap_answers, strong_answers = answers_by[cheap.label], answers_by[strong.label]
    n = len(sample)
    scored = [i for i in sample if i in references]
    points: list[CascadePoint] = []
    for threshold in sorted(thresholds):
        routed = {i for i in sample if _below(cheap_answers[i], confidence, threshold)}
        correct = sum(
            _correct((strong_answers if i in routed else cheap_answers)[i], result.field, references[i])
            for i in scored
        )
        strong_cost = sum(float((strong_answers[i] or {}).get("cost_usd", 0.0)) for i in routed)
        per_item = (cheap.sample_cost_usd + strong_cost) / n if n else 0.0
        low, high = wilson_interval(correct, len(scored))
        points.append(
            CascadePoint(
                threshold=threshold,
                routed=len(routed),
                routed_share=len(routed) / n if n else 0.0,
                correct=correct,
                scored=len(scored),
                accuracy=correct / len(scored) if scored else 0.0,
                wilson_low=low,
                wilson_high=high,
                cost_per_1k_usd=per_item * 1000,
                projected_cost_usd=per_item * result.dataset_items,
                meets_gate=bool(scored) and low >= result.min_accuracy,
            )
        )
    result.cascade_cheap, result.cascade_strong, result.confidence_field = (
        cheap.label,
        strong.label,
        confidence,
    )
    result.cascade = points
    passing = [p for p in points if p.meets_gate]
    alone = f"`{cheap.label}` alone meets the gate (see above); " if cheap.meets_gate else ""
    if passing:
        best = min(passing, key=lambda p: (p.projected_cost_usd, p.threshold))
        result.cascade_recommendation = best.threshold
        result.cascade_text = alone + (
            f"route `{confidence} < {best.threshold:g}` to `{strong.label}`: the cheapest threshold whose lower "
            f"bound ({best.wilson_low:.3f}) meets the gate; ${best.projected_cost_usd:.4f} projected, against "
            f"${by_label[strong.label].projected_cost_usd:.4f} for `{strong.label}` alone."
        )
    else:
        top = max(points, key=lambda p: p.wilson_low) if points else None
        result.cascade_text = (
            alone
            + "no threshold meets the gate"
            + (f"; the best lower bound is {top.wilson_low:.3f} at {top.threshold:g}" if top else "")
        )


def _below(record: dict[str, Any] | None, field: str, threshold: float) -> bool:
    """Routed to the strong model: the cheap one failed, or its confidence is missing or below `threshold`."""
    if not record or not record["ok"] or not record["output"]:
        return True
    value = record["output"].get(field)
    return not isinstance(value, int | float) or value < threshold


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ Dagster


def trial_asset_key(spec: PipelineSpec, stage: StageSpec) -> dg.AssetKey:
    """`trials/<pipeline>/<stage>`: apart from the pipeline's own keys, so no chunk job or sensor selects it."""
    return dg.AssetKey([TRIALS_DIR, spec.name, stage.name])


class TrialConfig(dg.Config):
    """What to run the trial on; the launchpad's run config."""

    dataset_id: str
    """A dataset registered for this pipeline (its id is in the new-dataset sensor's run and in the report)."""
    sample_size: int | None = None
    """Items in the sample; null: the stage's `trial.sample_size`."""
    seed: int | None = None
    """null: the stage's `trial.seed`."""
    budget_usd: float | None = None
    """Refuse when the trial's worst case is more than this (USD); null: only the pipeline's budgets."""


def trial_assets(spec: PipelineSpec) -> list[dg.AssetsDefinition]:
    """One asset per stage with candidates, partitioned by candidate: materializing a partition runs the trial
    (answers already bought are reused, so materializing every partition pays once) and records that candidate's
    numbers, so the UI plots accuracy and cost per candidate. Launched by hand, never by a sensor."""
    return [_trial_asset(spec, stage) for stage in spec.stages if stage.candidates]


def _trial_asset(spec: PipelineSpec, stage: StageSpec) -> dg.AssetsDefinition:
    labels = candidate_labels(stage)
    gate = stage.gates.sampled_quality

    @dg.asset(
        key=trial_asset_key(spec, stage),
        partitions_def=dg.StaticPartitionsDefinition(labels),
        group_name=f"{spec.name}_trials",
        kinds={"python"},
        owners=spec.owners or None,
        description=(
            f"Model trial of `{spec.name}/{stage.name}`: the same seeded sample through each candidate "
            f"({', '.join(labels)}), scored on `{gate.field if gate else ''}`; accuracy with its Wilson 95% interval, "
            "schema-valid, refusal and error rates, cost per 1,000 items online and batch, latency p50/p95 and the "
            "projected cost of the dataset. Launch it for a registered dataset (run config `dataset_id`, optional "
            "`sample_size`); answers are reused, so materializing every candidate pays once. The recommendation: "
            "the cheapest candidate whose lower bound meets gates.sampled_quality.min_accuracy. "
            "llm_assets/trials.py"
        ),
        required_resource_keys={"settings"},
    )
    def _trial(context: dg.AssetExecutionContext, config: TrialConfig) -> dg.MaterializeResult:
        settings: PipelineSettings = context.resources.settings
        try:
            result = run_trial(
                spec,
                stage.name,
                config.dataset_id,
                context.instance,
                settings.home_path(),
                sample_size=config.sample_size,
                seed=config.seed,
                budget_usd=config.budget_usd,
                run_id=context.run.run_id,
                log=context.log,
            )
        except TrialError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        return dg.MaterializeResult(metadata=trial_metadata(result, context.partition_key))

    return _trial


def trial_metadata(result: TrialResult, label: str) -> dict[str, dg.MetadataValue]:
    """One candidate's numbers (plotted across the candidate partitions) and the whole trial as Markdown."""
    c = result.candidate(label)
    floats = {
        "accuracy": c.accuracy,
        "wilson_low": c.wilson_low,
        "wilson_high": c.wilson_high,
        "schema_valid_rate": c.schema_valid_rate,
        "refusal_rate": c.refusal_rate,
        "error_rate": c.error_rate,
        "cost_per_1k_usd": c.cost_per_1k_usd,
        "cost_per_1k_usd_batch": c.cost_per_1k_usd_batch,
        "latency_p50_s": c.latency_p50_s,
        "latency_p95_s": c.latency_p95_s,
        "projected_cost_usd": c.projected_cost_usd,
        "projected_cost_usd_batch": c.projected_cost_usd_batch,
        "spent_usd": result.spent_usd,
    }
    meta: dict[str, dg.MetadataValue] = {k: dg.MetadataValue.float(round(v, 6)) for k, v in floats.items()}
    meta.update(
        {
            "items_scored": dg.MetadataValue.int(c.scored),
            "meets_gate": dg.MetadataValue.bool(c.meets_gate),
            "recommended": dg.MetadataValue.bool(result.recommendation == label),
            "recommendation": dg.MetadataValue.text(result.recommendation or "none meets the gate"),
            "dataset_id": dg.MetadataValue.text(result.dataset_id),
            "model": dg.MetadataValue.text(c.model),
            "trial": dg.MetadataValue.md(result.markdown()),
            "trial_json": dg.MetadataValue.path(result.json_path),
        }
    )
    return meta
