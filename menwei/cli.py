"""The one command line: `menwei demo|gate|server|pass|policy|bench ...`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from edge import cli as gate_cli
from menwei import policy_cli
from menwei.policy_trial import run_trial
from protocol.errors import ProtocolError
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

    gate_cli.register(sub)
    # The dashboard's policy try-out runs the gates' decision core: `server` cannot import it.
    server_cli.register(sub, trial=run_trial)
    policy_cli.register(sub)

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
    p = b.add_parser("sync", help="one gate's events through a private broker to a collector")
    p.add_argument("--events", type=int, default=10000, help="events appended (default 10000)")
    p.add_argument("--batch-size", type=int, default=50, help="events per MQTT message")
    p.add_argument("--window", type=int, default=500, help="unacknowledged events in flight")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_sync)
    p = b.add_parser("decide", help="the pure decision core on scripted scans")
    p.add_argument("--scans", type=int, default=20000, help="scans decided (default 20000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_decide)
    return parser


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


def cmd_bench_field(args: argparse.Namespace) -> int:
    from menwei.bench_decode import run_field_bench

    _print_bench(run_field_bench(args.per_condition, args.seed), args.json)
    return 0


def cmd_bench_sync(args: argparse.Namespace) -> int:
    from menwei.bench_sync import run_sync_bench

    result = run_sync_bench(args.events, args.batch_size, args.window)
    _print_bench(result, args.json)
    return 0 if result["lost"] == 0 and result["duplicates"] == 0 else 1


def cmd_bench_decide(args: argparse.Namespace) -> int:
    from menwei.bench_decide import run_decide_bench

    _print_bench(run_decide_bench(args.scans, args.seed), args.json)
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
