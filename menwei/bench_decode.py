"""Decode benchmarks: the reference photo set and synthetic field frames.

`run_decode_bench` follows the conventions of the qr-photos set (zxing-cpp's
test samples): an image ``X.<ext>`` is expected to read as the text in
``X.txt``, compared byte-exact (read as bytes, not with universal newlines:
many samples hold CRLF); images without ``X.txt`` are not scored (e.g. the
structured-append parts in qrcode-7, whose ``01.txt`` is the merged text);
``X.result.txt`` is zxing-cpp metadata and ignored; every image in a
``falsepositives-*`` folder holds no code, so any text read there is a false
positive. An image counts as decoded when the expected text is among the
texts read (a sample may show a second, different code); as wrong when texts
were read but not the expected one.

The CLI (`menwei bench decode|field`) calls these two functions.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from drivers.qr import QrDecoder
from drivers.sim_scene import (
    FIELD_CONDITIONS,
    condition_params,
    render_empty_frame,
    render_scene,
    sample_pass_text,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
Decode = Callable[[npt.NDArray[np.uint8]], list[str]]


@dataclass(frozen=True)
class Sample:
    path: pathlib.Path
    image: npt.NDArray[np.uint8] | None  # None: OpenCV cannot read the file
    expected: str | None  # None on false-positive images


def load_samples(dataset: pathlib.Path) -> list[Sample]:
    """Scored images of the dataset: those with an expected text, and all false-positive images."""
    samples = []
    for path in sorted(dataset.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        negative = path.parent.name.startswith("falsepositives")
        txt = path.with_suffix(".txt")
        if not negative and not txt.is_file():
            continue
        expected = None if negative else txt.read_bytes().decode("utf-8")
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        pixels = None if image is None else np.asarray(image, np.uint8)
        samples.append(Sample(path, pixels, expected))
    return samples


def _pyzbar_bare(image: npt.NDArray[np.uint8]) -> list[str]:
    from pyzbar import pyzbar

    return [s.data.decode("utf-8", "replace") for s in pyzbar.decode(image)]


def _ms_summary(times_ms: Sequence[float]) -> tuple[float, float]:
    if not times_ms:
        return 0.0, 0.0
    ordered = sorted(times_ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return round(statistics.median(ordered), 3), round(p95, 3)


def score(samples: Sequence[Sample], decode: Decode) -> dict[str, object]:
    """Run `decode` once on every readable sample and count the outcomes."""
    decoded = wrong = false_positives = 0
    missed: list[str] = []
    times: list[float] = []
    for s in samples:
        if s.image is None:
            continue
        start = time.perf_counter()
        texts = decode(s.image)
        times.append((time.perf_counter() - start) * 1000.0)
        if s.expected is None:
            false_positives += bool(texts)
        elif s.expected in texts:
            decoded += 1
        else:
            wrong += bool(texts)
            missed.append(f"{s.path.parent.name}/{s.path.name}")
    median_ms, p95_ms = _ms_summary(times)
    return {
        "total": sum(1 for s in samples if s.expected is not None),
        "decoded": decoded,
        "wrong": wrong,
        "false_positives": false_positives,
        "median_ms": median_ms,
        "p95_ms": p95_ms,
        "not_decoded": missed,
    }


def _variants() -> dict[str, Decode]:
    """Each decoder alone and the combinations, for the comparison in docs/decoding.md."""
    return {
        "zxing_only": QrDecoder(upscale_retry=False, pyzbar="never").decode,
        "zxing_upscale": QrDecoder(pyzbar="never").decode,
        "pyzbar_only": QrDecoder(zxing=False, pyzbar="always").decode,
        "zxing_then_pyzbar_always": QrDecoder(pyzbar="always").decode,
    }


def run_decode_bench(dataset: pathlib.Path, *, variants: bool = True) -> dict[str, object]:
    """Score the default `QrDecoder` on `dataset` against a bare `pyzbar.decode`.

    Times are wall-clock milliseconds per image, one call each, measured in
    this run on this machine; `bare_pyzbar_median_ms` is a plain
    ``pyzbar.decode(image)`` on the same images. With `variants`, each
    decoder alone and the other combinations are scored too.
    """
    samples = load_samples(dataset)
    decoder = QrDecoder()
    result = score(samples, decoder.decode)
    bare = score(samples, _pyzbar_bare)
    empty = [s.image for s in samples if s.expected is None and s.image is not None]
    result["bare_pyzbar_median_ms"] = bare["median_ms"]
    result["bare_pyzbar"] = {k: bare[k] for k in ("decoded", "wrong", "false_positives", "p95_ms")}
    result["unreadable_images"] = [
        f"{s.path.parent.name}/{s.path.name}" for s in samples if s.image is None
    ]
    result["empty_frame_median_ms"] = score(
        [Sample(pathlib.Path("."), e, None) for e in empty], QrDecoder().decode
    )["median_ms"]
    result["stages"] = dict(decoder.stats.by_stage)
    result["pyzbar_runs"] = decoder.stats.pyzbar_runs
    if variants:
        result["variants"] = {
            name: {k: v for k, v in score(samples, fn).items() if k != "not_decoded"}
            for name, fn in _variants().items()
        }
    return result


def _field_baselines() -> dict[str, Decode]:
    """Decoders compared with the chosen one on the same field frames."""
    return {
        # What the design card started from: one plain call on the BGR frame.
        "pyzbar": _pyzbar_bare,
        # zxing-cpp stage 1 alone: no upscale retry, no pyzbar fallback.
        "zxing_only": QrDecoder(upscale_retry=False, pyzbar="never").decode,
    }


def _rates(read: int, wrong: int, frames: int) -> dict[str, object]:
    return {
        "frames": frames,
        "read": read,
        "wrong": wrong,
        "read_rate": round(read / frames, 4) if frames else 0.0,
    }


def run_field_bench(n_per_condition: int, seed: int) -> dict[str, object]:
    """Read rate of the default `QrDecoder` on synthetic 640x480 gate frames.

    For each condition in `FIELD_CONDITIONS`, `n_per_condition` frames with
    distinct pass-like texts are rendered (deterministic from `seed`); a frame
    counts as read when its exact text is returned. Also reports wrong reads,
    the median/p95 decode time of code frames and of empty desk frames.

    ``baseline`` scores, on the very same frames, a plain ``pyzbar.decode``
    of the BGR frame and zxing-cpp alone (stage 1 of `QrDecoder`): per
    condition ``{"frames", "read", "wrong", "read_rate"}`` and ``overall``.
    Times are for the chosen decoder only.
    """
    decoder = QrDecoder()
    baselines = _field_baselines()
    per_condition: dict[str, dict[str, object]] = {}
    base_counts = {b: {name: [0, 0] for name in FIELD_CONDITIONS} for b in baselines}
    times: list[float] = []
    read_total = wrong_total = frames_total = 0
    for c_index, name in enumerate(FIELD_CONDITIONS):
        read = wrong = 0
        for i in range(n_per_condition):
            frame_seed = seed * 1_000_003 + c_index * 10_007 + i
            text = sample_pass_text(frame_seed)
            image = render_scene(text, condition_params(name, frame_seed))
            start = time.perf_counter()
            texts = decoder.decode(image)
            times.append((time.perf_counter() - start) * 1000.0)
            read += text in texts
            wrong += bool(texts) and text not in texts
            for b_name, b_decode in baselines.items():
                b_texts = b_decode(image)
                counts = base_counts[b_name][name]
                counts[0] += text in b_texts
                counts[1] += bool(b_texts) and text not in b_texts
        per_condition[name] = _rates(read, wrong, n_per_condition)
        read_total += read
        wrong_total += wrong
        frames_total += n_per_condition
    baseline: dict[str, dict[str, object]] = {}
    for b_name, by_condition in base_counts.items():
        rows: dict[str, object] = {
            name: _rates(r, w, n_per_condition) for name, (r, w) in by_condition.items()
        }
        rows["overall"] = _rates(
            sum(r for r, _ in by_condition.values()),
            sum(w for _, w in by_condition.values()),
            frames_total,
        )
        baseline[b_name] = rows
    empty_times = []
    for i in range(max(1, n_per_condition)):
        image = render_empty_frame(seed=seed + i)
        start = time.perf_counter()
        false_reads = decoder.decode(image)
        empty_times.append((time.perf_counter() - start) * 1000.0)
        wrong_total += bool(false_reads)
    median_ms, p95_ms = _ms_summary(times)
    empty_median, _ = _ms_summary(empty_times)
    return {
        "conditions": per_condition,
        "frames": frames_total,
        "read": read_total,
        "wrong": wrong_total,
        "read_rate": round(read_total / frames_total, 4) if frames_total else 0.0,
        "median_ms": median_ms,
        "p95_ms": p95_ms,
        "empty_frame_median_ms": empty_median,
        "stages": dict(decoder.stats.by_stage),
        "baseline": baseline,
    }


if __name__ == "__main__":
    # For the module's author; the user-facing entry point is `menwei bench`.
    if len(sys.argv) > 1 and sys.argv[1] == "field":
        n = int(sys.argv[2]) if len(sys.argv) > 2 else 50
        print(json.dumps(run_field_bench(n, 0), indent=2))
    else:
        default = pathlib.Path(__file__).resolve().parents[1].parent / "shared/datasets/qr-photos"
        print(
            json.dumps(
                run_decode_bench(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else default),
                indent=2,
                ensure_ascii=False,
            )
        )
