"""Camera sources: folders, a real video file, a fast fake capture, and loss/recovery."""

from __future__ import annotations

import itertools
import json
import threading
import time

import cv2
import numpy as np
import pytest

from drivers.camera import (
    Frame,
    FrameSource,
    ImageFolderSource,
    OpenCVCamera,
    SupervisedCamera,
    open_source,
)
from drivers.errors import CameraError


def _img(value: int, size: tuple[int, int] = (32, 24)) -> np.ndarray:
    return np.full((size[1], size[0], 3), value, np.uint8)


def _drain(src: FrameSource, limit: int = 100) -> list[Frame]:
    frames = []
    while not src.at_eof and len(frames) < limit:
        f = src.read(1.0)
        if f is not None:
            frames.append(f)
    return frames


def test_folder_sorted_order_sidecar_and_unreadable_file(tmp_path):
    for name, value in [("0003.png", 30), ("0001.png", 10), ("0002.jpg", 20)]:
        cv2.imwrite(str(tmp_path / name), _img(value))
    (tmp_path / "0002.json").write_text(json.dumps({"temperature_c": 36.6}))
    (tmp_path / "0001b.webp").write_bytes(b"not an image at all")
    (tmp_path / "notes.txt").write_text("ignored")

    with ImageFolderSource(tmp_path) as src:
        frames = _drain(src)
        assert src.at_eof
        assert src.read(0.0) is None
        assert [int(f.image[0, 0, 0]) // 5 * 5 for f in frames] == [10, 20, 30]
        assert [f.index for f in frames] == [0, 1, 2]
        assert [f.meta for f in frames] == [None, {"temperature_c": 36.6}, None]
        assert src.errors == ["0001b.webp: not a readable image"]


def test_watch_mode_consumes_each_new_file_once(tmp_path):
    src = open_source(f"watch:{tmp_path}")
    assert src.read(0.05) is None and not src.at_eof
    cv2.imwrite(str(tmp_path / "b.png"), _img(50))
    first = src.read(1.0)
    assert first is not None and first.index == 0
    assert src.read(0.1) is None  # not read twice
    (tmp_path / "a.json").write_text('{"temperature_c": 38.1}')
    (tmp_path / "a.tmp").write_bytes(cv2.imencode(".png", _img(90))[1].tobytes())
    (tmp_path / "a.tmp").rename(tmp_path / "a.png")  # atomic drop, as a simulator does
    second = src.read(1.0)
    assert second is not None and second.meta == {"temperature_c": 38.1}
    src.close()


def test_watch_remembers_only_the_names_of_files_still_in_the_folder(tmp_path):
    # Issue 12: every consumed name stayed in memory (~1.3 M a day at 15 fps).
    src = ImageFolderSource(tmp_path, watch=True, delete=True, poll_s=0.01)
    for i in range(30):
        cv2.imwrite(str(tmp_path / f"f{i:03}.png"), _img(i))
        frame = src.read(1.0)
        assert frame is not None and frame.index == i
    assert src.read(0.05) is None  # a poll: names of deleted files are forgotten
    assert src.remembered == 0
    cv2.imwrite(str(tmp_path / "f000.png"), _img(200))  # the same name, written again
    again = src.read(1.0)
    assert again is not None and again.index == 30
    src.close()

    keep = ImageFolderSource(tmp_path, watch=True, poll_s=0.01)  # not deleting: remembered
    cv2.imwrite(str(tmp_path / "k.png"), _img(7))
    assert keep.read(1.0) is not None
    assert keep.read(0.05) is None and keep.remembered == 1  # still there: not read again
    (tmp_path / "k.png").unlink()
    assert keep.read(0.05) is None and keep.remembered == 0
    keep.close()


def test_watch_delete_removes_image_and_sidecar(tmp_path):
    src = ImageFolderSource(tmp_path, watch=True, delete=True)
    cv2.imwrite(str(tmp_path / "x.png"), _img(10))
    (tmp_path / "x.json").write_text("{}")
    assert src.read(1.0) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _clip(path, n: int, fps: float) -> None:
    """An MJPG clip of `n` 64x48 frames whose grey level rises by 10 a frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened()
    for i in range(n):
        writer.write(_img(i * 10, (64, 48)))
    writer.release()


def test_video_file_delivers_every_frame_in_order_then_eof(tmp_path):
    path = tmp_path / "clip.avi"
    n = 25
    _clip(path, n, 10.0)

    cam = open_source(f"video:{path}", realtime=False)  # as fast as it decodes
    assert isinstance(cam, OpenCVCamera)
    time.sleep(0.2)  # let the grabber run ahead: a file must still not drop frames
    frames = _drain(cam)
    cam.close()
    assert cam.dropped == 0
    assert [f.index for f in frames] == list(range(n))
    # MJPG is lossy; the grey levels still rise frame by frame.
    levels = [int(f.image.mean()) for f in frames]
    assert all(abs(level - i * 10) <= 3 for i, level in enumerate(levels))
    assert (cam.actual_width, cam.actual_height) == (64, 48)


def test_video_file_plays_at_its_frame_rate(tmp_path):
    # Issue 12: a 15 fps clip ran at ~280 fps, merging distinct passages in the hold-off.
    path = tmp_path / "clip.avi"
    n, fps = 10, 20.0
    _clip(path, n, fps)
    opened = time.monotonic()
    cam = open_source(f"video:{path}")
    frames = _drain(cam)
    cam.close()
    assert [f.index for f in frames] == list(range(n))
    assert cam.actual_fps == pytest.approx(fps)
    # Frame k is handed over no sooner than k periods after the clip started.
    assert all(f.t - opened >= f.index / fps for f in frames)


def test_paced_video_does_not_burst_to_catch_up_after_a_slow_consumer(tmp_path):
    path = tmp_path / "clip.avi"
    n, fps = 12, 20.0
    _clip(path, n, fps)
    cam = open_source(f"video:{path}")
    assert cam.read(5.0) is not None
    time.sleep(1.0)  # the gate measures a temperature: the grabber fills its queue and waits
    frames = _drain(cam)
    cam.close()
    assert [f.index for f in frames] == list(range(1, n))
    # Frames 1-4 were queued on time; from frame 5 on the clip resumed at its rate.
    after = [f for f in frames if f.index >= 5]
    assert after[-1].t - after[0].t >= (len(after) - 1) / fps


class FastCapture:
    """A `cv2.VideoCapture` stand-in that produces frames as fast as it is asked."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.n = 0
        self.fail_after = fail_after
        self.props: dict[int, float] = {}
        self.released = False

    def isOpened(self) -> bool:
        return True

    def read(self):
        time.sleep(0.001)
        if self.fail_after is not None and self.n >= self.fail_after:
            return False, None
        self.n += 1
        return True, _img(self.n % 256, (8, 8))

    def set(self, prop, value):
        self.props[prop] = value
        return True

    def get(self, prop):
        return self.props.get(prop, 0.0)

    def release(self):
        self.released = True


def test_live_camera_keeps_only_latest_frame_and_counts_drops():
    fake = FastCapture()
    cam = OpenCVCamera(0, width=320, height=240, fps=30, capture_factory=lambda: fake)
    assert (cam.actual_width, cam.actual_height, cam.actual_fps) == (320, 240, 30.0)
    time.sleep(0.15)  # a slow gate loop
    frame = cam.read(1.0)
    assert frame is not None
    assert frame.index >= 20  # the newest, not the first one grabbed
    assert cam.dropped >= 20
    nxt = cam.read(1.0)
    assert nxt is not None and nxt.index > frame.index
    cam.close()
    cam.close()  # idempotent
    assert fake.released


def test_live_camera_read_failures_mean_lost():
    cam = OpenCVCamera(0, capture_factory=lambda: FastCapture(fail_after=3), max_read_failures=3)
    with pytest.raises(CameraError, match="consecutive read failures"):
        for _ in range(50):
            cam.read(0.1)
    assert cam.state == "lost"
    cam.close()


class FrozenCapture(FastCapture):
    """Opens, then blocks in read() forever: a wedged USB camera."""

    def __init__(self) -> None:
        super().__init__()
        self.release_event = threading.Event()

    def read(self):
        self.release_event.wait(2.0)
        return False, None

    def release(self):
        self.release_event.set()


def test_live_camera_stall_means_lost():
    cam = OpenCVCamera(0, capture_factory=FrozenCapture, stall_s=0.1)
    with pytest.raises(CameraError, match="no frame for more than"):
        for _ in range(20):
            cam.read(0.05)
    assert cam.state == "lost"
    cam.close()


def test_gstreamer_pipeline_without_gstreamer_is_reported(monkeypatch):
    import drivers.camera as camera

    monkeypatch.setattr(camera, "gstreamer_available", lambda: False)
    with pytest.raises(CameraError, match="without GStreamer"):
        open_source("gst:videotestsrc ! videoconvert ! appsink")


def test_open_source_rejects_unknown_specs(tmp_path):
    for bad in ["nonsense", "ftp:x", "device:abc", "gst:no pipeline here"]:
        with pytest.raises(ValueError):
            open_source(bad)
    with pytest.raises(CameraError):
        open_source(f"video:{tmp_path / 'missing.avi'}")


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


class FlakySource:
    """A source that raises after `frames_ok` frames (the camera was unplugged)."""

    def __init__(self, frames_ok: int) -> None:
        self.left = frames_ok
        self.closed = False

    def read(self, timeout_s):
        if self.left <= 0:
            raise CameraError("read failed: device unplugged")
        self.left -= 1
        return Frame(_img(1, (4, 4)), 0.0, 0)

    @property
    def at_eof(self):
        return False

    def close(self):
        self.closed = True


def test_supervised_camera_loss_backoff_and_recovery():
    clock = FakeClock()
    opened: list[FlakySource] = []
    attempts: list[float] = []
    fail_opens = 3

    def factory():
        attempts.append(clock.t)
        if len(attempts) == 1 or len(attempts) > 1 + fail_opens:
            opened.append(FlakySource(frames_ok=2))
            return opened[-1]
        raise CameraError("cannot open camera source 0")

    sup = SupervisedCamera(
        factory, backoff_initial_s=1.0, backoff_max_s=3.0, clock=clock, sleep=clock.sleep
    )
    history = []
    for _ in range(40):
        frame = sup.read(0.5)
        history.append((frame is not None, sup.state))
    assert history[:3] == [(True, "ok"), (True, "ok"), (False, "lost")]
    assert sup.losses >= 1 and opened[0].closed
    # First open, then loss at t=100 and reopen attempts 1 s, 2 s, 3 s (capped), 3 s apart.
    gaps = [b - a for a, b in itertools.pairwise(attempts[1:])]
    assert attempts[1] - 100.0 == pytest.approx(1.0)
    assert gaps[:3] == pytest.approx([2.0, 3.0, 3.0])
    assert (True, "ok") in history[3:]  # recovered and reading again
    assert "device unplugged" in (sup.last_error or "") or "cannot open" in (sup.last_error or "")
    sup.close()


def test_supervised_camera_reports_reopen_failure_without_raising():
    clock = FakeClock()

    def factory():
        raise CameraError("cannot open camera source '/dev/video9'")

    sup = SupervisedCamera(factory, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        assert sup.read(0.1) is None
    assert sup.state == "recovering"
    assert sup.last_error == "reopen failed: cannot open camera source '/dev/video9'"
