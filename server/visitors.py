"""The visitor register: people without a pass whom the guard registers at the gate.

DESIGN.md: "visitors without a pass are registered by the guard (name, phone, reason,
temperature) and get a short-lived visitor pass". The pass is an ordinary signed pass of
role "visitor" for the host household, valid from now for a few hours; at the gate it lets
its holder in once and out once and is exempt from household quotas (edge/decision.py).

Full personal data stays here, on the server (privacy): the gates' register carries only the
masked name. `purge_visitors` enforces retention: the name and phone of a visitor whose pass
expired more than N days ago are erased (also from the pass row), the anonymous row (when,
host, reason, temperature, pass, who registered) stays for the figures and the audit.

Storage: server/storage/visitors.py. Any number of collectors may purge at once: each
visitor is purged, audited and republished by one of them.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from protocol.errors import ProtocolError
from protocol.passes import check_household
from protocol.temperature import PLAUSIBLE_BODY_C, plausible_body
from server.register import place_label
from server.register_import import normalize_phone
from server.site import IssuedPass, Site, SiteError
from server.storage import Store, audit
from server.storage import visitors as visitors_db
from server.storage.times import utcnow
from server.storage.visitors import Visitor

__all__ = [
    "PURGED_NAME",
    "Visitor",
    "VisitorError",
    "VisitorInput",
    "VisitorStore",
    "check_input",
    "purge_visitors",
    "register_visitor",
]

NAME_MAX = 64
REASON_MAX = 200
HOURS_DEFAULT = 4
HOURS_MAX = 24
PURGED_NAME = "访客"
"""What a purged visitor's pass row says instead of the name (NOT NULL column)."""


class VisitorError(SiteError):
    """A visitor cannot be registered. `key` names the dashboard's message (server/web/i18n);
    the text is the command line's."""

    def __init__(self, key: str, text: str) -> None:
        super().__init__(text)
        self.key = key


class VisitorStore:
    """The visitor register of a store: reads (writes are `register_visitor` and
    `purge_visitors`)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, visitor_id: int) -> Visitor | None:
        with self.store.read() as tx:
            return visitors_db.get(tx, visitor_id)

    def since(self, start: datetime, limit: int = 500) -> list[Visitor]:
        """Visitors registered at or after `start` (naive: UTC), newest first."""
        aware = start if start.tzinfo else start.replace(tzinfo=UTC)
        with self.store.read() as tx:
            return visitors_db.since(
                tx, aware.astimezone(UTC).isoformat(timespec="milliseconds"), limit
            )


@dataclass(frozen=True)
class VisitorInput:
    """The form as the guard filled it, checked and normalised."""

    name: str
    phone: str
    reason: str
    host_household: str
    temperature_c: float
    hours: int


def check_input(
    site: Site,
    name: str,
    phone: str,
    reason: str,
    host_household: str,
    temperature_c: float,
    hours: int = HOURS_DEFAULT,
) -> VisitorInput:
    """Every rule a registration must pass, in the order the guard fills the form."""
    name = name.strip()
    if not name:
        raise VisitorError("visitor.err.name", "the visitor's name must not be empty")
    if len(name) > NAME_MAX:
        raise VisitorError("visitor.err.name", f"name longer than {NAME_MAX} characters")
    try:
        phone = normalize_phone(phone)
    except ValueError as exc:
        raise VisitorError("visitor.err.phone", str(exc)) from None
    reason = reason.strip()
    if not reason:
        raise VisitorError("visitor.err.reason", "the reason of the visit must not be empty")
    if len(reason) > REASON_MAX:
        raise VisitorError("visitor.err.reason", f"reason longer than {REASON_MAX} characters")
    host_household = host_household.strip()
    try:
        check_household(host_household)
    except ProtocolError:
        raise VisitorError(
            "visitor.err.host_unknown", f"host household {host_household!r} is not in the register"
        ) from None
    host = site.registry.household(host_household)
    if host is None:
        raise VisitorError(
            "visitor.err.host_unknown", f"host household {host_household!r} is not in the register"
        )
    if host.quarantined and (
        host.quarantine_until is None or _after_now(site, host.quarantine_until)
    ):
        raise VisitorError(
            "visitor.err.host_quarantined",
            f"household {host_household} is under home quarantine: no visitors",
        )
    low, high = PLAUSIBLE_BODY_C
    if not plausible_body(temperature_c):
        raise VisitorError(
            "visitor.err.temperature",
            f"{temperature_c} °C is not a plausible body temperature ({low}–{high}): measure again",
        )
    threshold = site.published_policy().policy.fever_threshold_c
    if temperature_c >= threshold:
        raise VisitorError(
            "visitor.err.fever",
            f"fever: {temperature_c} °C is at or above {threshold} °C. No visitor pass:"
            " send the visitor to the fever clinic (体温异常，请前往发热门诊)",
        )
    if not 1 <= hours <= HOURS_MAX:
        raise VisitorError("visitor.err.hours", f"hours must be 1..{HOURS_MAX}")
    return VisitorInput(name, phone, reason, host_household, temperature_c, hours)


def _after_now(site: Site, iso: str) -> bool:
    t = datetime.fromisoformat(iso)
    return (t if t.tzinfo else t.replace(tzinfo=site.config.tz)) > datetime.now(site.config.tz)


def register_visitor(
    site: Site,
    name: str,
    phone: str,
    reason: str,
    host_household: str,
    temperature_c: float,
    hours: int = HOURS_DEFAULT,
    by: str = "",
) -> tuple[Visitor, IssuedPass]:
    """Register a visitor and issue their pass (role "visitor", host household, now + hours).

    A visitor with fever gets no pass: the refusal is audited and raises a fever alert for
    the operators (without the visitor's name: nothing is stored about a refused visitor)."""
    by = by or "unknown"
    try:
        v = check_input(site, name, phone, reason, host_household, temperature_c, hours)
    except VisitorError as exc:
        if exc.key == "visitor.err.fever":
            detail = {"visitor": True, "temperature_c": temperature_c, "registered_by": by}
            site.alerts.raise_alert(
                f"visitor-fever:{uuid.uuid4()}",
                "fever",
                household=host_household.strip(),
                detail=json.dumps(detail, ensure_ascii=False),
            )
            with site.store.write() as tx:
                audit.record(
                    tx, by, "visitor_refused", host_household.strip(), f"fever {temperature_c} °C"
                )
        raise
    host = site.registry.household(v.host_household)
    room = place_label(host.building, host.unit, host.room) if host else ""
    start = datetime.now(site.config.tz).replace(microsecond=0)
    end = start + timedelta(hours=v.hours)
    issued = site.issue_pass(v.host_household, v.name, "visitor", start, end, room)
    with site.store.write() as tx:
        visitor_id = visitors_db.add(
            tx,
            at=utcnow(),
            name=v.name,
            phone=v.phone,
            reason=v.reason,
            host_household=v.host_household,
            temperature_c=v.temperature_c,
            pass_id=issued.pass_id,
            valid_until=int(end.timestamp()),
            registered_by=by,
        )
        visitor = visitors_db.get(tx, visitor_id)
    assert visitor is not None
    # No name or phone in the audit log: it outlives the visitor's retention period.
    with site.store.write() as tx:
        audit.record(
            tx,
            by,
            "visitor_register",
            str(visitor_id),
            f"pass {issued.pass_id} for {v.host_household} until {end.isoformat()},"
            f" {v.temperature_c} °C",
        )
    return visitor, issued


def purge_visitors(
    site: Site, older_than_days: int, by: str = "", now: datetime | None = None
) -> int:
    """Erase the name and phone of visitors whose pass expired more than `older_than_days`
    days before `now` (also the name on their pass row; the gates' register is republished
    so its masked name goes too). Returns how many visitors were purged."""
    if older_than_days < 0:
        raise SiteError("older-than-days must be 0 or more")
    cutoff = int(
        ((now or datetime.now(site.config.tz)) - timedelta(days=older_than_days)).timestamp()
    )
    with site.store.write() as tx:
        purged = visitors_db.purge(tx, expired_before=cutoff, at=utcnow(), pass_name=PURGED_NAME)
        if purged:  # only the collector that purged them: another found nothing left to purge
            detail = f"pass expired > {older_than_days} d"
            audit.record(tx, by or "unknown", "visitor_purge", str(purged), detail)
    if purged:
        site.publish_register()
    return purged
