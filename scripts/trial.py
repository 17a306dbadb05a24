"""`make trial STAGE=...`: a model trial of one stage's candidates on a dataset (llm_assets/trials.py).

    make trial STAGE=classified                                   # BANKING77's sample, 200 items
    make trial PIPELINE=pipelines/banking77.yaml STAGE=classified DATA=path/to/file.csv SAMPLE=400
    python -m scripts.trial --stage classified --budget 2.50      # refuse if the worst case is more

When a candidate's provider profile points at the default local URL (127.0.0.1:8765) and
`CHUNKWISE_LLM_BASE_URL` is unset, the local simulator is started as `make demo` starts it (scripts/demo.py: its
config, with an answer key from the spec's demo data that makes the cheap model 75% and the strong one 92%
accurate) and the shipped specs' variables point at it. The file is registered for the pipeline in the demo's instance under
`$CHUNKWISE_HOME` (so `make ui` shows the dataset, and the asset `trials/<pipeline>/<stage>` can be launched for
it), then the trial runs: it prints the candidates table, the recommendation and the cascade table; the last line
is the path of trial.json. Running it again with the same sample and models spends nothing.

Bad input (a spec problem, a candidate with no price row, an empty sample, a sample larger than the dataset,
nothing to score by, a budget smaller than the trial's worst case): one line on stderr, exit 2, nothing sent.
A job-fatal stop while buying answers (bad key, a spent pipeline budget): one line, exit 3; what arrived is kept.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from scripts.demo import (
    DEFAULT_PIPELINE,
    demo_sim_config,
    point_at_simulator,
    prepare_instance,
    start_simulator,
)

LOCAL_SIMULATOR_URL = "http://127.0.0.1:8765"
"""The shipped specs' default base URL: a trial pointed there gets the simulator started for it."""


class _OneLineParser(argparse.ArgumentParser):
    """A usage mistake is one line on stderr and exit code 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"chunkwise: {message}; see `python -m scripts.trial --help`\n")


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=str(DEFAULT_PIPELINE), help="the pipeline spec (YAML)")
    parser.add_argument("--stage", required=True, help="the stage whose `candidates` are compared")
    parser.add_argument("--data", default=None, help="dataset file (default: the spec's input.demo_data)")
    parser.add_argument(
        "--sample", type=int, default=None, help="items (default: the stage's trial.sample_size)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="sample seed (default: the stage's trial.seed)"
    )
    parser.add_argument(
        "--budget", type=float, default=None, help="USD: refuse when the trial's worst case is more"
    )
    args = parser.parse_args(argv)
    sim = None
    try:
        spec = _load(
            args.pipeline, require_secrets=False
        )  # the simulator's key is set below, if it is started
        if spec is None:
            return 2
        from llm_assets.trials import TrialError, trial_stage

        try:
            trial_stage(spec, args.stage)
        except TrialError as exc:
            print(f"chunkwise: {exc}", file=sys.stderr)
            return 2
        if _uses_local_simulator(spec, args.stage) and not os.environ.get("CHUNKWISE_LLM_BASE_URL"):
            from llm_assets.settings import chunkwise_home

            sim, root = start_simulator(
                demo_sim_config(Path(args.pipeline), chunkwise_home() / "demo" / "simulator")
            )
            point_at_simulator(root)
            print(f"simulator (a local test double, not a real model) at {root}")
        spec = _load(
            args.pipeline
        )  # again: the profiles read the variables just set, and the keys must be set
        if spec is None:
            return 2
        return _run(args, spec)
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(timeout=10)


def _load(path: str, require_secrets: bool = True):
    from llm_assets.spec import PipelineSpecError, load_pipeline

    try:
        return load_pipeline(path, require_secrets=require_secrets)
    except PipelineSpecError as exc:
        for line in str(exc).splitlines():
            print(f"chunkwise: {line}", file=sys.stderr)
        return None


def _uses_local_simulator(spec, stage_name: str) -> bool:
    stage = spec.stage(stage_name)
    profiles = {c.provider or stage.provider for c in stage.candidates}
    return any(spec.providers[p].base_url.startswith(LOCAL_SIMULATOR_URL) for p in profiles)


def _run(args: argparse.Namespace, spec) -> int:
    import dagster as dg

    from llm_assets.datasets import DatasetError
    from llm_assets.pipeline_assets import register
    from llm_assets.settings import chunkwise_home
    from llm_assets.trials import TrialError, run_trial
    from resources.llm.errors import ChunkRetryableError, JobFatalError
    from resources.state_url import StateUrlError

    home = chunkwise_home()
    data = args.data or spec.input.demo_data
    if not data:
        print(
            f"chunkwise: pipeline {spec.name!r} has no input.demo_data; give a file with DATA=",
            file=sys.stderr,
        )
        return 2
    prepare_instance(home)
    with dg.DagsterInstance.get() as instance:
        try:
            dataset = register(spec, str(Path(data).resolve()) if "://" not in data else data, instance, home)
            result = run_trial(
                spec, args.stage, dataset, instance, home, args.sample, args.seed, budget_usd=args.budget
            )
        except (TrialError, DatasetError, StateUrlError) as exc:  # the last: CHUNKWISE_STATE_URL's database
            print(f"chunkwise: {exc}", file=sys.stderr)
            return 2
        except JobFatalError as exc:
            print(f"chunkwise: {exc.description or exc}", file=sys.stderr)
            return 3
        except ChunkRetryableError as exc:
            print(f"chunkwise: the provider failed mid-trial ({exc}); run it again to go on", file=sys.stderr)
            return 3
    print(result.markdown())
    print(
        f"spent ${result.spent_usd:.4f} on {result.requests_sent} requests "
        f"(worst case ${result.worst_case_usd:.4f})"
        + ("" if result.requests_sent else "; every answer was already bought and reused")
    )
    print(result.json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
