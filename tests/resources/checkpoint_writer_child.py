"""Child process for the checkpoint crash tests: records items as fast as it can and prints each key to stdout
only AFTER record() returned, so every printed key is one the checkpoint promised to keep.

    python checkpoint_writer_child.py ROOT --items N --compact-every K [--crash-at STEP --crash-on-compaction C]

Prints `loaded <count>` first (what it resumes from), then one `recorded <key>` line per item, then `done`.
With --crash-at it SIGKILLs itself right after compaction step STEP of its C-th compaction.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
from pathlib import Path

# Load the module file itself: `import resources.checkpoints` runs resources/__init__.py, which imports dagster
# (about a second per spawn), and the crash tests start dozens of these children. checkpoints.py is stdlib-only.
_MODULE_PATH = Path(__file__).resolve().parents[2] / "resources" / "checkpoints.py"
_spec = importlib.util.spec_from_file_location("chunkwise_checkpoints_under_test", _MODULE_PATH)
_module = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _module  # dataclasses look their module up here
_spec.loader.exec_module(_module)
ChunkCheckpoint = _module.ChunkCheckpoint

DATASET_ID = "ds-crash"
PARTITION_KEY = "chunk-0007"
STAGE = "classified"


def item_key(index: int) -> str:
    return f"{DATASET_ID}:item-{index:06d}:{STAGE}:v3:small-model"


def item_record(index: int) -> dict:
    """The record for item `index`; the parent recomputes it to prove nothing was garbled."""
    return {
        "item_id": f"item-{index:06d}",
        "label": f"label_{index % 77}",
        "confidence": round((index % 100) / 100, 2),
        "text": "x" * (index % 61),
        "usage": {"input_tokens": 100 + index, "output_tokens": 7, "cost_usd": index * 1e-6},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--compact-every", type=int, required=True)
    parser.add_argument("--crash-at", default=None)
    parser.add_argument("--crash-on-compaction", type=int, default=1)
    args = parser.parse_args()

    checkpoint = ChunkCheckpoint(
        args.root, DATASET_ID, PARTITION_KEY, STAGE, compact_every=args.compact_every
    )
    if args.crash_at:
        compactions_seen = {args.crash_at: 0}

        def crash_at_step(step: str) -> None:
            if step == args.crash_at:
                compactions_seen[step] += 1
                if compactions_seen[step] == args.crash_on_compaction:
                    os.kill(os.getpid(), signal.SIGKILL)

        checkpoint._on_compaction_step = crash_at_step

    done = checkpoint.load()
    sys.stdout.write(f"loaded {len(done)}\n")
    sys.stdout.flush()
    for index in range(args.items):
        key = item_key(index)
        if key in done:
            continue
        checkpoint.record(key, item_record(index))
        sys.stdout.write(f"recorded {key}\n")
        sys.stdout.flush()
    checkpoint.close()
    sys.stdout.write("done\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
