"""Data age from freshness statements (pure): the knowledge is as fresh as its least recently
proven document; a statement proves a document only when it names the version held."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.decision import GateState, Now, Scan, decide
from edge.knowledge import Knowledge
from protocol.documents import SignedDocument, decode_document, sign_document
from protocol.errors import ProtocolError
from protocol.freshness import KIND, statement_body
from protocol.passes import TrustKey, public_bytes
from protocol.policy import Policy
from tests.edge.test_decision import KNOW, NORMAL, SITE, T0, knowledge, qr

KEY = Ed25519PrivateKey.generate()
KEYS = {1: TrustKey(1, public_bytes(KEY))}


def statement(serial: int, at: object, config: int = 3, register: int = 9) -> SignedDocument:
    body = statement_body({"config": config, "register": register})
    raw = sign_document(KIND, SITE, serial, str(at), body, 1, KEY).encode()
    return decode_document(raw, kind=KIND, site=SITE, trust_keys=KEYS)


OLD = knowledge(issued=T0 - timedelta(days=3))  # config 3 and register 9, issued 3 days ago


def test_without_a_statement_the_documents_own_issue_times_count():
    assert OLD.fresh_as_of() == T0 - timedelta(days=3)
    assert OLD.data_age_hours(T0) == 72.0


def test_a_statement_naming_the_held_versions_proves_both():
    know = OLD.with_freshness(statement(5, (T0 - timedelta(minutes=4)).isoformat()))
    assert know.fresh_as_of() == T0 - timedelta(minutes=4)
    assert know.data_age_hours(T0) == pytest.approx(0.067, abs=0.001)


def test_a_statement_naming_a_newer_register_proves_only_the_config():
    know = OLD.with_freshness(statement(5, T0.isoformat(), register=10))
    assert know.proven_at("config") == T0
    assert know.proven_at("register") == T0 - timedelta(days=3)
    assert know.fresh_as_of() == T0 - timedelta(days=3), "the gate knows its register is behind"


def test_the_document_it_named_arriving_later_is_proven_at_once():
    know = OLD.with_freshness(statement(5, T0.isoformat(), register=10))
    issued = (T0 - timedelta(hours=2)).isoformat()
    register = sign_document("register", SITE, 10, issued, OLD.register.to_json(), 1, KEY)
    know = know.with_register(register)
    assert know.register_version == 10
    assert know.fresh_as_of() == T0


def test_a_statement_older_than_a_document_does_not_age_it():
    know = knowledge(issued=T0).with_freshness(statement(5, (T0 - timedelta(days=9)).isoformat()))
    assert know.fresh_as_of() == T0


def test_a_statement_ahead_of_the_gate_clock_is_age_zero_not_negative():
    know = OLD.with_freshness(statement(5, (T0 + timedelta(hours=2)).isoformat()))
    assert know.data_age_hours(T0) == 0.0


def test_a_statement_from_a_server_clock_far_ahead_proves_no_later_than_its_arrival():
    """Issued a year ahead (a server clock that ran ahead), received at T0: a gate cut off
    after T0 still degrades max_data_age_h after T0, not a year later."""
    ahead = statement(5, (T0 + timedelta(days=365)).isoformat())
    know = OLD.with_freshness(ahead, received_at=T0)
    assert know.fresh_as_of() == T0
    assert know.statement is not None and know.statement.issued_at == T0 + timedelta(days=365)
    later = Now(T0 + timedelta(hours=25), True)
    assert decide(Scan(qr(1), "in"), NORMAL, GateState(), know, later).reason == "guard_confirm"


def test_a_statement_received_after_it_was_issued_counts_from_its_issue():
    know = OLD.with_freshness(statement(5, T0.isoformat()), received_at=T0 + timedelta(hours=3))
    assert know.fresh_as_of() == T0


@pytest.mark.parametrize(
    ("statement_age", "limit_h", "outcome"),
    [
        (timedelta(minutes=5), 24.0, "pending"),  # measure the temperature next: not degraded
        (timedelta(hours=23, minutes=59), 24.0, "pending"),
        (timedelta(hours=24, seconds=1), 24.0, "deny"),
        (timedelta(minutes=29), 0.5, "pending"),  # fractions of an hour
        (timedelta(minutes=31), 0.5, "deny"),
    ],
)
def test_the_decision_degrades_only_when_the_last_proof_is_too_old(
    statement_age: timedelta, limit_h: float, outcome: str
):
    know = replace(OLD, policy=Policy(max_data_age_h=limit_h))
    know = know.with_freshness(statement(5, (T0 - statement_age).isoformat()))
    decision = decide(Scan(qr(1), "in"), None, GateState(), know, Now(T0, True))
    assert decision.outcome == outcome
    if outcome == "deny":
        assert (decision.reason, decision.rule, decision.guard_required) == (
            "guard_confirm",
            "data_age",
            True,
        )
    entry = decide(Scan(qr(1), "in"), NORMAL, GateState(), know, Now(T0, True))
    assert entry.outcome == ("allow" if outcome == "pending" else "deny")


def test_documents_days_old_with_a_fresh_statement_still_decide():
    assert OLD.data_age_hours(T0) == 72.0
    decision = decide(Scan(qr(1), "in"), NORMAL, GateState(), OLD, Now(T0, True))
    assert decision.reason == "guard_confirm"  # no proof for three days
    fresh = OLD.with_freshness(statement(5, (T0 - timedelta(minutes=1)).isoformat()))
    assert decide(Scan(qr(1), "in"), NORMAL, GateState(), fresh, Now(T0, True)).reason == "ok"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"versions": {"config": 1}},
        {"versions": {"config": 1, "register": 0}},
        {"versions": {"config": 1, "register": True}},
        {"versions": {"config": "1", "register": 2}},
        {"versions": {"config": 1, "register": 2, "keys": 3}},
        {"versions": [1, 2]},
    ],
)
def test_a_malformed_statement_is_refused(body: dict[str, object]):
    raw = sign_document(KIND, SITE, 2, T0.isoformat(), body, 1, KEY).encode()
    doc = decode_document(raw, kind=KIND, site=SITE, trust_keys=KEYS)
    with pytest.raises(ProtocolError, match="freshness statement"):
        KNOW.with_freshness(doc)


def test_a_statement_without_a_utc_offset_is_refused():
    with pytest.raises(ProtocolError, match="UTC offset"):
        KNOW.with_freshness(statement(2, "2026-11-29T08:00:00"))


def test_knowledge_stays_a_value():
    before = Knowledge(SITE, KEYS)
    after = before.with_freshness(statement(2, T0.isoformat()))
    assert before.statement is None and after.statement is not None
