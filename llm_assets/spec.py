"""The pipeline spec: one YAML file per pipeline (`pipelines/<name>.yaml`), its typed model, and how to load it.

A spec says what a pipeline computes (input columns, stages with prompts, schemas and routes, quality gates) and
with what limits (provider profiles, budgets, retries). `load_pipeline(path)` reads and validates one file and
returns a `PipelineSpec`; every problem of the file is reported at once in one `PipelineSpecError`, one line per
problem naming the file, the line and the field path. docs/pipeline-spec.md is generated from these models
(`python -m scripts.spec_reference`); the field descriptions below are that reference.

After loading, file fields (taxonomy, few_shot, price_file, team_from_label, demo_data) hold absolute paths, and
each stage carries its filled prompt, resolved schema and parsed route (`StageSpec.filled_system_prompt()`,
`.resolved_schema()`, `.route_condition()`, `.prompt_version()`, `.version()`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr

from llm_assets.spec_route import Route

SLUG = r"^[a-z][a-z0-9_]{0,62}$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
OWNER = r"^(team:[A-Za-z0-9_.-]+|[^@\s]+@[^@\s]+\.[^@\s]+)$"
SCHEMA_NAME = r"^[A-Za-z0-9_-]{1,64}$"
DEFAULT_USER_TEMPLATE = "{text}"
TAXONOMY_MARKER = "$taxonomy"
RESERVED_STAGE_NAMES = ("items", "cost_ledger", "completion_report")
"""Asset names every pipeline has besides its stages (`<pipeline>/items`, ...)."""

Severity = Literal["WARN", "ERROR"]


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class SpecModel(BaseModel):
    """Every spec model: unknown fields are errors (a typo never silently becomes a default)."""

    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------------------- input


class ColumnMapping(SpecModel):
    """Which input columns hold what. Prompts and routes name them by role (`text`, `id`, `team`, `label`)
    and every column named here (`text`'s columns, `passthrough`, the id/team/label columns) by its own name."""

    id: str | None = Field(
        default="id",
        description="Column of stable item ids. null: ids are derived from the data row number "
        "(`r0000042`, stable for the same file).",
    )
    text: Annotated[list[str], BeforeValidator(_one_or_many), Field(min_length=1)] = Field(
        default=["text"],
        description="Column holding the text sent to the model, or a list of columns joined with "
        "`text_separator` (e.g. `[title, body]`). Available in prompts as `{text}`.",
        json_schema_extra={"doc_type": "string or list of strings"},
    )
    text_separator: str = Field(
        default="\n\n", description="Put between the columns of `text` when it names several."
    )
    team: str | None = Field(
        default=None,
        description="Column naming the team billed for each item. null: `input.team_from_label`, else no team.",
    )
    label: str | None = Field(
        default=None,
        description="Column holding a gold label (scored by `sampled_quality`). null: no gold labels.",
    )
    passthrough: list[str] = Field(
        default=[],
        description="Further columns kept with each item and usable as `{column}` in prompts and routes.",
    )


class InputSpec(SpecModel):
    """Where datasets come from and how their rows are read."""

    watch: str | None = Field(
        default=None,
        description="Folder or `s3://bucket/prefix` the new-dataset sensor watches for this pipeline's files. "
        "null: `$CHUNKWISE_HOME/inbox/<pipeline>` (while it does not exist, it counts as empty). Files can "
        "also be given to `make demo PIPELINE=<file> DATA=...`.",
    )
    demo_data: str | None = Field(
        default=None,
        description="Dataset file (relative to this spec) that `make demo PIPELINE=<file>` runs when no DATA= "
        "is given. Must exist.",
    )
    columns: ColumnMapping = Field(default_factory=ColumnMapping, description="The column mapping.")
    team_from_label: str | None = Field(
        default=None,
        description="teams.json rule file (relative to this spec): the team billed is derived from the gold "
        "label by its longest matching prefix (`prefix_to_team`, `default_team`). Needs `columns.label`; "
        "a `columns.team` column wins over it.",
    )
    chunk_size: int = Field(default=250, ge=1, description="Items per chunk partition.")


# ------------------------------------------------------------------------------------------------- providers


class PriceRow(SpecModel):
    """A price row, USD per million tokens; the same shape as the rows of resources/llm/prices.json."""

    model: str = Field(description="Model id exactly as the provider expects it.")
    provider: Literal["openai", "anthropic"] | None = Field(
        default=None, description="null: the profile's provider."
    )
    input: float = Field(ge=0, description="USD per million uncached input tokens.")
    output: float = Field(ge=0, description="USD per million output tokens.")
    cached_input: float | None = Field(
        default=None, ge=0, description="USD per million cached input tokens. null: `input`."
    )
    cache_write: float | None = Field(
        default=None, ge=0, description="USD per million tokens written to the prompt cache. null: `input`."
    )
    batch_multiplier: float = Field(
        default=1.0, gt=0, description="Factor on every rate in batch mode (0.5: half price)."
    )
    as_of: str = Field(default="unknown", description="When the price was read.")
    source: str = Field(default="pipeline spec", description="Where the price was read.")


class ProviderProfile(SpecModel):
    """How one provider endpoint is reached; stages name a profile. Mirrors `LLMResource`
    (resources/llm/resource.py). Rates are per minute; null means no limit of that kind."""

    provider: Literal["openai", "anthropic"] = Field(
        default="openai",
        description="Wire format: `openai` (any OpenAI-compatible server: OpenAI, vLLM, Ollama, llama.cpp, "
        "LiteLLM) or `anthropic` (Messages API).",
    )
    base_url: str = Field(
        description="OpenAI: the URL ending in /v1. Anthropic: the server root. Usually "
        "`${VAR:-default}`, since it differs per deployment.",
    )
    api_key_env: str = Field(
        pattern=ENV_NAME,
        description="NAME of the environment variable holding the API key (never the key itself). Must be "
        "set when the code location loads.",
    )
    dialect: Literal["openai", "llamacpp", "vllm", "ollama", "litellm", "openai_compatible"] | None = Field(
        default=None,
        description="Which OpenAI-compatible server (provider `openai` only): decides the output-cap parameter "
        "(`max_completion_tokens` for OpenAI, `max_tokens` for the others, both for `openai_compatible`), the "
        "default structured-output mode and concurrency. null: the official OpenAI API.",
    )
    structured_output: Literal["json_schema", "json_object", "prompt"] | None = Field(
        default=None,
        description="`json_schema`: the provider enforces the stage schema (OpenAI strict mode: every object "
        "needs `additionalProperties: false` and all its properties `required`). `json_object`: JSON mode "
        "(OpenAI-compatible only; llama.cpp also gets the schema). `prompt`: the schema goes into the prompt. "
        "null: the dialect's mode (`json_object` for llamacpp, `json_schema` otherwise). Replies are always "
        "validated.",
    )
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="Requests in flight at once, per process. null: the dialect's (32 for cloud APIs, 1 for "
        "llamacpp and ollama, 8 for openai_compatible).",
    )
    server_slots: int | None = Field(
        default=None,
        ge=1,
        description="Requests in flight at once at this server across every process (a local server's slots); "
        "paces servers that send no rate-limit headers. null: no shared cap.",
    )
    context_tokens: int | None = Field(
        default=None, ge=1, description="The server's context window, when known (llama.cpp `--ctx-size`)."
    )
    timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Longest time per request; the deadline actually used is learnt from the server's speed.",
    )
    min_timeout_s: float = Field(
        default=10.0, gt=0, description="Shortest learnt deadline per request, seconds."
    )
    max_timeouts_per_item: int = Field(
        default=2, ge=1, description="Timeouts after which an item is dead-lettered `timeout`."
    )
    max_attempts: int = Field(default=6, ge=1, description="Attempts per item, on retryable errors only.")
    max_output_tokens: int = Field(
        default=256, ge=1, description="Output tokens per reply (a stage may override)."
    )
    requests_per_minute: float | None = Field(default=None, gt=0, description="Requests per minute.")
    tokens_per_minute: float | None = Field(
        default=None, gt=0, description="Input + output tokens per minute."
    )
    input_tokens_per_minute: float | None = Field(
        default=None, gt=0, description="Input tokens per minute (Anthropic ITPM)."
    )
    output_tokens_per_minute: float | None = Field(
        default=None, gt=0, description="Output tokens per minute (Anthropic OTPM)."
    )
    rate_limit_burst_s: float = Field(
        default=1.0,
        gt=0,
        description="Bucket size, in seconds of the configured rate, until the provider's headers state its limit.",
    )
    circuit_breaker_failures: int = Field(
        default=25,
        ge=1,
        description="Consecutive retryable failures (no success between) that fail the chunk.",
    )
    circuit_breaker_rate_limited_s: float = Field(
        default=300.0,
        gt=0,
        description="Seconds of rate-limit refusals (429) without a single reply that fail the chunk. A 429 "
        "does not count toward `circuit_breaker_failures` or an item's `max_attempts`: the run sends fewer "
        "requests at once and waits as the provider asks.",
    )
    prices: list[PriceRow] = Field(
        default=[],
        description="Price rows for this profile's models, over `price_file` and the shipped table.",
    )
    price_file: str | None = Field(
        default=None,
        description='JSON file of price rows (`{"models": [...]}`, as resources/llm/prices.json), relative '
        "to this spec, merged over the shipped table.",
    )
    allow_unpriced: bool = Field(
        default=False,
        description="Price a model with no row at zero (a local model you do not pay for). Without it a model "
        "with no price row is an error at load.",
    )


# ------------------------------------------------------------------------------------------------- gates


class OutputsValidGate(SpecModel):
    """Every output row matches the stage schema (and its taxonomy)."""

    enabled: bool = Field(default=True, description="Run the check.")
    severity: Severity = Field(default="ERROR", description="ERROR blocks later stages for the chunk.")


class SuccessRateGate(SpecModel):
    """Output rows / items of the chunk that reached the model; invalid inputs are reported apart."""

    enabled: bool = Field(default=True, description="Run the check.")
    min: float = Field(default=0.95, ge=0, le=1, description="Lowest passing rate (0..1).")
    severity: Severity = Field(default="ERROR", description="ERROR blocks later stages for the chunk.")


class JudgeSpec(SpecModel):
    """A second model that answers the scored field for sampled items that have no gold label."""

    provider: str = Field(description="Provider profile name.")
    model: str = Field(description="Judge model; needs a price row. Use a stronger model than the stage's.")
    rubric: str = Field(
        description="The judge's system prompt. May use the stage's `{taxonomy}` and `{few_shot}`.",
    )
    user_template: str = Field(
        default=DEFAULT_USER_TEMPLATE, description="The judge's user message; input columns as `{column}`."
    )
    answer_field: str | None = Field(
        default=None,
        description="Name of the judge's answer property (its schema is the scored field's schema). "
        "null: the scored field's name.",
    )


class SampledQualityGate(SpecModel):
    """A seeded sample per chunk scored against gold labels, else by a judge; passes when the Wilson lower
    bound of the sampled accuracy reaches `min_accuracy`."""

    field: str = Field(description="Output field compared with the gold label or the judge's answer.")
    gold_column: str | None = Field(
        default="label", description="Input column holding the gold answer. null: judge only."
    )
    judge: JudgeSpec | None = Field(
        default=None, description="null: items without a gold answer are not scored."
    )
    sample_size: int = Field(default=50, ge=1, description="Items scored per chunk.")
    min_accuracy: float = Field(
        default=0.10, ge=0, le=1, description="Lowest passing Wilson lower bound of sampled accuracy."
    )
    confidence: float = Field(default=0.95, gt=0, lt=1, description="One-sided confidence of the bound.")
    severity: Severity = Field(default="WARN", description="ERROR makes a failed check block later stages.")


class LabelDriftGate(SpecModel):
    """Permutation chi-square of the chunk's label counts against recent chunks of the dataset."""

    field: str = Field(description="Output field whose value counts are compared (a string or enum field).")
    max_p_value: float = Field(default=0.001, gt=0, le=1, description="Fails when the p-value is below this.")
    reference_chunks: int = Field(default=5, ge=1, description="Recent chunks pooled as reference.")
    min_reference_items: int = Field(
        default=100, ge=1, description="Below this many reference items the check passes ('no baseline yet')."
    )
    severity: Severity = Field(default="WARN", description="ERROR makes a failed check block later stages.")


class CostPerItemGate(SpecModel):
    """Cost per item sent to the model, and how concentrated the chunk's tokens are."""

    enabled: bool = Field(default=True, description="Run the check.")
    max_usd: float | None = Field(
        default=None, ge=0, description="Ceiling in USD per item. null: no ceiling."
    )
    max_top_decile_token_share: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="Fails when the 10% largest items take more of the chunk's tokens.",
    )
    severity: Severity = Field(default="WARN", description="ERROR makes a failed check block later stages.")


class GatesSpec(SpecModel):
    """The stage's quality gates (asset checks on every chunk). A failed gate of severity ERROR blocks the
    chunk's later stages in the same run and quarantines it."""

    outputs_valid: OutputsValidGate = Field(default_factory=OutputsValidGate, description="Schema validity.")
    success_rate: SuccessRateGate = Field(default_factory=SuccessRateGate, description="Share of items done.")
    sampled_quality: SampledQualityGate | None = Field(default=None, description="null: not checked.")
    label_drift: LabelDriftGate | None = Field(default=None, description="null: not checked.")
    cost_per_item: CostPerItemGate = Field(default_factory=CostPerItemGate, description="Cost per item.")


# ------------------------------------------------------------------------------------------------- trials


class CandidateSpec(SpecModel):
    """A model a stage could run on, measured by a model trial (llm_assets/trials.py) on the same seeded sample
    as the other candidates, with the stage's own prompt and schema."""

    model: str = Field(description="Model id; needs a price row (or the profile's `allow_unpriced`).")
    provider: str | None = Field(
        default=None, description="Name of a profile under `providers`. null: the stage's."
    )


class TrialSpec(SpecModel):
    """How a model trial of the stage's `candidates` samples and which cascade thresholds it measures
    (`make trial`, or the asset `trials/<pipeline>/<stage>`)."""

    sample_size: int = Field(
        default=200, ge=1, description="Items in the seeded sample every candidate answers."
    )
    seed: int = Field(default=0, ge=0, description="Seed of the sample: the same seed, the same items.")
    thresholds: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default=[0.2, 0.3, 0.4, 0.5, 0.6],
        description="Cascade thresholds measured: the cheapest candidate on every item, the most accurate one "
        "on the items whose `confidence_field` is below the threshold.",
    )
    confidence_field: str = Field(
        default="confidence",
        description="Number field of the output schema the cascade routes on; a schema without it gets no "
        "cascade table.",
    )


# ------------------------------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class ResolvedStage:
    """What loading adds to a stage: its files read, its prompt filled, its route parsed."""

    system_prompt: str
    schema: dict[str, Any]
    route: Route
    profile: ProviderProfile
    taxonomy: list[str] | None = None
    few_shot: list[tuple[str, str]] = field(default_factory=list)
    judge_system_prompt: str | None = None
    judge_schema: dict[str, Any] | None = None


class StageSpec(SpecModel):
    """One model call per routed item; its output is the asset `<pipeline>/<stage name>`."""

    name: str = Field(pattern=SLUG, description="Slug; the asset key is `<pipeline>/<name>`.")
    description: str = Field(default="", description="Shown on the asset in the UI.")
    provider: str = Field(description="Name of a profile under `providers`.")
    model: str = Field(description="Model id; needs a price row (or the profile's `allow_unpriced`).")
    mode: Literal["online", "batch"] = Field(
        default="online",
        description="`batch`: through the provider's Batch API (half price, results within 24 h).",
    )
    system_prompt: str = Field(
        description="Instructions, byte-identical for every item so the provider's prompt cache serves them. "
        "May use `{taxonomy}` (one `- label` line per label) and `{few_shot}` (one `text => label` line per "
        "example); `{{name}}` writes a literal `{name}`.",
    )
    user_template: str = Field(
        default=DEFAULT_USER_TEMPLATE,
        description="The per-item message: input columns as `{column}`, earlier stages' output fields as "
        "`{stage.field}` (empty when that stage did not process the item).",
    )
    taxonomy: str | None = Field(
        default=None,
        description="JSON file (relative to this spec) with a list of labels: `{taxonomy}` in the system "
        'prompt, and `"enum": "$taxonomy"` anywhere in `output_schema`.',
    )
    few_shot: str | None = Field(
        default=None,
        description="CSV file (relative to this spec) with columns `text,label`: `{few_shot}` in the system "
        "prompt. With a taxonomy, every label must be in it.",
    )
    output_schema: dict[str, Any] = Field(
        description="JSON Schema (draft 2020-12) of the reply: an object whose top-level properties become the "
        "stage's output columns, usable as `{stage.field}` and in routes by later stages.",
        json_schema_extra={"doc_type": "JSON Schema object"},
    )
    schema_name: str | None = Field(
        default=None,
        pattern=SCHEMA_NAME,
        description="Name sent with the schema in OpenAI `json_schema` mode. null: the stage name.",
    )
    route: str = Field(
        default="all",
        description="Which items the stage processes: `all`, `none`, or a condition on earlier stages' fields "
        'and input columns, e.g. `classified.confidence < 0.3 or classified.label in ["a", "b"]` (`and`, `or`, '
        "`not`, `==`, `!=`, `<`, `<=`, `>`, `>=`, `in [...]`, parentheses). Items not routed are carried "
        "through, marked.",
    )
    normalize: dict[str, Literal["clamp", "percent_to_unit"]] = Field(
        default_factory=dict,
        description="Fixes applied to a reply before validation, for what a server's grammar cannot enforce: "
        "output path -> `percent_to_unit` (85 -> 0.85) or `clamp` (into the schema's minimum/maximum), e.g. "
        '`{"$.confidence": "percent_to_unit"}` for a small local model. Every change is recorded on the item. '
        "Online mode only.",
    )
    max_output_tokens: int | None = Field(
        default=None, ge=1, description="Output tokens per reply. null: the profile's."
    )
    gates: GatesSpec = Field(default_factory=GatesSpec, description="Quality gates on this stage.")
    candidates: list[CandidateSpec] = Field(
        default=[],
        description="Models a model trial compares for this stage (with `model` itself or not): accuracy "
        "against `gates.sampled_quality` (gold column, else its judge), cost, latency; the recommendation is "
        "the cheapest whose accuracy lower bound meets `gates.sampled_quality.min_accuracy`. Needs "
        "`gates.sampled_quality`. Empty: no trial.",
    )
    trial: TrialSpec = Field(
        default_factory=TrialSpec, description="The model trial's sample and thresholds."
    )

    _resolved: ResolvedStage | None = PrivateAttr(default=None)

    # -- what loading resolved --------------------------------------------------------------------------
    @property
    def resolved(self) -> ResolvedStage:
        if self._resolved is None:
            raise RuntimeError(f"stage {self.name!r} was not loaded by load_pipeline; its files are not read")
        return self._resolved

    def filled_system_prompt(self) -> str:
        """The system prompt with `{taxonomy}` and `{few_shot}` filled in: what is sent."""
        return self.resolved.system_prompt

    def resolved_schema(self) -> dict[str, Any]:
        """`output_schema` with `"$taxonomy"` replaced by the taxonomy's labels: what replies are checked against."""
        return self.resolved.schema

    def route_condition(self) -> Route:
        return self.resolved.route

    def output_fields(self) -> list[str]:
        return list(self.output_schema.get("properties", {}))

    def effective_schema_name(self) -> str:
        return self.schema_name or self.name

    def effective_max_output_tokens(self) -> int:
        return self.max_output_tokens or self.resolved.profile.max_output_tokens

    def prompt_version(self) -> str:
        """`<stage>-<10 hex>` of the filled system prompt and resolved schema (and the user template when it
        is not the default `{text}`): part of every output row's idempotency key, with the model. Equal to
        what llm_assets/prompts.py gave the same prompt before specs existed."""
        parts: list[Any] = [self.filled_system_prompt(), self.resolved_schema()]
        if self.user_template != DEFAULT_USER_TEMPLATE:
            parts.append(self.user_template)
        return f"{self.name}-{_sha(parts)}"

    def version(self) -> str:
        """The asset's `code_version`: the prompt version plus everything else that changes the outputs
        (model, wire format, structured-output mode, output token limit, route). Not the mode, limits or
        prices: they change cost and speed, not answers."""
        profile = self.resolved.profile
        parts = {
            "prompt": self.prompt_version(),
            "model": self.model,
            "provider": profile.provider,
            "structured_output": profile.structured_output,
            "max_output_tokens": self.effective_max_output_tokens(),
            "schema_name": self.effective_schema_name(),
            "route": " ".join(self.route.split()),
        }
        if self.normalize:  # only when set: versions of stages without it stay what they were
            parts["normalize"] = dict(sorted(self.normalize.items()))
        return f"{self.name}-{_sha(parts)}"


def _sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------------------------- policies


class Budgets(SpecModel):
    """Hard caps for every model call of the pipeline (stages and judges): a request is sent only if its
    worst case fits. null: no cap."""

    run_usd: float | None = Field(default=None, ge=0, description="USD per Dagster run.")
    dataset_usd: float | None = Field(default=None, ge=0, description="USD per dataset.")
    day_usd: float | None = Field(default=None, ge=0, description="USD per UTC day.")
    run_tokens: int | None = Field(default=None, ge=0, description="Tokens per Dagster run.")
    dataset_tokens: int | None = Field(default=None, ge=0, description="Tokens per dataset.")
    day_tokens: int | None = Field(default=None, ge=0, description="Tokens per UTC day.")


class RetrySpec(SpecModel):
    """Dagster's RetryPolicy on every stage step: a chunk failing for a transient reason is re-tried in the
    same run."""

    max_retries: int = Field(default=3, ge=0, description="Retries after the first attempt.")
    delay_s: float = Field(default=5.0, ge=0, description="Seconds before the first retry.")
    backoff: Literal["exponential", "linear"] = Field(
        default="exponential", description="How the delay grows between retries."
    )
    jitter: Literal["plus_minus", "full", "none"] = Field(
        default="plus_minus", description="Random delay spread."
    )

    def retry_policy(self) -> Any:
        """This policy as a `dagster.RetryPolicy`."""
        import dagster as dg

        return dg.RetryPolicy(
            max_retries=self.max_retries,
            delay=self.delay_s,
            backoff=dg.Backoff.EXPONENTIAL if self.backoff == "exponential" else dg.Backoff.LINEAR,
            jitter={"plus_minus": dg.Jitter.PLUS_MINUS, "full": dg.Jitter.FULL, "none": None}[self.jitter],
        )


class BackfillSpec(SpecModel):
    """The backfill sensor's re-runs of chunks whose run failed for a retryable reason, after RetryPolicy
    gave up (sensors/backfill.py `BackfillPolicy`)."""

    max_attempts: int = Field(default=4, ge=1, description="Runs of a chunk in all, the first included.")
    backoff_base_s: float = Field(default=60.0, ge=0, description="Seconds before the first re-run.")
    backoff_factor: float = Field(
        default=2.0, ge=1, description="Each later wait is this times the previous."
    )
    backoff_max_s: float = Field(default=3600.0, ge=0, description="Longest wait, seconds.")
    max_in_flight: int = Field(default=8, ge=1, description="Re-runs queued or running per provider at once.")


class LengthPolicy(SpecModel):
    """What happens to an item longer than the limit, before any call."""

    max_input_tokens: int = Field(default=512, ge=1, description="Estimated tokens of the item text.")
    action: Literal["truncate", "reject"] = Field(
        default="truncate",
        description="`truncate` the text to the limit, or `reject` the item (a dead letter keeping the text).",
    )


class Notifications(SpecModel):
    """Webhooks, by the NAME of the environment variable holding the URL (a URL is a secret). An unset
    variable means no webhook."""

    alert_webhook_env: str | None = Field(
        default="CHUNKWISE_ALERT_WEBHOOK_URL",
        pattern=ENV_NAME,
        description="Failed checks and 'needs a human' notices.",
    )
    completion_webhook_env: str | None = Field(
        default="CHUNKWISE_COMPLETION_WEBHOOK_URL",
        pattern=ENV_NAME,
        description="The completion summary of each dataset.",
    )


class CompletionSpec(SpecModel):
    """When a dataset counts as done well."""

    min_success_rate: float = Field(
        default=0.95, ge=0, le=1, description="Share of items that must succeed for `threshold_met`."
    )


class EstimateSpec(SpecModel):
    """The cost and time estimate of each new dataset (llm_assets/estimate.py), made before its chunks launch."""

    before_launch: bool = Field(
        default=False,
        description="Estimate every new dataset (a paid sample) before the new-dataset sensor launches its "
        "chunks; chunks launch only when the estimate fits `budgets.dataset_usd` and `budgets.run_usd`.",
    )
    sample_size: int | None = Field(
        default=None, ge=1, description="Items sent for real; unset: 400, at most a quarter of the dataset."
    )
    seed: int = Field(default=0, description="The sample's seed: the same seed samples the same items.")


# ------------------------------------------------------------------------------------------------- pipeline


class PipelineSpec(SpecModel):
    """One pipeline: its assets are `<name>/items`, `<name>/<stage>` for each stage, `<name>/cost_ledger` and
    `<name>/completion_report`."""

    name: str = Field(pattern=SLUG, description="Slug (`a-z`, `0-9`, `_`); the asset key prefix.")
    description: str = Field(default="", description="Shown on the pipeline's assets.")
    owners: list[Annotated[str, Field(pattern=OWNER)]] = Field(
        default=[], description="Dagster owners of the assets: `team:name` or email addresses."
    )
    input: InputSpec = Field(default_factory=InputSpec, description="Where datasets come from.")
    providers: dict[str, ProviderProfile] = Field(
        min_length=1, description="Provider profiles by name; stages and judges name one."
    )
    stages: list[StageSpec] = Field(min_length=1, description="The stages, run in this order.")
    budgets: Budgets = Field(default_factory=Budgets, description="Hard spending caps.")
    retry: RetrySpec = Field(default_factory=RetrySpec, description="Retries within a run.")
    backfill: BackfillSpec = Field(default_factory=BackfillSpec, description="Re-runs of failed chunks.")
    length_policy: LengthPolicy = Field(default_factory=LengthPolicy, description="Over-long items.")
    notifications: Notifications = Field(default_factory=Notifications, description="Webhooks.")
    completion: CompletionSpec = Field(
        default_factory=CompletionSpec, description="Dataset success threshold."
    )
    estimate: EstimateSpec = Field(
        default_factory=EstimateSpec, description="Estimate cost and time before launching a dataset."
    )

    _source: Path | None = PrivateAttr(default=None)

    @property
    def source_path(self) -> Path | None:
        """The file this spec was loaded from."""
        return self._source

    def stage(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"pipeline {self.name!r} has no stage {name!r}")

    def profile(self, stage: StageSpec) -> ProviderProfile:
        return self.providers[stage.provider]


class PipelineSpecError(ValueError):
    """A spec file (or several) with problems; `problems` holds one line per problem, the message all of them."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_pipeline(
    path: str | Path, *, require_secrets: bool = True, overrides: dict[str, Any] | None = None
) -> PipelineSpec:
    """Read and validate one spec file. Raises PipelineSpecError listing every problem of the file.

    `require_secrets=False` skips the check that each used profile's `api_key_env` is set: for tooling that
    never calls a model (docs, CI's definition checks); a run still needs the key. `overrides` are merged into
    the file before validation (`make demo MODE=batch`, tests, benchmarks: spec_load.apply_overrides), e.g.
    `{"stages": {"enriched": {"mode": "batch"}}, "input": {"chunk_size": 100}}`."""
    from llm_assets.spec_load import load_spec_file

    return load_spec_file(Path(path), require_secrets=require_secrets, overrides=overrides)


def load_pipelines(folder: str | Path, *, require_secrets: bool = True) -> list[PipelineSpec]:
    """Every `*.yaml` / `*.yml` spec in `folder`, sorted by file name. Raises one PipelineSpecError with the
    problems of all files (and pipeline names used twice)."""
    from llm_assets.spec_load import load_spec_folder

    return load_spec_folder(Path(folder), require_secrets=require_secrets)
