"""Drawing primitives: unit-square shapes, pattern fills, brand logos and print motifs."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

from PIL import Image, ImageDraw

from catalogclip.catalog.synth.world import RGB, Shape

Point = tuple[float, float]


@dataclass(frozen=True)
class Frame:
    """Maps unit-square coordinates to pixels of a `size`-pixel square, squeezing x
    around the centre by `width` (narrower cuts)."""

    size: float
    width: float = 1.0

    def point(self, p: Point) -> Point:
        return ((0.5 + (p[0] - 0.5) * self.width) * self.size, p[1] * self.size)

    def points(self, ps) -> list[Point]:
        return [self.point(p) for p in ps]

    def box(self, b) -> list[float]:
        (x0, y0), (x1, y1) = self.point(b[:2]), self.point(b[2:])
        return [x0, y0, x1, y1]

    def length(self, v: float) -> int:
        return max(1, round(v * self.size))


def shade(colour: RGB, factor: float) -> RGB:
    """Darker (factor < 1) version of a colour."""
    return tuple(int(c * factor) for c in colour)  # type: ignore[return-value]


def tint(colour: RGB, amount: float) -> RGB:
    """Mix a colour with white."""
    return tuple(int(c + (255 - c) * amount) for c in colour)  # type: ignore[return-value]


def luminance(colour: RGB) -> float:
    r, g, b = colour
    return 0.299 * r + 0.587 * g + 0.114 * b


def outline_colour(colour: RGB) -> RGB:
    # Black products get a grey edge so their outline still shows.
    return (85, 85, 85) if luminance(colour) < 40 else shade(colour, 0.55)


def draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, frame: Frame, fill=None, outline=None,
               width: int = 1) -> None:
    """Draw one shape; arcs and lines are strokes, so they take `fill` or `outline` as their colour."""
    kind = shape[0]
    if kind == "poly":
        draw.polygon(frame.points(shape[1]), fill=fill, outline=outline, width=width)
    elif kind == "ellipse":
        draw.ellipse(frame.box(shape[1]), fill=fill, outline=outline, width=width)
    elif kind == "rrect":
        draw.rounded_rectangle(frame.box(shape[1]), radius=shape[2] * frame.size, fill=fill, outline=outline,
                               width=width)
    elif kind == "arc":
        draw.arc(frame.box(shape[1]), shape[2], shape[3], fill=fill or outline, width=frame.length(shape[4]))
    elif kind == "line":
        draw.line(frame.points(shape[1]), fill=fill or outline, width=width, joint="curve")
    else:
        raise ValueError(f"unknown shape kind '{kind}'")


def pattern_fill(size: int, colour: RGB, pattern: str, period: int) -> Image.Image:
    """A `size`-pixel square of `colour` overlaid with `pattern` in a contrasting tone."""
    image = Image.new("RGB", (size, size), colour)
    draw = ImageDraw.Draw(image)
    second = shade(colour, 0.6) if luminance(colour) > 150 else tint(colour, 0.6)
    half = max(1, period // 2)
    if pattern == "stripes":
        for y in range(0, size, period):
            draw.rectangle([0, y, size, y + half - 1], fill=second)
    elif pattern == "checks":
        for row, y in enumerate(range(0, size, half)):
            for col, x in enumerate(range(0, size, half)):
                if (row + col) % 2:
                    draw.rectangle([x, y, x + half - 1, y + half - 1], fill=second)
    elif pattern == "dots":
        r = max(1, period // 5)
        for row, y in enumerate(range(half // 2, size + period, half)):
            offset = half // 2 if row % 2 else 0
            for x in range(offset, size + period, period):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=second)
    elif pattern != "solid":
        raise ValueError(f"unknown pattern '{pattern}'")
    return image


def _regular(cx: float, cy: float, r: float, n: int, start_deg: float = -90.0) -> list[Point]:
    return [(cx + r * math.cos(math.radians(start_deg + 360 * i / n)),
             cy + r * math.sin(math.radians(start_deg + 360 * i / n))) for i in range(n)]


def _star(cx: float, cy: float, r: float) -> list[Point]:
    outer, inner = _regular(cx, cy, r, 5), _regular(cx, cy, r * 0.45, 5, -90 + 36)
    return [p for pair in zip(outer, inner) for p in pair]


def draw_logo(draw: ImageDraw.ImageDraw, shape: str, colour: RGB, cx: float, cy: float, r: float) -> None:
    """A brand mark: `shape` in `colour` on a round plate that contrasts with it."""
    plate = (40, 40, 40) if luminance(colour) > 170 else (250, 250, 250)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=plate, outline=(120, 120, 120), width=max(1, round(r / 10)))
    s = r * 0.68
    if shape == "circle":
        draw.ellipse([cx - s, cy - s, cx + s, cy + s], fill=colour)
    elif shape == "ring":
        draw.ellipse([cx - s, cy - s, cx + s, cy + s], outline=colour, width=max(1, round(s * 0.35)))
    elif shape == "square":
        q = s * 0.8
        draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=colour)
    elif shape == "triangle":
        draw.polygon(_regular(cx, cy + s * 0.15, s * 1.05, 3), fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, cy - s), (cx + s * 0.7, cy), (cx, cy + s), (cx - s * 0.7, cy)], fill=colour)
    elif shape == "star":
        draw.polygon(_star(cx, cy, s * 1.05), fill=colour)
    elif shape == "hexagon":
        draw.polygon(_regular(cx, cy, s, 6, 0), fill=colour)
    elif shape == "cross":
        t = s * 0.32
        draw.rectangle([cx - s, cy - t, cx + s, cy + t], fill=colour)
        draw.rectangle([cx - t, cy - s, cx + t, cy + s], fill=colour)
    elif shape == "chevron":
        draw.polygon([(cx - s, cy - s * 0.6), (cx, cy + s * 0.1), (cx + s, cy - s * 0.6), (cx + s, cy + 0.1 * s),
                      (cx, cy + s * 0.8), (cx - s, cy + 0.1 * s)], fill=colour)
    else:
        raise ValueError(f"unknown logo shape '{shape}'")


# Print motifs: the everyday sense of each confounder word, drawn in a box of side `s`
# centred on (cx, cy). Each is a small picture of the thing, not a brand mark.

_INK = (45, 35, 30)


def _goose(d: ImageDraw.ImageDraw, cx: float, cy: float, s: float, w: int) -> None:
    gold, beak = (215, 165, 30), (240, 120, 20)
    d.polygon([(cx - 0.38 * s, cy + 0.12 * s), (cx - 0.5 * s, cy - 0.02 * s), (cx - 0.3 * s, cy + 0.06 * s)],
              fill=gold, outline=_INK, width=w)
    d.ellipse([cx - 0.42 * s, cy - 0.02 * s, cx + 0.26 * s, cy + 0.36 * s], fill=gold, outline=_INK, width=w)
    d.polygon([(cx + 0.08 * s, cy + 0.06 * s), (cx + 0.18 * s, cy - 0.34 * s), (cx + 0.28 * s, cy - 0.34 * s),
               (cx + 0.24 * s, cy + 0.1 * s)], fill=gold, outline=_INK, width=w)
    d.ellipse([cx + 0.14 * s, cy - 0.48 * s, cx + 0.34 * s, cy - 0.3 * s], fill=gold, outline=_INK, width=w)
    d.polygon([(cx + 0.32 * s, cy - 0.43 * s), (cx + 0.48 * s, cy - 0.38 * s), (cx + 0.32 * s, cy - 0.34 * s)],
              fill=beak)
    d.line([(cx - 0.1 * s, cy + 0.36 * s), (cx - 0.1 * s, cy + 0.48 * s)], fill=beak, width=w)
    d.line([(cx + 0.06 * s, cy + 0.36 * s), (cx + 0.06 * s, cy + 0.48 * s)], fill=beak, width=w)


def _dove(d: ImageDraw.ImageDraw, cx: float, cy: float, s: float, w: int) -> None:
    white, edge = (252, 252, 252), (110, 110, 120)
    d.line([(cx + 0.22 * s, cy + 0.02 * s), (cx + 0.46 * s, cy + 0.14 * s)], fill=(60, 130, 50), width=w * 2)
    d.polygon([(cx - 0.18 * s, cy), (cx - 0.46 * s, cy - 0.42 * s), (cx + 0.02 * s, cy - 0.06 * s)],
              fill=white, outline=edge, width=w)
    d.polygon([(cx - 0.02 * s, cy), (cx + 0.12 * s, cy - 0.46 * s), (cx + 0.16 * s, cy - 0.02 * s)],
              fill=white, outline=edge, width=w)
    d.ellipse([cx - 0.36 * s, cy - 0.08 * s, cx + 0.18 * s, cy + 0.16 * s], fill=white, outline=edge, width=w)
    d.polygon([(cx - 0.34 * s, cy + 0.04 * s), (cx - 0.5 * s, cy + 0.16 * s), (cx - 0.46 * s, cy - 0.04 * s)],
              fill=white, outline=edge, width=w)
    d.ellipse([cx + 0.1 * s, cy - 0.14 * s, cx + 0.28 * s, cy + 0.04 * s], fill=white, outline=edge, width=w)


def _cat(d: ImageDraw.ImageDraw, cx: float, cy: float, s: float, w: int, fur: RGB, spots: bool) -> None:
    for side in (-1, 1):
        d.polygon([(cx + side * 0.36 * s, cy - 0.12 * s), (cx + side * 0.4 * s, cy - 0.46 * s),
                   (cx + side * 0.1 * s, cy - 0.3 * s)], fill=fur, outline=_INK, width=w)
    d.ellipse([cx - 0.42 * s, cy - 0.36 * s, cx + 0.42 * s, cy + 0.42 * s], fill=fur, outline=_INK, width=w)
    if spots:
        for sx, sy in ((-0.24, -0.14), (0.24, -0.14), (-0.28, 0.16), (0.28, 0.16), (0.0, -0.26), (-0.1, 0.3),
                       (0.12, 0.3)):
            r = 0.05 * s
            d.ellipse([cx + sx * s - r, cy + sy * s - r, cx + sx * s + r, cy + sy * s + r], fill=_INK)
    d.ellipse([cx - 0.2 * s, cy - 0.08 * s, cx - 0.08 * s, cy + 0.02 * s], fill=(40, 120, 40))
    d.ellipse([cx + 0.08 * s, cy - 0.08 * s, cx + 0.2 * s, cy + 0.02 * s], fill=(40, 120, 40))
    d.polygon([(cx - 0.07 * s, cy + 0.1 * s), (cx + 0.07 * s, cy + 0.1 * s), (cx, cy + 0.19 * s)], fill=_INK)


def _apple(d: ImageDraw.ImageDraw, cx: float, cy: float, s: float, w: int) -> None:
    red = (205, 30, 35)
    d.line([(cx, cy - 0.2 * s), (cx + 0.04 * s, cy - 0.44 * s)], fill=(100, 60, 20), width=w * 2)
    d.ellipse([cx + 0.04 * s, cy - 0.46 * s, cx + 0.3 * s, cy - 0.32 * s], fill=(50, 150, 50))
    d.ellipse([cx - 0.42 * s, cy - 0.26 * s, cx + 0.06 * s, cy + 0.42 * s], fill=red)
    d.ellipse([cx - 0.06 * s, cy - 0.26 * s, cx + 0.42 * s, cy + 0.42 * s], fill=red)
    d.ellipse([cx - 0.24 * s, cy - 0.14 * s, cx - 0.12 * s, cy + 0.02 * s], fill=(240, 140, 140))


def _mango(d: ImageDraw.ImageDraw, cx: float, cy: float, s: float, w: int) -> None:
    body = [(cx + 0.44 * s * math.cos(t) * math.cos(0.6) - 0.3 * s * math.sin(t) * math.sin(0.6),
             cy + 0.44 * s * math.cos(t) * math.sin(0.6) + 0.3 * s * math.sin(t) * math.cos(0.6))
            for t in (2 * math.pi * i / 24 for i in range(24))]
    d.polygon(body, fill=(250, 165, 30), outline=(200, 90, 20), width=w)
    d.polygon([(cx - 0.2 * s, cy - 0.26 * s), (cx - 0.02 * s, cy - 0.48 * s), (cx + 0.06 * s, cy - 0.36 * s)],
              fill=(50, 140, 50))


def _shell(d: ImageDraw.ImageDraw, cx: float, cy: float, s: float, w: int) -> None:
    peach, edge = (245, 185, 150), (170, 100, 80)
    box = [cx - 0.46 * s, cy - 0.42 * s, cx + 0.46 * s, cy + 0.5 * s]
    d.pieslice(box, 200, 340, fill=peach, outline=edge, width=w)
    base = (cx, cy + 0.04 * s)
    for deg in range(205, 340, 22):
        angle = math.radians(deg)
        d.line([base, (base[0] + 0.44 * s * math.cos(angle), base[1] + 0.44 * s * math.sin(angle))], fill=edge, width=w)
    d.rectangle([cx - 0.08 * s, cy + 0.02 * s, cx + 0.08 * s, cy + 0.14 * s], fill=peach, outline=edge, width=w)


def _fossil(d: ImageDraw.ImageDraw, cx: float, cy: float, s: float, w: int) -> None:
    d.ellipse([cx - 0.44 * s, cy - 0.44 * s, cx + 0.44 * s, cy + 0.44 * s], fill=(205, 185, 145),
              outline=(110, 80, 50), width=w)
    spiral = [(cx + 0.42 * s * (1 - t / 40) * math.cos(t * 0.45), cy + 0.42 * s * (1 - t / 40) * math.sin(t * 0.45))
              for t in range(40)]
    d.line(spiral, fill=(110, 80, 50), width=w, joint="curve")


MOTIFS = {
    "goose": _goose,
    "dove": _dove,
    "puma": partial(_cat, fur=(195, 150, 95), spots=False),
    "jaguar": partial(_cat, fur=(235, 175, 50), spots=True),
    "apple": _apple,
    "mango": _mango,
    "shell": _shell,
    "fossil": _fossil,
}


def draw_motif(draw: ImageDraw.ImageDraw, word: str, cx: float, cy: float, s: float) -> None:
    try:
        motif = MOTIFS[word]
    except KeyError:
        raise ValueError(f"no print motif for '{word}' (known: {', '.join(sorted(MOTIFS))})") from None
    motif(draw, cx, cy, s, max(1, round(s / 40)))
