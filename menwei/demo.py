"""`menwei demo`: a collector, simulated gates and simulated residents, all real code paths.

The gates and the collector run as their own processes (`menwei gate run`,
`menwei server run`) against a private Mosquitto, over TLS with a certificate each (as
`menwei broker setup` and `gate init` make them) unless `--broker` names another broker.
Residents walk up to the gates (camera frames rendered from their real signed passes); at
the end the demo compares every gate's SQLite log with the collector's store.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

from edge.config import load_config
from edge.guards import add_guard
from edge.provision import provision
from edge.store import GateStore
from menwei import broker_setup
from menwei.mosquitto import MosquittoBroker, free_port
from menwei.reconcile import reconcile
from menwei.residents import GateStage, Population, build_population
from server.config import BROKER_DIR
from server.site import Site
from server.storage.engine import SQLITE_FILE
from server.web.accounts import AccountStore

SITE = "demo-site"
DEMO_OPERATOR, DEMO_PASSWORD = "demo", "menwei-demo"  # a throwaway site in a temporary folder
DEMO_GUARD, DEMO_PIN = "演示门卫", "480917"  # the guard screens' override, likewise


def _say(message: str, quiet: bool) -> None:
    print(message, file=sys.stderr if quiet else sys.stdout, flush=True)


def _menwei(*args: str) -> list[str]:
    return [sys.executable, "-m", "menwei.cli", *args]


def _pump(stream: IO[str], prefix: str, quiet: bool) -> None:
    for line in stream:
        _say(f"{prefix} {line.rstrip()}", quiet)


def run_demo(args: argparse.Namespace) -> int:
    if args.gates < 1 or args.seconds <= 0 or args.residents < 1:
        raise ValueError("--gates, --seconds and --residents must be positive")
    with contextlib.ExitStack() as stack:
        if args.dir:
            workdir = args.dir
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="menwei-demo-")))
        summary = _run(args, workdir, stack)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        _print_summary(summary)
    return 0 if summary["lost"] == 0 and summary["duplicates"] == 0 else 1


def _run(args: argparse.Namespace, workdir: Path, stack: contextlib.ExitStack) -> dict[str, Any]:
    quiet = bool(args.json)
    rng = random.Random(args.seed)
    server_dir = workdir / "server"
    Site.init(server_dir, SITE).close()
    broker_url = args.broker
    tls = broker_url is None
    if tls:
        # As a site runs it: TLS, the broker's certificate and one per gate and collector.
        folder = server_dir / BROKER_DIR
        broker_setup.setup(folder, SITE, ["127.0.0.1"])
        broker = stack.enter_context(MosquittoBroker(workdir=workdir, tls=folder))
        broker_url = broker.url
        broker_setup.link_server_toml(server_dir, broker_url)
    _say(f"[demo] broker {broker_url}, files in {workdir}", quiet)

    # The demo must show the same story at any hour: outings allowed all day (the other
    # rules, one member out per household included, stay as shipped).
    toml = server_dir / "server.toml"
    toml.write_text(
        toml.read_text(encoding="utf-8").replace(
            'outing_windows = ["06:00-20:00"]', 'outing_windows = ["00:00-24:00"]'
        ),
        encoding="utf-8",
    )
    with Site(server_dir) as site:
        site.publish_policy("demo")
        pop = build_population(site, args.residents, rng)
        AccountStore(site.store).add(DEMO_OPERATOR, "admin", DEMO_PASSWORD, actor="demo")
    _say(f"[demo] site {SITE}: {len(pop.residents)} people with passes issued", quiet)

    procs: list[subprocess.Popen[str]] = []

    def spawn(name: str, *cmd: str) -> None:
        proc = subprocess.Popen(
            _menwei(*cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        procs.append(proc)
        threading.Thread(target=_pump, args=(proc.stdout, f"[{name}]", quiet), daemon=True).start()

    def stop_all() -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()

    stack.callback(stop_all)
    http_port = free_port()
    spawn(
        "collector",
        "server",
        "run",
        str(server_dir),
        "--broker",
        broker_url,
        "--http",
        f"127.0.0.1:{http_port}",
    )
    _say(
        f"[demo] dashboard at http://127.0.0.1:{http_port}/ "
        f"(log in as {DEMO_OPERATOR} / {DEMO_PASSWORD}; open while the demo runs)",
        quiet,
    )
    gates: list[tuple[str, Path, GateStage]] = []
    for i in range(1, args.gates + 1):
        name = f"gate-{i}"
        gate_dir = workdir / name
        credentials = broker_setup.gate_credentials(server_dir, name) if tls else None
        provision(
            gate_dir,
            server_dir,
            name,
            "both",
            simulated=True,
            broker=broker_url,
            credentials=credentials,
        )
        guard_port = free_port()
        with (gate_dir / "gate.toml").open("a", encoding="utf-8") as f:
            f.write(f'\n[guard]\nhttp = "127.0.0.1:{guard_port}"\n')
        cfg = load_config(gate_dir / "gate.toml")
        add_guard(cfg.data_dir, DEMO_GUARD, DEMO_PIN)
        _say(
            f"[demo] {name}: guard screen at http://127.0.0.1:{guard_port}/ "
            f"(override as {DEMO_GUARD}, PIN {DEMO_PIN})",
            quiet,
        )
        t = cfg.thermometer
        gates.append(
            (name, gate_dir, GateStage(gate_dir / "stage", t.offset_c, t.offset_per_ambient_c))
        )
        spawn(name, "gate", "run", "--config", str(gate_dir / "gate.toml"))

    visits = _walk(gates, pop, args.seconds, rng, quiet)
    _say(f"[demo] {visits} visits made; waiting for gates to finish and sync", quiet)
    _wait_synced([g[1] / "gate.db" for g in gates], timeout_s=30.0)
    stop_all()
    result = reconcile([g[1] / "gate.db" for g in gates], server_dir / SQLITE_FILE)
    decisions: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    alerts: Counter[str] = Counter()
    for _, gate_dir, _ in gates:
        with GateStore(gate_dir / "gate.db") as store:
            for item in store.log():
                e = item.event
                if e.kind == "decision":
                    decisions[e.reason] += 1
                    outcomes[e.decision or "deny"] += 1
                elif e.kind == "alert":
                    alerts[e.reason] += 1
    return {
        "decisions": sum(decisions.values()),
        "allowed": outcomes["allow"],
        "denied": outcomes["deny"],
        "by_reason": dict(sorted(decisions.items())),
        "alerts": dict(sorted(alerts.items())),
        "collector_events": result.collector_events,
        "gate_events": result.gate_events,
        "lost": result.lost,
        "duplicates": result.duplicates,
        "pending": result.pending,
        "visits": visits,
        "gates": args.gates,
        "seconds": args.seconds,
    }


def _walk(
    gates: list[tuple[str, Path, GateStage]],
    pop: Population,
    seconds: float,
    rng: random.Random,
    quiet: bool,
) -> int:
    """One thread per gate lane: a visit, wait until the gate has read the frames, next."""
    stop = threading.Event()
    counts = [0] * len(gates)
    # The refused cast shows up once each, early, spread over the gates.
    specials = [r for r in pop.residents if r.expect != "ok"]
    lock = threading.Lock()

    def lane(index: int, stage: GateStage, lane_rng: random.Random) -> None:
        while not stop.is_set():
            with lock:
                person = specials.pop() if specials else pop.pick(lane_rng, stage.last)
            stage.visit(person, lane_rng)
            counts[index] += 1
            stage.wait_empty(10.0, stop)
            time.sleep(lane_rng.uniform(0.2, 0.6))

    threads = [
        threading.Thread(target=lane, args=(i, g[2], random.Random(rng.random())), daemon=True)
        for i, g in enumerate(gates)
    ]
    time.sleep(2.0)  # let gates connect and load
    for t in threads:
        t.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=15)
    for _, _, stage in gates:
        stage.wait_empty(15.0, threading.Event())
    return sum(counts)


def _wait_synced(dbs: list[Path], timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        backlog = 0
        for db in dbs:
            with GateStore(db) as store:
                backlog += store.backlog()
        if backlog == 0:
            return
        time.sleep(0.3)


def _print_summary(s: dict[str, Any]) -> None:
    print("\n=== Menwei demo summary ===")
    print(f"decisions: {s['decisions']}  allowed: {s['allowed']}  denied: {s['denied']}")
    for reason, n in s["by_reason"].items():
        print(f"  {reason:16s} {n}")
    print(f"alerts: {s['alerts']}")
    print(f"events logged by gates: {s['gate_events']}, at the collector: {s['collector_events']}")
    print(f"lost: {s['lost']}  duplicates: {s['duplicates']}  pending: {s['pending']}")
