"""The judge: a second model that labels a sample of items when the input has no gold label.

The sampled quality gate then scores the classifier by its agreement with the judge. Agreement is an
estimate of accuracy only as good as the judge (use a stronger model than the classifier), and the judge
answers independently (it is not shown the classifier's label, so it cannot simply agree with it).
Its requests go through the same LLM resource, budget and price table as every stage; the check records
their cost as the chunk's `cost_usd`.
"""

from dataclasses import dataclass

from llm_assets.prompts import StagePrompt
from llm_assets.stages import idempotency_key
from resources.llm import BudgetScope, LLMRequest, LLMResource

JUDGE_STAGE = "judge"


@dataclass
class JudgeVerdicts:
    """The judge's label per item id (items the judge failed on for good are absent), and what it cost."""

    labels: dict[str, str]
    failed: int
    cost_usd: float
    input_tokens: int
    output_tokens: int


def judge_items(
    llm: LLMResource,
    prompt: StagePrompt,
    texts: dict[str, str],
    *,
    dataset_id: str,
    run_id: str,
    partition_key: str = "",
    log: object | None = None,
    answer_field: str = "correct_label",
    message_prefix: str = "Message: ",
) -> JudgeVerdicts:
    """Ask the judge for the label of each `item_id -> text`; spend counts against the run's and dataset's budget.

    The judge's answer is its reply's `answer_field` (as text); each request's user message is
    `message_prefix + text` (a spec pipeline's judge sends its rendered user template as is, prefix "").

    Raises what `LLMResource.run_prompts` raises (JobFatalError, ChunkRetryableError): a judge that cannot
    be reached fails the check's step, it does not pass or fail the gate.
    """
    if not texts:
        return JudgeVerdicts({}, 0, 0.0, 0, 0)
    keys = {
        idempotency_key(dataset_id, item_id, JUDGE_STAGE, prompt.version, llm.model): item_id
        for item_id in texts
    }
    # "Message:" keeps the judge's request distinct from the classifier's, so it is judged on its own.
    requests = [
        LLMRequest(key=key, text=f"{message_prefix}{texts[item_id]}") for key, item_id in keys.items()
    ]
    outcome = llm.run_prompts(
        requests,
        system_prompt=prompt.system_prompt,
        schema=prompt.schema,
        schema_name=prompt.schema_name,
        scope=BudgetScope(run_id=run_id, dataset_id=dataset_id, partition_key=partition_key),
        stage=JUDGE_STAGE,
        log=log,
    )
    labels = {
        keys[r.key]: str(r.output[answer_field])
        for r in outcome.results
        if r.ok and r.output and answer_field in r.output
    }
    usage = [r.usage for r in outcome.results]
    return JudgeVerdicts(
        labels=labels,
        failed=len(texts) - len(labels),
        cost_usd=float(sum(u.cost_usd for u in usage)),
        input_tokens=int(sum(u.input_tokens for u in usage)),
        output_tokens=int(sum(u.output_tokens for u in usage)),
    )
