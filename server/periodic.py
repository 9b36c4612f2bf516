"""The collector's periodic work, done once per period however many collectors run.

Several collector processes may share one store (docs/configuration.md, "Several
collectors"). Each of them tries its periodic jobs on its own schedule; the store
decides who runs each period (server/storage/jobs.py): the process that claims a
due job runs it, and the others find it taken. A job is held for its `hold` while
it runs; then it is due again at `next_due(now)`. A process that dies holding a
job gives it up when the hold ends; a job that raises is due again after
`RETRY_S` (at most its hold), so one failure neither stops it nor floods the log.

Every job is also safe to run twice (alerts and outages are keyed, a purge erases
what is old, a register is re-signed only when it changed): the claim saves the
work, correctness never depends on it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from server.storage import Store
from server.storage.jobs import claim, finish
from server.storage.times import instant_us

log = logging.getLogger("menwei.collector")

RETRY_S = 60.0
"""A job that raised is due again this many seconds later (or after its hold, if shorter)."""


@dataclass(frozen=True)
class Job:
    """One kind of periodic work. `clock` gives the aware time the job is scheduled by (the
    site's clock for what gates see, the system clock for the rest); `hold`: how long a
    claim keeps it from the other collectors while it runs; `next_due(now)`: when it is due
    again after a run that began at `now`."""

    name: str
    clock: Callable[[], datetime]
    hold: timedelta
    next_due: Callable[[datetime], datetime]


def every(interval: timedelta) -> Callable[[datetime], datetime]:
    """`next_due` of a job that runs once per `interval`."""
    return lambda now: now + interval


def next_midnight(tz: ZoneInfo) -> Callable[[datetime], datetime]:
    """`next_due` of a job that runs once per local day of `tz`: the next local midnight."""

    def due(now: datetime) -> datetime:
        day = now.astimezone(tz).date() + timedelta(days=1)
        return datetime(day.year, day.month, day.day, tzinfo=tz)

    return due


def process_holder() -> str:
    """Who holds a job, as `job_runs.holder` shows it: `HOST:PID` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Jobs:
    """Runs jobs on `store` once per period among every process using it, as `holder`."""

    def __init__(self, store: Store, holder: str | None = None) -> None:
        self.store = store
        self.holder = holder or process_holder()

    def run_if_due(self, job: Job, work: Callable[[], object]) -> bool:
        """Claim `job` if it is due and run `work`: True when this process ran it (whatever
        `work` returned), False when it was not due or another process has it. An exception
        from `work` propagates, after the job is set due again in RETRY_S (at most its hold)."""
        now = job.clock()
        now_us = instant_us(now)
        hold_us = max(1, instant_us(now + job.hold) - now_us)
        with self.store.write() as tx:
            if not claim(tx, job.name, now_us, hold_us, self.holder):
                return False
        try:
            work()
        except BaseException:
            retry = now + min(job.hold, timedelta(seconds=RETRY_S))
            with self.store.write() as tx:
                finish(tx, job.name, self.holder, instant_us(retry))
            raise
        with self.store.write() as tx:
            if not finish(tx, job.name, self.holder, instant_us(job.next_due(now))):
                log.warning(
                    "job %s outlived its hold of %s: another process took it", job.name, job.hold
                )
        return True
