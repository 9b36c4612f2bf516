"""server/storage/accounts.py on SQLite and PostgreSQL: operators, sessions, failed logins."""

from __future__ import annotations

from sqlalchemy import func, select, update

from server.storage import Store
from server.storage import accounts as stored
from server.storage.schema import login_failures, operators, sessions

T0 = "2026-03-01T08:00:00+00:00"
T1 = "2026-03-01T08:10:00+00:00"
T2 = "2026-03-01T08:20:00+00:00"


def test_a_name_is_taken_once_also_by_a_disabled_account(store: Store) -> None:
    with store.write() as tx:
        assert stored.add_operator(tx, "olga", "operator", "$argon2id$a", T0)
        assert stored.add_operator(tx, "dora", "viewer", "$argon2id$d", T0)
        tx.execute(update(operators).where(operators.c.name == "dora").values(disabled=1))
    with store.write() as tx:
        assert not stored.add_operator(tx, "olga", "admin", "$argon2id$b", T1)
        assert not stored.add_operator(tx, "dora", "admin", "$argon2id$b", T1)
    with store.read() as tx:
        olga = stored.operator(tx, "olga")
        assert olga == stored.OperatorRow("olga", "operator", T0, None)
        assert stored.operator(tx, "dora") is None  # disabled: as if it did not exist
        assert stored.password_hash(tx, "olga") == "$argon2id$a"  # not replaced
        assert stored.password_hash(tx, "dora") is None
        assert [o.name for o in stored.all_operators(tx)] == ["olga"]


def test_password_hash_and_last_login_change(store: Store) -> None:
    with store.write() as tx:
        stored.add_operator(tx, "ada", "admin", "$argon2id$old", T0)
        stored.add_operator(tx, "bob", "viewer", "$argon2id$bob", T0)
    with store.write() as tx:
        stored.set_password_hash(tx, "ada", "$argon2id$new")
        stored.set_last_login(tx, "ada", T1)
    with store.read() as tx:
        assert stored.password_hash(tx, "ada") == "$argon2id$new"
        assert stored.password_hash(tx, "bob") == "$argon2id$bob"
        assert [(o.name, o.last_login_at) for o in stored.all_operators(tx)] == [
            ("ada", T1),
            ("bob", None),
        ]


def test_failed_logins_are_counted_per_account_and_per_address_since_a_time(
    store: Store,
) -> None:
    with store.write() as tx:
        for at in (T0, T1, T2):
            stored.add_failure(tx, "olga", "10.0.0.1", at)
        stored.add_failure(tx, "ada", "10.0.0.1", T2)
        stored.add_failure(tx, "olga", "10.0.0.2", T2)
    with store.read() as tx:
        assert stored.failures_since(tx, "olga", "10.0.0.1", T0) == (3, 4)
        assert stored.failures_since(tx, "olga", "10.0.0.1", T1) == (2, 3)
        assert stored.failures_since(tx, "nobody", "10.0.0.1", T1) == (0, 3)
        assert stored.failures_since(tx, "olga", "10.0.0.9", T0) == (0, 0)
    with store.write() as tx:
        stored.forget_failures_before(tx, T1)  # T0's failure is out of every window
        stored.clear_failures(tx, "olga", "10.0.0.2")  # olga logged in from .2
    with store.read() as tx:
        assert stored.failures_since(tx, "olga", "10.0.0.1", T0) == (2, 3)
        assert stored.failures_since(tx, "olga", "10.0.0.2", T0) == (0, 0)
        left = tx.execute(select(func.count()).select_from(login_failures)).scalar_one()
    assert left == 3


def test_a_session_is_found_by_its_digest_while_its_operator_is_enabled(store: Store) -> None:
    with store.write() as tx:
        stored.add_operator(tx, "vic", "viewer", "$argon2id$v", T0)
        stored.open_session(tx, "d1", "vic", "csrf-1", T0, T2, "10.0.0.1")
        stored.open_session(tx, "d2", "vic", "csrf-2", T0, T1, "10.0.0.1")
    with store.read() as tx:
        found = stored.session(tx, "d1")
        assert stored.session(tx, "nope") is None
    assert found == stored.SessionRow(
        stored.OperatorRow("vic", "viewer", T0, None), "csrf-1", T2, T0
    )
    with store.write() as tx:
        stored.touch_session(tx, "d1", T1)
        stored.forget_sessions_expired_before(tx, T2)  # d2 ended at T1
    with store.read() as tx:
        assert stored.session(tx, "d1").last_seen_at == T1  # type: ignore[union-attr]
        assert stored.session(tx, "d2") is None
    with store.write() as tx:
        tx.execute(update(operators).values(disabled=1))
    with store.read() as tx:
        assert stored.session(tx, "d1") is None  # a disabled operator's session is no session
    with store.write() as tx:
        stored.end_session(tx, "d1")
    with store.read() as tx:
        assert tx.execute(select(func.count()).select_from(sessions)).scalar_one() == 0


def test_an_attempt_is_reserved_only_below_both_limits_and_released_on_success(
    store: Store,
) -> None:
    with store.write() as tx:
        ids = [stored.reserve_attempt(tx, "olga", "10.0.0.1", T1, T0, 2, 3) for _ in range(3)]
        other = stored.reserve_attempt(tx, "ada", "10.0.0.1", T1, T0, 2, 3)
        elsewhere = stored.reserve_attempt(tx, "olga", "10.0.0.2", T1, T0, 2, 3)
    assert ids[0] is not None and ids[1] is not None and ids[2] is None  # 2 per pair
    assert other is not None and elsewhere is not None
    with store.write() as tx:
        assert stored.reserve_attempt(tx, "bob", "10.0.0.1", T1, T0, 2, 3) is None  # 3 from .1
        stored.release_attempt(tx, ids[0])
        assert stored.failures_since(tx, "olga", "10.0.0.1", T0) == (1, 2)
        # attempts older than the window do not count
        assert stored.reserve_attempt(tx, "olga", "10.0.0.1", T2, T2, 2, 3) is not None


def test_a_totp_step_and_a_recovery_code_are_accepted_once(store: Store) -> None:
    with store.write() as tx:
        stored.add_operator(tx, "ada", "admin", "$argon2id$a", T0)
        assert stored.totp(tx, "ada") == stored.TotpRow(None, None, None, None)
        stored.set_totp_pending(tx, "ada", "PENDING")
        stored.enable_totp(tx, "ada", "SECRET", T1, 100)
        stored.set_recovery_codes(tx, "ada", ["d1", "d2"])
    with store.write() as tx:
        assert stored.totp(tx, "ada") == stored.TotpRow("SECRET", None, T1, 100)
        assert stored.operator(tx, "ada").totp  # type: ignore[union-attr]
        assert not stored.use_totp_step(tx, "ada", 100)  # the confirming code's step
        assert stored.use_totp_step(tx, "ada", 101)
        assert not stored.use_totp_step(tx, "ada", 101)
        assert not stored.use_totp_step(tx, "ada", 99)  # an older step after a newer one
        assert stored.use_recovery_code(tx, "ada", "d2", T2)
        assert not stored.use_recovery_code(tx, "ada", "d2", T2)
        assert not stored.use_recovery_code(tx, "ada", "d9", T2)
        assert stored.recovery_codes_left(tx, "ada") == 1
    with store.write() as tx:
        stored.disable_totp(tx, "ada")
        assert stored.totp(tx, "ada") == stored.TotpRow(None, None, None, None)
        assert stored.recovery_codes_left(tx, "ada") == 0


def test_a_challenge_is_found_by_its_digest_counts_tries_and_ends(store: Store) -> None:
    with store.write() as tx:
        stored.add_operator(tx, "ada", "admin", "$argon2id$a", T0)
        stored.open_challenge(tx, "c1", "ada", "10.0.0.1", "code", T1)
        stored.open_challenge(tx, "c2", "ada", "10.0.0.1", "enrol", T2)
        stored.count_challenge_try(tx, "c1")
    with store.write() as tx:
        assert stored.challenge(tx, "c1") == stored.ChallengeRow("ada", "10.0.0.1", "code", T1, 1)
        stored.forget_challenges_expired_before(tx, T2)
        assert stored.challenge(tx, "c1") is None
        stored.end_challenge(tx, "c2")
        assert stored.challenge(tx, "c2") is None
