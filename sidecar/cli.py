"""The `sidecar` command.

    sidecar run [--config FILE] [--log-json]   run the sidecar (all settings have defaults)
    sidecar demo                                 sidecar + Notion simulator + a synthetic trading loop
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .config import ConfigError, load_config
from .ingest import IngestError
from .journal import JournalError
from .logs import setup_logging

log = logging.getLogger("sidecar")


def cmd_run(args: argparse.Namespace) -> int:
    from .app import Sidecar

    setup_logging(json_lines=args.log_json, level=args.log_level)
    try:
        cfg = load_config(args.config)
        return asyncio.run(Sidecar(cfg).run())
    except (ConfigError, JournalError, IngestError) as exc:
        log.error("%s", exc)
        return 2


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(events=args.events)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sidecar", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the sidecar")
    run.add_argument("--config", help="TOML settings file (default: built-in defaults)")
    run.add_argument("--log-json", action="store_true", help="log JSON lines instead of text")
    run.add_argument("--log-level", default="INFO")
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="run the sidecar against the simulators, driven by a synthetic loop")
    demo.add_argument("--events", type=int, default=2000, help="events the synthetic loop emits")
    demo.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
