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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from protocol.documents import (
    BUNDLE_DIR,
    CONFIG_FILE,
    FRESHNESS_FILE,
    REGISTER_FILE,
    ROOT_KIND,
    TRUST_FILE,
    SignedDocument,
    encode_trust,
    parse_document,
    sign_document,
)
from protocol.errors import ProtocolError
from protocol.files import write_private
from protocol.freshness import KIND as FRESHNESS
from protocol.freshness import statement_body
from protocol.passes import PassPayload, Role, TrustKey, check_household, public_bytes, sign_pass
from protocol.policy import Policy
from protocol.register import PassEntry, Register, mask_name
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
from server.register import RegisterStore, place_label
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
from server.storage.passes import StoredPass
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
        `publish=False` leaves the register document to the caller (issue_all publishes once).
        `valid_from`/`valid_until` are exact aware instants, the end exclusive (default: now and
        now + pass_days); parse_time(text, end=True) turns a typed last day into its end."""
        check_household(household)
        if not name.strip():
            raise SiteError("name must not be empty")
        r = Role.parse(role)
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
        with self.store.write() as tx:
            lock(tx, f"passes:{household}")  # the cap holds with issuers in other processes
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
            key_id = _signing_key(tx)
            pass_id = meta.next_counter(tx, "pass_id")
            payload = PassPayload(
                key_id,
                pass_id,
                self.site,
                household,
                r,
                int(start.timestamp()),
                int(end.timestamp()),
            )
            qr = sign_pass(payload, load_key(self.dir, key_id))
            passes.add(
                tx,
                StoredPass(
                    pass_id=pass_id,
                    household=household,
                    name=name.strip(),
                    room=room,
                    role=r.label,
                    valid_from=payload.valid_from,
                    valid_until=payload.valid_until,
                    key_id=key_id,
                    qr=qr,
                    issued_at=utcnow(),
                    person_id=None if person is None else person.person_id,
                ),
            )
        if publish:
            self.publish_register()
        return IssuedPass(pass_id, household, r.label, start, end, qr)

    def issue_all(self) -> dict[str, int]:
        """A pass for every registered resident/staff member without a valid, unrevoked one,
        within each household's cap. Returns counts: issued, already_valid, over_cap."""
        now = datetime.now(self.config.tz).replace(microsecond=0)
        counts = {"issued": 0, "already_valid": 0, "over_cap": 0}
        at = int(now.timestamp())
        for person in self.registry.capped_persons():
            with self.store.read() as tx:
                # Passes issued by name before the register was imported count as the person's.
                if passes.held_by_person(tx, person.person_id, person.household, person.name, at):
                    counts["already_valid"] += 1
                    continue
                cap = self._published_policy(tx).policy.passes_per_household_max
                if passes.held_by_household(tx, person.household, at) >= cap:
                    counts["over_cap"] += 1
                    continue
            self.issue_pass(person.household, person.name, person.role, now, publish=False)
            counts["issued"] += 1
        if counts["issued"]:
            with self.store.write() as tx:
                audit.record(tx, actor(), "pass_issue_all", self.site, json.dumps(counts))
            self.publish_register()
        return counts

    def active_passes(self, household: str, at: datetime) -> int:
        """How many passes of the household count against its cap at `at` (unrevoked, not
        ended, not visitors')."""
        with self.store.read() as tx:
            return passes.held_by_household(tx, household, int(at.timestamp()))

    def revoke_pass(self, pass_id: int, reason: str) -> None:
        with self.store.write() as tx:
            if not passes.revoke(tx, pass_id, reason, utcnow()):
                raise SiteError(f"pass {pass_id} does not exist or is already revoked")
            audit.record(tx, actor(), "pass_revoke", str(pass_id), reason)
        self.publish_register()

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
            until_text = until.isoformat() if until and on else None
            households.set_quarantine(tx, household, on, until_text, utcnow())
            audit.record(tx, by or actor(), action, household, detail)
        self.publish_register()

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
        held = passes.find(tx, ending_after=int(ended.timestamp()))
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
        body = self.register().to_json()
        try:
            held = json.loads(self.bundle_path(REGISTER_FILE).read_bytes())["body"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            held = None
        return None if held == body else self.publish_register()

    # --- documents and the provisioning bundle ------------------------------------------

    def _sign(self, tx: Tx, kind: str, body: dict[str, object]) -> SignedDocument:
        """Sign with the newest active key under the newest trust root, carrying the chain of
        roots. The version is above the bundle's too: a publish killed after it wrote the
        file but before its transaction committed leaves the file ahead of the counter, and a
        version gates already hold must never name another document."""
        name = {"config": CONFIG_FILE, "register": REGISTER_FILE, FRESHNESS: FRESHNESS_FILE}
        version = meta.next_counter(tx, f"{kind}_version", above=self._bundle_version(name[kind]))
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
        self, tx: Tx, kinds: tuple[str, ...], policy: Policy | None = None
    ) -> dict[str, SignedDocument]:
        """Sign the documents of `kinds` ("config": `policy`, default the published one;
        "register": what the store holds now), write them to the bundle, then a freshness
        statement. Every document when this makes the site's first trust root. The caller
        holds the DOCUMENTS lock."""
        if self._ensure_root(tx):
            kinds = DOCUMENT_KINDS
        signed: dict[str, SignedDocument] = {}
        if "config" in kinds:
            policy = self._published_policy(tx).policy if policy is None else policy
            signed["config"] = self._sign(tx, "config", {"policy": policy.to_json()})
            self._write_bundle(CONFIG_FILE, signed["config"].encode())
        if "register" in kinds:
            signed["register"] = self._sign(tx, "register", self._register(tx).to_json())
            self._write_bundle(REGISTER_FILE, signed["register"].encode())
        self._publish_freshness(tx)
        return signed

    def publish_config(self, policy: Policy | None = None) -> SignedDocument:
        """The next config document: `policy` (default: the published one, so a key rotation
        or retirement never rolls out unreviewed server.toml edits), signed under the newest
        trust root (gates take their keys from the roots, not from the config)."""
        with self.store.write() as tx:  # see publish_register
            lock(tx, DOCUMENTS)
            return self._publish(tx, ("config",), policy)["config"]

    def publish_register(self) -> SignedDocument:
        """The next register version of what the store holds now, written to the bundle.
        Read, numbered and written in one write transaction under the DOCUMENTS lock: two
        publishers at once (a command, the dashboard, the collector's daily refresh, in any
        process) never give an older register the higher version (which would undo a
        revocation until the next publish)."""
        with self.store.write() as tx:
            lock(tx, DOCUMENTS)
            return self._publish(tx, ("register",))["register"]

    def published_versions(self) -> dict[str, int]:
        """Versions of the config and register documents in the bundle (0: none yet)."""
        return {
            "config": self._bundle_version(CONFIG_FILE),
            "register": self._bundle_version(REGISTER_FILE),
        }

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
