"""A policy try-out on a site's recorded traffic: the gates' decision core, run twice.

The collector's store holds every decision the gates made, with the scanned text
(`detail.qr`) and the temperature. `run_trial` replays them in time order under
the published policy and under a candidate, with what a gate provisioned now
would know (trust keys and register from the site's signed bundle, verified),
and counts the decisions that come out differently. It lives in `menwei/`
because it joins `edge` (the decision core) and `server` (the store), which
never import each other; the dashboard receives it as a `server.policy_rollout.
PolicyTrial`.

Each gate keeps its own state (fever re-measures, who is out, exits today); an
accepted passage is counted at the other gates too, as the collector relays it
while they are online. The register is today's: a pass revoked since is refused
in old traffic under both policies, so such changes never count as the policy's.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from edge.decision import Decision, GateState, Now, Scan, advance, count_passage, decide
from edge.knowledge import Knowledge
from edge.provision import read_bundle
from edge.replay import ReplayItem, Skip, parse_item
from protocol.documents import TRUST_FILE
from server.policy_rollout import (
    REGISTER_NOTE,
    ChangedDecision,
    ReasonChange,
    TrialRequest,
    TrialResult,
)
from server.site import Site
from server.storage import events as events_db


def bundle_knowledge(site: Site) -> Knowledge:
    """What a gate provisioned from the site's bundle now knows: the trust file as anchor,
    the config and register documents and the freshness statement verified against it (as
    `menwei gate init` does: edge.provision.read_bundle). The statement is issued after the
    traffic replayed, so the replay never takes the documents for too old (rule data_age):
    a trial shows what the policy changes, not what a link did. Raises MessageError (a
    document that does not verify) or OSError (a missing file)."""
    know, _ = read_bundle(site.bundle_path(TRUST_FILE).parent)
    return know


class _Compound:
    """The gates of one site under one policy: a state per gate, passages shared."""

    def __init__(self, know: Knowledge, gates: Iterable[str]) -> None:
        self.know = know
        self.states = {gate: GateState() for gate in gates}

    def decide(self, gate: str, item: ReplayItem, now: Now, uuid: str) -> Decision:
        state = self.states[gate]
        scan = Scan(item.qr, "out" if item.direction == "out" else "in")
        decision = decide(scan, item.temperature, state, self.know, now)
        policy = self.know.policy
        for other, held in self.states.items():
            self.states[other] = (
                advance(held, decision, now, policy=policy, uuid=uuid)
                if other == gate
                # The collector relays accepted passages to the other gates.
                else count_passage(held, decision, now, policy=policy, uuid=uuid)
            )
        return decision


@dataclass(frozen=True)
class _Recorded:
    item: ReplayItem
    gate: str
    seq: int
    uuid: str
    trusted: bool
    outcome: tuple[str, str]
    """(decision, reason) as the gate recorded it."""
    pass_id: int | None


def _recorded(events: Iterable[Mapping[str, Any]]) -> tuple[list[_Recorded], int]:
    """Replayable decisions in time order (per gate: its own order), and how many were not
    (no scanned text: the exit button, a guard override, an unreadable frame)."""
    found: list[_Recorded] = []
    skipped = 0
    for e in events:
        try:
            item = parse_item(e)
        except Skip:
            continue
        except (ValueError, KeyError, TypeError):
            skipped += 1
            continue
        pass_id = e.get("pass_id")
        found.append(
            _Recorded(
                item,
                str(e.get("gate", "")),
                int(e.get("seq", 0)),
                str(e.get("uuid", "")),
                e.get("clock_trusted") is not False,
                (str(e.get("decision")), str(e.get("reason"))),
                pass_id if isinstance(pass_id, int) else None,
            )
        )
    found.sort(key=lambda r: (r.item.at, r.gate, r.seq))
    return found, skipped


def run_trial(site: Site, request: TrialRequest) -> TrialResult:
    """Replay `site`'s recorded decisions (since `request.since`, the latest
    `request.max_events`) under the published policy and under `request.candidate`."""
    know = bundle_knowledge(site)
    with site.store.read() as tx:
        events, truncated = events_db.decision_events(tx, request.since, request.max_events)
    recorded, skipped = _recorded(events)
    gates = sorted({r.gate for r in recorded})
    published = _Compound(know, gates)
    candidate = _Compound(replace(know, policy=request.candidate), gates)
    reasons_published: Counter[str] = Counter()
    reasons_candidate: Counter[str] = Counter()
    transitions: Counter[tuple[str, str]] = Counter()
    sample: deque[ChangedDecision] = deque(maxlen=max(0, request.sample))
    not_reproduced = 0
    for r in recorded:
        now = Now(r.item.at, r.trusted)
        a = published.decide(r.gate, r.item, now, r.uuid)
        b = candidate.decide(r.gate, r.item, now, r.uuid)
        reasons_published[a.reason] += 1
        reasons_candidate[b.reason] += 1
        if (a.decision, a.reason) != r.outcome:
            not_reproduced += 1
        if (a.decision, a.reason) == (b.decision, b.reason):
            continue
        transitions[(a.reason, b.reason)] += 1
        sample.append(
            ChangedDecision(
                r.gate,
                r.item.raw_at,
                r.pass_id,
                r.item.direction,
                (a.decision, a.reason),
                (b.decision, b.reason),
            )
        )
    notes = [REGISTER_NOTE]
    if truncated:
        notes.append(
            f"only the latest {request.max_events} decisions were replayed: the try-out"
            " starts at first_at, not at since"
        )
    return TrialResult(
        published_version=know.config_version,
        register_version=know.register_version,
        since=request.since,
        first_at=recorded[0].item.raw_at if recorded else None,
        last_at=recorded[-1].item.raw_at if recorded else None,
        gates=tuple(gates),
        decisions=len(recorded),
        skipped=skipped,
        truncated=truncated,
        changed=sum(transitions.values()),
        changes=tuple(
            ReasonChange(before, after, n)
            for (before, after), n in sorted(transitions.items(), key=lambda kv: (-kv[1], kv[0]))
        ),
        by_reason={
            reason: (reasons_published[reason], reasons_candidate[reason])
            for reason in sorted(reasons_published.keys() | reasons_candidate.keys())
        },
        sample=tuple(sample),
        not_reproduced=not_reproduced,
        notes=tuple(notes),
    )
