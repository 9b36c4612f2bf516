"""Printable pass cards: A4 sheets of 8 cards (2 × 4) with cut marks, and one PNG per card.

Each card carries the QR (segno, error level M exactly: the pass format is sized for QR
version ≤ 7 at M), the holder's masked name (张*明), building-unit-room, the validity (first
and last valid day) and a short instruction in zh and en. The PDF draws the QR as vector
squares, so it prints sharp at any printer resolution; Chinese text uses reportlab's built-in
CID font STSong-Light (no font file to ship; PDF viewers supply the glyphs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import segno

from protocol.register import mask_name
from server.site import Site
from server.storage import passes
from server.validity import from_text, until_text

INSTRUCTION_ZH = "请出示此码，测温后通行"
INSTRUCTION_EN = "Show this code at the gate"
CARDS_PER_PAGE = 8
COLUMNS, ROWS = 2, 4
MM = 72 / 25.4  # PDF points per millimetre
MARGIN_MM = 12.0
CUT_MARK_MM = 5.0
CJK_FONT = "STSong-Light"

# Fonts for the PNG cards (Pillow draws with a TrueType file, unlike the PDF). Debian:
# fonts-droid-fallback, fonts-noto-cjk or fonts-wqy-zenhei. Without one, the PNG card still
# has the QR and the ASCII lines.
_PNG_FONTS = (
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
)


@dataclass(frozen=True)
class Card:
    pass_id: int
    household: str
    display_name: str  # masked
    place: str
    valid_from: datetime
    valid_until: datetime  # exclusive
    qr: str

    def validity(self) -> str:
        """First and last valid day, `2026-12-01 ~ 2026-12-31`; a start or end during a day
        shows its local time instead (`2026-12-01 18:30`; server/validity.py). Read in the
        zone of `valid_until` (cards_for: the site's)."""
        tz = self.valid_until.tzinfo or UTC
        return f"{from_text(self.valid_from, tz)} ~ {until_text(self.valid_until, tz)}"


def cards_for(site: Site, household: str | None = None, at: datetime | None = None) -> list[Card]:
    """Cards of every unrevoked, unexpired resident/staff pass (optionally one household's)."""
    now = at or datetime.now(site.config.tz)
    tz: ZoneInfo = site.config.tz
    with site.store.read() as tx:
        held = passes.find(
            tx,
            household=household,
            ending_after=int(now.timestamp()),
            unrevoked=True,
            visitors=False,
        )
    return [
        Card(
            p.pass_id,
            p.household,
            mask_name(p.name),
            p.room,
            datetime.fromtimestamp(p.valid_from, tz),
            datetime.fromtimestamp(p.valid_until, tz),
            p.qr,
        )
        for p in held
    ]


def qr_symbol(text: str) -> segno.QRCode:
    # boost_error=False: the level stays M, so the version the pass format promises holds.
    return segno.make(text, error="m", boost_error=False)


# --- PDF ----------------------------------------------------------------------------------


def write_pdf(cards: Sequence[Card], path: Path) -> int:
    """A4 sheets of the cards; returns the number of pages."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen.canvas import Canvas

    if CJK_FONT not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont(CJK_FONT))
    width, height = A4
    canvas = Canvas(str(path), pagesize=A4, pageCompression=1)
    canvas.setTitle("Menwei pass cards")
    margin = MARGIN_MM * MM
    card_w = (width - 2 * margin) / COLUMNS
    card_h = (height - 2 * margin) / ROWS
    pages = 0
    for start in range(0, len(cards), CARDS_PER_PAGE):
        pages += 1
        _cut_marks(canvas, width, height, margin, card_w, card_h)
        for i, card in enumerate(cards[start : start + CARDS_PER_PAGE]):
            col, row = i % COLUMNS, i // COLUMNS
            x = margin + col * card_w
            y = height - margin - (row + 1) * card_h
            _draw_card(canvas, card, x, y, card_w, card_h)
        canvas.showPage()
    if pages == 0:  # an empty sheet says so rather than writing an invalid PDF
        canvas.setFont(CJK_FONT, 14)
        canvas.drawString(margin, height - margin - 14, "没有通行证 / No passes to print")
        canvas.showPage()
        pages = 1
    canvas.save()
    return pages


def _cut_marks(c: Any, width: float, height: float, m: float, cw: float, ch: float) -> None:
    """Short lines in the margins where the sheet is cut: across and down every card edge."""
    mark = CUT_MARK_MM * MM
    gap = 1.5 * MM  # marks stop short of the card so no line shows on it after cutting
    c.setLineWidth(0.3)
    for col in range(COLUMNS + 1):
        x = m + col * cw
        c.line(x, height - m + gap, x, height - m + gap + mark)
        c.line(x, m - gap, x, m - gap - mark)
    for row in range(ROWS + 1):
        y = m + row * ch
        c.line(m - gap, y, m - gap - mark, y)
        c.line(width - m + gap, y, width - m + gap + mark, y)


def _draw_card(c: Any, card: Card, x: float, y: float, w: float, h: float) -> None:
    pad = 4 * MM
    qr_size = min(h - 2 * pad, w * 0.5)
    symbol = qr_symbol(card.qr)
    border = 2
    modules = int(symbol.symbol_size(scale=1, border=border)[0])
    cell = qr_size / modules
    qy = y + (h - qr_size) / 2
    c.setFillGray(0)
    for r, line in enumerate(symbol.matrix_iter(scale=1, border=border)):
        for col, dark in enumerate(line):
            if dark:
                # Cells overlap a hair so no white seams show between them in viewers.
                c.rect(
                    x + pad + col * cell,
                    qy + qr_size - (r + 1) * cell,
                    cell + 0.05,
                    cell + 0.05,
                    stroke=0,
                    fill=1,
                )
    tx = x + pad + qr_size + 2 * MM
    avail = x + w - pad - tx
    ty = y + h - pad - 18
    for text, size in (
        (card.display_name, 18),
        (card.place or card.household, 13),
        ("有效期 Valid", 8),
        (card.validity(), 8),
        (f"No. {card.pass_id}", 8),
    ):
        _pdf_text(c, tx, ty, text, size, avail)
        ty -= size + 7
    _pdf_text(c, tx, y + pad + 11, INSTRUCTION_ZH, 8, avail)
    _pdf_text(c, tx, y + pad + 1, INSTRUCTION_EN, 8, avail)


def _pdf_text(c: Any, x: float, y: float, text: str, size: float, avail: float) -> None:
    """Latin in Helvetica, the rest in the CJK font (its Latin glyphs are poor), shrunk to
    fit `avail` points."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    runs = [(("Helvetica" if ascii_ else CJK_FONT), chunk) for ascii_, chunk in _runs(text)]
    width = sum(stringWidth(chunk, font, size) for font, chunk in runs)
    if width > avail:
        size *= avail / width
    for font, chunk in runs:
        c.setFont(font, size)
        c.drawString(x, y, chunk)
        x += stringWidth(chunk, font, size)


def _runs(text: str) -> list[tuple[bool, str]]:
    """Split text into runs of (is ASCII, chunk)."""
    runs: list[tuple[bool, str]] = []
    for ch in text:
        a = ch.isascii()
        if runs and runs[-1][0] == a:
            runs[-1] = (a, runs[-1][1] + ch)
        else:
            runs.append((a, ch))
    return runs


# --- PNG ----------------------------------------------------------------------------------


def write_png(card: Card, path: Path, scale: int = 6) -> None:
    """One card as a PNG (Pillow): the QR at `scale` pixels per module with a quiet zone of 4,
    and the card's text beside it."""
    from PIL import Image, ImageDraw, ImageFont

    symbol = qr_symbol(card.qr)
    border = 4
    modules = int(symbol.symbol_size(scale=1, border=border)[0])
    qr_px = modules * scale
    width, height = qr_px + 560, max(qr_px, 300)
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    for r, line in enumerate(symbol.matrix_iter(scale=1, border=border)):
        for col, dark in enumerate(line):
            if dark:
                x0, y0 = col * scale, (height - qr_px) // 2 + r * scale
                draw.rectangle((x0, y0, x0 + scale - 1, y0 + scale - 1), fill=0)
    cjk_path = next((p for p in _PNG_FONTS if Path(p).exists()), None)
    ty = 24
    for text, size in (
        (card.display_name, 40),
        (card.place or card.household, 30),
        (f"有效期 Valid {card.validity()}", 20),
        (f"No. {card.pass_id}", 20),
        (INSTRUCTION_ZH, 20),
        (INSTRUCTION_EN, 20),
    ):
        if cjk_path is None and not text.isascii():
            continue  # no CJK font installed: leave the line out rather than print boxes
        x = float(qr_px + 16)
        for ascii_, chunk in _runs(text):
            font = (
                ImageFont.load_default(size)
                if ascii_ or cjk_path is None
                else ImageFont.truetype(cjk_path, size)
            )
            draw.text((x, ty), chunk, fill=0, font=font)
            x += draw.textlength(chunk, font=font)
        ty += size + 14
    image.save(path, format="PNG")


def write_pngs(cards: Sequence[Card], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for card in cards:
        path = directory / f"pass-{card.pass_id}-{card.household}.png"
        write_png(card, path)
        paths.append(path)
    return paths
