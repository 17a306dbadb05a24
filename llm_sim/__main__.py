"""`python -m llm_sim serve --host 127.0.0.1 --port PORT [--config FILE]`: run the local provider double.

`python -m llm_sim answer-key FILE.csv --text-column text --label-column label -o key.json`: write an answer key
(sha256 of each text -> its label) for the config's `answer_key` (docs/simulator-answer-key.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from pathlib import Path

import uvicorn

from llm_sim.answer_key import AnswerKeyError, key_from_csv, write_key
from llm_sim.app import build_app
from llm_sim.config import ConfigError, load_config
from llm_sim.faults import FaultConfigError
from llm_sim.http_common import DropConnection


class _HideDeliberateDrops(logging.Filter):
    """The `drop` fault cuts connections on purpose; uvicorn would log each one as an application error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DropConnection))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llm_sim", description="Local OpenAI/Anthropic test double."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765, help="0 picks a free port (printed on start)")
    serve.add_argument("--config", default=None, help="YAML or JSON config file (see docs/simulator.md)")
    answer_key = sub.add_parser(
        "answer-key", help="write an answer key (sha256 of each text -> its gold label) from a CSV file"
    )
    answer_key.add_argument("csv", type=Path, help="CSV file with a header row")
    answer_key.add_argument("--text-column", default="text", help="the column holding the item text")
    answer_key.add_argument("--label-column", default="label", help="the column holding the gold label")
    answer_key.add_argument("-o", "--output", type=Path, required=True, help="the JSON key file to write")
    args = parser.parse_args(argv)
    if args.command == "answer-key":
        return _write_answer_key(args.csv, args.text_column, args.label_column, args.output)

    try:
        config = load_config(args.config)
        app = build_app(config)
    except (ConfigError, FaultConfigError, OSError) as exc:
        print(f"llm_sim: cannot start: {exc}", file=sys.stderr)
        return 2

    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on sockets that say they are TCP, and without it
    # every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"llm_sim: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    sock.listen(1024)
    host, port = sock.getsockname()[:2]
    logging.getLogger("uvicorn.error").addFilter(_HideDeliberateDrops())
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=1, lifespan="on")
    )
    print(f"llm_sim listening on http://{host}:{port}", flush=True)
    asyncio.run(server.serve(sockets=[sock]))
    return 0


def _write_answer_key(csv_path: Path, text_column: str, label_column: str, output: Path) -> int:
    try:
        key = key_from_csv(csv_path, text_column, label_column)
        write_key(key, output)
    except (AnswerKeyError, OSError) as exc:
        print(f"llm_sim: cannot write the answer key: {exc}", file=sys.stderr)
        return 2
    print(f"llm_sim: wrote {len(key)} answer-key entries to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
