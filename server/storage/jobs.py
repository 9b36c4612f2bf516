"""Jobs that must run once per period however many collectors share the store.

One row of `job_runs` per job: `due_us`, the instant before which nobody takes
it again; `holder`, who took it last; `ran_us`, when. A collector that finds a
job due takes it with `claim` (one conditional UPDATE, or the INSERT of its
first row): of several collectors trying at once exactly one gets True, the
others False. On PostgreSQL a loser's UPDATE waits for the winner's row lock and
then finds `due_us` in the future, and its INSERT of a first row waits for the
winner's and then does nothing; on SQLite writers are serialised. The claim
holds the job for a while (its hold); `finish` then sets when it is due next
(the next period, or the next local midnight). A holder that dies before
`finish` gives the job up when its hold ends: another collector runs it then.

A clock that stepped back is not waited for: a job whose last run is more than
one hold in the future of `now_us` is due again. So collectors whose clocks
differ by less than the hold never both run one period.

All instants are integer µs since the Unix epoch, UTC (server/storage/times.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, or_, select, update

from server.storage.engine import Tx, insert
from server.storage.schema import job_runs


@dataclass(frozen=True)
class JobRun:
    """A job's row: due again at `due_us`; last taken by `holder` at `ran_us` (µs, UTC)."""

    job: str
    due_us: int
    holder: str | None
    ran_us: int | None


def claim(tx: Tx, job: str, now_us: int, hold_us: int, holder: str) -> bool:
    """Take `job` for `hold_us` µs from `now_us` if it is due: never run, `due_us <= now_us`,
    or last run more than `hold_us` after `now_us` (the clock stepped back). True when this
    call took it (it is then due at `now_us + hold_us`, unless `finish` says otherwise);
    False when another holder has it for now. Raises ValueError when `hold_us` is not
    positive."""
    if hold_us <= 0:
        raise ValueError("a job is held for a positive time")
    taken = {"due_us": now_us + hold_us, "holder": holder, "ran_us": now_us}
    again = tx.execute(
        update(job_runs)
        .where(
            job_runs.c.job == job,
            or_(
                job_runs.c.due_us <= now_us,
                and_(job_runs.c.ran_us.is_not(None), job_runs.c.ran_us > now_us + hold_us),
            ),
        )
        .values(**taken)
    )
    if again.rowcount == 1:
        return True
    # Not due, or never run: then its first row. (An INSERT's rowcount is not reported by
    # every driver: RETURNING says whether this one inserted it.)
    inserted = tx.execute(
        insert(tx, job_runs)
        .values(job=job, **taken)
        .on_conflict_do_nothing()
        .returning(job_runs.c.job)
    )
    return inserted.first() is not None


def finish(tx: Tx, job: str, holder: str, due_us: int) -> bool:
    """The holder ran `job`: it is due again at `due_us`. False (nothing changed) when the job
    is no longer this holder's (its hold ended and another collector took it)."""
    done = tx.execute(
        update(job_runs)
        .where(job_runs.c.job == job, job_runs.c.holder == holder)
        .values(due_us=due_us)
    )
    return done.rowcount == 1


def job_run(tx: Tx, job: str) -> JobRun | None:
    """The row of `job`, None when it never ran."""
    row = tx.execute(select(job_runs).where(job_runs.c.job == job)).first()
    if row is None:
        return None
    return JobRun(str(row.job), int(row.due_us), row.holder, row.ran_us)
