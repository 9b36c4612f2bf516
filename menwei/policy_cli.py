"""`menwei policy show|diff|try|publish`: rolling out a change of server.toml's [policy].

The published policy is the one in the signed config document gates hold; an edit
of `[policy]` in server.toml is a candidate until `menwei policy publish` signs it
(docs/policy.md, "Rolling out a change"). These commands live in `menwei/` because
`try` runs the gates' decision core (`edge`) over the collector's store (`server`).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from protocol.output import render
from server.policy_rollout import (
    NOTHING_TO_PUBLISH_EXIT,
    TRIAL_DAYS,
    TRIAL_MAX_EVENTS,
    TRIAL_SAMPLE,
    NothingToPublish,
    PolicyChange,
    TrialRequest,
    TrialResult,
    policy_diff,
    policy_values,
)
from server.site import Site, SiteError, actor


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = sub.add_parser(
        "policy",
        help="the rules gates enforce: show, diff, try on recorded traffic, publish",
        description="The published policy is the one in the signed config document the gates"
        " hold. An edit of [policy] in server.toml changes nothing until it is published.",
    )
    ps = policy.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = ps.add_parser("show", help="the published policy, and whether server.toml differs")
    p.add_argument("dir", type=Path, help="server directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = ps.add_parser("diff", help="key by key: published → server.toml's [policy]")
    p.add_argument("dir", type=Path, help="server directory")
    p.add_argument("--json", action="store_true", help="a list of {key, published, candidate}")
    p.set_defaults(func=cmd_diff)

    p = ps.add_parser(
        "try",
        help="replay recorded traffic under the published and the candidate policy",
        description="Replays the decisions stored by the collector through the gates' decision"
        " core, under the published policy and under server.toml's [policy] (or --policy FILE),"
        " and reports which decisions would change. Uses today's register: passes revoked"
        " since are refused in old traffic too, under both policies.",
    )
    p.add_argument("dir", type=Path, help="server directory")
    p.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="TOML with a [policy] table or bare keys (default: server.toml's [policy])",
    )
    p.add_argument(
        "--since",
        metavar="DATE",
        help=f"YYYY-MM-DD (start of that day) or ISO time, site timezone"
        f" (default: {TRIAL_DAYS} days ago)",
    )
    p.add_argument(
        "--max-events",
        type=_positive,
        default=TRIAL_MAX_EVENTS,
        metavar="N",
        help=f"replay at most the latest N decisions (default {TRIAL_MAX_EVENTS})",
    )
    p.add_argument(
        "--sample",
        type=_positive,
        default=TRIAL_SAMPLE,
        metavar="N",
        help=f"changed decisions listed (default {TRIAL_SAMPLE}, the latest)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_try)

    p = ps.add_parser(
        "publish",
        help="sign server.toml's [policy] as the next config version and write the bundle",
        description="Validates [policy] strictly, signs it as the next config version, writes"
        " bundle/config.json (the running collector sends it to the gates within seconds;"
        " `menwei gate init` from a copy of bundle/ gets it) and audits who published what."
        f" Exit status {NOTHING_TO_PUBLISH_EXIT} when there is nothing to publish.",
    )
    p.add_argument("dir", type=Path, help="server directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_publish)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def _local(site: Site, t: datetime) -> str:
    """`t` in the site's local time; as ISO text when it has none (year 9999 overflows)."""
    try:
        return t.astimezone(site.config.tz).strftime("%Y-%m-%d %H:%M:%S")
    except OverflowError:
        return t.isoformat()


def _changes(changes: list[PolicyChange]) -> str:
    return "\n".join(f"  {c.line()}" for c in changes)


def cmd_show(args: argparse.Namespace) -> int:
    with Site(args.dir) as site:
        published = site.published_policy()
        changes = policy_diff(published.policy, site.candidate_policy())
        tz = site.config.server.timezone
        when = _local(site, published.issued_at)
    values = policy_values(published.policy)
    if args.json:
        result = {
            "version": published.version,
            "issued_at": published.issued_at.isoformat(),
            "key_id": published.key_id,
            "policy": values,
            "differs": bool(changes),
            "differences": len(changes),
        }
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(
        f"published policy: config version {published.version}, issued {when} ({tz}),"
        f" signed by key {published.key_id}"
    )
    width = max(map(len, values))
    for key, value in values.items():
        print(f"  {key:{width}} = {json.dumps(value, ensure_ascii=False)}")
    if changes:
        print(
            f"server.toml [policy] differs in {len(changes)} key(s): not published yet"
            f" (menwei policy diff {args.dir})"
        )
    else:
        print("server.toml [policy] is the published policy")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    with Site(args.dir) as site:
        published = site.published_policy()
        changes = policy_diff(published.policy, site.candidate_policy())
    if args.json:
        print(json.dumps([c.to_json() for c in changes], ensure_ascii=False))
    elif changes:
        print(f"published (config version {published.version}) → server.toml [policy]:")
        print(_changes(changes))
    else:
        print(
            f"server.toml [policy] is the published policy (config version"
            f" {published.version}): nothing to publish"
        )
    return 0


def cmd_try(args: argparse.Namespace) -> int:
    from edge.replay import load_policy_file
    from menwei.policy_trial import run_trial

    with Site(args.dir) as site:
        if args.since:
            try:
                since = site.parse_time(args.since)
            except SiteError as exc:
                raise SiteError(f"--since: {exc}") from None
        else:
            since = datetime.now(UTC) - timedelta(days=TRIAL_DAYS)
        candidate = load_policy_file(args.policy) if args.policy else site.candidate_policy()
        result = run_trial(site, TrialRequest(candidate, since, args.max_events, args.sample))
        source = str(args.policy) if args.policy else "server.toml [policy]"
        if args.json:
            print(json.dumps({"candidate": source, **result.to_json()}, ensure_ascii=False))
        else:
            print(_trial_text(site, result, source))
    return 0


def _trial_text(site: Site, r: TrialResult, source: str) -> str:
    def when(iso: str | None) -> str:
        return "—" if iso is None else _local(site, datetime.fromisoformat(iso))

    tz = site.config.server.timezone
    since = "the start" if r.since is None else _local(site, r.since)
    lines = [
        f"replayed {r.decisions} decisions of {len(r.gates)} gate(s) ({', '.join(r.gates)}),"
        f" {when(r.first_at)} – {when(r.last_at)} ({tz})"
        if r.decisions
        else f"no recorded decisions to replay since {since} ({tz})",
        f"published: config version {r.published_version}; candidate: {source}",
        f"decisions that would change: {r.changed}",
    ]
    lines += [f"  {c.before} → {c.after}: {c.count}" for c in r.changes]
    if r.by_reason:
        lines.append("by reason (published → candidate):")
        lines += [f"  {reason}: {p} → {c}" for reason, (p, c) in r.by_reason.items()]
    if r.sample:
        lines.append(f"latest changed decisions ({len(r.sample)}):")
        lines += [
            f"  {when(s.at)} {s.gate} pass {s.pass_id if s.pass_id is not None else '—'}"
            f" {s.direction}: {' '.join(s.published)} → {' '.join(s.candidate)}"
            for s in r.sample
        ]
    if r.skipped:
        lines.append(f"not replayed: {r.skipped} decisions without a scanned text")
    if r.not_reproduced:
        lines.append(
            f"note: {r.not_reproduced} decisions replayed under the published policy differ"
            " from what the gates recorded (an older policy, revocations since, a gate offline)"
        )
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def cmd_publish(args: argparse.Namespace) -> int:
    with Site(args.dir) as site:
        try:
            done = site.publish_policy(actor())
        except NothingToPublish as exc:
            if args.json:
                print(json.dumps({"published": False, "version": exc.version, "changes": []}))
            print(f"menwei: {exc}", file=sys.stderr)
            return NOTHING_TO_PUBLISH_EXIT
        when = _local(site, done.issued_at)
    if args.json:
        print(json.dumps(done.to_json(), ensure_ascii=False))
        return 0
    result: dict[str, Any] = {
        "published": f"config version {done.version} (replaces {done.previous_version})",
        "issued": when,
        "bundle": str(args.dir / "bundle"),
    }
    print(render(result, False))
    print("changes:\n" + _changes(list(done.changes)))
    print(
        "running gates receive it within seconds while the collector runs (menwei server run);"
        " a gate provisioned from a USB stick gets it by `menwei gate init` from a new copy of"
        " bundle/"
    )
    return 0
