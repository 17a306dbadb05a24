"""`python -m llm_sim serve --host 127.0.0.1 --port PORT [--config FILE]`: run the local provider double."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys

import uvicorn

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
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
