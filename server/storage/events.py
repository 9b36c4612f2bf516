"""Events from gates (`events`, `event_aliases`) and what the collector refused of them
(`conflicts`, `rejected_messages`).

Events are inserted idempotently on (gate, epoch, seq): a resent event is counted once.
An event whose (gate, epoch, seq) is already stored with a different UUID is not
overwritten: it is kept in `conflicts` (kind `seq_reused`) for operators, once per event
however often it is resent (a gate that lost committed history and numbered new events
with seqs the collector holds). An event whose UUID is already stored under another
(epoch, seq) of its gate is the same event, renumbered by a gate that moved to a new epoch
after such a loss: it is stored once, and its new number is kept in `event_aliases` so
the new epoch's numbering has no gap. Per gate, the collector acknowledges the contiguous
seq (server/storage/gates.py) with the uuid of the event there.

A batch costs a handful of statements whatever its length (one read of what the store
already holds of it, one multi-row insert, the gate's run of seqs), all in the caller's
transaction; the gate's advisory lock (PostgreSQL) keeps two collectors from interleaving
one gate's batches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, bindparam, column, func, select, union_all

from protocol.events import Event
from server.storage import replay
from server.storage.engine import Tx, dialect_insert, insert, lock_all, prepared
from server.storage.gates import SEQ_REUSED, advance_contiguous, gate_epoch
from server.storage.schema import conflicts as conflicts_table
from server.storage.schema import event_aliases, events, rejected_messages, rejection_counts
from server.storage.times import instant_us

EventKey = tuple[str, str, int, str]
"""(gate, epoch, seq, uuid): one stored event, or one number a gate sent it under."""


@dataclass(frozen=True)
class InsertResult:
    """What one batch of a gate did to the store."""

    inserted: int
    duplicates: int
    conflicts: int  # events refused: their (epoch, seq) holds another event (seq_reused)
    contiguous_seq: int  # what to acknowledge
    new_events: tuple[Event, ...] = ()  # the inserted ones, in batch order
    epoch: str = ""
    replaced_epoch: str | None = None  # the gate's previous epoch, when this batch began a new one
    contiguous_uuid: str | None = None  # the uuid of the event at contiguous_seq
    renumbered: int = 0  # events already stored under another (epoch, seq): aliases recorded


def insert_events(tx: Tx, gate: str, batch: Sequence[Event], *, now: str) -> InsertResult:
    """Store one batch of `gate` (events of one gate, in the order it sent them) as if one
    at a time: a later event of the batch sees the earlier ones. `now` is the UTC ISO text
    recorded as received. Returns counts, the new events and what to acknowledge."""
    lock_all(tx, [f"gate:{gate}", *(f"household:{h}" for h in replay.households_of(batch))])
    held = _held(tx, gate, batch)  # (epoch, seq) → uuid of the events already stored
    where = {uuid: key for key, uuid in held.items()}  # uuid → (epoch, seq)
    rows: list[dict[str, Any]] = []
    new: list[Event] = []
    aliases: dict[tuple[str, int], str] = {}
    refused: list[tuple[Event, str]] = []
    duplicates = renumbered = 0
    for e in batch:
        key = (e.epoch, e.seq)
        found = where.get(e.uuid)
        if found == key:
            duplicates += 1
        elif found is not None:  # the same event under a new number: stored once, noted
            renumbered += 1
            aliases.setdefault(key, e.uuid)
        elif key in held:
            refused.append((e, held[key]))
        else:
            held[key] = e.uuid
            where[e.uuid] = key
            rows.append(event_row(gate, e, now))
            new.append(e)
    if rows:
        stored = _insert(tx, rows)
        if len(stored) < len(rows):  # another writer got there first: what holds it now
            new, late = _settle(tx, gate, new, stored)
            for e, other in late:
                held[(e.epoch, e.seq)] = other
                if other == e.uuid:
                    duplicates += 1
                else:
                    refused.append((e, other))
        replay.forget_overtaken(tx, new)
    if aliases:
        tx.execute(
            insert(tx, event_aliases).on_conflict_do_nothing(),
            [{"gate": gate, "epoch": ep, "seq": s, "uuid": u} for (ep, s), u in aliases.items()],
        )
    if refused:
        _refuse(tx, gate, refused, now)
    # A gate writes one database at a time: its batch's epoch is its current one.
    epoch = batch[-1].epoch if batch else gate_epoch(tx, gate) or ""
    position = advance_contiguous(tx, gate, epoch, now)
    contiguous, reused = position.contiguous_seq, position.first_reused
    if reused is not None and reused <= contiguous:
        # The gate numbered other events with seqs held here: it lost committed history.
        # Acknowledge the first reused seq with the event held here, never past it: the gate
        # sees another event at that seq and moves to a new epoch (edge/sync.py) instead of
        # taking an ack of its own later events as delivery of the ones only `conflicts`
        # holds (a broker that lost the retained ack).
        contiguous = reused
    at_contiguous = held.get((epoch, contiguous)) if contiguous else None
    if contiguous and at_contiguous is None:
        at_contiguous = uuid_at(tx, gate, epoch, contiguous)
    return InsertResult(
        inserted=len(new),
        duplicates=duplicates,
        conflicts=len(refused),
        contiguous_seq=contiguous,
        new_events=tuple(new),
        epoch=epoch,
        replaced_epoch=position.replaced_epoch,
        contiguous_uuid=at_contiguous,
        renumbered=renumbered,
    )


def _held(tx: Tx, gate: str, batch: Sequence[Event]) -> dict[tuple[str, int], str]:
    """(epoch, seq) → uuid of the stored events of `gate` that share a uuid or an
    (epoch, seq) with `batch`: one statement (one per epoch of the batch: a gate's batch
    has one but for its move to a new epoch)."""
    if not batch:
        return {}
    by_epoch: dict[str, list[int]] = {}
    for e in batch:
        by_epoch.setdefault(e.epoch, []).append(e.seq)
    uuids = [e.uuid for e in batch]
    query = prepared(tx, _held_query)
    return {
        (str(ep), int(s)): str(u)
        for epoch, seqs in by_epoch.items()
        for ep, s, u in tx.execute(
            query, {"gate": gate, "uuids": uuids, "epoch": epoch, "seqs": seqs}
        )
    }


def _held_query(_dialect: str) -> Any:
    columns = (events.c.epoch, events.c.seq, events.c.uuid)
    gate = events.c.gate == bindparam("gate")
    return union_all(
        select(*columns).where(gate, events.c.uuid.in_(bindparam("uuids", expanding=True))),
        select(*columns).where(
            gate,
            events.c.epoch == bindparam("epoch"),
            events.c.seq.in_(bindparam("seqs", expanding=True)),
        ),
    )


def event_row(gate: str, e: Event, received_at: str) -> dict[str, Any]:
    """The `events` row of `e`, from `gate`, received at `received_at` (UTC ISO text)."""
    return {
        "gate": gate,
        "epoch": e.epoch,
        "seq": e.seq,
        "uuid": e.uuid,
        "at": e.at,
        "at_us": instant_us(e.at),
        "kind": e.kind,
        "decision": e.decision,
        "reason": e.reason,
        "household": e.household,
        "pass_id": e.pass_id,
        "role": e.role,
        "body": json.dumps(e.to_json(), ensure_ascii=False),
        "received_at": received_at,
        "direction": e.direction,
    }


ROW_COLUMNS = (
    "gate",
    "epoch",
    "seq",
    "uuid",
    "at",
    "at_us",
    "kind",
    "decision",
    "reason",
    "household",
    "pass_id",
    "role",
    "body",
    "received_at",
    "direction",
)
"""The columns `event_row` fills."""


def _insert(tx: Tx, rows: list[dict[str, Any]]) -> set[tuple[str, int]]:
    """INSERT … ON CONFLICT DO NOTHING of `rows` (event_row), one statement; the (epoch,
    seq) of those inserted. On PostgreSQL the rows go as one JSON parameter read by
    json_to_recordset: the statement's text stays the same whatever the batch's length, so
    psycopg parses it once (a multi-row VALUES of 50 events is too long for its cache and
    was parsed for every batch; arrays per column cost an escape per value)."""
    params = {"rows": rows} if tx.dialect.name == "postgresql" else rows
    result = tx.execute(prepared(tx, _insert_query), params)
    return {(str(epoch), int(seq)) for epoch, seq in result}


def _insert_query(dialect: str) -> Any:
    statement = dialect_insert(dialect, events)
    if dialect == "postgresql":
        rows = (
            func.json_to_recordset(bindparam("rows", type_=JSON))
            .table_valued(*(column(name, events.c[name].type) for name in ROW_COLUMNS))
            .render_derived(with_types=True)
        )
        statement = statement.from_select(
            list(ROW_COLUMNS), select(*(rows.c[name] for name in ROW_COLUMNS))
        )
    return statement.on_conflict_do_nothing().returning(events.c.epoch, events.c.seq)


def _settle(
    tx: Tx, gate: str, tried: list[Event], stored: set[tuple[str, int]]
) -> tuple[list[Event], list[tuple[Event, str]]]:
    """Of the events tried, those `stored` by this insert, and each other one with the uuid
    that holds its (epoch, seq) now (stored by a concurrent writer)."""
    kept = [e for e in tried if (e.epoch, e.seq) in stored]
    late = [
        (e, uuid_at(tx, gate, e.epoch, e.seq) or "")
        for e in tried
        if (e.epoch, e.seq) not in stored
    ]
    return kept, late


def _refuse(tx: Tx, gate: str, refused: list[tuple[Event, str]], now: str) -> None:
    """Keep refused events for operators, once per event uuid (a gate resends what it was
    not acknowledged for, every resend_after_s)."""
    tx.execute(
        insert(tx, conflicts_table).on_conflict_do_nothing(),
        [
            {
                "gate": gate,
                "seq": e.seq,
                "kind": SEQ_REUSED,
                "detail": f"epoch {e.epoch!r} seq {e.seq} already stored with uuid {other}",
                "body": json.dumps(e.to_json(), ensure_ascii=False),
                "uuid": e.uuid,
                "epoch": e.epoch,
                "at": now,
            }
            for e, other in refused
        ],
    )


def uuid_at(tx: Tx, gate: str, epoch: str, seq: int) -> str | None:
    """The uuid held at (gate, epoch, seq): the event stored there, else the event sent
    again under that number (an alias); None when neither."""
    for table in (events, event_aliases):
        uuid = tx.scalar(
            select(table.c.uuid).where(
                table.c.gate == gate, table.c.epoch == epoch, table.c.seq == seq
            )
        )
        if uuid is not None:
            return str(uuid)
    return None


# --- reading events ----------------------------------------------------------------------


def bodies(tx: Tx) -> Iterator[dict[str, Any]]:
    """Every stored event as exported (protocol.events.Event.to_json), by instant, then gate
    and seq; streamed (iterate inside the transaction)."""
    rows = tx.execute(
        select(events.c.body)
        .order_by(events.c.at_us, events.c.gate, events.c.seq)
        .execution_options(yield_per=1000)
    )
    for (body,) in rows:
        yield json.loads(body)


def decision_events(
    tx: Tx, since: datetime | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """The latest `limit` pass decisions at or after the instant `since` (every one when
    None), oldest first, as exported; and whether older ones in that span were left out."""
    query = select(events.c.body).where(events.c.kind == "decision")
    if since is not None:
        query = query.where(events.c.at_us >= instant_us(since))
    rows = tx.scalars(
        query.order_by(events.c.at_us.desc(), events.c.gate.desc(), events.c.seq.desc()).limit(
            limit + 1
        )
    ).all()
    return [json.loads(body) for body in reversed(rows[:limit])], len(rows) > limit


def event_keys(tx: Tx) -> list[EventKey]:
    """(gate, epoch, seq, uuid) of every stored event."""
    rows = tx.execute(select(events.c.gate, events.c.epoch, events.c.seq, events.c.uuid))
    return [(str(g), str(e), int(s), str(u)) for g, e, s, u in rows]


def alias_keys(tx: Tx) -> list[EventKey]:
    """(gate, epoch, seq, uuid) under which gates sent again events stored under another
    number (after a move to a new epoch)."""
    rows = tx.execute(
        select(
            event_aliases.c.gate, event_aliases.c.epoch, event_aliases.c.seq, event_aliases.c.uuid
        )
    )
    return [(str(g), str(e), int(s), str(u)) for g, e, s, u in rows]


def count_events(tx: Tx) -> int:
    return int(tx.scalar(select(func.count()).select_from(events)) or 0)


# --- conflicts and rejected messages -----------------------------------------------------


@dataclass(frozen=True)
class Conflict:
    """What the replay (server/conflicts.py) found about event `uuid`: a passage that a
    site-wide view would have refused."""

    kind: str  # household_over_quota, daily_exits_over_quota, pass_out_twice,
    # revoked_pass_used, quarantined_exit
    gate: str
    seq: int
    uuid: str
    detail: str


def add_conflicts_once(tx: Tx, found: Sequence[Conflict], *, now: str) -> list[bool]:
    """Record each conflict unless one of its kind about its event is already recorded
    (also earlier in `found`). Returns, for each, whether it was recorded now."""
    first: dict[tuple[str, str], int] = {}
    for i, c in enumerate(found):
        first.setdefault((c.kind, c.uuid), i)
    if not first:
        return []
    result = tx.execute(
        prepared(tx, _record_conflicts_query),
        [
            {
                "gate": c.gate,
                "seq": c.seq,
                "kind": c.kind,
                "detail": c.detail,
                "uuid": c.uuid,
                "at": now,
            }
            for c in (found[i] for i in sorted(first.values()))
        ],
    )
    recorded = {(str(kind), str(uuid)) for kind, uuid in result}
    return [
        first[(c.kind, c.uuid)] == i and (c.kind, c.uuid) in recorded for i, c in enumerate(found)
    ]


def _record_conflicts_query(dialect: str) -> Any:
    return (
        dialect_insert(dialect, conflicts_table)
        .on_conflict_do_nothing()
        .returning(conflicts_table.c.kind, conflicts_table.c.uuid)
    )


def conflicts(tx: Tx) -> list[dict[str, Any]]:
    """Every recorded conflict, oldest first: {"gate", "seq", "kind", "detail", "at"}."""
    rows = tx.execute(
        select(
            conflicts_table.c.gate,
            conflicts_table.c.seq,
            conflicts_table.c.kind,
            conflicts_table.c.detail,
            conflicts_table.c.at,
        ).order_by(conflicts_table.c.id)
    )
    return [dict(zip(("gate", "seq", "kind", "detail", "at"), r, strict=True)) for r in rows]


SAMPLES_PER_TOPIC_DAY = 50
"""Refused messages of one topic kept in `rejected_messages` per UTC day; the rest counted."""
SAMPLES_PER_DAY = 500
"""Refused messages kept per UTC day, all topics together."""
TOPICS_PER_DAY = 100
"""Topics counted apart per UTC day; refusals on more topics (a broker without the ACL lets a
client make up gate names) are counted together under OTHER_TOPICS."""
OTHER_TOPICS = "(other topics)"


def reject_message(
    tx: Tx, topic: str, reason: str, payload: bytes, *, now: str, count: int = 1
) -> bool:
    """Count `count` refused messages or events of `topic` (a message refused whole is one; a
    batch's refused events, one each) for the UTC day of `now` (UTC ISO text), and keep this
    one as a sample in `rejected_messages` — its topic, the reason (at most 500 characters)
    and the first 200 bytes of what came (NUL characters, which PostgreSQL text cannot hold,
    as U+FFFD) — while the day has fewer than SAMPLES_PER_TOPIC_DAY samples of the topic and
    SAMPLES_PER_DAY in all. Returns whether it was kept. Rows stay bounded however many
    messages a gate or an intruder sends: at most SAMPLES_PER_DAY samples and TOPICS_PER_DAY
    + 1 counts a day, for REJECTED_RETENTION_DAYS (server/collector.py)."""
    day = now[:10]
    held = dict(
        tx.execute(
            select(rejection_counts.c.topic, rejection_counts.c.sampled).where(
                rejection_counts.c.day == day
            )
        ).all()
    )
    crowded = topic not in held and len(held) >= TOPICS_PER_DAY
    topic_key = OTHER_TOPICS if crowded else topic
    sample = held.get(topic_key, 0) < SAMPLES_PER_TOPIC_DAY and sum(held.values()) < SAMPLES_PER_DAY
    statement = insert(tx, rejection_counts).values(
        day=day, topic=topic_key, refused=count, sampled=int(sample)
    )
    tx.execute(
        statement.on_conflict_do_update(
            index_elements=[rejection_counts.c.day, rejection_counts.c.topic],
            set_={
                "refused": rejection_counts.c.refused + statement.excluded.refused,
                "sampled": rejection_counts.c.sampled + statement.excluded.sampled,
            },
        )
    )
    if sample:
        excerpt = payload[:200].decode("utf-8", "replace").replace("\x00", "\ufffd")
        tx.execute(
            insert(tx, rejected_messages).values(
                topic=topic, reason=reason[:500].replace("\x00", "\ufffd"), excerpt=excerpt, at=now
            )
        )
    return sample


def purge_rejected(tx: Tx, *, before: str) -> int:
    """Delete the rejected messages recorded before `before` (UTC ISO text, as `now` was) and
    the counts of the days before its day; how many messages."""
    tx.execute(rejection_counts.delete().where(rejection_counts.c.day < before[:10]))
    result = tx.execute(
        rejected_messages.delete()
        .where(rejected_messages.c.at < before)
        .returning(rejected_messages.c.id)
    )
    return len(result.all())


def rejected(tx: Tx) -> list[tuple[str, str, str]]:
    """(topic, reason, excerpt) of every rejected message, oldest first."""
    rows = tx.execute(
        select(
            rejected_messages.c.topic, rejected_messages.c.reason, rejected_messages.c.excerpt
        ).order_by(rejected_messages.c.id)
    )
    return [(str(t), str(r), str(x)) for t, r, x in rows]


def rejected_count(tx: Tx) -> int:
    """Messages and events refused in the days still counted (sampled or not)."""
    return int(tx.scalar(select(func.sum(rejection_counts.c.refused))) or 0)
