"""The one command line: `menwei demo|gate|server|pass|policy|bench ...`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from edge import cli as gate_cli
from menwei import broker_cli, policy_cli
from menwei.broker_setup import gate_credentials
from menwei.policy_trial import run_trial
from protocol.errors import ProtocolError
from protocol.events import MAX_BATCH_EVENTS
from protocol.output import render
from server import cli as server_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="menwei",
        description="Menwei (门卫): gate checkpoints with signed QR passes, temperature screening"
        " and MQTT sync.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="collector + simulated gates + simulated residents")
    p.add_argument("--gates", type=int, default=2, help="simulated gates (default 2)")
    p.add_argument("--seconds", type=float, default=30.0, help="how long residents arrive")
    p.add_argument("--residents", type=int, default=24, help="simulated households' members")
    p.add_argument("--broker", help="use this broker (mqtt://HOST:PORT) instead of our own")
    p.add_argument("--dir", type=Path, help="keep the demo's files here (default: temporary)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print only the summary as JSON")
    p.set_defaults(func=cmd_demo)

    # `gate init` issues the gate's broker certificate from the server's CA: `edge` cannot.
    gate_cli.register(sub, issue_credentials=gate_credentials)
    # The dashboard's policy try-out runs the gates' decision core: `server` cannot import it.
    server_cli.register(sub, trial=run_trial)
    policy_cli.register(sub)
    broker_cli.register(sub)

    bench = sub.add_parser("bench", help="measurements that print numbers")
    b = bench.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = b.add_parser("decode", help="QR decoding on a photo dataset (expected texts beside)")
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_decode)
    p = b.add_parser("field", help="QR decoding on synthetic field-condition gate frames")
    p.add_argument("--per-condition", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_field)
    p = b.add_parser(
        "gate",
        help="the gate's hot path: empty frames, frame to relay command, CPU at 15 fps",
        description="Empty-frame cost of the gate's decoder against the bare zxing-cpp call, "
        "frame-to-relay latency with and without the thermometer settle against a bare decode "
        "plus one synchronous=FULL commit, and CPU/RSS of `menwei gate run` on a 15 fps clip; "
        "all from one run (docs/decoding.md).",
    )
    p.add_argument("--passages", type=_count(10_000), default=100, help="timed entries per setting")
    p.add_argument(
        "--seconds", type=_count(3600), default=20, help="length of the 15 fps clip (at least 5)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_gate)
    p = b.add_parser("sync", help="one gate's events through a private broker to a collector")
    p.add_argument("--events", type=int, default=10000, help="events appended (default 10000)")
    p.add_argument("--batch-size", type=int, default=50, help="events per MQTT message")
    p.add_argument("--window", type=int, default=500, help="unacknowledged events in flight")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_sync)
    p = b.add_parser(
        "collector",
        help="G gates' batches through a private broker to K `menwei server run` processes",
    )
    p.add_argument("--gates", type=_count(), default=50, help="simulated gates (default 50)")
    p.add_argument(
        "--events-per-gate",
        type=_count(),
        default=1000,
        help="events each gate sends (default 1000)",
    )
    p.add_argument(
        "--batch",
        type=_count(MAX_BATCH_EVENTS),
        default=50,
        help="events per MQTT message (default 50)",
    )
    p.add_argument(
        "--window", type=_count(), default=500, help="unacknowledged events per gate (default 500)"
    )
    p.add_argument(
        "--resend-after",
        type=float,
        default=0.0,
        metavar="S",
        help="gates send everything unacknowledged again after S s without ack progress, as"
        " real gates do after 10 (default 0: never; a lost batch shows as lost)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--store",
        metavar="URL",
        help="an empty database for the collectors: postgresql://USER@HOST:PORT/DB or"
        " sqlite:///PATH (default: SQLite in a temporary server directory)",
    )
    where.add_argument(
        "--postgres",
        action="store_true",
        help="start a throwaway PostgreSQL server for the run (Debian's postgresql package)",
    )
    p.add_argument(
        "--collectors",
        type=_count(),
        default=1,
        help="collector processes; more than one share the events (default 1)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_collector)
    p = b.add_parser("backlog", help="one gate's offline backlog drained to a collector")
    p.add_argument(
        "--events", type=_count(), default=100000, help="events logged offline (default 100000)"
    )
    p.add_argument(
        "--batch-size", type=_count(MAX_BATCH_EVENTS), default=50, help="events per MQTT message"
    )
    p.add_argument("--window", type=_count(), default=500, help="unacknowledged events in flight")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_backlog)
    p = b.add_parser(
        "login",
        help="C simultaneous dashboard logins against a `menwei server run`: its memory and"
        " attempts/s",
    )
    p.add_argument(
        "--concurrency", type=_count(1000), default=40, help="logins at once (default 40)"
    )
    p.add_argument("--rounds", type=_count(100), default=3, help="bursts of logins (default 3)")
    p.add_argument(
        "--password-checks",
        type=_count(16),
        help="the server's [web] password_checks_at_once (default: as server init writes it)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_login)
    p = b.add_parser("decide", help="the pure decision core on scripted scans")
    p.add_argument("--scans", type=int, default=20000, help="scans decided (default 20000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_decide)
    p = b.add_parser("register", help="a large register: issued, published, and applied by a gate")
    p.add_argument(
        "--passes", type=_count(), default=30000, help="passes in the register (default 30000)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_register)
    return parser


def _count(most: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from 1 (to `most`)."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if n < 1 or (most is not None and n > most):
            raise argparse.ArgumentTypeError(f"{n}: from 1 to {most}" if most else f"{n} < 1")
        return n

    return parse


def cmd_demo(args: argparse.Namespace) -> int:
    from menwei.demo import run_demo

    return run_demo(args)


def _print_bench(result: dict[str, object], as_json: bool) -> None:
    print(render(result, as_json))


def cmd_bench_decode(args: argparse.Namespace) -> int:
    from menwei.bench_decode import run_decode_bench

    result = run_decode_bench(args.dataset)
    _print_bench(result, args.json)
    return 0


def cmd_bench_login(args: argparse.Namespace) -> int:
    from menwei.bench_login import run_login_bench

    with _bench_errors():
        result = run_login_bench(args.concurrency, args.rounds, args.password_checks)
    _print_bench(result, args.json)
    return 0 if result["other"] == 0 else 1


def cmd_bench_field(args: argparse.Namespace) -> int:
    from menwei.bench_decode import run_field_bench

    _print_bench(run_field_bench(args.per_condition, args.seed), args.json)
    return 0


def cmd_bench_gate(args: argparse.Namespace) -> int:
    from menwei.bench_gate import GateBenchError, run_gate_bench

    try:
        result = run_gate_bench(args.passages, args.seconds)
    except GateBenchError as exc:
        raise BenchFailed(str(exc)) from exc
    _print_bench(result, args.json)
    return 0


def cmd_bench_sync(args: argparse.Namespace) -> int:
    from menwei.bench_sync import run_sync_bench

    result = run_sync_bench(args.events, args.batch_size, args.window)
    return _bench_outcome(result, args.json)


@contextlib.contextmanager
def _bench_errors() -> Iterator[None]:
    """A part of a benchmark that did not start or finish (broker, PostgreSQL, a collector,
    the simulated gates) is an error of the command, said in one line by `main`."""
    from menwei.bench_collector import BenchError
    from menwei.collector_process import CollectorProcessError
    from menwei.mosquitto import BrokerError
    from menwei.postgres import PostgresError

    try:
        yield
    except (BenchError, CollectorProcessError, BrokerError, PostgresError, ValueError) as exc:
        raise BenchFailed(str(exc)) from exc


class BenchFailed(OSError):
    """A benchmark could not run (the message says which part failed)."""


def _bench_outcome(result: dict[str, object], as_json: bool) -> int:
    """Print a benchmark that delivers events; exit 1 unless every event arrived once."""
    _print_bench(result, as_json)
    whole = result["lost"] == 0 and result["duplicates"] == 0 and result.get("complete", True)
    return 0 if whole else 1


def cmd_bench_collector(args: argparse.Namespace) -> int:
    from menwei.bench_collector import run_collector_bench

    with _bench_errors():
        result = run_collector_bench(
            args.gates,
            args.events_per_gate,
            args.batch,
            store=args.store,
            postgres=args.postgres,
            collectors=args.collectors,
            window=args.window,
            resend_after_s=args.resend_after,
        )
    return _bench_outcome(result, args.json)


def cmd_bench_backlog(args: argparse.Namespace) -> int:
    from menwei.bench_backlog import run_backlog_bench

    with _bench_errors():
        result = run_backlog_bench(args.events, args.batch_size, args.window)
    return _bench_outcome(result, args.json)


def cmd_bench_decide(args: argparse.Namespace) -> int:
    from menwei.bench_decide import run_decide_bench

    _print_bench(run_decide_bench(args.scans, args.seed), args.json)
    return 0


def cmd_bench_register(args: argparse.Namespace) -> int:
    from menwei.bench_register import run_register_bench

    _print_bench(run_register_bench(args.passes, args.seed), args.json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Alembic narrates every step of a migration at INFO: ours says the outcome in one line.
    logging.getLogger("alembic").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.func(args))
    except (ProtocolError, OSError) as exc:
        print(f"menwei: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
