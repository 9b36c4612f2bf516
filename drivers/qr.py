"""QR decoding for gate frames: zxing-cpp first, then measured retries.

The order and options come from measurement (docs/decoding.md, reproduced by
`menwei bench decode`, `menwei bench field` and `menwei bench gate`):

1. zxing-cpp on the grey frame, QR Model 1/2 only, raw (``Plain``) text,
   ``return_errors`` on: the call the gate makes on every frame, and the only
   one on an empty frame (its cost is the bare zxing-cpp call's).
   It reads 125/137 of the reference photos and 98% of the synthetic field frames,
   at a fraction of pyzbar's cost, and handles dark-mode (inverted) codes,
   which zbar never reads.
2. If nothing was read, and there is evidence of a code: zxing-cpp again on a
   2x upscale with the global histogram binarizer. Evidence is a QR symbol
   stage 1 *located* but could not decode (an invalid result: a checksum or
   format error), or a frame no larger than `blind_retry_max_side`, whose
   modules may be too few pixels for zxing-cpp to locate the symbol at all
   and whose upscale costs less than one stage-1 call on a 640x480 frame.
   Skipped for frames whose larger side exceeds `upscale_max_side` so its
   cost stays bounded. Every rescue it made in the benches had that evidence;
   on gate-size frames (640x480 and up) it never rescued a frame without a
   located symbol, and running it blind there cost 2.4-3.8x the bare call.
3. pyzbar, only when zxing-cpp *located* a QR symbol but could not decode it
   (``return_errors``: checksum/format errors). zbar's scanline decoder
   reads some crumpled/curved codes zxing-cpp gives up on, but costs ~10x
   zxing-cpp per frame; gating it on a detected symbol keeps the cost of the
   common empty gate frame at zxing-cpp's.

Micro QR and rMQR are not enabled: a pass needs QR version 6, far above Micro
QR's capacity, and the zxing-cpp false-positive samples include a photo that
reads as Micro QR.

Validation is not this module's job: any text a symbol holds is returned.
The gate decides what a pass is (see `pick_single_pass`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

STAGE_ZXING = "zxing"
STAGE_ZXING_UPSCALED = "zxing_upscaled"
STAGE_PYZBAR = "pyzbar"

PyzbarMode = Literal["never", "on_detect", "always"]


@dataclass
class DecoderStats:
    """Counters of one `QrDecoder` since it was made (times in milliseconds)."""

    frames: int = 0
    frames_with_code: int = 0
    by_stage: dict[str, int] = field(default_factory=dict)
    pyzbar_runs: int = 0
    upscale_runs: int = 0
    located_misses: int = 0
    """Frames where stage 1 located a QR symbol but read no text (the evidence for a retry)."""
    undecodable_texts: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.frames if self.frames else 0.0


def _gray(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return np.ascontiguousarray(image[:, :, 0])
    if image.ndim == 3 and image.shape[2] in (3, 4):
        code = cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        return np.asarray(cv2.cvtColor(image, code), dtype=np.uint8)
    raise ValueError(f"expected a grey, BGR or BGRA image, got shape {image.shape}")


class QrDecoder:
    """Decode every QR code in a frame; see the module docstring for the strategy.

    `upscale_max_side` (pixels) bounds the frames that get the 2x retry;
    `blind_retry_max_side` (pixels) the frames that get it without a located
    symbol (0: never); `pyzbar` chooses when zbar runs ("on_detect" is the measured default; the
    others exist for the benchmark). Not thread-safe: one decoder per loop.
    """

    def __init__(
        self,
        *,
        zxing: bool = True,
        upscale_retry: bool = True,
        upscale_max_side: int = 1280,
        blind_retry_max_side: int = 400,
        pyzbar: PyzbarMode = "on_detect",
        pyzbar_max_side: int = 1600,
    ) -> None:
        import zxingcpp

        self._zx = zxingcpp
        self._formats = (zxingcpp.BarcodeFormat.QRCodeModel1, zxingcpp.BarcodeFormat.QRCodeModel2)
        self._zxing = zxing
        self._upscale_retry = upscale_retry
        self._upscale_max_side = upscale_max_side
        self._blind_retry_max_side = blind_retry_max_side
        self._pyzbar_mode = pyzbar
        self._pyzbar_max_side = pyzbar_max_side
        self.stats = DecoderStats()

    def decode(self, image: npt.NDArray[np.uint8]) -> list[str]:
        """Distinct texts of all QR codes in `image` (BGR, BGRA or grey uint8), in reading order."""
        start = time.perf_counter()
        texts, stage = self._decode(_gray(image))
        elapsed = (time.perf_counter() - start) * 1000.0
        s = self.stats
        s.frames += 1
        s.total_ms += elapsed
        s.max_ms = max(s.max_ms, elapsed)
        if texts and stage:
            s.frames_with_code += 1
            s.by_stage[stage] = s.by_stage.get(stage, 0) + 1
        return texts

    def _decode(self, gray: npt.NDArray[np.uint8]) -> tuple[list[str], str | None]:
        detected = False
        if self._zxing:
            texts, detected = self._read_zxing(gray, upscaled=False)
            if texts:
                return texts, STAGE_ZXING
            self.stats.located_misses += detected
            if self._upscale_retry and self._worth_upscaling(gray, detected):
                self.stats.upscale_runs += 1
                big = cv2.resize(gray, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)
                texts, seen = self._read_zxing(np.asarray(big, np.uint8), upscaled=True)
                if texts:
                    return texts, STAGE_ZXING_UPSCALED
                detected = detected or seen
        if self._pyzbar_mode == "always" or (self._pyzbar_mode == "on_detect" and detected):
            texts = self._read_pyzbar(gray)
            if texts:
                return texts, STAGE_PYZBAR
        return [], None

    def _worth_upscaling(self, gray: npt.NDArray[np.uint8], located: bool) -> bool:
        """Stage 2 only where a code may be: a located symbol, or a frame small enough that
        zxing-cpp may not locate one (see the module docstring)."""
        side = max(gray.shape)
        return side <= self._upscale_max_side and (located or side <= self._blind_retry_max_side)

    def _read_zxing(self, gray: npt.NDArray[np.uint8], *, upscaled: bool) -> tuple[list[str], bool]:
        """Texts read, and whether a QR symbol was located at all (valid or not)."""
        zx = self._zx
        binarizer = zx.Binarizer.GlobalHistogram if upscaled else zx.Binarizer.LocalAverage
        results: list[Any] = zx.read_barcodes(
            gray,
            formats=self._formats,
            # Plain: the bytes as encoded, without GS1/ISO 15434 "human readable"
            # rewriting; the pass verifier wants exactly what was printed.
            text_mode=zx.TextMode.Plain,
            binarizer=binarizer,
            # Kept on for the upscaled pass too: its downscaled copies are
            # binarized differently from stage 1 and rescued one more sample
            # (qrcode-2/12) at ~0.3 ms on an empty 640x480 frame.
            return_errors=True,
        )
        texts = _distinct(r.text for r in results if r.valid)
        return texts, bool(results)

    def _read_pyzbar(self, gray: npt.NDArray[np.uint8]) -> list[str]:
        from pyzbar import pyzbar

        self.stats.pyzbar_runs += 1
        side = max(gray.shape)
        if side > self._pyzbar_max_side:
            # zbar's cost grows with pixel count and it gains nothing from
            # more than ~8 px per module.
            f = self._pyzbar_max_side / side
            gray = np.asarray(
                cv2.resize(gray, None, fx=f, fy=f, interpolation=cv2.INTER_AREA), np.uint8
            )
        texts = []
        for symbol in pyzbar.decode(gray, symbols=[pyzbar.ZBarSymbol.QRCODE]):
            try:
                texts.append(symbol.data.decode("utf-8"))
            except UnicodeDecodeError:
                # zbar guesses the character set (often Shift-JIS); a text we
                # cannot represent exactly is dropped rather than returned garbled.
                self.stats.undecodable_texts += 1
        return _distinct(texts)


def _distinct(texts: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(t for t in texts if t))


class ScanDebouncer:
    """Turn per-frame decodes into scans: a card held in view is one scan.

    A code is emitted when it appears; while it stays in view (seen again
    within `holdoff_s` seconds of its last sighting) it is not emitted again.
    It is emitted again after it has been out of view for `holdoff_s`, or as
    soon as it comes back after a different code was seen. `clock` returns
    monotonic seconds; `update` also takes an explicit `now` for tests.
    """

    def __init__(self, holdoff_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if holdoff_s < 0:
            raise ValueError("holdoff_s must be >= 0")
        self.holdoff_s = holdoff_s
        self._clock = clock
        self._last_seen: dict[str, float] = {}

    def update(self, texts: Iterable[str], now: float | None = None) -> list[str]:
        """Feed one frame's decoded texts; returns the texts that count as new scans."""
        t = self._clock() if now is None else now
        frame = _distinct(texts)
        seen = self._last_seen
        new = [c for c in frame if c not in seen or t - seen[c] >= self.holdoff_s]
        if any(c not in self._last_seen for c in frame):
            # A different code showed up: forget the ones no longer in view so
            # that presenting card A, then B, then A again scans A twice.
            self._last_seen = {c: v for c, v in self._last_seen.items() if c in frame}
        for c in frame:
            self._last_seen[c] = t
        return new

    def reset(self) -> None:
        self._last_seen.clear()


def pick_single_pass(
    texts: Iterable[str], is_pass: Callable[[str], bool]
) -> str | Literal["multiple"] | None:
    """The one pass among decoded texts, None if there is none, or "multiple".

    Two passes in view (a family holding up cards together) must not be
    decided at once: the gate asks for one card at a time. Non-pass texts
    (a shop's QR on a bag) are ignored.
    """
    passes = [t for t in _distinct(texts) if is_pass(t)]
    if not passes:
        return None
    if len(passes) > 1:
        return "multiple"
    return passes[0]
