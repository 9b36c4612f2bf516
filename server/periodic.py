"""The collector's periodic work, done once per period however many collectors run.

Several collector processes may share one store (docs/configuration.md, "Several
collectors"). Each of them tries its periodic jobs on its own schedule; the store
decides who runs each period (server/storage/jobs.py): the process that claims a
due job runs it, and the others find it taken. A claim holds the job for its
`hold` (HOLD, or the job's period if shorter) while it runs; then it is due again
at `next_due(now)`. A process that dies holding a job, or a job that raises,
gives it up when the hold ends: another process (or the same) runs it then, so
one failure neither stops it for a whole period nor floods the log.

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

HOLD = timedelta(seconds=60)
"""How long a claim keeps a job from the other processes while it runs, at most."""


@dataclass(frozen=True)
class Job:
    """One kind of periodic work. `clock` gives the aware time the job is scheduled by (the
    site's clock for what gates see, the system clock for the rest); `next_due(now)`: when
    it is due again after a run that began at `now`; `hold`: how long a claim keeps it from
    the other processes while it runs (give the period when it is shorter than HOLD)."""

    name: str
    clock: Callable[[], datetime]
    next_due: Callable[[datetime], datetime]
    hold: timedelta = HOLD


def every(name: str, clock: Callable[[], datetime], interval: timedelta) -> Job:
    """A job that runs once per `interval` by `clock`."""
    return Job(name, clock, lambda now: now + interval, min(HOLD, interval))


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
        from `work` propagates; the job is due again when its hold ends."""
        now = job.clock()
        now_us = instant_us(now)
        hold_us = max(1, instant_us(now + job.hold) - now_us)
        with self.store.write() as tx:
            if not claim(tx, job.name, now_us, hold_us, self.holder):
                return False
        work()
        with self.store.write() as tx:
            if not finish(tx, job.name, self.holder, instant_us(job.next_due(now))):
                log.warning(
                    "job %s outlived its hold of %s: another process took it", job.name, job.hold
                )
        return True
