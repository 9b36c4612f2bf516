"""Explicit lifecycles: `close()` (idempotent in every implementation) and the
context-manager protocol around it, shared by every device and bus."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closeable:
    """`close()` plus the context-manager protocol around it."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
