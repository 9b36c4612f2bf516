"""Retained documents the server did not publish: found, judged, and replaced.

A retained message on a document topic (config, register snapshot and delta, freshness) stays
on the broker
for every gate that connects later. The collector subscribes to those topics and compares
each message with the document it publishes now (the bundle's file, byte for byte). One that
differs is replaced: the collector publishes its own again (at most once every
REPUBLISH_AFTER_S per topic, so two publishers cannot start a publish war). It is judged:

- *stale*: signed by an active key of this site, under a root and version no newer than the
  bundle's (an older document of its own, delivered late, or replayed): replaced quietly;
- *foreign*: anything else (malformed, signed by a retired or unknown key, a forged
  signature, a (root, version) above the bundle's, or a chain holding a trust root the
  server did not make: only a stolen active key or another server signs those): replaced,
  logged and raised as a high-priority `foreign_document` alert, at most one per kind every
  ALERT_AFTER_S.

The register delta's topic is empty while the bundle holds no delta (a new snapshot cleared
it: protocol.register_documents), so there an empty message is the published one and a
retained delta is replaced by clearing the topic. A delta is numbered in the register's
series: when the bundle holds none, it is measured against the snapshot (its (root,
version) and its chain).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from protocol.documents import SignedDocument, UntrustedDocument, parse_document, verify_signature
from protocol.errors import MessageError
from protocol.passes import TrustKey
from protocol.register_documents import DELTA, SNAPSHOT

CLEARED = frozenset({DELTA})
"""Kinds whose topic the server empties when the bundle holds none (`published` b"")."""
SERIES = {DELTA: SNAPSHOT}
"""Kinds numbered in another kind's series, measured against it when the bundle holds none."""

log = logging.getLogger("menwei.collector")

REPUBLISH_AFTER_S = 5.0
"""The least time between two republications of one topic's document (seconds)."""
ALERT_AFTER_S = 60.0
"""The least time between two `foreign_document` alerts of one kind (seconds)."""


@dataclass(frozen=True)
class Finding:
    """A retained document that is not the one the server publishes now."""

    kind: str
    foreign: bool
    detail: str
    digest: str
    """sha256 of the message, hex."""


def judge(
    kind: str,
    payload: bytes,
    published: bytes | None,
    site: str,
    keys: Callable[[], tuple[dict[int, TrustKey], dict[int, TrustKey]]],
    *,
    series: SignedDocument | None = None,
) -> Finding | None:
    """Is `payload` (a retained `kind` document) the `published` one (None: it is), a stale
    one of this server, or a foreign one? `keys()` gives (active, every key ever made).
    `series`: the newest document the server published of `kind`'s version series when
    `published` is not one (a register delta's snapshot; `published` is then b"" when the
    topic is to be empty)."""
    if published is not None and payload == published:
        return None
    digest = hashlib.sha256(payload).hexdigest()
    if not payload:
        detail = f"the retained {kind} was cleared (an empty message)"
        # The server clears the delta topic itself when it cuts a snapshot: its own, late.
        return Finding(kind, kind not in CLEARED, detail, digest)
    try:
        doc = parse_document(payload, kind=kind, site=site)
    except MessageError as exc:
        return Finding(kind, True, f"a malformed {kind} document: {exc}", digest)
    active, every = keys()
    what = f"{kind} v{doc.version} (root {doc.root}) signed by key {doc.key_id}"
    if doc.key_id not in every:
        return Finding(kind, True, f"{what}, not a key of this site", digest)
    try:
        verify_signature(doc, every)
    except UntrustedDocument:
        return Finding(kind, True, f"{what}: the signature does not verify (forged)", digest)
    if doc.key_id not in active:
        return Finding(kind, True, f"{what}, a retired key: not published by this server", digest)
    own = _parsed(published, kind, site) or series
    ours = None if own is None else own.mark
    if own is not None:
        made = {r.version: r for r in own.chain}
        for r in doc.chain:
            if made.get(r.version) != r:
                return Finding(
                    kind,
                    True,
                    f"{what} carries a trust root {r.version} this server did not make (signed"
                    f" by key {r.key_id}): key {r.key_id} is compromised; gates that took that"
                    " root need `menwei gate init --reset-trust`",
                    digest,
                )
    if ours is not None and doc.mark > ours:
        return Finding(
            kind,
            True,
            f"{what}, above the published v{ours[1]} (root {ours[0]}): this server did not"
            f" sign it; if nobody else runs it with this site's keys, key {doc.key_id} is"
            " compromised: `menwei keys rotate`, then `menwei keys retire`",
            digest,
        )
    return Finding(kind, False, f"{what}, an older document of this server", digest)


def _parsed(published: bytes | None, kind: str, site: str) -> SignedDocument | None:
    if not published:
        return None
    try:
        return parse_document(published, kind=kind, site=site)
    except MessageError:
        return None


class DocumentWatch:
    """The collector's watch over the retained document topics (one per collector)."""

    def __init__(
        self,
        site: str,
        files: dict[str, Path],
        keys: Callable[[], tuple[dict[int, TrustKey], dict[int, TrustKey]]],
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`files`: kind -> the bundle file the server publishes on that kind's topic."""
        self.site = site
        self.files = files
        self.keys = keys
        self.monotonic = monotonic
        self._republished: dict[str, float] = {}  # kind -> when last republished
        self._alerted: dict[str, float] = {}  # kind -> when last alerted
        self.found = {"stale": 0, "foreign": 0}

    def check(self, kind: str, payload: bytes) -> tuple[Finding | None, bool]:
        """Judge a retained message on `kind`'s topic. Returns the finding (None: it is the
        published document) and whether to raise an alert for it now."""
        try:
            published: bytes | None = self.files[kind].read_bytes()
        except FileNotFoundError:
            published = b"" if kind in CLEARED else None
        series = None
        if not published and kind in SERIES and SERIES[kind] in self.files:
            with contextlib.suppress(FileNotFoundError):
                raw = self.files[SERIES[kind]].read_bytes()
                series = _parsed(raw, SERIES[kind], self.site)
        finding = judge(kind, payload, published, self.site, self.keys, series=series)
        if finding is None:
            return None, False
        self.found["foreign" if finding.foreign else "stale"] += 1
        if not finding.foreign:
            return finding, False
        now = self.monotonic()
        last = self._alerted.get(kind)
        if last is not None and now - last < ALERT_AFTER_S:
            log.warning(
                "retained %s not published by this server (again): %s", kind, finding.detail
            )
            return finding, False
        self._alerted[kind] = now
        return finding, True

    def republish_after(self, kind: str) -> float:
        """The monotonic time from which `kind`'s document may be published again."""
        last = self._republished.get(kind)
        return 0.0 if last is None else last + REPUBLISH_AFTER_S

    def republished(self, kind: str) -> None:
        self._republished[kind] = self.monotonic()
