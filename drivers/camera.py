"""Camera frame sources: V4L2/GStreamer/video through OpenCV, and image folders.

Every source delivers `Frame`s through `read(timeout_s)`. Live cameras keep
only the newest frame (the gate loop must decide on what is in front of the
camera now, never on a backlog); finite sources (video files, image folders)
deliver every frame in order and then report `at_eof`. A video file plays at
its frame rate, as a camera would deliver it (`realtime=False`: as fast as
frames decode, for benchmarks).

A lost camera (unplugged USB, dead pipeline) raises `CameraError` from
`read()`; `SupervisedCamera` turns that into a state the gate can show and
reopens with exponential backoff, so a camera fault never ends the process.

cv2 is a hard dependency, but capture devices are opened only in
`OpenCVCamera`, so importing this module touches no hardware.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import cv2
import numpy as np
import numpy.typing as npt

from drivers.errors import CameraError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CameraState = Literal["ok", "lost", "recovering"]


@dataclass(frozen=True)
class Frame:
    """One camera frame: BGR uint8 pixels, monotonic capture time (s), running index.

    `meta` carries a sidecar's data when a simulator supplies it (for
    example a forehead temperature to go with the frame); None from cameras.
    """

    image: npt.NDArray[np.uint8]
    t: float
    index: int
    meta: dict[str, object] | None = None


@runtime_checkable
class FrameSource(Protocol):
    def read(self, timeout_s: float) -> Frame | None:
        """The next frame, or None if none arrived within `timeout_s` seconds."""
        ...

    @property
    def at_eof(self) -> bool:
        """True once a finite source has delivered its last frame."""
        ...

    def close(self) -> None: ...


class CaptureLike(Protocol):
    """The part of `cv2.VideoCapture` used here (a fake can stand in for tests)."""

    def isOpened(self) -> bool: ...
    def read(self) -> tuple[bool, Any]: ...
    def set(self, prop: int, value: float) -> bool: ...
    def get(self, prop: int) -> float: ...
    def release(self) -> None: ...


def gstreamer_available() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


class OpenCVCamera:
    """A camera, GStreamer pipeline or video file read through `cv2.VideoCapture`.

    `source` is a device index, a device path (``/dev/video0``), a GStreamer
    pipeline (any string containing ``!``; must end in ``appsink``) or a
    video file path. `width`/`height` (pixels) and `fps` are requested from
    live sources; what the driver granted is in `actual_width`,
    `actual_height`, `actual_fps`. A grabber thread reads continuously: for
    live sources it keeps only the newest frame and counts the others in
    `dropped`; for a video file it hands over every frame in order, with
    `realtime` one frame period apart at the least (the file's frame rate, or
    `fps` when the file has none: a simulated camera that keeps time), else as
    fast as the consumer takes them.

    Loss: `max_read_failures` consecutive failed reads, or no frame for
    `stall_s` seconds, put the camera in state "lost" and make `read()` raise
    `CameraError`; `reopen()` tries again. `capture_factory` replaces
    `cv2.VideoCapture` (tests).
    """

    def __init__(
        self,
        source: int | str,
        *,
        width: int = 640,
        height: int = 480,
        fps: float = 15.0,
        stall_s: float = 3.0,
        max_read_failures: int = 5,
        realtime: bool = True,
        clock: Callable[[], float] = time.monotonic,
        capture_factory: Callable[[], CaptureLike] | None = None,
    ) -> None:
        self.source = source
        self.width, self.height, self.fps = width, height, fps
        self.realtime = realtime
        self.stall_s = stall_s
        self.max_read_failures = max_read_failures
        self._clock = clock
        self._capture_factory = capture_factory
        self.finite = isinstance(source, str) and _is_video_file(source)
        self.dropped = 0
        self.actual_width = 0
        self.actual_height = 0
        self.actual_fps = 0.0
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._queue: deque[Frame] = deque()
        self._eof = False
        self._error: str | None = None
        self._last_frame_t = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cap: CaptureLike | None = None
        self._index = 0
        self._open()

    # -- lifecycle -------------------------------------------------------
    def _open(self) -> None:
        cap = self._capture_factory() if self._capture_factory else self._open_cv_capture()
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"cannot open camera source {self.source!r}")
        if not self.finite:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            cap.set(cv2.CAP_PROP_FPS, self.fps)
            # A driver-side queue would hand us stale frames; 1 where supported.
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self.actual_width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.actual_height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.actual_fps = float(cap.get(cv2.CAP_PROP_FPS))
        self._cap = cap
        self._error = None
        self._eof = False
        self._latest = None
        self._queue.clear()
        self._last_frame_t = self._clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._grab_loop, name="camera-grabber", daemon=True)
        self._thread.start()

    def _open_cv_capture(self) -> CaptureLike:
        src = self.source
        if isinstance(src, str) and "!" in src:
            if not gstreamer_available():
                raise CameraError(
                    "OpenCV was built without GStreamer (cv2.getBuildInformation() "
                    "says 'GStreamer: NO'); use a V4L2 device instead or install an "
                    "OpenCV build with GStreamer (e.g. python3-opencv from the OS)"
                )
            return cv2.VideoCapture(src, cv2.CAP_GSTREAMER)
        if self.finite:
            assert isinstance(src, str)
            return cv2.VideoCapture(src)
        api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        return cv2.VideoCapture(src, api)

    def reopen(self) -> None:
        """Release the capture and open it again; raises `CameraError` if that fails."""
        self._release()
        self._index = 0 if self.finite else self._index
        self._open()

    def _release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            with self._cond:
                self._cond.notify_all()
            self._thread.join(timeout=5.0)
        self._thread = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def close(self) -> None:
        self._release()

    def __enter__(self) -> OpenCVCamera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- grabbing --------------------------------------------------------
    def _grab_loop(self) -> None:
        cap = self._cap
        assert cap is not None
        failures = 0
        period = self._frame_period()
        due = self._clock()  # when the next frame of a paced file may be handed over
        while not self._stop.is_set():
            try:
                ok, image = cap.read()
            except cv2.error as exc:  # a dying backend may throw instead of returning False
                ok, image, err = False, None, str(exc)
            else:
                err = "read failed"
            if not ok or image is None:
                if self.finite:
                    with self._cond:
                        self._eof = True
                        self._cond.notify_all()
                    return
                failures += 1
                if failures >= self.max_read_failures:
                    with self._cond:
                        self._error = f"{failures} consecutive read failures ({err})"
                        self._cond.notify_all()
                    return
                time.sleep(0.01)
                continue
            failures = 0
            if period and self._stop.wait(max(0.0, due - self._clock())):
                return
            frame = Frame(np.ascontiguousarray(image, dtype=np.uint8), self._clock(), self._index)
            self._index += 1
            waited = False
            with self._cond:
                if self.finite:
                    # Deliver every frame of a file: wait for the consumer
                    # instead of dropping (bounded so memory stays small).
                    while len(self._queue) >= 4 and not self._stop.is_set():
                        waited = True
                        self._cond.wait(0.1)
                    self._queue.append(frame)
                else:
                    if self._latest is not None:
                        self.dropped += 1
                    self._latest = frame
                self._last_frame_t = frame.t
                self._cond.notify_all()
            # A paced clip keeps its timeline; after waiting for a slow consumer it resumes
            # one period later instead of catching up in a burst.
            due = (self._clock() if waited else due) + period

    def _frame_period(self) -> float:
        """Seconds between the frames of a paced video file; 0 when not paced."""
        if not (self.finite and self.realtime):
            return 0.0
        fps = self.actual_fps if 0 < self.actual_fps <= 1000 else self.fps
        return 1.0 / fps if fps > 0 else 0.0

    # -- consumer side ---------------------------------------------------
    @property
    def state(self) -> Literal["ok", "lost"]:
        return "lost" if self._error is not None else "ok"

    @property
    def at_eof(self) -> bool:
        with self._cond:
            return self.finite and self._eof and not self._queue

    def read(self, timeout_s: float) -> Frame | None:
        """The newest frame not yet returned (every frame for files), or None after `timeout_s`.

        Raises `CameraError` when the camera is lost (see class docstring).
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                if self._queue:
                    frame = self._queue.popleft()
                    self._cond.notify_all()
                    return frame
                if self._latest is not None:
                    frame, self._latest = self._latest, None
                    return frame
                if self._cap is None:
                    raise CameraError(f"camera {self.source!r} is closed")
                if (
                    self._error is None
                    and not self.finite
                    and (self._clock() - self._last_frame_t > self.stall_s)
                ):
                    self._error = f"no frame for more than {self.stall_s:g} s"
                if self._error is not None:
                    raise CameraError(f"camera {self.source!r} lost: {self._error}")
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    return None
                self._cond.wait(min(remaining, 0.1))


def _is_video_file(source: str) -> bool:
    return "!" not in source and not source.startswith("/dev/") and os.path.isfile(source)


class SupervisedCamera:
    """Keeps a frame source alive: reports its state and reopens it with backoff.

    `factory` opens a fresh source (raising `OSError`/`CameraError` on
    failure). After a loss the source is closed and reopened after
    `backoff_initial_s`, doubling up to `backoff_max_s` seconds while
    attempts fail. `read()` never raises for camera faults: it returns None
    and `state` / `last_error` say why. `clock`/`sleep` are injectable.
    """

    def __init__(
        self,
        factory: Callable[[], FrameSource],
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._factory = factory
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._clock = clock
        self._sleep = sleep
        self._source: FrameSource | None = None
        self._backoff = backoff_initial_s
        self._next_attempt = clock()
        self.state: CameraState = "recovering"
        self.last_error: str | None = None
        self.losses = 0
        self.open_attempts = 0
        self._closed = False

    @property
    def at_eof(self) -> bool:
        return self._source is not None and self._source.at_eof

    def read(self, timeout_s: float) -> Frame | None:
        if self._closed:
            return None
        if self._source is None and not self._try_open(timeout_s):
            return None
        assert self._source is not None
        try:
            frame = self._source.read(timeout_s)
        except OSError as exc:  # CameraError is an OSError
            self._lost(exc)
            return None
        self.state = "ok"
        return frame

    def _try_open(self, timeout_s: float) -> bool:
        wait = self._next_attempt - self._clock()
        if wait > 0:
            # Sleep out the caller's timeout (not longer) so a gate loop that
            # calls read() in a tight loop does not spin while we back off.
            self._sleep(min(wait, timeout_s))
            if self._next_attempt - self._clock() > 0:
                return False
        self.open_attempts += 1
        try:
            self._source = self._factory()
        except OSError as exc:
            self.state = "recovering"
            self.last_error = f"reopen failed: {exc}"
            self._schedule_retry()
            return False
        self._backoff = self.backoff_initial_s
        return True

    def _lost(self, exc: OSError) -> None:
        self.losses += 1
        self.state = "lost"
        self.last_error = str(exc)
        if self._source is not None:
            # The device may already be gone; there is nothing left to release.
            with contextlib.suppress(OSError):
                self._source.close()
            self._source = None
        self._backoff = self.backoff_initial_s
        self._next_attempt = self._clock() + self._backoff

    def _schedule_retry(self) -> None:
        self._backoff = min(self._backoff * 2, self.backoff_max_s)
        self._next_attempt = self._clock() + self._backoff

    @property
    def next_attempt_in_s(self) -> float:
        """Seconds until the next reopen attempt (0 when a source is open)."""
        return 0.0 if self._source is not None else max(0.0, self._next_attempt - self._clock())

    def close(self) -> None:
        self._closed = True
        if self._source is not None:
            self._source.close()
            self._source = None

    def __enter__(self) -> SupervisedCamera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImageFolderSource:
    """Image files of a folder as frames, in sorted name order.

    Suffixes: png, jpg, jpeg, webp, bmp (case-insensitive). A file OpenCV
    cannot decode is skipped and recorded in `errors` ("name: reason"). A
    sidecar ``<stem>.json`` holding a JSON object becomes `Frame.meta`.

    With `watch`, the folder is polled every `poll_s` seconds for new files
    (a simulator's "stage"); each file is consumed once: deleted with its
    sidecar when `delete`, otherwise remembered by name. Names are remembered
    only while their file is still in the folder (a watched stage at 15 fps
    would otherwise add 1.3 M names a day): an image that was deleted and is
    written again under the same name is a new frame. Writers should write
    the sidecar first, then the image under a temporary name (e.g. ``.tmp``)
    and rename it, so a half-written image is never read.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        watch: bool = False,
        delete: bool = False,
        poll_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = pathlib.Path(directory)
        if not self.directory.is_dir():
            raise CameraError(f"image folder {self.directory} does not exist")
        self.watch = watch
        self.delete = delete
        self.poll_s = poll_s
        self._clock = clock
        self._consumed: set[str] = set()
        self.errors: list[str] = []
        self._index = 0
        self._closed = False
        # A plain folder is a fixed sequence: list it once so at_eof is exact.
        self._pending: list[pathlib.Path] = [] if watch else self._scan()

    def _scan(self) -> list[pathlib.Path]:
        entries = list(self.directory.iterdir())
        # Forget files that are gone: the memory stays within what the folder holds.
        self._consumed.intersection_update(p.name for p in entries)
        return sorted(
            (
                p
                for p in entries
                if p.suffix.lower() in IMAGE_SUFFIXES
                and p.name not in self._consumed
                and p.is_file()
            ),
            key=lambda p: p.name,
        )

    @property
    def remembered(self) -> int:
        """Names of consumed files kept to skip them (at most the files in the folder)."""
        return len(self._consumed)

    @property
    def at_eof(self) -> bool:
        return not self.watch and not self._pending

    def read(self, timeout_s: float) -> Frame | None:
        deadline = time.monotonic() + timeout_s
        while not self._closed:
            if self.watch and not self._pending:
                self._pending = self._scan()
            while self._pending:
                frame = self._load(self._pending.pop(0))
                if frame is not None:
                    return frame
            if not self.watch:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(self.poll_s, remaining))
        return None

    def _load(self, path: pathlib.Path) -> Frame | None:
        self._consumed.add(path.name)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        sidecar = path.with_suffix(".json")
        meta = self._read_sidecar(sidecar)
        if self.delete:
            for p in (path, sidecar):
                p.unlink(missing_ok=True)
        if image is None:
            self.errors.append(f"{path.name}: not a readable image")
            return None
        frame = Frame(np.asarray(image, np.uint8), self._clock(), self._index, meta)
        self._index += 1
        return frame

    def _read_sidecar(self, sidecar: pathlib.Path) -> dict[str, object] | None:
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self.errors.append(f"{sidecar.name}: {exc}")
            return None
        if not isinstance(data, dict):
            self.errors.append(f"{sidecar.name}: not a JSON object")
            return None
        return data

    def close(self) -> None:
        self._closed = True
        self._pending = []

    def __enter__(self) -> ImageFolderSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_source(
    spec: str,
    *,
    width: int = 640,
    height: int = 480,
    fps: float = 15.0,
    delete: bool = False,
    realtime: bool = True,
) -> FrameSource:
    """Open a frame source from a config string.

    ``folder:PATH`` (images once, sorted), ``watch:PATH`` (poll for new
    images; `delete` removes them after reading), ``video:PATH`` (at its
    frame rate, else `fps`; `realtime` False: as fast as it decodes),
    ``device:N`` or ``/dev/videoN``, ``gst:PIPELINE`` (ends in appsink).
    Raises ValueError for an unknown spec, `CameraError` if opening fails.
    """
    kind, sep, rest = spec.partition(":")
    if spec.startswith("/dev/"):
        return OpenCVCamera(spec, width=width, height=height, fps=fps)
    if not sep or not rest:
        raise ValueError(f"camera source {spec!r}: expected KIND:VALUE or /dev/videoN")
    if kind == "folder":
        return ImageFolderSource(rest)
    if kind == "watch":
        return ImageFolderSource(rest, watch=True, delete=delete)
    if kind == "video":
        if not os.path.isfile(rest):
            raise CameraError(f"video file {rest} does not exist")
        return OpenCVCamera(rest, fps=fps, realtime=realtime)
    if kind == "device":
        if not rest.isdigit():
            raise ValueError(f"camera source {spec!r}: device:N takes a device index")
        return OpenCVCamera(int(rest), width=width, height=height, fps=fps)
    if kind == "gst":
        if "!" not in rest:
            raise ValueError(f"camera source {spec!r}: not a GStreamer pipeline (no '!')")
        return OpenCVCamera(rest, width=width, height=height, fps=fps)
    raise ValueError(
        f"camera source {spec!r}: unknown kind {kind!r} "
        "(folder, watch, video, device, gst, /dev/videoN)"
    )
