"""Jobs run once per period across collectors (server/storage/jobs.py), on both backends."""

from __future__ import annotations

import threading

import pytest

from server.storage import Store
from server.storage.jobs import JobRun, claim, finish, job_run

S = 1_000_000  # µs
T0 = 1_780_000_000 * S


def take(store: Store, now_us: int, hold_us: int = 60 * S, holder: str = "a") -> bool:
    with store.write() as tx:
        return claim(tx, "health", now_us, hold_us, holder)


def test_a_job_is_taken_once_per_period(store: Store) -> None:
    assert take(store, T0), "never ran: due"
    assert not take(store, T0, holder="b"), "taken for this period"
    assert not take(store, T0 + 59 * S, holder="b")
    assert take(store, T0 + 60 * S, holder="b"), "the period is over"
    with store.read() as tx:
        assert job_run(tx, "health") == JobRun("health", T0 + 120 * S, "b", T0 + 60 * S)
        assert job_run(tx, "purge") is None
    with store.write() as tx:
        assert claim(tx, "purge", T0, 60 * S, "a"), "jobs are independent"


def test_finish_sets_the_next_due_time_and_a_lost_lease_is_taken_over(store: Store) -> None:
    # A daily job held for a 10-minute lease while it runs, then due tomorrow.
    assert take(store, T0, hold_us=600 * S, holder="a")
    with store.write() as tx:
        assert finish(tx, "health", "a", T0 + 86_400 * S)
    assert not take(store, T0 + 3_600 * S, holder="b"), "done for the day"
    assert take(store, T0 + 86_400 * S, hold_us=600 * S, holder="b")
    # b dies while it runs: its lease ends, a takes the job; b's late finish changes nothing.
    assert not take(store, T0 + 86_700 * S, hold_us=600 * S, holder="a")
    assert take(store, T0 + 87_000 * S, hold_us=600 * S, holder="a")
    with store.write() as tx:
        assert not finish(tx, "health", "b", T0 + 999_999 * S)
    with store.read() as tx:
        run = job_run(tx, "health")
    assert run == JobRun("health", T0 + 87_600 * S, "a", T0 + 87_000 * S)


def test_a_clock_that_stepped_back_does_not_wait_for_the_old_due_time(store: Store) -> None:
    assert take(store, T0, hold_us=60 * S)
    assert not take(store, T0 - 30 * S, holder="b"), "within one hold: a small skew waits"
    assert take(store, T0 - 61 * S, holder="b"), "stepped back more than one hold: due now"


def test_a_hold_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError, match="positive"), store.write() as tx:
        claim(tx, "health", T0, 0, "a")


def contend(
    store: Store,
    now: int,
    name: str,
    start: threading.Barrier,
    won: list[str],
    errors: list[object],
) -> None:
    """One collector's claim, released with the others by `start`."""
    try:
        start.wait(timeout=30)
        # Each at a slightly different instant, as separate clocks read them.
        if take(store, now + int(name) * 1000, holder=name):
            won.append(name)
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def test_collectors_racing_for_a_job_run_it_exactly_once(store: Store) -> None:
    """Eight threads, each with its own connection (as eight collector processes would have),
    released at once for the same job and instant: one takes it, every round. (A read-then-
    write claim lets several win in most rounds on PostgreSQL: it was tried.)"""
    threads, rounds = 8, 10
    for r in range(rounds):
        now = T0 + r * 60 * S  # each round is the next period
        start = threading.Barrier(threads)
        won: list[str] = []
        errors: list[object] = []
        workers = [
            threading.Thread(target=contend, args=(store, now, str(i), start, won, errors))
            for i in range(threads)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
        assert not errors, errors
        assert len(won) == 1, f"round {r}: {won} took the job"
        with store.read() as tx:
            run = job_run(tx, "health")
        assert run is not None and run.holder == won[0]
