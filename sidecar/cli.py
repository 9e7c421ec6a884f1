"""The `sidecar` command: a thin layer over the library.

    sidecar run [--config FILE] [--log-json]     run the sidecar (every setting has a default)
    sidecar validate --config FILE               check a config and the secrets it needs, without starting
    sidecar status [--json]                      lanes, depths, rates, breakers, dead letters, resources
    sidecar check                                exit 0 healthy, 1 degraded (says why), 2 not reachable
    sidecar reload                               read the config file and credentials again (SIGHUP to the sidecar)
    sidecar dlq list|show ID|retry ID...|purge ID...   inspect and replay dead letters
    sidecar rejects [--reason R]                 what ingest refused, counted by reason, with samples
    sidecar emit KIND JSON [--key K] [--ref R]   one event from a shell script or git hook
    sidecar refs LANE KEY                        what a delivered event created (e.g. Naver image URLs)
    sidecar ack-corrupt-journal                  clear the degraded `check` after a corrupt journal was set aside
    sidecar demo                                 sidecar + API stand-ins + a synthetic trading loop
    sidecar --version

Every command but `demo` reads the same --config as `run` (or $SIDECAR_CONFIG).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import sys
import textwrap
import time
from typing import Any, NoReturn

import orjson

from sidecar.config import Config, load_config
from sidecar.errors import ExitCode, MissingExtra, StartupError
from sidecar.ops.status import Health, Status

log = logging.getLogger("sidecar")



def exit_codes_help(width: int = 100) -> str:
    """`sidecar --help`'s list of exit codes, from `ExitCode` (one place says what each means).

        print(exit_codes_help())   # "exit codes:\n  0   done; check: healthy\n  1   check: degraded ..."
    """
    lines = ["exit codes:"]
    for code in ExitCode:
        lines += textwrap.wrap(code.meaning, width, initial_indent=f"  {code.value:<4}", subsequent_indent=" " * 6)
    return "\n".join(lines) + "\n"


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config or os.environ.get("SIDECAR_CONFIG"))


def _import_product(command: str, extra: str = "sidecar", clone: str = "") -> None:
    """Raise MissingExtra, not a traceback, when the packages of the [sidecar] extra are not installed."""
    try:
        import sidecar.app  # noqa: F401  (imports every package of the extra)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] in ("sidecar", "client"):
            raise  # our own code is broken: that deserves the traceback
        raise MissingExtra(command, extra, exc.name, clone=clone) from None


def cmd_run(args: argparse.Namespace) -> int:
    from sidecar.ops.logs import setup_logging

    _import_product("run")
    from sidecar.app import Sidecar

    try:
        cfg = _config(args)
    except StartupError as exc:
        setup_logging()
        log.error("%s", exc)
        return exc.exit_code
    setup_logging(json_lines=args.log_json or cfg.log.json, level=args.log_level or cfg.log.level)
    try:
        return asyncio.run(Sidecar(cfg, config_path=args.config or os.environ.get("SIDECAR_CONFIG"),
                                   recover=not args.no_recover).run())
    except StartupError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except PermissionError as exc:
        log.error("permission denied: %s (run as the service user, or fix the file's owner)", exc)
        return ExitCode.CANNOT_START


def _fetch(cfg: Config, path: str) -> tuple[int, Any]:
    """GET from the running sidecar's API; raises OSError if it is not there."""
    import http.client

    if not cfg.metrics.address:
        raise OSError("[metrics] address is empty, so the sidecar serves no status")
    host, _, port = cfg.metrics.address.rpartition(":")
    conn = http.client.HTTPConnection(host or "127.0.0.1", int(port), timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, orjson.loads(response.read())
    finally:
        conn.close()


def _forbidden(body: Any) -> int:
    """The API refused this user its /status (http_api.py says who may read it)."""
    print(f"not allowed: {body.get('error') if isinstance(body, dict) else body} (try sudo)", file=sys.stderr)
    return ExitCode.FAILED


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        code, body = _fetch(cfg, "/status")
    except OSError as exc:
        print(f"sidecar not reachable at {cfg.metrics.address}: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    if code == 403:
        return _forbidden(body)
    if args.json:
        print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return ExitCode.OK
    if code != 200:  # starting: no snapshot yet, only the health
        print("sidecar " + "; ".join(Health.from_dict(body.get("health") or {}).problems or ("not ready",)))
        return ExitCode.OK
    print(render_status(Status.from_dict(body)))
    return ExitCode.OK


def render_status(s: Status) -> str:
    proc, journal, ingest = s.process, s.journal, s.ingest
    lines = [
        f"sidecar pid {proc.pid}, up {s.uptime_seconds:.0f} s, {'healthy' if s.health.ok else 'DEGRADED'}",
        f"ingest   {ingest.endpoint}  received {ingest.received}  rejected {ingest.rejected}  "
        f"sequence gaps {ingest.sequence_gaps}  rings hold {ingest.ring_shm_bytes / 1e6:.1f} MB of shared memory",
        f"journal  {journal.path}  {journal.bytes / 1e6:.1f} MB  pending {journal.pending}  "
        f"dead letters {journal.dead_letters}  {journal.state}",
        f"process  cpu {proc.cpu_seconds:.1f} s  rss {proc.rss_bytes / 1e6:.1f} MB  fds {proc.open_fds}  "
        f"threads {proc.threads}  cpus {list(proc.cpu_affinity or ()) or None}  nice {proc.nice}",
        "",
        f"{'lane':<18}{'depth':>8}{'rate/s':>9}{'of':>7}  {'source':<11}{'store':<14}{'tokens':>8}  "
        f"{'breaker':<10}{'delivered':>10}  paused",
    ]
    for name, lane in s.lanes.items():
        if lane.state == "off":  # not configured, nothing waiting: one line (--json has why)
            lines.append(f"{name:<18}{'off':>8}  not configured")
            continue
        store = lane.store
        if store == "redis":
            store += f" ×{lane.sidecars_sharing}"
        lines.append(f"{name:<18}{lane.depth:>8}{lane.rate_per_second:>9.2f}{lane.configured_rate:>7.1f}"
                     f"  {lane.rate_source:<11}{store:<14}{lane.tokens:>8.2f}  "
                     f"{lane.breaker:<10}{lane.delivered:>10}  {lane.paused or '-'}")
    lines += _render_rings(s)
    for problem in s.health.problems:
        lines.append(f"problem: {problem}")
    return "\n".join(lines)


def _render_rings(s: Status) -> list[str]:
    """The producers' rings: who, how much waits unjournaled (at least), how old, how long idle."""
    if not s.rings_total:
        return []
    shown = f", the {len(s.rings)} with the largest backlog shown" if len(s.rings) < s.rings_total else ""
    lines = ["", f"{s.rings_total} ring(s) read{shown}",
             f"{'client':<32}{'pid':>8}{'uid':>7}{'backlog':>12}{'age':>9}{'idle':>9}  ring"]
    for r in s.rings:
        idle = "-" if r.idle_seconds is None else f"{r.idle_seconds:.0f} s"
        lines.append(f"{r.client_id:<32}{r.pid:>8}{r.uid:>7}{_bytes(r.backlog_bytes):>12}"
                     f"{r.age_seconds:>7.0f} s{idle:>9}  {r.name}")
    return lines


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n} {unit}"
        n //= 1024
    return f"{n} GiB"


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        code, health = _fetch(cfg, "/health")
    except OSError as exc:
        print(f"CRITICAL: sidecar not reachable at {cfg.metrics.address}: {exc}")
        return ExitCode.UNAVAILABLE
    verdict = Health.from_dict(health)
    if code == 200 and verdict.ok:
        print("OK: sidecar healthy")
        return ExitCode.OK
    print("WARNING: " + "; ".join(verdict.problems or ("unhealthy",)))
    return ExitCode.FAILED


def cmd_reload(args: argparse.Namespace) -> int:
    """SIGHUP to the running sidecar (its pid from /status): it reads its config file and credentials again."""
    import signal

    cfg = _config(args)
    try:
        code, status = _fetch(cfg, "/status")
        if code == 403:
            return _forbidden(status)
        pid = int(status["process"]["pid"])
    except (OSError, KeyError, TypeError, ValueError) as exc:
        print(f"sidecar not reachable at {cfg.metrics.address}: {exc}", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    try:
        os.kill(pid, signal.SIGHUP)
    except PermissionError:
        print(f"not allowed to signal pid {pid}: run as the service user, or `systemctl reload trading-sidecar`",
              file=sys.stderr)
        return ExitCode.FAILED
    except ProcessLookupError:
        print(f"sidecar pid {pid} is gone", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    print(f"asked sidecar pid {pid} to read its config file and credentials again (its log says what changed)")
    return ExitCode.OK


def cmd_dlq(args: argparse.Namespace) -> int:
    from sidecar.journal import dlq

    cfg = _config(args)
    directory = cfg.journal.dir
    try:
        if args.action == "list":
            rows = dlq.list_dead(directory, lane=args.lane, limit=args.limit)
            if args.json:
                print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
                return ExitCode.OK
            print(f"{'id':>6}  {'lane':<10} {'kind':<22} {'key/ref':<24} {'reason':<18} {'status':>6}  dead at")
            for r in rows:
                when = datetime.datetime.fromtimestamp(r["dead_at"]).strftime("%Y-%m-%d %H:%M:%S")
                print(f"{r['id']:>6}  {r['lane']:<10} {r['kind']:<22} {r['key'] or r['ref'] or '-'!s:<24.24} "
                      f"{r['reason']:<18} {r['status'] or '-'!s:>6}  {when}")
            print(f"{len(rows)} dead letter(s) shown")
        elif args.action == "show":
            found = [dlq.show_dead(directory, i) for i in args.ids]
            if not all(found):
                print("no such dead letter", file=sys.stderr)
                return ExitCode.FAILED
            print(orjson.dumps(found if len(found) > 1 else found[0], option=orjson.OPT_INDENT_2).decode())
        elif args.action == "retry":
            if not args.ids and not args.lane and not args.all:
                print("sidecar dlq retry: name dead-letter ids, --lane LANE, or --all", file=sys.stderr)
                return ExitCode.USAGE
            print(f"{dlq.retry_dead(directory, ids=args.ids or None, lane=args.lane)} event(s) queued again")
        elif args.action == "purge":
            if not args.ids and not args.lane and not args.all:
                print("sidecar dlq purge: name dead-letter ids, --lane LANE, or --all", file=sys.stderr)
                return ExitCode.USAGE
            if args.all and not args.yes and not _confirmed("purge every dead letter for good"):
                return ExitCode.USAGE
            print(f"{dlq.purge_dead(directory, ids=args.ids or None, lane=args.lane, all_=args.all)} "
                  "dead letter(s) purged")
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return ExitCode.FAILED
    return ExitCode.OK


def _confirmed(what: str) -> bool:
    """Ask on a terminal; refuse (with how to say yes) when stdin is not one."""
    if not sys.stdin.isatty():
        print(f"refusing to {what} without a terminal to ask on: add --yes", file=sys.stderr)
        return False
    answer = input(f"{what}? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        print("nothing done", file=sys.stderr)
        return False
    return True


def cmd_rejects(args: argparse.Namespace) -> int:
    from sidecar.journal.rejects_query import read_rejects

    try:
        counts, samples = read_rejects(_config(args).journal.dir, reason=args.reason, limit=args.limit)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return ExitCode.FAILED
    if args.json:
        print(orjson.dumps({"counts": {r: {"total": t, "unsampled": u} for r, (t, u) in counts.items()},
                            "samples": samples}, option=orjson.OPT_INDENT_2).decode())
        return ExitCode.OK
    if not counts:
        print("nothing rejected")
        return ExitCode.OK
    print(f"{'reason':<20}{'rejected':>10}{'kept':>8}")
    for reason, (total, unsampled) in counts.items():
        print(f"{reason:<20}{total:>10}{total - unsampled:>8}")
    for r in samples:
        when = datetime.datetime.fromtimestamp(r["received_at"]).strftime("%Y-%m-%d %H:%M:%S")
        # repr: a frame is whatever a process sent; no newline or escape reaches the terminal as such.
        print(f"\n#{r['id']} {when} {r['reason']}: {r['detail']!r}\n  frame: {r['frame']!r}")
    return ExitCode.OK


def cmd_validate(args: argparse.Namespace) -> int:
    """Load the config as `run` does, then build the lanes as `run` does: which can call, by secret name."""
    _import_product("validate")
    from sidecar.ops.preflight import secrets_report

    source = args.config or os.environ.get("SIDECAR_CONFIG")
    cfg = _config(args)  # a ConfigError (78) names the setting; main() prints it
    print(f"config {source}: every setting is valid" if source else "no config file: the built-in defaults")
    try:
        report = list(secrets_report(cfg))
    except OSError as exc:  # a credential file that exists but cannot be read: `run` would fail alike
        print(f"a secret cannot be read: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    for line, _ in report:
        print(line)
    return ExitCode.OK


def cmd_emit(args: argparse.Namespace) -> int:
    """One event, for scripts: exit 0 once the sidecar has it queued, 3 if it is not running."""
    from client import Client, EmitError
    from client.transport import TransportError, ZmqTransport

    cfg = _config(args)
    endpoint = args.endpoint or cfg.ingest.endpoint
    try:
        payload = orjson.loads(args.json)
    except orjson.JSONDecodeError as exc:
        print(f"JSON is not valid: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    blobs = []
    for path in args.blob or []:
        with open(path, "rb") as f:
            blobs.append(f.read())
    try:
        _import_product("emit")
    except MissingExtra:  # a client-only install: ingest still checks it, but only its counters will say
        print("event not checked before sending (the [sidecar] extra is not installed)", file=sys.stderr)
    else:
        from sidecar.ops.preflight import event_verdict

        # Ingest would count it as rejected and nothing would say so: refuse it here, with its reason.
        refused = event_verdict(cfg, args.kind, payload, key=args.key, ref=args.ref, blobs=blobs)
        if refused:
            print(f"event refused: {refused}", file=sys.stderr)
            return ExitCode.FAILED
    if endpoint.startswith("ipc://") and not os.path.exists(endpoint[len("ipc://"):]):
        print(f"sidecar not running (no socket at {endpoint}): event not sent", file=sys.stderr)
        return ExitCode.NOT_SENT
    try:
        transport = ZmqTransport(endpoint, queue_size=100, immediate=True)
    except TransportError as exc:
        print(exc, file=sys.stderr)
        return ExitCode.FAILED
    client = Client(endpoint, transport=transport, strict=True, linger=2.0)
    try:
        deadline = time.monotonic() + args.wait
        # With immediate set, a send fails until the connection is up (about a millisecond).
        while not client.emit(args.kind, payload, key=args.key, ref=args.ref, blob=blobs or None):
            if time.monotonic() > deadline:
                print(f"sidecar not reachable at {endpoint}: event not sent", file=sys.stderr)
                return ExitCode.NOT_SENT
            time.sleep(0.002)
    except EmitError as exc:
        print(f"event refused: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    finally:
        client.close()
    return ExitCode.OK


def cmd_refs(args: argparse.Namespace) -> int:
    from sidecar.journal.store import read_ref

    try:
        value = read_ref(_config(args).journal.dir, args.lane, args.key)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return ExitCode.FAILED
    if value is None:
        print(f"nothing recorded for {args.lane} key {args.key!r} (not delivered yet?)", file=sys.stderr)
        return ExitCode.FAILED
    print(value)
    return ExitCode.OK


def cmd_ack_corrupt_journal(args: argparse.Namespace) -> int:
    from sidecar.journal.repair import acknowledge

    try:
        seen = acknowledge(_config(args).journal.dir)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return ExitCode.FAILED
    if not seen:
        print("no corrupt journal waiting to be acknowledged")
    for aside in seen:
        print(f"acknowledged: {aside} (delete it when you no longer need it)")
    return ExitCode.OK


def cmd_demo(args: argparse.Namespace) -> int:
    from sidecar import demo

    _import_product("demo", "demo", demo.FROM_CLONE)
    return demo.main(events=args.events)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trading-sidecar")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse's own 2 is `sidecar check`'s "not reachable": usage errors get theirs.
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sidecar", description=__doc__, epilog=exit_codes_help(),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    common = _Parser(add_help=False)
    common.add_argument("--config", help="TOML settings file (default: $SIDECAR_CONFIG, else built-in defaults)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="run the sidecar")
    run.add_argument("--log-json", action="store_true", help="log JSON lines instead of text")
    run.add_argument("--log-level", help="DEBUG, INFO, WARNING... (default: [log] level)")
    run.add_argument("--no-recover", action="store_true",
                     help=f"if the journal is corrupt, exit {ExitCode.JOURNAL_CORRUPT} and leave it as it is "
                          "(default: set it aside, start afresh, recover what it holds)")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", parents=[common],
                              help="check a config file and the secrets it needs, without starting")
    validate.set_defaults(func=cmd_validate)

    status = sub.add_parser("status", parents=[common], help="lanes, depths, rates, breakers, resources")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    check = sub.add_parser("check", parents=[common], help=f"exit {ExitCode.OK} healthy, {ExitCode.FAILED} degraded, "
                           f"{ExitCode.UNAVAILABLE} not reachable")
    check.set_defaults(func=cmd_check)

    reload = sub.add_parser("reload", parents=[common], help="read the config file and credentials again (SIGHUP)")
    reload.set_defaults(func=cmd_reload)

    dlq = sub.add_parser("dlq", parents=[common], help="inspect and replay dead letters")
    dlq.add_argument("action", choices=["list", "show", "retry", "purge"])
    dlq.add_argument("ids", nargs="*", type=int)
    dlq.add_argument("--lane")
    dlq.add_argument("--all", action="store_true", help="retry or purge every dead letter")
    dlq.add_argument("--limit", type=int, default=50)
    dlq.add_argument("--json", action="store_true")
    dlq.add_argument("--yes", action="store_true", help="purge --all without asking")
    dlq.set_defaults(func=cmd_dlq)

    rejects = sub.add_parser("rejects", parents=[common], help="what ingest refused, by reason, with samples")
    rejects.add_argument("--reason", help="only this reason's samples")
    rejects.add_argument("--limit", type=int, default=20, help="samples shown, newest first")
    rejects.add_argument("--json", action="store_true")
    rejects.set_defaults(func=cmd_rejects)

    emit = sub.add_parser("emit", parents=[common], help="send one event (for scripts and git hooks)")
    emit.add_argument("kind")
    emit.add_argument("json", help="the payload as JSON")
    emit.add_argument("--key")
    emit.add_argument("--ref")
    emit.add_argument("--blob", action="append", help="a file to send as a blob (repeatable)")
    emit.add_argument("--endpoint", help="default: [ingest] endpoint of the config")
    emit.add_argument("--wait", type=float, default=0.5, help="seconds to wait for the sidecar to accept")
    emit.set_defaults(func=cmd_emit)

    refs = sub.add_parser("refs", parents=[common], help="what a delivered event created")
    refs.add_argument("lane")
    refs.add_argument("key")
    refs.set_defaults(func=cmd_refs)

    ack = sub.add_parser("ack-corrupt-journal", parents=[common],
                         help="acknowledge a corrupt journal that was set aside (check is degraded until then)")
    ack.set_defaults(func=cmd_ack_corrupt_journal)

    demo = sub.add_parser("demo", help="run the sidecar against the simulators, driven by a synthetic loop")
    demo.add_argument("--events", type=int, default=2000, help="ticks of the synthetic loop")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except StartupError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
