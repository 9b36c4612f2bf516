"""A server directory: config, signing keys, store, and the documents gates receive.

Every change that gates must learn (a pass issued or revoked, a policy change,
a key rotation) bumps a document version and rewrites the provisioning bundle
(`bundle/`); the collector publishes new bundle documents on the retained
config and register topics.

Every change of the set of active keys makes the next trust root (protocol.roots),
signed by a key of the one before, and every document is signed under the newest
root and carries the chain of roots (docs/security.md, "Signing keys").
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from protocol.documents import (
    BUNDLE_DIR,
    CONFIG_FILE,
    FRESHNESS_FILE,
    MAX_DOCUMENT_BYTES,
    REGISTER_FILE,
    ROOT_KIND,
    TRUST_FILE,
    SignedDocument,
    decode_document,
    encode_trust,
    parse_document,
    sign_document,
)
from protocol.errors import ProtocolError, Superseded
from protocol.files import write_private
from protocol.freshness import KIND as FRESHNESS
from protocol.freshness import statement_body
from protocol.passes import PassPayload, Role, TrustKey, check_household, public_bytes, sign_pass
from protocol.policy import Policy
from protocol.register import PassEntry, Register, RegisterDelta, mask_name
from protocol.register_documents import (
    DELTA,
    DELTA_FILE,
    SNAPSHOT,
    RegisterTooLarge,
    apply_delta,
    body_bytes,
    delta_body,
    snapshot_body,
)
from protocol.roots import root_body
from server.alerts import AlertStore
from server.config import CONFIG_NAME, ServerConfig, load_server_config, render_server_toml
from server.keys import DisposedKey, create_key, dispose_key, key_path, load_key
from server.policy_rollout import (
    CandidateChanged,
    NothingToPublish,
    Publication,
    PublishedPolicy,
    audit_detail,
    policy_diff,
    policy_digest,
    read_published,
)
from server.register import CAPPED_ROLES, RegisterStore, place_label
from server.register_publication import (
    HeldSnapshot,
    held_delta,
    read_held_snapshot,
    snapshot_due,
    surely_fits,
)
from server.storage import Store, audit, households, keys, meta, passes, roots
from server.storage.engine import (
    SQLITE_FILE,
    StoreError,
    Tx,
    default_url,
    lock,
    normalise_url,
    redacted,
)
from server.storage.passes import VISITOR, StoredPass
from server.storage.times import utcnow
from server.validity import local_text, read_time, typed_text


def actor() -> str:
    """Who did an administrative action from the command line (the OS user)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class SiteError(ProtocolError):
    """A server directory operation cannot be done; the message says why."""


class DocumentTooLarge(SiteError):
    """The change would make a document larger than gates accept and the shipped broker
    carries: refused, and the change with it (nothing stored, nothing published)."""


@dataclass(frozen=True)
class RetiredKey:
    """What `Site.retire_key` did: the key, the trust root without it, its private key file."""

    key_id: int
    root: int
    private_key: DisposedKey


@dataclass(frozen=True)
class IssuedPass:
    pass_id: int
    household: str
    role: str
    valid_from: datetime
    valid_until: datetime
    qr: str


@dataclass(frozen=True)
class _Wanted:
    """A pass to sign: for whom, where, and its validity (aware instants, the end exclusive)."""

    household: str
    name: str
    role: Role
    valid_from: datetime
    valid_until: datetime
    room: str
    person_id: int | None


DOCUMENTS = "documents"
"""The lock (server/storage/engine.lock) under which documents are read, numbered, signed and
written to the bundle: on PostgreSQL no two processes do it at once (SQLite's write lock
already serialises them)."""

DOCUMENT_KINDS = ("config", "register")
"""The documents a site publishes besides freshness statements, in the order gates apply them."""

REGISTER_KEEP_EXPIRED = timedelta(days=1)
"""How long after its end a pass (and its revocation) stays in the register document: room
for a gate clock behind the server's. Gates never lean on it: their clock floor is the newest
document's issued_at less 15 minutes."""


def system_utc() -> datetime:
    return datetime.now(UTC)


class Site:
    """A server directory. `clock` gives the aware UTC time signed into documents and
    freshness statements (the system clock; a simulated one in tests of site life)."""

    def __init__(self, directory: Path, *, clock: Callable[[], datetime] = system_utc) -> None:
        self.dir = directory
        self.now = clock
        self.config: ServerConfig = load_server_config(directory)
        self.store = Store(self.config.store.url or default_url(directory))
        # The register and the alerts, on the same store.
        self.registry = RegisterStore(self.store)
        self.alerts = AlertStore(self.store)

    @property
    def site(self) -> str:
        return self.config.server.site

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Site:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def init(cls, directory: Path, site: str, *, store: str | None = None) -> Site:
        """Create a new server directory, its store at `store` (a database URL; default the
        SQLite file in the directory). Refuses to touch an existing server directory or a
        store that already holds a site."""
        if (directory / CONFIG_NAME).exists() or (directory / SQLITE_FILE).exists():
            raise SiteError(f"{directory} already holds a Menwei server; refusing to overwrite")
        if store is not None:
            try:
                normalise_url(store)
            except StoreError as exc:
                raise SiteError(str(exc)) from None
        created = not directory.exists()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # For the service's user only: the store URL, the MQTT password and the webhook
        # secret go in it (docs/security.md, files and modes).
        write_private(directory / CONFIG_NAME, render_server_toml(site, store).encode())

        def undo() -> None:
            """Nothing left that would refuse the next attempt."""
            (directory / CONFIG_NAME).unlink()
            if created and not any(directory.iterdir()):
                directory.rmdir()

        try:
            self = cls(directory)
        except BaseException:  # a store that cannot be opened
            undo()
            raise
        if self.trust_keys():
            self.close()
            undo()
            raise SiteError(
                f"the store {redacted(store or '')} already holds a Menwei site; refusing to"
                " overwrite (give each site its own database)"
            )
        key = create_key(directory, 1)
        with self.store.write() as tx:
            keys.add(tx, 1, public_bytes(key), utcnow())
            lock(tx, DOCUMENTS)
            self._publish(tx, DOCUMENT_KINDS, self.config.policy)  # and root 1: {key 1}
        return self

    # --- keys ---------------------------------------------------------------------------

    def active_key_id(self) -> int:
        """The signing key: the newest active one. Raises SiteError when there is none."""
        with self.store.read() as tx:
            return _signing_key(tx)

    def trust_keys(self) -> list[TrustKey]:
        """The active keys, by id: what gates are told to trust."""
        with self.store.read() as tx:
            return keys.trust_keys(tx)

    def trust_root(self) -> int:
        """The version of the site's newest trust root (0: none yet, a site from before trust
        roots that has not published since its upgrade)."""
        with self.store.read() as tx:
            return roots.latest_version(tx)

    def rotate_key(self) -> tuple[int, int]:
        """Make a new signing key; returns (previous, new) key ids.

        The next trust root (the active keys and the new one) is signed with the previous
        signing key, which every gate of the current root trusts; every document is then
        signed anew with the new key under it, and carries the chain of roots, so a gate
        that missed the rotation follows it from whichever document reaches it first.
        Passes signed by the old key stay valid until they expire or the old key is
        retired."""
        with self.store.write() as tx:
            lock(tx, DOCUMENTS)
            self._ensure_root(tx)  # a site from before trust roots: root 1 first
            previous = _signing_key(tx)
            new = keys.newest_id(tx) + 1  # never reuse the id of a retired key
            key = create_key(self.dir, new)
            keys.add(tx, new, public_bytes(key), utcnow())
            self._next_root(tx, previous)
            self._publish(tx, DOCUMENT_KINDS)
            audit.record(tx, actor(), "key_rotate", str(new), f"previous signing key {previous}")
        return previous, new

    def retire_key(self, key_id: int, *, archive: Path | None = None) -> RetiredKey:
        """Stop trusting `key_id`: the next trust root leaves it out (signed by the signing
        key), and every document is signed anew under that root. A gate that has seen the
        root accepts nothing the key signs: no document, no pass. The signing (newest) key
        cannot be retired: rotate first. Then its private key file leaves the server
        directory: overwritten and removed, or moved to `archive` (a directory outside it,
        made 0700). Raises SiteError before changing anything when `archive` is inside the
        server directory or the key cannot be retired."""
        if archive is not None:
            check_archive(self.dir, archive, key_path(self.dir, key_id).name)
        with self.store.write() as tx:
            lock(tx, DOCUMENTS)
            self._ensure_root(tx)
            active = [k.key_id for k in keys.trust_keys(tx)]
            if key_id not in active:
                raise SiteError(f"key {key_id} is not an active key (active: {active})")
            signer = _signing_key(tx)
            if key_id == signer:
                raise SiteError(
                    f"key {key_id} is the signing key"
                    + (" and the only one" if len(active) == 1 else "")
                    + ": run `menwei keys rotate` first"
                )
            keys.retire(tx, key_id, utcnow())
            root = self._next_root(tx, signer)
            self._publish(tx, DOCUMENT_KINDS)
            private = key_path(self.dir, key_id)
            fate = f"archived to {archive}" if archive is not None else "removed"
            detail = f"trust root {root.version}; private key {private} {fate}"
            audit.record(tx, actor(), "key_retire", str(key_id), detail)
        try:
            disposed = dispose_key(self.dir, key_id, archive)
        except OSError as exc:
            raise SiteError(
                f"key {key_id} is retired (trust root {root.version}), but its private key file"
                f" {key_path(self.dir, key_id)} could not be {'archived' if archive else 'removed'}"
                f" ({exc}): remove it by hand"
            ) from None
        return RetiredKey(key_id, root.version, disposed)

    # --- passes -------------------------------------------------------------------------

    def parse_time(self, text: str, *, end: bool = False) -> datetime:
        """A date or ISO time typed by an operator, read in the site's timezone: a bare date
        is the start of that local day, or with `end` (a last valid day) the start of the next,
        so the whole day is included (server/validity.py). Raises SiteError when unreadable."""
        try:
            return read_time(text, self.config.tz, end=end)
        except ValueError as exc:
            raise SiteError(str(exc)) from None

    def issue_pass(
        self,
        household: str,
        name: str,
        role: str = "resident",
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
        room: str = "",
        *,
        publish: bool = True,
    ) -> IssuedPass:
        """Sign a pass. The household's row is made to exist; a registered person (same
        household and name) is linked and, without `room`, the register's place is shown.
        The pass and the register listing it are committed together: DocumentTooLarge (the
        register would be too large to publish) issues nothing. `publish=False` leaves the
        register document to the caller.
        `valid_from`/`valid_until` are exact aware instants, the end exclusive (default: now and
        now + pass_days); parse_time(text, end=True) turns a typed last day into its end."""
        check_household(household)
        if not name.strip():
            raise SiteError("name must not be empty")
        r = Role.parse(role)
        start, end = self._validity(valid_from, valid_until)
        with self.store.write() as tx:
            # Issuers and publishers take turns, in every process: the cap holds (issue_all
            # counts every household under this lock).
            lock(tx, DOCUMENTS)
            held = passes.held_by_household(tx, household, int(start.timestamp()))
            cap = self._published_policy(tx).policy.passes_per_household_max
            if held >= cap:
                raise SiteError(
                    f"household {household} already holds {held} valid passes (cap {cap}, "
                    "passes_per_household_max): revoke one first"
                )
            households.ensure(tx, household, utcnow())
            person = households.person(tx, household, name.strip())
            if person is not None and not room:
                room = place_label(person.building, person.unit, person.room)
            person_id = None if person is None else person.person_id
            wanted = _Wanted(household, name.strip(), r, start, end, room, person_id)
            (issued,) = self._sign_passes(tx, [wanted])
            if publish:
                self._publish_register(tx)
        return issued

    def _validity(
        self, valid_from: datetime | None, valid_until: datetime | None
    ) -> tuple[datetime, datetime]:
        """The validity window of a new pass (issue_pass). Raises SiteError."""
        tz = self.config.tz
        start = valid_from or datetime.now(tz).replace(microsecond=0)
        end = valid_until or start + timedelta(days=self.config.server.pass_days)
        # Messages name the bounds as typed: a last day, not the exclusive end it stands for.
        start_label = "valid-from" if valid_from else "the start (now)"
        if end.timestamp() <= start.timestamp():  # instants: wall times repeat when DST ends
            raise SiteError(
                f"valid-until {typed_text(end, tz, end=True)} is not after"
                f" {start_label} {typed_text(start, tz)}"
            )
        for label, t, is_end in ((start_label, start, False), ("valid-until", end, True)):
            if not 0 <= t.timestamp() < 2**32:  # the pass holds unsigned 32-bit Unix seconds
                first, last = (datetime.fromtimestamp(x, UTC) for x in (0, 2**32 - 1))
                raise SiteError(
                    f"{label} {typed_text(t, tz, end=is_end)} is outside the times a pass can"
                    f" hold: {local_text(first, tz)} to {local_text(last, tz)}"
                    f" ({self.config.server.timezone})"
                )
        return start, end

    def _sign_passes(self, tx: Tx, wanted: list[_Wanted]) -> list[IssuedPass]:
        """Number, sign and store `wanted` (at least one) in `tx`, with the signing key."""
        key_id = _signing_key(tx)
        key = load_key(self.dir, key_id)
        first = meta.next_counter(tx, "pass_id", count=len(wanted))
        issued_at = utcnow()
        stored, issued = [], []
        for pass_id, w in enumerate(wanted, first):
            start, end = int(w.valid_from.timestamp()), int(w.valid_until.timestamp())
            payload = PassPayload(key_id, pass_id, self.site, w.household, w.role, start, end)
            qr = sign_pass(payload, key)
            stored.append(
                StoredPass(
                    pass_id=pass_id,
                    household=w.household,
                    name=w.name,
                    room=w.room,
                    role=w.role.label,
                    valid_from=start,
                    valid_until=end,
                    key_id=key_id,
                    qr=qr,
                    issued_at=issued_at,
                    person_id=w.person_id,
                )
            )
            issued.append(
                IssuedPass(pass_id, w.household, w.role.label, w.valid_from, w.valid_until, qr)
            )
        passes.add_all(tx, stored)
        return issued

    def issue_all(self) -> dict[str, int]:
        """A pass for every registered resident/staff member without a valid, unrevoked one,
        within each household's cap: all signed and stored in one transaction with the one
        register document that lists them (DocumentTooLarge: none issued). Returns counts:
        issued, already_valid, over_cap."""
        start, end = self._validity(None, None)
        at = int(start.timestamp())
        counts = {"issued": 0, "already_valid": 0, "over_cap": 0}
        with self.store.write() as tx:
            lock(tx, DOCUMENTS)  # see issue_pass
            cap = self._published_policy(tx).policy.passes_per_household_max
            current = passes.current(tx, at)
            held = Counter(p.household for p in current if p.role != VISITOR)
            holders = {p.person_id for p in current if p.person_id is not None}
            # Passes issued by name before the register was imported count as the person's.
            by_name = {(p.household, p.name) for p in current if p.person_id is None}
            wanted = []
            for person in households.persons_in_roles(tx, CAPPED_ROLES):
                if person.person_id in holders or (person.household, person.name) in by_name:
                    counts["already_valid"] += 1
                elif held[person.household] >= cap:
                    counts["over_cap"] += 1
                else:
                    held[person.household] += 1
                    place = place_label(person.building, person.unit, person.room)
                    role = Role.parse(person.role)
                    wanted.append(
                        _Wanted(
                            person.household, person.name, role, start, end, place, person.person_id
                        )
                    )
            if wanted:
                counts["issued"] = len(self._sign_passes(tx, wanted))
                audit.record(tx, actor(), "pass_issue_all", self.site, json.dumps(counts))
                self._publish_register(tx)
        return counts

    def active_passes(self, household: str, at: datetime) -> int:
        """How many passes of the household count against its cap at `at` (unrevoked, not
        ended, not visitors')."""
        with self.store.read() as tx:
            return passes.held_by_household(tx, household, int(at.timestamp()))

    def revoke_pass(self, pass_id: int, reason: str) -> None:
        """Revoke a pass, with the register that lists its revocation (one transaction)."""
        with self.store.write() as tx:
            lock(tx, DOCUMENTS)
            if not passes.revoke(tx, pass_id, reason, utcnow()):
                raise SiteError(f"pass {pass_id} does not exist or is already revoked")
            audit.record(tx, actor(), "pass_revoke", str(pass_id), reason)
            self._publish_register(tx)

    # --- households ---------------------------------------------------------------------

    def set_quarantine(
        self,
        household: str,
        until: datetime | None,
        on: bool = True,
        *,
        by: str | None = None,
        note: str = "",
    ) -> None:
        """Put a household under home quarantine (its exits are refused) or release it.
        `by` names the operator for the audit log (default: the OS user)."""
        check_household(household)
        action = "household_quarantine" if on else "household_release"
        detail = "; ".join(x for x in (note, f"until {until.isoformat()}" if until else "") if x)
        with self.store.write() as tx:
            lock(tx, DOCUMENTS)
            until_text = until.isoformat() if until and on else None
            households.set_quarantine(tx, household, on, until_text, utcnow())
            audit.record(tx, by or actor(), action, household, detail)
            self._publish_register(tx)

    def register(self) -> Register:
        """What gates need of the register now (by the site clock): the passes that can still
        be presented and the revocations among them, and the households under quarantine.

        A pass that ended more than REGISTER_KEEP_EXPIRED ago is left out, revoked or not, so
        the document does not grow with every pass ever issued (visitor passes: ~100 a day).
        Passes not valid yet are in (an offline gate must know them when they start). A gate
        decides on a pass it does not find here by its signed validity window: one left out
        is `expired`, since a gate trusts its clock only when it is not behind the newest
        document's issued_at less 15 minutes (its clock floor). So a revoked pass that ended
        over a day ago is refused `expired`, not `revoked` (docs/protocol.md, "What the
        register holds")."""
        with self.store.read() as tx:
            return self._register(tx)

    def _register(self, tx: Tx) -> Register:
        ended = self.now() - REGISTER_KEEP_EXPIRED
        held = passes.listed(tx, ending_after=int(ended.timestamp()))
        entries = {
            p.pass_id: PassEntry(p.pass_id, p.household, mask_name(p.name), p.room, p.role)
            for p in held
            if p.revoked_at is None
        }
        revoked = {p.pass_id: p.revoke_reason or "" for p in held if p.revoked_at is not None}
        quarantine: dict[str, datetime | None] = {}
        for household, text in households.quarantined(tx):
            until = None if text is None else datetime.fromisoformat(text)
            if until is None or until > ended:  # one that ran out has no effect at a gate
                quarantine[household] = until
        return Register(entries, revoked, quarantine)

    def refresh_register(self) -> SignedDocument | None:
        """Sign a new register version when what register() holds now differs from the bundle's
        (passes that ended and quarantines that ran out since, without any edit); the collector
        calls it once a day. None when the published register already holds exactly that."""
        return None if self.register() == self.published_register() else self.publish_register()

    def published_register(self) -> Register | None:
        """The register the bundle gives gates: its snapshot with its delta applied (None when
        none can be read)."""
        with self.store.read() as tx:
            known = {k.key_id: k for k in keys.trust_keys(tx, retired=True)}
        held = read_held_snapshot(self.bundle_path(REGISTER_FILE), self.site, known)
        if held is None:
            return None
        try:
            raw = self.bundle_path(DELTA_FILE).read_bytes()
            doc = decode_document(raw, kind=DELTA, site=self.site, trust_keys=known)
            return apply_delta(doc, held.register, (held.version, held.version))
        except (FileNotFoundError, Superseded):  # none, or one of an older snapshot
            return held.register
        except ProtocolError:
            return None

    # --- documents and the provisioning bundle ------------------------------------------

    def _sign(self, tx: Tx, kind: str, body: dict[str, object]) -> SignedDocument:
        """Sign with the newest active key under the newest trust root, carrying the chain of
        roots. The version is above the bundle's too: a publish killed after it wrote the
        file but before its transaction committed leaves the file ahead of the counter, and a
        version gates already hold must never name another document. A register delta is
        numbered in the register's series (the version of the register it makes)."""
        files = {
            "config": (CONFIG_FILE,),
            "register": (REGISTER_FILE, DELTA_FILE),
            FRESHNESS: (FRESHNESS_FILE,),
        }
        series = "register" if kind == DELTA else kind
        above = max(map(self._bundle_version, files[series]))
        version = meta.next_counter(tx, f"{series}_version", above=above)
        key_id = _signing_key(tx)
        chain = self._chain(tx)
        issued_at = self.now().astimezone(UTC).isoformat(timespec="milliseconds")
        return sign_document(
            kind,
            self.site,
            version,
            issued_at,
            body,
            key_id,
            load_key(self.dir, key_id),
            root=chain[-1].version,
            chain=chain,
        )

    def _chain(self, tx: Tx) -> tuple[SignedDocument, ...]:
        """The site's trust roots, oldest first, as signed (raises SiteError when none)."""
        chain = tuple(
            parse_document(d.encode(), kind=ROOT_KIND, site=self.site) for d in roots.chain(tx)
        )
        if not chain:
            raise SiteError("the site has no trust root yet")
        return chain

    def _ensure_root(self, tx: Tx) -> bool:
        """Make root 1 when the site has none: its active keys, signed by the oldest of them
        (what the trust file of every gate provisioned before trust roots holds). Returns
        whether it did (then every document must be signed anew under it)."""
        if roots.latest_version(tx):
            return False
        active = keys.trust_keys(tx)
        if not active:
            raise SiteError("no active signing key")
        self._next_root(tx, active[0].key_id)
        return True

    def _next_root(self, tx: Tx, signer: int) -> SignedDocument:
        """The next trust root, of the active keys now, signed by `signer`: a key of the
        current root (root 1: a key it lists), never one the new root leaves out."""
        version = roots.latest_version(tx)
        active = keys.trust_keys(tx)
        doc = sign_document(
            ROOT_KIND,
            self.site,
            version + 1,
            self.now().astimezone(UTC).isoformat(timespec="milliseconds"),
            root_body(active),
            signer,
            load_key(self.dir, signer),
            root=version,
        )
        roots.add(tx, doc.version, doc.encode().decode(), utcnow())
        # The bundle's trust file is the newest root: a gate provisioned now never trusts a
        # key retired before.
        self._write_bundle(TRUST_FILE, encode_trust(self.site, active, doc.version))
        return doc

    def _publish(
        self,
        tx: Tx,
        kinds: tuple[str, ...],
        policy: Policy | None = None,
        *,
        snapshot: bool = False,
    ) -> dict[str, SignedDocument]:
        """Sign the documents of `kinds` ("config": `policy`, default the published one;
        "register": what the store holds now, as a delta or a snapshot, `_sign_register`),
        write them to the bundle, then a freshness statement. Every document when this makes
        the site's first trust root (a register under a new root is always a new snapshot).
        The caller holds the DOCUMENTS lock. Raises DocumentTooLarge."""
        if self._ensure_root(tx):
            kinds = DOCUMENT_KINDS
        signed: dict[str, SignedDocument] = {}
        if "config" in kinds:
            policy = self._published_policy(tx).policy if policy is None else policy
            signed["config"] = self._sign(tx, "config", {"policy": policy.to_json()})
            self._write_bundle(CONFIG_FILE, signed["config"].encode())
        if "register" in kinds:
            signed["register"] = self._sign_register(tx, snapshot=snapshot)
        self._publish_freshness(tx)
        return signed

    def publish_config(self, policy: Policy | None = None) -> SignedDocument:
        """The next config document: `policy` (default: the published one, so a key rotation
        or retirement never rolls out unreviewed server.toml edits), signed under the newest
        trust root (gates take their keys from the roots, not from the config)."""
        with self.store.write() as tx:  # see publish_register
            lock(tx, DOCUMENTS)
            return self._publish(tx, ("config",), policy)["config"]

    def publish_register(self, *, snapshot: bool = False) -> SignedDocument:
        """The next register version of what the store holds now, written to the bundle: a
        delta of the bundle's snapshot or a new snapshot (server/register_publication.py;
        `snapshot`: a snapshot whatever the delta would be). Read, numbered and written in one
        write transaction under the DOCUMENTS lock: two publishers at once (a command, the
        dashboard, the collector's daily refresh, in any process) never give an older register
        the higher version (which would undo a revocation until the next publish). Raises
        DocumentTooLarge."""
        with self.store.write() as tx:
            return self._publish_register(tx, snapshot=snapshot)

    def _publish_register(self, tx: Tx, *, snapshot: bool = False) -> SignedDocument:
        """publish_register in `tx`, which may hold the change the register shows: raising
        DocumentTooLarge rolls the change back with it."""
        lock(tx, DOCUMENTS)
        return self._publish(tx, ("register",), snapshot=snapshot)["register"]

    def _sign_register(self, tx: Tx, *, snapshot: bool) -> SignedDocument:
        """Sign the register the store holds now and write it to the bundle: a delta of the
        bundle's snapshot when that snapshot was signed by the signing key under the newest
        root and no new one is due, else a new snapshot (which removes the delta). A delta is
        refused too when the register it makes would not fit as a snapshot: no change grows
        the register past what the next snapshot can carry. Raises DocumentTooLarge."""
        register = self._register(tx)
        key_id = _signing_key(tx)
        root = roots.latest_version(tx)
        held = None if snapshot else self._held_snapshot(tx)
        try:
            base, body = None, None
            if held is not None and (held.key_id, held.root) == (key_id, root):
                delta = delta_body(held.version, RegisterDelta.between(held.register, register))
                deltas = self.published_versions()["register"] + 1 - held.version
                envelope = held.envelope_bytes  # what every document carries besides its body
                delta_size, snapshot_size = body_bytes(delta) + envelope, held.body_bytes + envelope
                if not snapshot_due(delta_size, snapshot_size, deltas):
                    base, body = held, delta
            kind, body = (SNAPSHOT, snapshot_body(register)) if body is None else (DELTA, body)
            doc = self._sign(tx, kind, body)
            data = doc.encode()
            size = len(data)  # as a snapshot; for a delta, computed only near the limits
            if base is not None and surely_fits(base, body, len(data)):
                size = 0
            elif base is not None:
                size += body_bytes(snapshot_body(register)) - body_bytes(body)
        except RegisterTooLarge as exc:
            raise DocumentTooLarge(f"{exc}: not published, nothing changed") from None
        if size > MAX_DOCUMENT_BYTES:
            raise DocumentTooLarge(
                f"the register of {len(register.passes)} passes would be a {size}-byte"
                f" document, over the {MAX_DOCUMENT_BYTES} bytes gates accept and the shipped"
                " broker carries (MAX_DOCUMENT_BYTES; docs/scaling.md): not published,"
                " nothing changed"
            )
        if kind == SNAPSHOT:
            self._write_bundle(REGISTER_FILE, data)
            self._remove_bundle(DELTA_FILE)  # after: a reader never finds no delta and no news
        else:
            self._write_bundle(DELTA_FILE, data)
        return doc

    def _held_snapshot(self, tx: Tx) -> HeldSnapshot | None:
        known = {k.key_id: k for k in keys.trust_keys(tx, retired=True)}
        return read_held_snapshot(self.bundle_path(REGISTER_FILE), self.site, known)

    def published_versions(self) -> dict[str, int]:
        """Versions of the config and register documents in the bundle (0: none yet). The
        register's is its delta's, when the bundle holds one of its snapshot."""
        snapshot = self._bundle_version(REGISTER_FILE)
        delta = held_delta(self.bundle_path(DELTA_FILE), snapshot)
        return {"config": self._bundle_version(CONFIG_FILE), "register": delta or snapshot}

    def _bundle_version(self, name: str) -> int:
        """The version of a bundle document (0: none yet)."""
        try:
            return int(json.loads(self.bundle_path(name).read_bytes())["version"])
        except FileNotFoundError:
            return 0

    def publish_freshness(self) -> SignedDocument | None:
        """Sign a freshness statement naming the bundle's current versions (protocol.freshness)
        and write it to the bundle; the collector publishes it. None until both documents
        exist (during `server init`). On a site from before trust roots, the first call
        makes root 1 and signs every document anew under it."""
        with self.store.write() as tx:  # see publish_register
            lock(tx, DOCUMENTS)
            if self._ensure_root(tx):
                self._publish(tx, DOCUMENT_KINDS)
            return self._publish_freshness(tx)

    def _publish_freshness(self, tx: Tx) -> SignedDocument | None:
        versions = self.published_versions()
        if not all(versions.values()):
            return None
        doc = self._sign(tx, FRESHNESS, statement_body(versions))
        self._write_bundle(FRESHNESS_FILE, doc.encode())
        return doc

    def known_keys(self) -> tuple[dict[int, TrustKey], dict[int, TrustKey]]:
        """(active keys, every key ever made) by id: what the server's own documents may be
        signed with now, and what it ever signed with."""
        with self.store.read() as tx:
            every = {k.key_id: k for k in keys.trust_keys(tx, retired=True)}
            active = {k.key_id: k for k in keys.trust_keys(tx)}
        return active, every

    # --- policy rollout ------------------------------------------------------------------

    def published_policy(self) -> PublishedPolicy:
        """What gates enforce: the policy in the current config document (bundle/config.json),
        with its version and issue time. server.toml's [policy] is only a candidate until
        `publish_policy`. Raises RolloutError when the document is missing or unusable."""
        with self.store.read() as tx:
            return self._published_policy(tx)

    def _published_policy(self, tx: Tx) -> PublishedPolicy:
        known = {k.key_id: k for k in keys.trust_keys(tx, retired=True)}
        return read_published(self.bundle_path(CONFIG_FILE), self.site, known)

    def candidate_policy(self) -> Policy:
        """server.toml's [policy] as the file says now (re-read: a long-running dashboard sees
        edits). Strict: ServerConfigError names an unknown key or a bad value."""
        return load_server_config(self.dir).policy

    def publish_policy(self, by: str, *, expect_digest: str | None = None) -> Publication:
        """Sign server.toml's [policy] as the next config version (same trust keys and signing
        key as every config), write the bundle (the collector publishes it to running gates)
        and audit who did it and every changed key. `expect_digest` (policy_digest of the
        candidate the publisher reviewed) refuses a candidate edited since.
        Raises ServerConfigError (bad [policy]), NothingToPublish, CandidateChanged."""
        candidate = self.candidate_policy()
        if expect_digest is not None and policy_digest(candidate) != expect_digest:
            raise CandidateChanged(
                "server.toml [policy] changed after it was reviewed: review the difference again"
            )
        published = self.published_policy()
        changes = policy_diff(published.policy, candidate)
        if not changes:
            raise NothingToPublish(published.version)
        doc = self.publish_config(candidate)
        with self.store.write() as tx:
            detail = audit_detail(published.version, changes)
            audit.record(tx, by, "policy_publish", f"config v{doc.version}", detail)
        return Publication(
            doc.version, published.version, datetime.fromisoformat(doc.issued_at), tuple(changes)
        )

    def bundle_path(self, name: str) -> Path:
        return self.dir / BUNDLE_DIR / name

    def _remove_bundle(self, name: str) -> None:
        self.bundle_path(name).unlink(missing_ok=True)

    def _write_bundle(self, name: str, data: bytes) -> None:
        path = self.bundle_path(name)
        path.parent.mkdir(mode=0o700, exist_ok=True)  # the register names households and rooms
        # Write-then-rename: a gate being provisioned or the collector never reads half a file.
        tmp = path.with_name(f".{name}.{secrets.token_hex(4)}")
        write_private(tmp, data)  # the register holds rooms and (masked) names
        os.replace(tmp, path)

    def summary(self) -> dict[str, object]:
        return {
            "site": self.site,
            "dir": str(self.dir),
            "keys": [k.key_id for k in self.trust_keys()],
            "root": self.trust_root(),
            **self.published_versions(),
        }


def check_archive(server_dir: Path, archive: Path, name: str) -> None:
    """Refuse an archive for retired private keys inside the server directory (the key would
    stay as exposed as before), one that is not a directory, or one that holds `name`
    already. Raises SiteError."""
    if archive.resolve().is_relative_to(server_dir.resolve()):
        raise SiteError(
            f"--archive {archive} is inside the server directory {server_dir}: choose a place"
            " outside it (an offline medium), or leave --archive out to remove the key"
        )
    if archive.exists() and not archive.is_dir():
        raise SiteError(f"--archive {archive} is not a directory")
    if (archive / name).exists():
        raise SiteError(f"--archive {archive} already holds {name}: refusing to replace it")


def _signing_key(tx: Tx) -> int:
    """The id of the newest active key. Raises SiteError when there is none."""
    key_id = keys.signing_id(tx)
    if key_id is None:
        raise SiteError("no active signing key")
    return key_id
