"""Periodic work done once per period among the processes sharing a store (server/periodic.py),
on both backends, with a clock the test moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from server.periodic import HOLD, Job, Jobs, every, next_midnight
from server.storage import Store

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def test_two_processes_share_one_run_per_period(store: Store) -> None:
    clock = Clock()
    job = every("freshness", clock, timedelta(minutes=5))
    ran: list[str] = []
    a, b = Jobs(store, "a"), Jobs(store, "b")
    for minute, first in ((0, a), (1, b), (4, a), (5, b), (6, a), (10, a), (10, b)):
        clock.now = START + timedelta(minutes=minute)
        for jobs in (first, b if first is a else a):
            if jobs.run_if_due(job, lambda j=jobs: ran.append(j.holder)):
                ran.append(f"@{minute}")
    assert ran == ["a", "@0", "b", "@5", "a", "@10"]


def test_a_job_that_raises_is_due_again_when_its_hold_ends(store: Store) -> None:
    clock = Clock()
    job = every("register_refresh", clock, timedelta(days=1))
    assert job.hold == HOLD

    def broken() -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        Jobs(store, "a").run_if_due(job, broken)
    clock.now = START + HOLD - timedelta(seconds=1)
    assert not Jobs(store, "b").run_if_due(job, lambda: None), "still held"
    clock.now = START + HOLD
    assert Jobs(store, "b").run_if_due(job, lambda: None), "taken over"
    clock.now = START + timedelta(hours=23)
    assert not Jobs(store, "a").run_if_due(job, lambda: None), "done for the day"


def test_a_holder_that_outlived_its_hold_leaves_the_job_to_the_one_that_took_it(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    job = every("gate_health", clock, timedelta(seconds=5))
    assert job.hold == timedelta(seconds=5), "held no longer than its period"

    def slow() -> None:  # b takes the job over while a still runs it
        clock.now = START + timedelta(seconds=6)
        assert Jobs(store, "b").run_if_due(job, lambda: None)

    with caplog.at_level("WARNING", logger="menwei.collector"):
        assert Jobs(store, "a").run_if_due(job, slow)
    assert "gate_health outlived its hold" in caplog.text
    clock.now = START + timedelta(seconds=10)
    assert not Jobs(store, "a").run_if_due(job, lambda: None), "b's run counts: due at 11 s"


def test_a_daily_job_is_due_after_each_local_midnight(store: Store) -> None:
    tz = ZoneInfo("Asia/Shanghai")
    clock = Clock()
    job = Job("register_refresh", clock, next_midnight(tz))
    jobs = Jobs(store, "a")
    late = datetime(2026, 3, 2, 23, 50, tzinfo=tz)
    ran = []
    for at in (late, late + timedelta(minutes=9), late + timedelta(minutes=10), late + HOLD * 60):
        clock.now = at.astimezone(UTC)
        ran.append(jobs.run_if_due(job, lambda: None))
    assert ran == [True, False, True, False]
    assert next_midnight(tz)(late) == datetime(2026, 3, 3, tzinfo=tz)
