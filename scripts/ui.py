"""`make ui`: the simulator (unless CHUNKWISE_LLM_BASE_URL points elsewhere) plus the Dagster UI, on the demo's
instance under $CHUNKWISE_HOME/dagster. Ctrl-C stops both. Arguments go to `dagster dev` as they are
(`python -m scripts.ui --port 3001`; the browser test, tests/ui, starts it so on a free port)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scripts.demo import DEFAULT_PIPELINE, demo_sim_config, point_at_simulator, prepare_instance

ROOT = Path(__file__).resolve().parent.parent
SIM_PORT = int(os.environ.get("CHUNKWISE_SIM_PORT", "8765"))


def main(argv: list[str] | None = None) -> int:
    from llm_assets.settings import chunkwise_home

    home = chunkwise_home()
    prepare_instance(home)
    sim = None
    if not os.environ.get("CHUNKWISE_LLM_BASE_URL"):
        config = demo_sim_config(DEFAULT_PIPELINE, home / "demo" / "simulator")
        sim = subprocess.Popen(
            [sys.executable, "-m", "llm_sim", "serve", "--host", "127.0.0.1", "--port", str(SIM_PORT),
             "--config", str(config)],
            cwd=ROOT,
        )  # fmt: skip
        point_at_simulator(f"http://127.0.0.1:{SIM_PORT}")
    try:
        return subprocess.call(
            [sys.executable, "-m", "dagster", "dev", "-w", str(ROOT / "workspace.yaml"),
             *(sys.argv[1:] if argv is None else argv)],
            cwd=ROOT,
        )  # fmt: skip
    except KeyboardInterrupt:
        return 0
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
