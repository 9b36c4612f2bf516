"""Simulated residents: a population with real signed passes, and people walking up to gates.

Each visit renders the person's card (or phone screen) into camera frames
with field conditions (tilt, dark mode, glare, dim light, motion, JPEG) and
drops them into the gate's stage folder, with a sidecar giving the forehead
temperature the simulated MLX90614 will read. The gate reads them with real
OpenCV, zxing-cpp/pyzbar and the real sensor driver. Some people are refused
for real reasons: forged and foreign cards, an expired or revoked pass, a
fever, a shop's QR code.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from drivers.sim_scene import (
    FIELD_CONDITIONS,
    condition_params,
    render_card_frame,
    render_empty_frame,
    render_scene,
)
from protocol.passes import PassPayload, Role, sign_pass
from server.site import Site

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = [
    "伟",
    "芳",
    "娜",
    "敏",
    "静",
    "丽",
    "强",
    "磊",
    "军",
    "洋",
    "勇",
    "艳",
    "杰",
    "娟",
    "涛",
    "明",
]


@dataclass
class Resident:
    label: str
    qr: str
    body_c: float = 36.5
    inside: bool = True
    expect: str = "ok"  # what the gate should say at the first scan (for the demo's story)


@dataclass
class Population:
    residents: list[Resident] = field(default_factory=list)

    def pick(self, rng: random.Random, avoid: Resident | None) -> Resident:
        choices = [r for r in self.residents if r is not avoid] or self.residents
        return rng.choice(choices)


def build_population(site: Site, count: int, rng: random.Random) -> Population:
    """`count` genuine residents in households of 1-3, plus the refused cast."""
    pop = Population()
    household = 0
    while len(pop.residents) < count:
        household += 1
        building, unit, room = 1 + household // 20, 1 + household % 2, 101 + household
        hh = f"{building}-{unit}-{room}"
        for _ in range(rng.randint(1, 3)):
            name = rng.choice(SURNAMES) + "".join(rng.choices(GIVEN, k=rng.randint(1, 2)))
            issued = site.issue_pass(hh, name, room=hh)
            body = round(rng.uniform(36.0, 36.9), 1)
            pop.residents.append(Resident(f"resident {issued.pass_id}", issued.qr, body))
    now = datetime.now(site.config.tz)
    old = site.issue_pass(
        "9-9-901",
        "过期户",
        valid_from=now - timedelta(days=60),
        valid_until=now - timedelta(days=30),
    )
    revoked = site.issue_pass("9-9-902", "注销户")
    site.revoke_pass(revoked.pass_id, "moved out")
    fever = site.issue_pass("9-9-903", "发热者")
    forged_key, foreign_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    start, end = int(now.timestamp()) - 3600, int(now.timestamp()) + 86400
    forged = sign_pass(
        PassPayload(site.active_key_id(), 999_001, site.site, "9-9-904", Role.RESIDENT, start, end),
        forged_key,
    )
    foreign = sign_pass(
        PassPayload(77, 999_002, site.site, "9-9-905", Role.RESIDENT, start, end), foreign_key
    )
    pop.residents += [
        Resident("expired pass", old.qr, expect="expired"),
        Resident("revoked pass", revoked.qr, expect="revoked"),
        Resident("fever", fever.qr, body_c=38.4, inside=False, expect="fever"),
        Resident("forged card", forged, inside=False, expect="bad_signature"),
        Resident("foreign key", foreign, inside=False, expect="unknown_key"),
        Resident("shop QR", "HTTPS://SHOP.EXAMPLE/COUPON/42", inside=False, expect="malformed"),
    ]
    return pop


class GateStage:
    """Writes camera frames for one gate; one visit at a time, like a real lane."""

    AMBIENT_C = 24.0  # the simulated sensor's ambient (SimulatedMLX90614Bus default)

    def __init__(self, stage: Path, offset_c: float, per_ambient_c: float) -> None:
        self.stage = stage
        self.offset = offset_c + per_ambient_c * (25.0 - self.AMBIENT_C)
        self.counter = 0
        self.last: Resident | None = None

    def visit(self, person: Resident, rng: random.Random) -> str:
        direction = "out" if person.inside else "in"
        forehead = round(person.body_c - self.offset, 2)
        condition = rng.choice([*FIELD_CONDITIONS, "clean", "clean"])
        meta = {"forehead_c": forehead, "direction": direction, "who": person.label}
        self._drop(render_empty_frame(seed=rng.randrange(1 << 30)), {})
        for _ in range(rng.randint(2, 3)):  # the card is held up for a few frames: one scan
            seed = rng.randrange(1 << 30)
            if condition == "clean":
                image = render_card_frame(person.qr, module_px=4.5, seed=seed)
            else:
                image = render_scene(person.qr, condition_params(condition, seed))
            self._drop(image, meta)
        person.inside = not person.inside if person.expect == "ok" else person.inside
        self.last = person
        return direction

    def _drop(self, image: npt.NDArray[np.uint8], meta: dict[str, object]) -> None:
        self.counter += 1
        name = f"{self.counter:06d}"
        if meta:
            (self.stage / f"{name}.json").write_text(json.dumps(meta), encoding="utf-8")
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise RuntimeError("PNG encoding failed")
        tmp = self.stage / f".{name}.png.part"
        tmp.write_bytes(png.tobytes())
        os.replace(tmp, self.stage / f"{name}.png")  # atomic: never a half-written frame

    def wait_empty(self, timeout_s: float, stop: threading.Event) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and not stop.is_set():
            if not any(p.suffix == ".png" for p in self.stage.iterdir()):
                return True
            time.sleep(0.05)
        return False
