"""The files Menwei's commands read, each within a size cap, and the private files they make.

The one place `protocol` touches the file system: the gate and the server read the same
kinds of file (TOML configurations, trust.json, signed documents) and must refuse the same
hostile ones, and neither may import the other. A file is read only when it is a regular
file no larger than the cap of its kind (FILE_CAPS): `--config /dev/zero`, a FIFO or a 1 GB
file is refused at once, before anything is read, with a message that names it. The cap is
enforced on the bytes read too (a file that grows while it is read).

Files holding secrets or personal data are created readable and writable by their owner only
(0600, `create_private`), whatever the umask; `loose` finds the ones that are not.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from protocol.documents import MAX_DOCUMENT_BYTES
from protocol.errors import ProtocolError

KiB = 1024
MiB = 1024 * KiB

FileKind = Literal[
    "config",
    "trust",
    "document",
    "key",
    "certificate",
    "password",
    "calibration",
    "register",
    "script",
    "image",
]
FILE_CAPS: dict[FileKind, int] = {
    "config": 1 * MiB,  # gate.toml, server.toml, a --policy file: a few KiB in practice
    "trust": 1 * MiB,  # trust.json: a site and its public keys
    "document": MAX_DOCUMENT_BYTES,  # a bundle gate init is given: the register is the largest
    "key": 64 * KiB,  # a PEM private key: about 120 bytes
    "certificate": 1 * MiB,  # [mqtt] ca_file/cert_file: a PEM certificate or a CA bundle
    "password": 4 * KiB,  # --mqtt-password-file: one line
    "calibration": 64 * KiB,  # calibration.json
    "register": 20 * MiB,  # menwei register import: a CSV or XLSX of residents
    "script": 512 * MiB,  # gate replay: scripted scans or `server export` output
    "image": 64 * MiB,  # gate scan: a photo of a pass
}
"""The largest file of each kind a command reads, in bytes (docs/security.md lists them)."""

PRIVATE_MODE = 0o600
LOOSE_BITS = 0o077
"""Any permission for the group or other users: the files of `loose` must have none."""


class InputFileError(ProtocolError):
    """A file a command was given is not one it reads: not a regular file, or over its cap."""


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB and n % MiB == 0 else f"{n // KiB} KiB"


def read_bounded(path: Path, kind: FileKind) -> bytes:
    """The bytes of regular file `path`, at most FILE_CAPS[kind] of them. Raises OSError when
    it cannot be opened (missing, no permission: callers say "cannot read") and InputFileError
    when it is not a regular file (a device such as /dev/zero, a FIFO, a directory, a socket)
    or is larger than the cap."""
    cap = FILE_CAPS[kind]
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            what = "a directory" if stat.S_ISDIR(info.st_mode) else "a device, FIFO or socket"
            raise InputFileError(f"{path}: not a regular file ({what}): refused")
        if info.st_size > cap:
            raise InputFileError(
                f"{path}: {info.st_size} bytes, over the {_size(cap)} cap for {kind} files"
            )
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        left = cap + 1
        while left > 0:
            chunk = os.read(fd, min(left, MiB))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise InputFileError(f"{path}: grew past the {_size(cap)} cap for {kind} files")
        return b"".join(chunks)
    finally:
        os.close(fd)


def create_private(path: Path) -> None:
    """Make `path` a file only its owner may read and write (0600), created empty if missing,
    before anything is written to it: a writer that opens it later (SQLite, a PDF library,
    `write_private`) keeps that mode. An existing file keeps its content."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_MODE)
    try:
        os.fchmod(fd, PRIVATE_MODE)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` (replacing what it held), mode 0600 from the first byte."""
    create_private(path)
    with path.open("r+b") as f:
        f.truncate()
        f.write(data)


def loose(paths: Iterable[Path]) -> list[tuple[Path, int]]:
    """The existing ones of `paths` that their group or other users may read, write or run,
    with their permission bits (e.g. 0o644); missing files are left out."""
    found = []
    for path in paths:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & LOOSE_BITS:
            found.append((path, mode))
    return found


def exposed(private: Mapping[Path, str]) -> tuple[str, str] | None:
    """For files mapped to what each holds: None when none of them is `loose`; else what is
    exposed ("PATH is 0644: WHAT IT HOLDS, open to other users; ...") and the fix (a
    `chmod go=` of those paths), as the doctors print them."""
    found = loose(private)
    if not found:
        return None
    detail = "; ".join(f"{p} is {mode:04o}: {private[p]}, open to other users" for p, mode in found)
    fix = (
        f"chmod go= {' '.join(str(p) for p, _ in found)}; the units' UMask=0077 keeps the files"
        " the services create private (docs/security.md, files and modes)"
    )
    return detail, fix
