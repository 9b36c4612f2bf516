"""`menwei gate ...`: provision, run, try and inspect a gate from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from edge.clock import UNTRUSTED_EFFECT, GateClock
from edge.config import GateConfig, load_config
from edge.decision import (
    Direction,
    Scan,
    Temperature,
    decide,
    state_from_json,
)
from edge.guards import (
    NO_GUARDS,
    PIN_MAX,
    PIN_MIN,
    GuardError,
    add_guard,
    check_pin,
    guards_path,
    read_guards,
    remove_guard,
)
from edge.knowledge import Knowledge
from edge.provision import (
    EXIT_NOT_PROVISIONED,
    BrokerCredentials,
    ProvisionError,
    load_knowledge,
    provision,
    read_credentials,
)
from edge.recording import decision_json
from edge.replay import NOT_MEASURED
from edge.store import GateStore
from protocol.broker import parse_broker
from protocol.errors import ProtocolError
from protocol.files import read_bounded
from protocol.output import render
from protocol.reasons import message

log = logging.getLogger("menwei.gate")


CredentialIssuer = Callable[[Path, str], BrokerCredentials | None]
"""Given `gate init`'s server directory and the gate slug: that gate's new broker credentials
when the server directory holds the site's broker CA, else None (menwei/broker_setup.py:
`gate` cannot import it)."""


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    issue_credentials: CredentialIssuer | None = None,
) -> None:
    gate = sub.add_parser("gate", help="the gate device: provision, run, try and inspect")
    g = gate.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = g.add_parser("init", help="provision a gate from a server directory (or bundle copy)")
    p.add_argument("gate_dir", type=Path)
    p.add_argument("--server", type=Path, required=True, help="server directory or its bundle/")
    p.add_argument("--gate", required=True, help="gate slug, unique in the site")
    p.add_argument("--direction", choices=["in", "out", "both"], default="in")
    p.add_argument("--simulated", action="store_true", help="simulated camera, sensor and GPIO")
    p.add_argument(
        "--broker",
        help="written to a new gate.toml (default: mqtts://HOST:8883 with broker credentials, "
        "HOST a name of the broker's certificate; else mqtt://127.0.0.1:1883)",
    )
    p.add_argument(
        "--credentials",
        type=Path,
        metavar="FOLDER",
        help="this gate's broker credentials carried from the server (`menwei broker add-gate "
        "DIR GATE --out FOLDER`); default: issued here when --server holds broker/ca.key",
    )
    p.add_argument(
        "--reset-trust",
        action="store_true",
        help="take the bundle's trust root even when the gate holds a newer one (a gate that"
        " followed a root the server did not make: docs/security.md); its documents are"
        " replaced by the bundle's",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_init, issue_credentials=issue_credentials)

    p = g.add_parser("scan", help="decode and decide on image files (no relay, no state change)")
    _config_arg(p)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--temperature", type=float, help="body temperature °C for entries")
    p.add_argument("--direction", choices=["in", "out"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_scan)

    p = g.add_parser("replay", help="run the decision core over scripted scans (JSON lines)")
    _config_arg(p)
    p.add_argument("script", type=Path, help='lines of {"at", "qr", "direction", "temperature"}')
    p.add_argument("--policy", type=Path, help="try this policy (TOML, [policy] table) instead")
    p.add_argument("--summary", action="store_true", help="print only the counts per reason")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_replay)

    p = g.add_parser("run", help="the gate daemon")
    _config_arg(p)
    p.add_argument("--broker", help="mqtt://HOST:PORT, or 'none' to run offline")
    p.add_argument("--until-eof", action="store_true", help="stop when a finite source ends")
    p.set_defaults(func=cmd_run)

    p = g.add_parser("log", help="the gate's stored events with their sync state")
    _config_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_log)

    p = g.add_parser("doctor", help="check each configured device; say how to fix failures")
    _config_arg(p)
    p.add_argument("--broker", help="check this broker instead of the configured one")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    p = g.add_parser(
        "recover",
        help="move a damaged database aside and start a new one (new epoch); gate stopped",
        description="For a database the gate refuses as damaged (see `menwei gate doctor`): "
        "moves gate.db and its -wal/-shm files into DATA_DIR/damaged-<time>/, untouched, and "
        "creates a new database (a new epoch), carrying over the signed documents, the clock "
        "floor and the gate state where they can still be read. Refuses while the gate runs, "
        "and for a sound database. See docs/hardware.md.",
    )
    _config_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recover)

    p = g.add_parser("calibrate", help="record this device's offset from a reference thermometer")
    _config_arg(p)
    p.add_argument("--reference", type=float, required=True, help="reference body temperature °C")
    p.add_argument("--simulated-forehead", type=float, help="simulation: forehead skin °C")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = g.add_parser("clock", help="the gate's clock: wall time, persisted floor, trust")
    _config_arg(p)
    p.add_argument(
        "--reset-floor",
        action="store_true",
        help="set the persisted floor to the current wall time (after a wrong future time was "
        "persisted; run with the daemon stopped and the wall clock checked)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_clock)

    p = g.add_parser("check-config", help="validate gate.toml and the provisioned data")
    _config_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check_config)

    guard = g.add_parser(
        "guard",
        help="the guards who may open the gate from the guard page (name and PIN)",
        description="Guards enrolled on this gate: a guard page override needs one's name and "
        "PIN. PINs are stored as Argon2id hashes in DATA_DIR/guards.json (mode 0600); the "
        "running gate reads the file again when it changes. See docs/security.md.",
    )
    gg = guard.add_subparsers(dest="guard_action", required=True, metavar="ACTION")
    p = gg.add_parser("add", help="enrol a guard: PIN typed twice (or --pin-file)")
    p.add_argument("gate_dir", type=Path, metavar="GATE_DIR", help="folder of gate.toml")
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--pin-file",
        type=Path,
        metavar="F",
        help=f"read the PIN from the first line of F ({PIN_MIN}-{PIN_MAX} digits)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_guard_add)
    p = gg.add_parser("list", help="the enrolled guards (names, when added)")
    p.add_argument("gate_dir", type=Path, metavar="GATE_DIR", help="folder of gate.toml")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_guard_list)
    p = gg.add_parser("remove", help="remove a guard: their PIN opens nothing any more")
    p.add_argument("gate_dir", type=Path, metavar="GATE_DIR", help="folder of gate.toml")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_guard_remove)


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="path to gate.toml")


def cmd_init(args: argparse.Namespace) -> int:
    credentials = None
    if args.credentials is not None:
        credentials = read_credentials(args.credentials, args.gate)
    elif args.issue_credentials is not None:
        credentials = args.issue_credentials(args.server, args.gate)
    result = provision(
        args.gate_dir,
        args.server,
        args.gate,
        args.direction,
        simulated=args.simulated,
        broker=args.broker,
        credentials=credentials,
        reset_trust=args.reset_trust,
    )
    # The installer is at the gate now: say whether its clock will be trusted.
    clock = GateClock.configured(load_config(args.gate_dir / "gate.toml").clock).assess()
    if args.json:
        print(json.dumps({**result, "clock": clock.to_json()}, ensure_ascii=False))
    else:
        print(_lines(result))
        print(f"clock: {clock.detail()}")
        if not clock.synchronised:
            print(f"  effect: {UNTRUSTED_EFFECT}\n  fix: {clock.fix()}")
    return 0


def _lines(result: dict[str, Any]) -> str:
    return render(result, as_json=False)


def _open(config_path: Path) -> tuple[GateConfig, GateStore, Knowledge]:
    config = load_config(config_path)
    store = GateStore(config.db_path)
    try:
        return config, store, load_knowledge(config, store)
    except BaseException:
        store.close()
        raise


def cmd_scan(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from drivers.qr import QrDecoder, pick_single_pass
    from protocol.passes import PREFIX

    config, store, know = _open(args.config)
    with store:
        state = state_from_json(store.state())
        clock = GateClock.configured(config.clock, store.clock_floor())
    direction: Direction = args.direction or ("out" if config.gate.direction == "out" else "in")
    temperature = NOT_MEASURED if args.temperature is None else Temperature(args.temperature)
    decoder = QrDecoder()
    results: list[dict[str, Any]] = []
    for path in args.images:
        try:  # a device, FIFO or huge file is refused (InputFileError), not read forever
            raw = np.frombuffer(read_bounded(path, "image"), dtype=np.uint8)
        except OSError:
            raw = np.empty(0, dtype=np.uint8)  # missing or unreadable: as an undecodable image
        image = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
        if image is None or image.dtype != np.uint8:
            results.append(_refusal(path, "unreadable_image", qr_found=False))
            continue
        texts = decoder.decode(np.asarray(image, dtype=np.uint8))
        pick = pick_single_pass(texts, lambda t: t.startswith(PREFIX))
        if not texts:
            results.append(_refusal(path, "no_qr", qr_found=False))
        elif pick == "multiple":
            results.append(_refusal(path, "multiple_codes", qr_found=True))
        else:
            d = decide(Scan(pick or texts[0], direction), temperature, state, know, clock.now())
            results.append({"file": str(path), "qr_found": True, **decision_json(d)})
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=1))
    else:
        for r in results:
            print(f"{r['file']}: {r['decision']} ({r['reason']}) {r['message']['zh']}")
    return 0


def _refusal(path: Path, reason: str, *, qr_found: bool) -> dict[str, Any]:
    return {
        "file": str(path),
        "qr_found": qr_found,
        "decision": "deny",
        "reason": reason,
        "message": message(reason).as_dict(),
    }


def cmd_replay(args: argparse.Namespace) -> int:
    from edge.replay import load_policy_file, replay, summarize, with_policy

    _, store, know = _open(args.config)
    with store:
        state = state_from_json(store.state())  # a scratch copy: nothing is written back
    know = with_policy(know, load_policy_file(args.policy) if args.policy else None)
    try:
        lines = read_bounded(args.script, "script").decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{args.script}: not UTF-8 text: {exc.reason}") from None
    except OSError as exc:
        raise ProtocolError(f"{args.script}: cannot read: {exc.strerror}") from None
    results = replay(lines, state, know)
    if args.summary:
        summary = summarize(results)
        print(json.dumps(summary, ensure_ascii=False) if args.json else _lines(summary))
        return 0
    for out in results:
        print(
            json.dumps(out, ensure_ascii=False)
            if args.json
            else f"{out.get('at')} {out['decision']} {out['reason']}"
        )
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with GateStore(config.db_path) as store:
        for logged in store.log():
            row = {**logged.event.to_json(), "sync": "acked" if logged.acked else "pending"}
            if args.json:
                print(json.dumps(row, ensure_ascii=False))
            else:
                e = logged.event
                print(
                    f"{e.seq:6d} {e.at} {e.kind:12s} {e.decision or '-':5s} {e.reason:16s}"
                    f" {row['sync']}"
                )
    return 0


def cmd_clock(args: argparse.Namespace) -> int:
    import time
    from datetime import UTC, datetime

    config = load_config(args.config)
    trust = GateClock.configured(config.clock).assess()
    with GateStore(config.db_path) as store:
        wall = time.time()
        floor = store.clock_floor()
        behind = round(max(0.0, floor - wall), 3)
        result: dict[str, Any] = {
            "wall": datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds"),
            "floor": datetime.fromtimestamp(floor, UTC).isoformat(timespec="seconds"),
            "behind_floor_s": behind,
            "synchronised": trust.synchronised,
            # What decisions get now: synchronised and not behind what was persisted.
            "trusted": trust.synchronised and behind == 0,
            **trust.to_json(),
        }
        if args.reset_floor:
            store.reset_clock_floor(wall)
            result["floor_reset_from"] = result["floor"]
            result["floor"] = result["wall"]
            # As the gate will see it now (the daemon raises the floor again to the signed
            # documents it holds, less 15 min: re-sign them first if they came from the future).
            result["behind_floor_s"] = 0
            result["trusted"] = trust.synchronised
    print(render(result, args.json))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from edge.doctor import broker_credentials
    from edge.listen import beyond_loopback

    config, store, know = _open(args.config)
    with store:
        result: dict[str, Any] = {
            "ok": True,
            "config": str(config.path),
            "site": know.site,
            "gate": config.gate.id,
            "versions": know.versions(),
            "trust_keys": sorted(know.trust_keys),
            **broker_credentials(config),
        }
    http = config.guard.http
    exposed = None if http is None else beyond_loopback(http)
    warnings = [exposed] if exposed else []
    guards = len(read_guards(guards_path(config.data_dir)))
    if http is not None and not guards:
        warnings.append(f"WARNING: {NO_GUARDS.message.en}")
    result |= {"guard_http_exposed": exposed is not None, "guards": guards, "warnings": warnings}
    for line in warnings:  # loudly: also when --json goes to a script
        print(line, file=sys.stderr)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:  # the warnings went to stderr
        print(_lines({k: v for k, v in result.items() if k != "warnings"}))
    return 0


def _guard_dir(gate_dir: Path) -> Path:
    return load_config(gate_dir / "gate.toml").data_dir


def _read_pin(pin_file: Path | None) -> str:
    """The PIN from the first line of `pin_file`, or typed twice at the terminal."""
    if pin_file is not None:
        try:
            with pin_file.open("rb") as f:
                first = f.readline(PIN_MAX + 3)
        except OSError as exc:
            raise GuardError(f"{pin_file}: cannot read: {exc.strerror}") from None
        return first.decode("utf-8", "replace").strip()
    if not sys.stdin.isatty():
        raise GuardError("no terminal to type the PIN at: use --pin-file F")
    import getpass

    pin = getpass.getpass(f"PIN ({PIN_MIN}-{PIN_MAX} digits): ")
    check_pin(pin)  # say so before asking again
    if getpass.getpass("again: ") != pin:
        raise GuardError("the two PINs differ")
    return pin


def cmd_guard_add(args: argparse.Namespace) -> int:
    data_dir = _guard_dir(args.gate_dir)
    guard = add_guard(data_dir, args.name, _read_pin(args.pin_file))
    result = {**guard.to_json(), "file": str(guards_path(data_dir))}
    print(json.dumps(result, ensure_ascii=False) if args.json else f"guard {guard.name} enrolled")
    return 0


def cmd_guard_list(args: argparse.Namespace) -> int:
    guards = read_guards(guards_path(_guard_dir(args.gate_dir)))
    if args.json:
        print(json.dumps([g.to_json() for g in guards], ensure_ascii=False))
    elif not guards:
        print("no guards enrolled: overrides are refused (menwei gate guard add GATE_DIR NAME)")
    else:
        for g in guards:
            local = datetime.fromisoformat(g.added_at).astimezone()
            print(f"{g.name}  added {local:%Y-%m-%d %H:%M}")
    return 0


def cmd_guard_remove(args: argparse.Namespace) -> int:
    guard = remove_guard(_guard_dir(args.gate_dir), args.name)
    print(
        json.dumps({"removed": guard.name}, ensure_ascii=False)
        if args.json
        else f"guard {guard.name} removed"
    )
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from edge.doctor import run_doctor

    checks = run_doctor(load_config(args.config), args.broker)
    ok = all(c.ok for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [c.to_json() for c in checks]}, ensure_ascii=False))
    else:
        for c in checks:
            print(c.line())
    return 0 if ok else 1


def cmd_recover(args: argparse.Namespace) -> int:
    from edge.recovery import recover

    result = recover(load_config(args.config))
    print(render(result, args.json))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from edge.calibration import run_calibration
    from edge.hardware import build_hardware

    config = load_config(args.config)
    hw = build_hardware(config)
    try:
        if hw.screener is None:
            raise ProtocolError("no thermometer configured ([thermometer] backend = none)")
        if hw.sim_bus is not None and args.simulated_forehead is not None:
            hw.sim_bus.object_c = args.simulated_forehead
        result = run_calibration(config, hw.screener, args.reference)
    finally:
        hw.close()
    out = result.to_json()
    print(json.dumps(out) if args.json else _lines(out))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from edge.daemon import GateDaemon

    config = load_config(args.config)
    if args.broker not in (None, "none"):
        parse_broker(args.broker)  # the rules [mqtt] broker follows, before anything opens
    try:
        daemon = GateDaemon(config, broker=args.broker)
    except ProvisionError as exc:  # a restart cannot fix it: systemd must not loop
        print(f"menwei: error: {exc}", file=sys.stderr)
        return EXIT_NOT_PROVISIONED
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.stop_event.set())
    print(f"gate {config.gate.site}/{config.gate.id} running ({config.gate.direction})", flush=True)
    daemon.run(until_eof=args.until_eof)
    return 0
