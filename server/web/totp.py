"""The TOTP second factor (RFC 6238, through pyotp) and its one-time recovery codes.

A secret is 32 base32 characters (160 bits, RFC 4226's recommended length), shown once
as an `otpauth://` URI (a QR code for an authenticator app: Google Authenticator,
Microsoft Authenticator, FreeOTP, 腾讯身份验证器) and then kept only in the store. A code
is 6 digits for a 30 s time step; a code of the step before or after is accepted too
(a phone's clock a little off). Which step a code belongs to is what makes it single-use:
the store keeps the last accepted step and accepts only later ones.

Recovery codes are 16 random base32 characters (80 bits) shown once, as 4 groups of 4;
only their SHA-256 is kept (like session tokens: they are random, not chosen by people,
so a slow hash adds nothing).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import secrets
from datetime import datetime
from urllib.parse import parse_qs, urlsplit

import pyotp
import segno

STEP_S = 30
DIGITS = 6
DRIFT_STEPS = 1
RECOVERY_CODES = 8
_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # base32 without I, O, 0 and 1 (misread)
_CODE = re.compile(rf"\d{{{DIGITS}}}")


def new_secret() -> str:
    """A new base32 secret of 160 bits."""
    return pyotp.random_base32(32)


def uri(secret: str, account: str, site: str) -> str:
    """The `otpauth://totp/...` URI an authenticator app reads (issuer "Menwei SITE")."""
    return pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=f"Menwei {site}")


def secret_of(otpauth: str) -> str:
    """The secret of an otpauth URI, in groups of 4 (to type into an app by hand)."""
    secret = parse_qs(urlsplit(otpauth).query).get("secret", [""])[0]
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def qr_svg(text: str) -> str:
    """`text` as a QR code in an inline SVG element (no script, no external reference)."""
    return str(segno.make(text, error="m").svg_inline(scale=5, border=2))


def qr_terminal(text: str) -> str:
    """`text` as a QR code of block characters for a terminal (two rows per line)."""
    out = io.StringIO()
    segno.make(text, error="m").terminal(out=out, compact=True, border=2)
    return out.getvalue()


def is_code(text: str) -> bool:
    """Whether `text` (spaces ignored) has the shape of a TOTP code: 6 digits."""
    return _CODE.fullmatch(text.replace(" ", "")) is not None


def step_of(secret: str, code: str, now: datetime) -> int | None:
    """The time step (Unix time // 30) within DRIFT_STEPS of `now` whose code is `code`, or
    None. Compared in constant time."""
    code = code.replace(" ", "")
    if not _CODE.fullmatch(code):
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S)
    current = totp.timecode(now)
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def code_at(secret: str, when: datetime) -> str:
    """The code of `secret` at `when` (what the phone shows then)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S).at(when)


def new_recovery_codes(count: int = RECOVERY_CODES) -> list[str]:
    """`count` new recovery codes, `XXXX-XXXX-XXXX-XXXX`."""
    codes = []
    for _ in range(count):
        raw = "".join(secrets.choice(_ALPHABET) for _ in range(16))
        codes.append("-".join(raw[i : i + 4] for i in range(0, 16, 4)))
    return codes


def recovery_digest(code: str) -> str:
    """The SHA-256 (hex) a recovery code is stored as: case, spaces and dashes ignored."""
    canonical = re.sub(r"[\s-]", "", code).upper()
    return hashlib.sha256(canonical.encode()).hexdigest()
