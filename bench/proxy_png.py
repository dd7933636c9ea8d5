"""A tiny PNG bar chart writer (pure Python + zlib; matplotlib is not installed here).

Draws one group of bars per metric (req/s, p50, p99, CPU us/request), one bar per target, each
scaled to the largest value of its group, with the target names and values written in a 3x5 pixel
font scaled up.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", " ": "000000000000000",
    "-": "000000111000000", ",": "000000000010100", "/": "001001010100100", ":": "000010000010000",
    "%": "101001010100101",
    "(": "010100100100010", ")": "010001001001010", "x": "000101010101000", "=": "000111000111000",
    "A": "010101111101101", "B": "110101110101110", "C": "011100100100011", "D": "110101101101110",
    "E": "111100110100111", "F": "111100110100100", "G": "011100101101011", "H": "101101111101101",
    "I": "111010010010111", "J": "001001001101010", "K": "101101110101101", "L": "100100100100111",
    "M": "101111111101101", "N": "110101101101101", "O": "010101101101010", "P": "110101110100100",
    "Q": "010101101110011", "R": "110101110101101", "S": "011100010001110", "T": "111010010010010",
    "U": "101101101101111", "V": "101101101101010", "W": "101101111111101", "X": "101101010101101",
    "Y": "101101010010010", "Z": "111001010100111", "_": "000000000000111",
}  # fmt: skip

PALETTE = [(52, 101, 164), (204, 0, 0), (78, 154, 6), (196, 160, 0), (117, 80, 123), (85, 87, 83)]


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def rect(self, x: int, y: int, w: int, h: int, color: tuple[int, int, int]) -> None:
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.width), min(y + h, self.height)
        if x1 <= x0:
            return
        row = bytes(color) * (x1 - x0)
        for yy in range(y0, y1):
            start = (yy * self.width + x0) * 3
            self.pixels[start : start + len(row)] = row

    def text(self, x: int, y: int, s: str, scale: int = 2, color: tuple[int, int, int] = (0, 0, 0)) -> None:
        for ch in s.upper():
            glyph = _FONT.get(ch, _FONT[" "])
            for i, bit in enumerate(glyph):
                if bit == "1":
                    self.rect(x + (i % 3) * scale, y + (i // 3) * scale, scale, scale, color)
            x += 4 * scale

    def png(self) -> bytes:
        raw = b"".join(
            b"\x00" + bytes(self.pixels[y * self.width * 3 : (y + 1) * self.width * 3]) for y in range(self.height)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        header = struct.pack("!IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
        )


def bar_chart(title: str, targets: Sequence[str], metrics: dict[str, Sequence[float]]) -> bytes:
    """``metrics``: metric name -> one value per target."""
    group_w = 60 + 70 * len(targets)
    width = 40 + group_w * len(metrics)
    height = 420
    c = Canvas(width, height)
    c.text(20, 12, title, scale=3)
    base = height - 90
    top = 70
    for g, (name, values) in enumerate(metrics.items()):
        gx = 30 + g * group_w
        c.text(gx, base + 14, name, scale=2)
        peak = max(values) or 1.0
        for i, value in enumerate(values):
            h = int((base - top) * value / peak)
            x = gx + i * 70
            c.rect(x, base - h, 50, h, PALETTE[i % len(PALETTE)])
            label = f"{value:.0f}" if value >= 100 else f"{value:.2f}"
            c.text(x, base - h - 14, label, scale=2)
        c.rect(gx - 5, base, group_w - 40, 2, (0, 0, 0))
    for i, name in enumerate(targets):  # legend
        x = 30 + i * 170
        c.rect(x, height - 40, 14, 14, PALETTE[i % len(PALETTE)])
        c.text(x + 20, height - 38, name, scale=2)
    return c.png()
