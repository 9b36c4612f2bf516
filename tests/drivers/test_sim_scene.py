"""The synthetic gate frames show what they claim: perspective, glare, dusk, a phone bezel."""

from __future__ import annotations

import cv2
import numpy as np

from drivers.sim_scene import condition_params, render_card_frame, render_scene, sample_pass_text


def test_tilt_is_true_perspective_near_edge_wider_than_far_edge():
    text = sample_pass_text(2)
    flat = render_card_frame(text, module_px=4.0, background="phone", seed=2)
    tilted = render_card_frame(text, module_px=4.0, tilt_deg=35.0, background="phone", seed=2)

    def edge_widths(frame: np.ndarray) -> tuple[int, int]:
        lit = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) > 150
        rows = np.flatnonzero(lit.any(axis=1))
        top, bottom = rows[0] + 3, rows[-1] - 3
        return int(lit[top].sum()), int(lit[bottom].sum())

    top, bottom = edge_widths(flat)
    assert abs(top - bottom) <= 3
    top, bottom = edge_widths(tilted)
    # Leaning back 35 degrees close to the wide-angle gate camera: the near
    # edge (top) is clearly wider than the far one, not the same as an affine
    # squash would leave it.
    assert top >= 1.15 * bottom, (top, bottom)


def test_glare_clips_part_of_the_code_to_white():
    text = sample_pass_text(3)
    plain = cv2.cvtColor(render_card_frame(text, seed=3), cv2.COLOR_BGR2GRAY)
    shiny = cv2.cvtColor(render_card_frame(text, glare=True, seed=3), cv2.COLOR_BGR2GRAY)
    clipped = shiny >= 250
    assert 100 <= int(clipped.sum()) <= 0.05 * shiny.size
    # Inside the clipped spot there were dark modules: they are lost, not just paler.
    assert int((plain[clipped] < 100).sum()) > 20


def test_dim_frames_have_low_contrast_and_noise():
    params = condition_params("dim", 4)
    gray = cv2.cvtColor(render_scene(sample_pass_text(4), params), cv2.COLOR_BGR2GRAY)
    lo, hi = np.percentile(gray, [1, 99])
    assert hi < 110 and hi - lo < 70, (lo, hi)
    flat = gray[:40, :40].astype(np.float32)  # background corner
    assert float((flat - cv2.GaussianBlur(flat, (9, 9), 0)).std()) > 1.5


def test_dark_mode_phone_has_a_bezel_darker_than_the_screen():
    frame = render_card_frame(
        sample_pass_text(5), module_px=4.0, inverted=True, background="phone", seed=5
    )
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    assert int(gray.min()) < 20 and int(gray.max()) > 180
