"""A small file system that really fills up: a tmpfs mounted for one test.

The storage-fault tests need the kernel's own answers: ENOSPC from a partition
that is full, EROFS from one mounted read-only, as a gate's data partition on an
SD card gives them. A size-limited tmpfs gives exactly those (no fake, no
LD_PRELOAD; RLIMIT_FSIZE would give EFBIG/SIGXFSZ instead, a different fault).
Mounting needs CAP_SYS_ADMIN: root in the CI container. Where it is missing the
tests that need it are skipped with that reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

FILLER = ".filler"


class SmallFs:
    """A mounted tmpfs of `size_kib` KiB at `mount`."""

    def __init__(self, mount: Path, size_kib: int) -> None:
        self.mount = mount
        self.size_kib = size_kib

    def fill(self) -> int:
        """Write a filler file until the kernel says ENOSPC; returns the bytes written."""
        written = 0
        fd = os.open(self.mount / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            chunk = b"\0" * 4096
            while True:
                try:
                    written += os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    if len(chunk) == 1:
                        break
                    chunk = chunk[: len(chunk) // 2]  # fill the last partial page too
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        """Remove the filler: the space is back at once."""
        (self.mount / FILLER).unlink(missing_ok=True)

    def free_bytes(self) -> int:
        st = os.statvfs(self.mount)
        return st.f_bavail * st.f_frsize

    def read_only(self) -> None:
        """Remount read-only (the kernel refuses while a file on it is open for writing)."""
        _mount("-o", "remount,ro", str(self.mount))

    def read_write(self) -> None:
        _mount("-o", "remount,rw", str(self.mount))


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"mount {' '.join(args)}: {proc.stderr.strip()}"


@contextlib.contextmanager
def small_fs(mount: Path, size_kib: int) -> Iterator[SmallFs]:
    """Mount a tmpfs of `size_kib` KiB at `mount` (created) for the block; unmounted after,
    lazily, so a process still holding a file there does not stop the test's cleanup."""
    mount.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={size_kib}k,mode=0755",
                "menwei-test",
                str(mount),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        pytest.skip("no mount command here: cannot make a small file system")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root or CAP_SYS_ADMIN): {proc.stderr}")
    try:
        yield SmallFs(mount, size_kib)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def move_gate_data(gate_dir: Path, data_dir: Path) -> None:
    """Put a provisioned gate's data (its database and trust file) on `data_dir`, as an
    installer puts them on a data partition, and point gate.toml's data_dir there."""
    for name in ("gate.db", "trust.json"):
        (data_dir / name).write_bytes((gate_dir / name).read_bytes())
        (gate_dir / name).unlink()
    toml = gate_dir / "gate.toml"
    text = toml.read_text(encoding="utf-8")
    assert 'data_dir = "."' in text, "gate.toml layout changed"
    toml.write_text(text.replace('data_dir = "."', f'data_dir = "{data_dir}"'), encoding="utf-8")
