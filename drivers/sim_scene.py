"""Synthetic gate-camera frames: a QR pass on a card or phone, seen by the gate camera.

The frames stand in for what a fixed gate camera (640x480 by default) sees when
a resident holds up a printed card or a phone screenshot: the code tilted
toward the lens, rotated in the hand, in glare or dusk light, slightly
moving, after the camera's JPEG compression. They feed the decode benchmark
and the tests, so every output is a pure function of the arguments (the
`seed` drives all randomness).

Geometry units are pixels of the output frame; angles are degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
Background = Literal["desk", "phone", "wall"]

# Characters of the QR alphanumeric mode; our passes are base45 text in this set.
ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"

# Pixels per module when the card is first drawn flat, before it is warped to
# the requested module size; high enough that resampling, not drawing, sets
# the final sharpness.
_DRAW_PX = 8
_QUIET_MODULES = 4
_INT_FIELDS = ("motion_blur_px", "jpeg_quality")
# Horizontal field of view of the gate camera: a wide-angle lens (about 95
# degrees, focal length ~290 px at 640 px width) so that a person standing at
# the lane can hold a card up to it at arm's length.
GATE_HFOV_DEG = 95.0

# A range (lo, hi) in a condition is sampled uniformly per frame; any other
# value is passed to `render_card_frame` as is.
ConditionValue = float | int | bool | str | tuple[float, float]

FIELD_CONDITIONS: dict[str, dict[str, ConditionValue]] = {
    # A card held close to the wide-angle gate camera, leaning back 30-35
    # degrees: true perspective, the near edge visibly wider than the far one.
    "tilted": {"tilt_deg": (30.0, 35.0), "module_px": (3.0, 4.5)},
    # Phone screenshot in dark mode: light modules on a dark screen, a black
    # bezel around it and moire from the screen's pixel grid.
    "dark_mode": {"inverted": True, "background": "phone", "module_px": (3.0, 4.5)},
    # A lamp or the sun reflecting off laminated card or phone glass: a
    # specular spot that clips part of the code to white.
    "glare": {"glare": True, "module_px": (3.0, 4.5)},
    # Dusk or a badly lit gate: little light, a veiling black level, amplified
    # sensor noise, then the camera's gamma.
    "dim": {"dim": True, "module_px": (3.0, 4.5)},
    # The hand is still moving when the frame is exposed: 3-6 px streak.
    "motion": {"motion_blur_px": (3.0, 6.0), "module_px": (3.5, 5.0)},
    # Heavy compression from a cheap USB/IP camera stream.
    "jpeg": {"jpeg_quality": (15.0, 35.0), "module_px": (3.0, 4.5)},
    # Card held far away: 2.0-2.6 pixels per module at 640x480.
    "small": {"module_px": (2.0, 2.6)},
}


def sample_pass_text(seed: int, length: int = 145) -> str:
    """A pass-like text: "MW1:" and base45 characters, `length` characters in total.

    145 alphanumeric characters at error level M need QR version 6, the size
    of a real Menwei pass; the content is random and carries no signature.
    """
    rng = np.random.default_rng(seed)
    body = "".join(ALNUM[int(i)] for i in rng.integers(0, len(ALNUM), size=length - 4))
    return "MW1:" + body


def qr_modules(text: str) -> npt.NDArray[np.bool_]:
    """The module matrix (True = dark) of `text` at error level M, without quiet zone."""
    import segno

    # boost_error=False keeps level M as a real pass generator would, so the
    # frames test the error-correction budget the passes really have.
    code = segno.make(text, error="m", micro=False, boost_error=False)
    return np.array(code.matrix, dtype=bool)


def _card(modules: npt.NDArray[np.bool_], inverted: bool, rng: np.random.Generator) -> Image:
    """The flat card (or phone screen) at `_DRAW_PX` px per module, gray."""
    n = modules.shape[0]
    q = (n + 2 * _QUIET_MODULES) * _DRAW_PX
    text_w = q // 2
    card_h = q + 4 * _DRAW_PX
    card_w = q + text_w + 2 * _DRAW_PX
    paper, ink = (25, 225) if inverted else (235, 30)
    card = np.full((card_h, card_w), paper, np.uint8)
    code = np.kron(modules.astype(np.uint8), np.ones((_DRAW_PX, _DRAW_PX), np.uint8))
    y0 = x0 = _QUIET_MODULES * _DRAW_PX + 2 * _DRAW_PX
    card[y0 : y0 + code.shape[0], x0 : x0 + code.shape[1]][code == 1] = ink
    # Lines of "printed text" (room number, validity, issuer) beside the code:
    # edges and small dark blobs that a detector must not take for finder patterns.
    tx = q + _DRAW_PX
    glyph = _DRAW_PX + _DRAW_PX // 2
    for row in range(6):
        ty = y0 + row * 3 * _DRAW_PX
        x = tx
        while x < card_w - 2 * _DRAW_PX:
            w = int(rng.integers(glyph // 2, glyph))
            cv2.rectangle(card, (x, ty), (x + w, ty + glyph), int(ink), -1)
            x += w + int(rng.integers(2, glyph))
    return card


def _background(size: tuple[int, int], kind: Background, rng: np.random.Generator) -> Image:
    w, h = size
    if kind == "phone":
        # Dark hand/phone body; the screen itself is the card.
        base = np.full((h, w), 45, np.float32)
    elif kind == "wall":
        base = np.full((h, w), 170, np.float32)
    else:
        # Wood-like desk: low-frequency grain plus fine texture.
        ys = np.arange(h, dtype=np.float32)[:, None]
        xs = np.arange(w, dtype=np.float32)[None, :]
        phase = float(rng.uniform(0, 2 * math.pi))
        grain = 20 * np.sin(ys / 7.0 + 3 * np.sin(xs / 60.0) + phase)
        base = 120 + grain + np.zeros((h, w), np.float32)
    fine = rng.normal(0, 6, (h // 4 + 1, w // 4 + 1)).astype(np.float32)
    base += cv2.resize(fine, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(base, 0, 255).astype(np.uint8)


def _card_homography(
    card_shape: tuple[int, int],
    module_px: float,
    tilt_deg: float,
    rotate_deg: float,
    centre: tuple[float, float],
    focal_px: float,
) -> npt.NDArray[np.float64]:
    """Homography from flat-card pixels to frame pixels.

    The card is scaled so one module is `module_px` frame pixels when seen
    face-on, turned in-plane by `rotate_deg`, then leaned back about its
    horizontal axis by `tilt_deg` and projected with a pinhole camera of focal
    length `focal_px` (frame pixels). A short focal length (wide-angle gate
    camera) means the card is close to the lens for a given module size, so
    the tilt foreshortens it with real perspective (the near edge is larger
    than the far one), not just an affine squash.
    """
    h, w = card_shape
    scale = module_px / _DRAW_PX
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    pts = (corners - [w / 2, h / 2]) * scale
    rot = math.radians(rotate_deg)
    c, s = math.cos(rot), math.sin(rot)
    pts = pts @ np.array([[c, s], [-s, c]])
    distance = focal_px  # puts the card's face-on scale at exactly `scale`
    tilt = math.radians(tilt_deg)
    xs = pts[:, 0]
    ys = pts[:, 1] * math.cos(tilt)
    zs = distance + pts[:, 1] * math.sin(tilt)
    proj = np.stack([focal_px * xs / zs + centre[0], focal_px * ys / zs + centre[1]], axis=1)
    return np.asarray(
        cv2.getPerspectiveTransform(corners.astype(np.float32), proj.astype(np.float32)),
        np.float64,
    )


def _glare(
    frame: npt.NDArray[np.float32],
    xs: npt.NDArray[np.float32],
    ys: npt.NDArray[np.float32],
    code_centre: tuple[float, float],
    code_px: float,
    rng: np.random.Generator,
) -> npt.NDArray[np.float32]:
    """A specular reflection on glossy laminate or glass, somewhere on the code.

    An elongated spot (a lamp seen in a curved card) whose core clips to
    white, dark modules included, with a soft halo that only lowers contrast.
    The core covers a few percent of the code: a reflection a person would
    not notice as "covering" the code.
    """
    gx = code_centre[0] + rng.uniform(-0.3, 0.3) * code_px
    gy = code_centre[1] + rng.uniform(-0.3, 0.3) * code_px
    sx = float(rng.uniform(0.09, 0.14)) * code_px
    sy = sx * float(rng.uniform(0.4, 0.8))
    a = float(rng.uniform(0, math.pi))
    u = (xs - gx) * math.cos(a) + (ys - gy) * math.sin(a)
    v = -(xs - gx) * math.sin(a) + (ys - gy) * math.cos(a)
    core = np.exp(-(u**2 / (2 * sx**2) + v**2 / (2 * sy**2)))
    halo = np.exp(-(u**2 / (2 * (3 * sx) ** 2) + v**2 / (2 * (3 * sy) ** 2)))
    return np.asarray(frame + core * float(rng.uniform(350, 450)) + halo * 70.0, np.float32)


def _dim(frame: npt.NDArray[np.float32], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Dusk light: the camera at its gain limit, gamma-encoded.

    The grey levels are taken back to linear light, scaled to the little
    light there is, lifted by a veiling black level (stray light, sensor
    offset), given shot and read noise amplified by the analogue gain, and
    gamma-encoded again: paper ends up around 60-80, ink around 30-35, with
    noise of a few grey levels.
    """
    linear = (np.clip(frame, 0, 255) / 255.0) ** 2.2
    light = float(rng.uniform(0.045, 0.07))
    black = float(rng.uniform(0.008, 0.014))
    signal = linear * light + black
    shot = rng.normal(0, 1, frame.shape).astype(np.float32) * np.sqrt(signal) * 0.02
    read = rng.normal(0, 0.0015, frame.shape).astype(np.float32)
    out = np.clip(signal + shot + read, 0, 1) ** (1 / 2.2) * 255.0
    return np.asarray(out, np.float32)


def _moire(
    frame: npt.NDArray[np.float32],
    screen: npt.NDArray[np.float32],
    xs: npt.NDArray[np.float32],
    ys: npt.NDArray[np.float32],
    rng: np.random.Generator,
) -> npt.NDArray[np.float32]:
    """Beating of the phone's pixel grid with the sensor's: faint bands on the screen."""
    a = float(rng.uniform(0, math.pi))
    period = float(rng.uniform(5.0, 12.0))
    phase = (xs * math.cos(a) + ys * math.sin(a)) * (2 * math.pi / period)
    depth = float(rng.uniform(0.06, 0.12))
    bands = 1.0 + depth * np.sin(phase) * (0.6 + 0.4 * np.sin(phase * 0.13))
    return np.asarray(frame * (1 - screen) + frame * bands * screen, np.float32)


def render_card_frame(
    text: str,
    *,
    size: tuple[int, int] = (640, 480),
    module_px: float = 4.0,
    tilt_deg: float = 0.0,
    rotate_deg: float = 0.0,
    inverted: bool = False,
    glare: bool = False,
    dim: bool = False,
    motion_blur_px: int = 0,
    jpeg_quality: int | None = None,
    noise: float = 0.0,
    background: Background = "desk",
    hfov_deg: float = GATE_HFOV_DEG,
    seed: int = 0,
) -> Image:
    """Render one BGR camera frame of `text` as a QR code on a card or phone screen.

    `size` is (width, height) in pixels; `module_px` the size of one QR module
    in frame pixels when the card faces the camera; `tilt_deg` leans the card
    back (0 = facing the camera); `rotate_deg` turns it in-plane; `inverted`
    draws light modules on a dark screen (phone dark mode); `glare` adds a
    specular spot on the code; `dim` renders dusk light (see `_dim`);
    `motion_blur_px` is the length of a linear motion streak in a random
    direction; `jpeg_quality` compresses the frame (None: not compressed);
    `noise` is the standard deviation of Gaussian sensor noise in grey levels;
    `background` "phone" puts the code on a phone screen with a black bezel
    and moire; `hfov_deg` is the camera's horizontal field of view, which sets
    the focal length and so how strongly a tilt shows as perspective. The card
    sits near the centre of the frame, shifted a little by `seed`.
    """
    rng = np.random.default_rng(seed)
    modules = qr_modules(text)
    card = _card(modules, inverted, rng)
    w, h = size
    focal_px = (w / 2) / math.tan(math.radians(hfov_deg) / 2)
    dx, dy = (float(v) for v in rng.uniform(-0.08, 0.08, size=2))
    centre = (w * (0.5 + dx), h * (0.5 + dy))
    screen_mask = np.full(card.shape, 255, np.uint8)
    if background == "phone":
        # The phone body: a black bezel around the screen, a few modules wide.
        pad = 3 * _DRAW_PX
        card = np.pad(card, pad, constant_values=8)
        screen_mask = np.pad(screen_mask, pad, constant_values=0)
    hom = _card_homography(card.shape[:2], module_px, tilt_deg, rotate_deg, centre, focal_px)
    frame = _background(size, background, rng).astype(np.float32)
    warped = cv2.warpPerspective(card, hom, size, flags=cv2.INTER_AREA).astype(np.float32)
    mask = cv2.warpPerspective(np.full(card.shape, 255, np.uint8), hom, size, flags=cv2.INTER_AREA)
    alpha = mask.astype(np.float32) / 255.0
    frame = frame * (1 - alpha) + warped * alpha
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    if background == "phone":
        screen = cv2.warpPerspective(screen_mask, hom, size, flags=cv2.INTER_AREA)
        frame = _moire(frame, screen.astype(np.float32) / 255.0, xs, ys, rng)
    # Uneven light across the frame is normal at a gate and defeats a single
    # global threshold, so every frame gets a gentle gradient.
    angle = float(rng.uniform(0, 2 * math.pi))
    ramp = (xs * math.cos(angle) + ys * math.sin(angle)) / max(w, h)
    frame *= 0.9 + 0.15 * ramp
    if glare:
        # The code's centre in the frame: the card is drawn with the code on
        # its left, so map the code's own centre through the homography.
        n = modules.shape[0]
        border = 3 * _DRAW_PX if background == "phone" else 0
        c0 = border + (_QUIET_MODULES + 2) * _DRAW_PX + n * _DRAW_PX / 2
        pt = hom @ np.array([c0, c0, 1.0])
        frame = _glare(frame, xs, ys, (pt[0] / pt[2], pt[1] / pt[2]), n * module_px, rng)
    if dim:
        frame = _dim(frame, rng)
    if motion_blur_px > 1:
        k = np.zeros((motion_blur_px, motion_blur_px), np.float32)
        k[motion_blur_px // 2, :] = 1.0 / motion_blur_px
        rot = cv2.getRotationMatrix2D(
            ((motion_blur_px - 1) / 2, (motion_blur_px - 1) / 2), float(rng.uniform(0, 180)), 1.0
        )
        k = np.asarray(cv2.warpAffine(k, rot, (motion_blur_px, motion_blur_px)), np.float32)
        k /= max(float(k.sum()), 1e-6)
        frame = np.asarray(cv2.filter2D(frame, -1, k), np.float32)
    if noise > 0:
        frame = frame + rng.normal(0, noise, frame.shape).astype(np.float32)
    gray = np.clip(frame, 0, 255).astype(np.uint8)
    bgr = np.asarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), np.uint8)
    # A faint colour cast so BGR input is not trivially gray.
    bgr = np.clip(bgr.astype(np.int16) + np.array([6, 0, -6], np.int16), 0, 255).astype(np.uint8)
    if jpeg_quality is not None:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if ok:
            bgr = np.asarray(cv2.imdecode(buf, cv2.IMREAD_COLOR), np.uint8)
    return np.ascontiguousarray(bgr, dtype=np.uint8)


def render_empty_frame(
    *, size: tuple[int, int] = (640, 480), background: Background = "desk", seed: int = 0
) -> Image:
    """A frame of the gate scene with nobody holding up a code (the common case)."""
    rng = np.random.default_rng(seed)
    gray = _background(size, background, rng)
    return np.ascontiguousarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), dtype=np.uint8)


@dataclass(frozen=True)
class SceneParams:
    """Keyword arguments of `render_card_frame` for one frame (see there for units)."""

    module_px: float = 4.0
    tilt_deg: float = 0.0
    rotate_deg: float = 0.0
    inverted: bool = False
    glare: bool = False
    dim: bool = False
    motion_blur_px: int = 0
    jpeg_quality: int | None = None
    noise: float = 0.0
    background: Background = "desk"
    seed: int = 0


def condition_params(name: str, seed: int) -> SceneParams:
    """Concrete parameters for one frame of the field condition `name`.

    Ranges in `FIELD_CONDITIONS` are sampled with `seed`; every frame also gets
    a random in-plane rotation (people hold cards at any angle) and light noise.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    values: dict[str, object] = {
        "rotate_deg": float(rng.uniform(-180, 180)),
        "noise": 2.0,
        "seed": seed,
    }
    for key, value in FIELD_CONDITIONS[name].items():
        if isinstance(value, tuple):
            sampled = float(rng.uniform(*value))
            values[key] = round(sampled) if key in _INT_FIELDS else sampled
        else:
            values[key] = value
    return replace(SceneParams(), **values)  # type: ignore[arg-type]


def render_scene(text: str, params: SceneParams, size: tuple[int, int] = (640, 480)) -> Image:
    """`render_card_frame` with `params` (a frame of a field condition)."""
    return render_card_frame(
        text,
        size=size,
        module_px=params.module_px,
        tilt_deg=params.tilt_deg,
        rotate_deg=params.rotate_deg,
        inverted=params.inverted,
        glare=params.glare,
        dim=params.dim,
        motion_blur_px=params.motion_blur_px,
        jpeg_quality=params.jpeg_quality,
        noise=params.noise,
        background=params.background,
        seed=params.seed,
    )
