"""The site's Ed25519 signing keys: private keys in files of mode 0600, never in the database.

A retired key's file leaves the server directory (`dispose_key`): overwritten and removed,
or moved to an offline archive. Overwriting is best effort on flash storage and journalling
or copy-on-write file systems (the old blocks may survive): keep server directories on
encrypted storage (docs/security.md, "Signing keys").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from protocol.errors import ProtocolError
from protocol.files import read_bounded

KEYS_DIR = "keys"


def key_path(directory: Path, key_id: int) -> Path:
    return directory / KEYS_DIR / f"site-key-{key_id}.pem"


def create_key(directory: Path, key_id: int) -> Ed25519PrivateKey:
    """Generate and write a new private key; refuses to overwrite one."""
    path = key_path(directory, key_id)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    # O_EXCL: never clobber a key; mode 0600 from the start, not chmod after writing.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def load_key(directory: Path, key_id: int) -> Ed25519PrivateKey:
    path = key_path(directory, key_id)
    try:
        key = load_pem_private_key(read_bounded(path, "key"), password=None)
    except OSError as exc:
        raise ProtocolError(f"{path}: cannot read signing key: {exc.strerror}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ProtocolError(f"{path}: not an Ed25519 key")
    return key


@dataclass(frozen=True)
class DisposedKey:
    """What became of a retired key's private key file."""

    action: Literal["removed", "archived", "absent"]
    path: str
    """The file removed, or its copy in the archive, or the path where none was."""

    def describe(self) -> str:
        return {
            "removed": f"private key {self.path} overwritten and removed",
            "archived": f"private key moved to {self.path} (mode 0600)",
            "absent": f"no private key file at {self.path}: nothing to remove",
        }[self.action]

    def to_json(self) -> dict[str, str]:
        return {"action": self.action, "path": self.path}


def dispose_key(directory: Path, key_id: int, archive: Path | None = None) -> DisposedKey:
    """Take key `key_id`'s private key file out of the server directory: copy it into
    `archive` first when given (the directory is made 0700, the copy 0600, never replacing a
    file), then overwrite the original with zeros, flush it to the disk and remove it. The
    caller checks that `archive` is outside the server directory. Raises OSError."""
    path = key_path(directory, key_id)
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        return DisposedKey("absent", str(path))
    kept = None
    if archive is not None:
        archive.mkdir(mode=0o700, parents=True, exist_ok=True)
        kept = archive / path.name
        fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
    with open(path, "r+b") as f:
        f.write(b"\0" * len(pem))
        f.flush()
        os.fsync(f.fileno())
    path.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if kept is not None:
        return DisposedKey("archived", str(kept))
    return DisposedKey("removed", str(path))
