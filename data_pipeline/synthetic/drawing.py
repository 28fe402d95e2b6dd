"""Drawing primitives, colours and the `Family` record shared by the scene families.

A family draws one fact in its slot through a `Pen`, which maps slot coordinates (u across
the slot, v up from the floor line, both in slot widths) to pixels, so circles stay round
at every image size. Cue colours are fixed here: a cue must look the same in every scene.

    python -c "from data_pipeline.synthetic import drawing; print(drawing.COLOURS)"
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

from PIL import ImageDraw

S, A, H, T, P = range(5)  # category indices, as in reasonclip_jax.data.records.CATEGORIES
RGB = tuple[int, int, int]
Point = tuple[float, float]

COLOURS: dict[str, RGB] = {
    "red": (205, 45, 45), "blue": (45, 90, 210), "green": (45, 160, 70),
    "yellow": (240, 205, 40), "purple": (135, 65, 180), "orange": (240, 135, 35),
    "pink": (240, 135, 185), "white": (245, 245, 245), "teal": (30, 150, 150),
    "brown": (125, 80, 45), "grey": (128, 128, 128), "black": (40, 40, 40),
}
OBJECT_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "white", "teal")
WALLS: dict[str, RGB] = {
    "beige": (205, 185, 150), "light blue": (165, 190, 220), "pale green": (175, 205, 170),
    "grey": (175, 175, 180), "lavender": (190, 175, 210),
}
FLOORS: dict[str, RGB] = {
    "brown": (115, 80, 50), "dark grey": (85, 85, 90), "tan": (160, 130, 95),
    "dark green": (55, 95, 55),
}
# Colours of cues: fixed, because the cue must look the same in every scene.
OUTLINE = (30, 30, 30)
WHITE = (250, 250, 250)
WATER = (90, 160, 235)
FLAME = (255, 200, 50)
FLAME_CORE = (240, 110, 20)
SKIN = (240, 200, 160)
TROUSERS = (50, 50, 90)
WOOD = (110, 70, 40)
LEAF = (50, 150, 55)
SHADOW = (25, 25, 30)
GLASS = (225, 238, 245)
SAND = (225, 180, 80)


# ---------------------------------------------------------------------------------------
# Drawing in slot coordinates
# ---------------------------------------------------------------------------------------


def rotate(points: Sequence[Point], pivot: Point, degrees: float) -> list[Point]:
    """Rotates points counter-clockwise about pivot (v points up, so this is visual CCW)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    px, pv = pivot
    return [(px + (u - px) * c - (v - pv) * s, pv + (u - px) * s + (v - pv) * c) for u, v in points]


def translate(points: Sequence[Point], du: float, dv: float) -> list[Point]:
    return [(u + du, v + dv) for u, v in points]


class Pen:
    """Draws one fact in its slot: u runs across the slot (0..1), v runs up from the floor
    line, both measured in slot widths, so circles stay round at every image size."""

    def __init__(self, draw: ImageDraw.ImageDraw, left: float, ground: float, width: float,
                 size: float, shift: float):
        self.draw, self.left, self.ground, self.width = draw, left, ground, width
        self.size, self.shift = size, shift

    def xy(self, u: float, v: float) -> Point:
        u = 0.5 + (u - 0.5) * self.size + self.shift
        return self.left + u * self.width, self.ground - v * self.size * self.width

    def px(self, length: float) -> int:
        return max(1, round(length * self.size * self.width))

    def polygon(self, points: Sequence[Point], fill: RGB, outline: bool = True) -> None:
        self.draw.polygon([self.xy(u, v) for u, v in points], fill=fill,
                          outline=OUTLINE if outline else None,
                          width=self.px(0.035) if outline else 1)

    def rect(self, u0: float, v0: float, u1: float, v1: float, fill: RGB,
             outline: bool = True) -> None:
        self.polygon([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], fill, outline)

    def ellipse(self, cu: float, cv: float, ru: float, rv: float, fill: RGB,
                outline: bool = True) -> None:
        (x0, y0), (x1, y1) = self.xy(cu - ru, cv + rv), self.xy(cu + ru, cv - rv)
        self.draw.ellipse((x0, y0, x1, y1), fill=fill, outline=OUTLINE if outline else None,
                          width=self.px(0.035) if outline else 1)

    def circle(self, cu: float, cv: float, r: float, fill: RGB, outline: bool = True) -> None:
        self.ellipse(cu, cv, r, r, fill, outline)

    def line(self, points: Sequence[Point], fill: RGB, width: float = 0.05) -> None:
        self.draw.line([self.xy(u, v) for u, v in points], fill=fill, width=self.px(width),
                       joint="curve")

    def wave(self, u: float, v0: float, v1: float, fill: RGB, width: float = 0.05) -> None:
        """A vertical wavy line, for steam and smoke."""
        n = 8
        self.line([(u + 0.05 * math.sin(i * math.pi / 2), v0 + (v1 - v0) * i / n)
                   for i in range(n + 1)], fill, width)

    def arc(self, cu: float, cv: float, r: float, start: float, end: float, fill: RGB,
            width: float = 0.04) -> None:
        steps = [start + (end - start) * i / 6 for i in range(7)]
        self.line([(cu + r * math.cos(math.radians(a)), cv + r * math.sin(math.radians(a)))
                   for a in steps], fill, width)


Attrs = Mapping[str, str]


def rgb(attrs: Attrs, name: str) -> RGB:
    """The colour a fact's attribute names, e.g. rgb({"ball": "red"}, "ball")."""
    return COLOURS[attrs[name]]


def motion_lines(pen: Pen, u: float, v: float, du: float, dv: float) -> None:
    """Three parallel strokes from (u, v) along (du, dv): the trail of something moving."""
    n = math.hypot(du, dv)
    pu, pv = -dv / n, du / n
    for o in (-0.07, 0.0, 0.07):
        pen.line([(u + pu * o, v + pv * o), (u + du + pu * o, v + dv + pv * o)], OUTLINE, 0.03)


# ---------------------------------------------------------------------------------------
# A fact family
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Family:
    """A kind of fact: its visible states and what each state lets one infer.

    `states` holds (inference, evidence) templates over the fact's attributes; `describe`
    names the objects and their colours and must not depend on the state.
    """

    name: str
    category: int
    nouns: frozenset[str]  # two facts in one scene never share an object
    describe: str
    palettes: Mapping[str, tuple[str, ...]]
    states: tuple[tuple[str, str], ...]
    draw: Callable[[Pen, int, Attrs], None]

