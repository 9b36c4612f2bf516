"""The gate's hot path at the limit: empty frames, frame → relay command, a gate at 15 fps.

Everything is measured in one run on this machine, each figure beside a bare baseline
measured in the same run (the machine may be shared: ratios travel, absolute times do not):

- ``empty_frame``: the gate's decoder (`drivers.qr.QrDecoder` as the gate builds it) and
  the like-for-like bare zxing-cpp call (``zxingcpp.read_barcodes`` on the same grey
  frame, QR Model 1/2 only, every other option at its default), on synthetic empty gate
  frames (`render_empty_frame`: desk, phone and wall backgrounds) at 640x480 and
  1280x720; the two calls alternate frame by frame so that load hits both alike, and the
  ratio is taken over each frame's fastest round (see `empty_frame_cost`).
- ``frame_to_relay``: a real `GateDaemon` (the real store with ``synchronous=FULL``, the
  real decoder, the real MLX90614 driver on the simulated I2C bus, the recording GPIO)
  gets a camera frame showing a valid pass on an entry (`handle_frame`); the time is
  from the call to the relay pin's change in the GPIO's history (monotonic clock). Once
  with the default settle (`[thermometer] samples = 3`, 0.1 s apart) and once without
  (`samples = 1`). ``baseline``: on the same frames, the frame to grey and the bare
  zxing-cpp call, plus one ``synchronous=FULL`` commit of an event-sized row (WAL): the
  least any gate must do before it moves the relay. ``settle_floor_ms`` is the wait the
  settle needs by its settings alone, (samples - 1) x interval_s.
- ``gate_run``: ``menwei gate run --until-eof`` as its own process on a ``video:`` clip
  of mostly empty 640x480 frames at 15 fps (played at its frame rate), with a passage
  every 5 s: CPU time per wall second (% of one core) over the steady part of the clip
  (from 2 s after it opened the clip to 1 s before its end) and the resident set size
  (``VmRSS``) there.

``load_average`` (1, 5, 15 minutes) at start and end says how busy the machine was.
The CLI (`menwei bench gate --json`) calls `run_gate_bench`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from drivers.camera import Frame
from drivers.gpio import FakePins
from drivers.qr import QrDecoder
from drivers.sim_scene import (
    FIELD_CONDITIONS,
    condition_params,
    render_empty_frame,
    render_scene,
)
from edge.config import GateConfig, load_config
from edge.daemon import GateDaemon
from edge.provision import provision
from edge.store import GateStore
from server.site import Site

SITE = "bench-site"
FPS = 15
EMPTY_SIZES = ((640, 480), (1280, 720))
PASSAGE_EVERY_S = 5.0
"""In the clip of the gate run: one passage (a card held up for a second) this often."""
FOREHEAD_C = 34.6
"""The simulated skin reading of every passage: about 36.7 °C body, a normal entry."""

Image = npt.NDArray[np.uint8]


class GateBenchError(RuntimeError):
    """A part of the gate benchmark did not run as it must (the message says which)."""


def _ms_percentiles(times_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(times_ms)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99)}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- empty frames -----------------------------------------------------------------------


def _bare_zxing() -> Callable[[Image], object]:
    import zxingcpp

    # As the gate passes them (drivers/qr.py): QR Model 1 and 2, no Micro QR or rMQR.
    formats: Any = (zxingcpp.BarcodeFormat.QRCodeModel1, zxingcpp.BarcodeFormat.QRCodeModel2)

    def read(gray: Image) -> object:
        return zxingcpp.read_barcodes(gray, formats=formats)

    return read


def empty_frame_cost(size: tuple[int, int], frames: int = 10, rounds: int = 10) -> dict[str, Any]:
    """The cost of an empty grey frame of `size` (width, height) to the gate's decoder and
    to the bare zxing-cpp call, alternating on the same frames, `rounds` times each.

    ``gate_ms``/``bare_zxing_ms``: medians of all calls. ``ratio`` (gate / bare): of the
    sums over the frames of each frame's fastest round, the least disturbed by other
    processes (load only ever adds time; on a shared machine the medians' ratio wanders by
    ±10 %, this one by ±2 %); ``ratio_of_medians`` beside it."""
    images = [
        np.ascontiguousarray(
            cv2.cvtColor(render_empty_frame(size=size, background=bg, seed=s), cv2.COLOR_BGR2GRAY),
            dtype=np.uint8,
        )
        for s in range(frames)
        for bg in ("desk", "phone", "wall")
    ]
    decoder = QrDecoder()
    bare = _bare_zxing()
    gate_ns: list[list[int]] = [[] for _ in images]
    bare_ns: list[list[int]] = [[] for _ in images]
    clock = time.perf_counter_ns
    for r in range(rounds):
        for i, image in enumerate(images):
            # Alternate which goes first so that neither gets the warmer cache every time.
            for which in ("gate", "bare") if r % 2 == 0 else ("bare", "gate"):
                t0 = clock()
                found = decoder.decode(image) if which == "gate" else bare(image)
                (gate_ns if which == "gate" else bare_ns)[i].append(clock() - t0)
                if found:
                    raise GateBenchError(f"an empty {size} frame read as {found!r}")
    gate_ms = statistics.median(t for ts in gate_ns for t in ts) / 1e6
    bare_ms = statistics.median(t for ts in bare_ns for t in ts) / 1e6
    fastest = sum(min(ts) for ts in gate_ns) / sum(min(ts) for ts in bare_ns)
    return {
        "frames": len(images),
        "rounds": rounds,
        "gate_ms": round(gate_ms, 4),
        "bare_zxing_ms": round(bare_ms, 4),
        "ratio": round(fastest, 3),
        "ratio_of_medians": round(gate_ms / bare_ms, 3),
        "gate_upscale_runs": decoder.stats.upscale_runs,
        "gate_pyzbar_runs": decoder.stats.pyzbar_runs,
    }


# --- frame → relay command --------------------------------------------------------------


def _site(work: Path, passes: int) -> list[str]:
    """A fresh site with `passes` resident passes (two per household); their QR texts."""
    texts = []
    with Site.init(work / "server", SITE) as site:
        for i in range(passes):
            household = f"{1 + i // 20}-1-{101 + (i // 2) % 10}"
            texts.append(site.issue_pass(household, f"住户{i}", room=household).qr)
    return texts


def _readable_frames(texts: Sequence[str], n: int) -> list[Image]:
    """`n` 640x480 frames of the field conditions, each showing one of `texts` that the
    gate's decoder reads (a frame it cannot read would be no passage to time)."""
    decoder = QrDecoder()
    conditions = list(FIELD_CONDITIONS)
    frames: list[Image] = []
    seed = 0
    while len(frames) < n:
        text = texts[len(frames) % len(texts)]
        image = render_scene(text, condition_params(conditions[seed % len(conditions)], seed))
        seed += 1
        if text in decoder.decode(image):
            frames.append(image)
        if seed > 20 * n:
            raise GateBenchError("the decoder reads too few rendered pass frames")
    return frames


def _gate_config(work: Path, name: str, samples: int) -> GateConfig:
    gate_dir = work / name
    provision(gate_dir, work / "server", name, "in", simulated=True)
    config = load_config(gate_dir / "gate.toml")
    return replace(config, thermometer=replace(config.thermometer, samples=samples))


class Passages:
    """A real `GateDaemon` on simulated hardware whose entries are timed (see the module)."""

    def __init__(self, config: GateConfig) -> None:
        self.daemon = GateDaemon(config, broker="none", out=io.StringIO())
        pins = self.daemon.hw.pins
        if not isinstance(pins, FakePins):
            self.daemon.close()
            raise GateBenchError("the bench gate must have simulated GPIO")
        self.pins = pins
        self.relay_pin = config.gpio.relay_pin
        self.released = not config.gpio.relay_active_low
        self.count = 0

    def entry_ms(self, image: Image) -> float:
        """Milliseconds from `handle_frame` to the relay pin's release; the frame must give
        an allowed entry."""
        daemon = self.daemon
        daemon.debouncer.reset()  # the next person: a new scan even with the same card
        mark = len(self.pins.history)
        t0 = time.monotonic()
        daemon.handle_frame(Frame(image, t0, self.count, {"forehead_c": FOREHEAD_C}))
        self.count += 1
        opened = [
            c.t
            for c in self.pins.history[mark:]
            if c.pin == self.relay_pin and c.value == self.released
        ]
        if not opened:
            last = daemon.recent[0] if daemon.recent else None
            raise GateBenchError(f"passage {self.count} did not open the gate: {last}")
        daemon.hw.relay.close_()  # locked again, so the next release is a pin change
        return (opened[0] - t0) * 1000.0

    def close(self) -> None:
        self.daemon.close()


class Baseline:
    """The floor under any gate: a bare zxing-cpp decode (the frame to grey, then the call
    the empty-frame figures compare with) and one ``synchronous=FULL`` commit (WAL) of an
    event-sized row."""

    def __init__(self, path: Path) -> None:
        self.read = _bare_zxing()
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        self.row = json.dumps({"kind": "decision", "reason": "ok", "pad": "x" * 600})

    def frame_ms(self, image: Image) -> float:
        t0 = time.perf_counter()
        found = self.read(np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), np.uint8))
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("INSERT INTO events (body) VALUES (?)", (self.row + str(bool(found)),))
        self.db.execute("COMMIT")
        return (time.perf_counter() - t0) * 1000.0

    def close(self) -> None:
        self.db.close()


def frame_to_relay(
    settling: GateConfig, quick: GateConfig, work: Path, frames: Sequence[Image], warmup: int = 3
) -> dict[str, list[float]]:
    """Per frame, ms: an entry at the gate with the settle, then, alternating on the same
    frame, one without it and the baseline (so that load hits both alike); `warmup` untimed
    entries first."""
    times: dict[str, list[float]] = {"with_settle": [], "without_settle": [], "baseline": []}
    untimed = [frames[i % len(frames)] for i in range(warmup)]
    with contextlib.closing(Passages(settling)) as gate:
        for image in untimed:
            gate.entry_ms(image)
        times["with_settle"] = [gate.entry_ms(image) for image in frames]
    with (
        contextlib.closing(Passages(quick)) as gate,
        contextlib.closing(Baseline(work / "baseline.db")) as floor,
    ):
        for image in untimed:
            gate.entry_ms(image)
            floor.frame_ms(image)
        for i, image in enumerate(frames):
            for which in ("gate", "floor") if i % 2 == 0 else ("floor", "gate"):
                if which == "gate":
                    times["without_settle"].append(gate.entry_ms(image))
                else:
                    times["baseline"].append(floor.frame_ms(image))
    return times


# --- a gate process at 15 fps -----------------------------------------------------------


def _write_clip(path: Path, texts: Sequence[str], seconds: float) -> int:
    """An MJPG clip at 15 fps of `seconds`: empty desk frames, and every PASSAGE_EVERY_S
    (from 2.5 s on) one second of a card. Returns the number of passages in it."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (640, 480))
    if not writer.isOpened():
        raise GateBenchError("OpenCV cannot write an MJPG clip here")
    passages = 0
    card: Image | None = None
    try:
        for i in range(round(seconds * FPS)):
            t = i / FPS
            phase = (t - 2.5) % PASSAGE_EVERY_S if t >= 2.5 else None
            if phase is not None and phase < 1.0:
                if card is None:
                    text = texts[passages % len(texts)]
                    card = render_scene(text, condition_params("tilted", passages))
                    passages += 1
                writer.write(card)
            else:
                card = None
                writer.write(render_empty_frame(seed=i))
    finally:
        writer.release()
    return passages


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _has_open(pid: int, path: Path) -> bool:
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd_dir / fd) == str(path) for fd in os.listdir(fd_dir))
    except OSError:
        return False


def gate_run(work: Path, texts: Sequence[str], seconds: float) -> dict[str, Any]:
    """`menwei gate run --until-eof` on a 15 fps clip: CPU % of a core and RSS (see module)."""
    gate_dir = work / "gate-run"
    provision(gate_dir, work / "server", "lane", "in", simulated=True)
    clip = (gate_dir / "clip.avi").resolve()
    passages = _write_clip(clip, texts, seconds)
    toml = gate_dir / "gate.toml"
    toml.write_text(toml.read_text().replace('source = "watch:stage"', 'source = "video:clip.avi"'))
    cmd = [sys.executable, "-m", "menwei.cli", "gate", "run", "--config", str(toml)]
    with open(work / "gate-run.out", "wb") as out:
        proc = subprocess.Popen(
            [*cmd, "--broker", "none", "--until-eof"], stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 120
            while not _has_open(proc.pid, clip):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise GateBenchError(f"the gate did not open its clip: {_tail(work)}")
                time.sleep(0.01)
            opened = time.monotonic()
            time.sleep(2.0)
            cpu0, wall0 = _cpu_s(proc.pid), time.monotonic()
            rss: list[float] = []
            while time.monotonic() < opened + seconds - 1.0 and proc.poll() is None:
                rss.append(_rss_mb(proc.pid))
                time.sleep(0.5)
            cpu1, wall1 = _cpu_s(proc.pid), time.monotonic()
            code = proc.wait(timeout=60 + seconds)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if code != 0:
        raise GateBenchError(f"menwei gate run exited {code}: {_tail(work)}")
    with GateStore(gate_dir / "gate.db") as store:
        events = [e.event for e in store.log()]
    return {
        "fps": FPS,
        "clip_s": seconds,
        "measured_s": round(wall1 - wall0, 2),
        "cpu_percent_of_a_core": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 1),
        "rss_mb": round(rss[-1], 1) if rss else None,
        "rss_max_mb": round(max(rss), 1) if rss else None,
        "passages_in_clip": passages,
        "allowed_entries": sum(1 for e in events if e.kind == "decision" and e.decision == "allow"),
    }


def _tail(work: Path) -> str:
    try:
        return (work / "gate-run.out").read_text(errors="replace")[-400:]
    except OSError:
        return ""


# --- the whole run ----------------------------------------------------------------------


def run_gate_bench(passages: int = 100, seconds: float = 20.0) -> dict[str, Any]:
    """All of the module docstring's figures from one run; raises GateBenchError when a part
    cannot run (a passage that does not open the gate, a gate process that fails)."""
    if passages < 1:
        raise GateBenchError("--passages must be positive")
    if seconds < 5:
        raise GateBenchError("--seconds must be at least 5 (2 s warm-up, 1 s tail)")
    start_load = _load()
    result: dict[str, Any] = {"cpus": os.cpu_count(), "load_average": {"start": start_load}}
    empty = {f"{w}x{h}": empty_frame_cost((w, h)) for w, h in EMPTY_SIZES}
    result["empty_frame"] = empty
    with tempfile.TemporaryDirectory(prefix="menwei-bench-gate-") as tmp:
        work = Path(tmp)
        texts = _site(work, 20)
        frames = _readable_frames(texts, passages)
        settling = _gate_config(work, "settle", 3)
        times = frame_to_relay(settling, _gate_config(work, "quick", 1), work, frames)
        t = settling.thermometer
        result["frame_to_relay"] = {
            "passages": passages,
            "with_settle": {
                "samples": t.samples,
                "interval_s": t.interval_s,
                "settle_floor_ms": round((t.samples - 1) * t.interval_s * 1000, 1),
                **_ms_percentiles(times["with_settle"]),
            },
            "without_settle": {"samples": 1, **_ms_percentiles(times["without_settle"])},
            "baseline": _ms_percentiles(times["baseline"]),
        }
        base = result["frame_to_relay"]["baseline"]
        result["frame_to_relay"]["without_settle_over_baseline"] = {
            k: round(result["frame_to_relay"]["without_settle"][k] / base[k], 3)
            for k in ("p50_ms", "p95_ms", "p99_ms")
        }
        result["gate_run"] = gate_run(work, texts, seconds)
    result["load_average"]["end"] = _load()
    return result


if __name__ == "__main__":
    # For the module's author; the user-facing entry point is `menwei bench gate`.
    print(json.dumps(run_gate_bench(int(sys.argv[1]) if len(sys.argv) > 1 else 100), indent=2))
