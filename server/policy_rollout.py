"""Policy rollout: the published policy, its difference to `server.toml`, and try-outs.

The policy gates enforce is the one inside the current signed config document
(`bundle/config.json`), not what `server.toml` says at the moment: an edit to
`[policy]` is a *candidate* until `menwei policy publish` (or the dashboard's
publish button) signs it as the next config version. Everything the server
computes "as the gates do" (conflicts, counting days, the pass cap, the visitor
fever threshold, dashboard figures) uses the published policy.

A try-out replays recorded traffic through the gates' decision core, which
lives in `edge`; `server` never imports `edge`, so this module only defines the
shapes (`TrialRequest`, `TrialResult`) and the callable's type (`PolicyTrial`).
The command line (`menwei/`) supplies the implementation and hands it down to
the dashboard.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.documents import canonical_json, decode_document
from protocol.errors import ProtocolError
from protocol.passes import TrustKey
from protocol.policy import Policy

if TYPE_CHECKING:
    from server.site import Site

TRIAL_DAYS = 7
"""A try-out replays this many days of recorded traffic unless told otherwise."""
TRIAL_MAX_EVENTS = 50_000
"""At most this many decisions (the latest) are replayed by one try-out."""
TRIAL_SAMPLE = 20
"""Changed decisions listed as examples."""
NOTHING_TO_PUBLISH_EXIT = 3
"""`menwei policy publish` exit status when server.toml's [policy] is already published."""


class RolloutError(ProtocolError):
    """The published policy cannot be read, or a policy cannot be published."""


class NothingToPublish(RolloutError):
    """server.toml's [policy] is the published policy: no new version is signed."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"nothing to publish: server.toml [policy] is the published policy"
            f" (config version {version})"
        )
        self.version = version


class CandidateChanged(RolloutError):
    """server.toml's [policy] changed after the publisher reviewed it."""


@dataclass(frozen=True)
class PublishedPolicy:
    """The policy of the current config document and that document's identity."""

    version: int
    """The config document's version (what gates report as `versions.config`)."""
    issued_at: datetime
    """When the document was signed (aware, UTC)."""
    key_id: int
    policy: Policy


@dataclass(frozen=True)
class PolicyChange:
    """One key whose value differs; values are as in JSON (lists, numbers, strings)."""

    key: str
    published: Any
    candidate: Any

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "published": self.published, "candidate": self.candidate}

    def line(self) -> str:
        return f"{self.key}: {_show(self.published)} → {_show(self.candidate)}"


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def policy_values(policy: Policy) -> dict[str, Any]:
    """Every key of `policy` in declaration order, as JSON values."""
    values: dict[str, Any] = json.loads(json.dumps(policy.to_json()))
    return {f.name: values[f.name] for f in fields(Policy)}


def policy_diff(published: Policy, candidate: Policy) -> list[PolicyChange]:
    """The keys whose values differ, in the order the policy declares them."""
    old, new = policy_values(published), policy_values(candidate)
    return [PolicyChange(k, old[k], new[k]) for k in old if old[k] != new[k]]


def policy_digest(policy: Policy) -> str:
    """A short fingerprint of `policy` (16 hex digits): a publish form carries the digest of
    the candidate its admin reviewed, so a later edit of server.toml is not published blind."""
    return hashlib.sha256(canonical_json(policy_values(policy))).hexdigest()[:16]


def audit_detail(previous: int, changes: Sequence[PolicyChange]) -> str:
    """The audit row's text: the version replaced and every changed key."""
    return f"replaces config version {previous}; " + "; ".join(c.line() for c in changes)


def read_published(path: Path, site: str, keys: Mapping[int, TrustKey]) -> PublishedPolicy:
    """The policy in the signed config document at `path`, verified with `keys` (the site's
    keys, retired ones included: the server reads its own document). Cached per file
    version, so a long-running collector or dashboard notices a new publication at once.
    Raises RolloutError when the document is missing, forged or unreadable."""
    try:
        st = path.stat()
    except OSError as exc:
        raise RolloutError(
            f"{path}: no published config document ({exc.strerror}); `menwei server init` writes it"
        ) from None
    frozen = tuple(sorted((k.key_id, k.public_key) for k in keys.values()))
    # The bundle is replaced by rename: a new publication is a new inode and mtime.
    return _read_cached(str(path), (st.st_ino, st.st_mtime_ns, st.st_size), site, frozen)


@lru_cache(maxsize=16)
def _read_cached(
    path: str, _version: tuple[int, int, int], site: str, keys: tuple[tuple[int, bytes], ...]
) -> PublishedPolicy:
    trust = {k: TrustKey(k, public) for k, public in keys}
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise RolloutError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        doc = decode_document(raw, kind="config", site=site, trust_keys=trust)
        issued = datetime.fromisoformat(doc.issued_at)
        policy = Policy.from_json(doc.body.get("policy", {}), f"{path} policy")
    except (ProtocolError, ValueError) as exc:
        raise RolloutError(f"{path}: the published config document is unusable: {exc}") from None
    return PublishedPolicy(doc.version, issued, doc.key_id, policy)


@dataclass(frozen=True)
class Publication:
    """What `Site.publish_policy` signed."""

    version: int
    previous_version: int
    issued_at: datetime
    changes: tuple[PolicyChange, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "published": True,
            "version": self.version,
            "previous_version": self.previous_version,
            "issued_at": self.issued_at.isoformat(),
            "changes": [c.to_json() for c in self.changes],
        }


# --- try-outs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialRequest:
    """Replay recorded decisions under the published policy and under `candidate`."""

    candidate: Policy
    since: datetime | None = None
    """Replay decisions at or after this (aware) time; None: every recorded decision."""
    max_events: int = TRIAL_MAX_EVENTS
    """At most this many decisions, the latest ones (`TrialResult.truncated` says so)."""
    sample: int = TRIAL_SAMPLE


@dataclass(frozen=True)
class ChangedDecision:
    """One recorded scan decided differently under the candidate."""

    gate: str
    at: str
    """The scan's time as the gate recorded it (ISO-8601)."""
    pass_id: int | None
    direction: str
    published: tuple[str, str]
    """(decision, reason) replayed under the published policy."""
    candidate: tuple[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "at": self.at,
            "pass_id": self.pass_id,
            "direction": self.direction,
            "published": {"decision": self.published[0], "reason": self.published[1]},
            "candidate": {"decision": self.candidate[0], "reason": self.candidate[1]},
        }


@dataclass(frozen=True)
class ReasonChange:
    """How many decisions go from reason `before` (published) to `after` (candidate)."""

    before: str
    after: str
    count: int

    def to_json(self) -> dict[str, Any]:
        return {"from": self.before, "to": self.after, "count": self.count}


@dataclass(frozen=True)
class TrialResult:
    """What a candidate policy would have changed on recorded traffic."""

    published_version: int
    register_version: int
    since: datetime | None
    first_at: str | None
    """Time of the oldest replayed decision (ISO-8601), None when there was none."""
    last_at: str | None
    gates: tuple[str, ...]
    decisions: int
    """Decisions replayed (scans with their scanned text)."""
    skipped: int
    """Recorded decisions without a scanned text (exit button, guard override): not replayed."""
    truncated: bool
    """More decisions were recorded since `since` than `TrialRequest.max_events`."""
    changed: int
    changes: tuple[ReasonChange, ...]
    """published reason → candidate reason, most frequent first."""
    by_reason: Mapping[str, tuple[int, int]]
    """reason → (decisions under the published policy, under the candidate)."""
    sample: tuple[ChangedDecision, ...]
    not_reproduced: int
    """Decisions whose replay under the published policy differs from what the gate recorded:
    today's register (revocations since), an older policy, or a gate that was offline."""
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "published_version": self.published_version,
            "register_version": self.register_version,
            "since": None if self.since is None else self.since.isoformat(),
            "first_at": self.first_at,
            "last_at": self.last_at,
            "gates": list(self.gates),
            "decisions": self.decisions,
            "skipped": self.skipped,
            "truncated": self.truncated,
            "changed": self.changed,
            "changes": [c.to_json() for c in self.changes],
            "by_reason": {
                r: {"published": p, "candidate": c} for r, (p, c) in self.by_reason.items()
            },
            "sample": [s.to_json() for s in self.sample],
            "not_reproduced": self.not_reproduced,
            "notes": list(self.notes),
        }


REGISTER_NOTE = (
    "replayed with today's register: passes revoked and households quarantined since are"
    " refused in old traffic too (under both policies)"
)

PolicyTrial = Callable[["Site", TrialRequest], TrialResult]
"""Replays a site's recorded decisions under its published policy and a candidate.
Implemented over the gates' decision core by `menwei.policy_trial.run_trial`; the
dashboard gets it injected (None: the try-out is unavailable)."""
