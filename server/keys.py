"""The site's Ed25519 signing keys: private keys in files of mode 0600, never in the database."""

from __future__ import annotations

import os
from pathlib import Path

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
