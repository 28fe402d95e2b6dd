"""Procedural scenes whose reasoning captions follow from small visible cues.

The built-in synthetic data source: every image is a room with three "facts" side by
side (left, middle, right), one per reasoning category it shows. A fact belongs to a
family (a pot on a stove, a candle, a stick figure with a ball, ...) and is drawn in one
of that family's states (5 or 6 of them). The state is the visible cue; it decides the
inference caption ("the water in the pot is boiling") but never the descriptive caption,
which names only objects, colours and positions ("a red pot on a stove on the left").
Descriptive matching therefore cannot tell the states apart, while a model that looks at
the cue can.

Families, 4 per category (see FAMILIES):
    S  ball_box, light_shadow, block_stack, overlap_depth
    A  glass_level, pot_heat, ice_melt, plant_water
    H  ball_play, gait, bird, box_handling
    T  window_sky, candle, tree_season, hourglass
    P  bottle_spill, boulder_hill, brick_tower, plank_load

Benchmark sets (RCLIP-V2/V3 style, 5 per image, tags S/A/H/T/P): one per fact with the
bare inference as the correct caption, plus two more for two of the facts, chosen at
random, that state the evidence and the inference ("Strong flames heat the pot and steam
pours out, so the water in the pot is boiling."). The 4 negatives of a set are other
states of the same family, phrased the same way and naming the same objects, so every
negative is the correct caption of some other image and word overlap gives no hint.

Draw a contact sheet and print its captions:

    python -m data_pipeline.scenes --num 12 --seed 0 --size 64 --sheet /tmp/scenes.png
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

from PIL import Image, ImageDraw

from reasonclip_jax.records import CATEGORIES

S, A, H, T, P = range(5)
POSITIONS = ("on the left", "in the middle", "on the right")
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

GROUND = 0.8  # floor line, as a fraction of the image height


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
    return COLOURS[attrs[name]]


def motion_lines(pen: Pen, u: float, v: float, du: float, dv: float) -> None:
    """Three parallel strokes from (u, v) along (du, dv): the trail of something moving."""
    n = math.hypot(du, dv)
    pu, pv = -dv / n, du / n
    for o in (-0.07, 0.0, 0.07):
        pen.line([(u + pu * o, v + pv * o), (u + du + pu * o, v + dv + pv * o)], OUTLINE, 0.03)


# ---------------------------------------------------------------------------------------
# Fact families
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


# --- S: spatial / geometric ------------------------------------------------------------


def draw_ball_box(pen: Pen, state: int, a: Attrs) -> None:
    ball, box, r = rgb(a, "ball"), rgb(a, "box"), 0.17
    if state == 0:  # on top
        pen.rect(0.2, 0, 0.8, 0.6, box)
        pen.circle(0.5, 0.6 + r, r, ball)
    elif state == 1:  # beside, on the floor
        pen.rect(0.38, 0, 0.98, 0.6, box)
        pen.circle(0.18, r, r, ball)
    elif state == 2:  # hanging above
        pen.rect(0.2, 0, 0.8, 0.6, box)
        pen.line([(0.5, 2.3), (0.5, 1.4)], OUTLINE, 0.03)
        pen.circle(0.5, 1.4 - r, r, ball)
    elif state == 3:  # behind: the box hides part of the ball
        pen.circle(0.76, 0.42, r + 0.03, ball)
        pen.rect(0.1, 0.0, 0.7, 0.6, box)
    else:  # in front: the ball hides part of the box
        pen.rect(0.32, 0.15, 0.92, 0.75, box)
        pen.circle(0.36, r + 0.02, r + 0.02, ball)


BALL_BOX = Family(
    "ball_box", S, frozenset({"ball", "box"}), "a {ball} ball and a {box} box",
    {"ball": OBJECT_COLOURS, "box": OBJECT_COLOURS},
    (
        ("the box is holding the ball up, so the ball would drop if the box were pulled away",
         "the ball sits on top of the box"),
        ("the ball rests on the floor and would stay put if the box were moved",
         "the ball lies on the floor beside the box"),
        ("the ball is held up from above, not by the box",
         "a string holds the ball in the air above the box"),
        ("the ball is behind the box, farther from the viewer than the box",
         "the box hides the lower part of the ball"),
        ("the ball is in front of the box, closer to the viewer than the box",
         "the ball covers part of the box"),
    ),
    draw_ball_box,
)


def draw_light_shadow(pen: Pen, state: int, a: Attrs) -> None:
    if state == 4:  # light overhead: a small pool of shadow right under the post
        pen.ellipse(0.5, -0.08, 0.13, 0.08, SHADOW, outline=False)
    else:
        d = 1 if state in (0, 1) else -1
        length = 0.52 if state in (0, 2) else 0.27
        pen.polygon([(0.5 - d * 0.05, 0), (0.5 + d * length, 0), (0.5 + d * length, -0.16),
                     (0.5 - d * 0.05, -0.16)], SHADOW, outline=False)
    post = rgb(a, "post")
    pen.rect(0.45, 0, 0.55, 1.3, post)
    pen.circle(0.5, 1.38, 0.09, post)


LIGHT_SHADOW = Family(
    "light_shadow", S, frozenset({"post"}), "a {post} post standing on the floor",
    {"post": OBJECT_COLOURS},
    (
        ("the light comes from low down on the left of the post",
         "a long shadow stretches out to the right of the post"),
        ("the light comes from high up on the left of the post",
         "a short shadow falls to the right of the post"),
        ("the light comes from low down on the right of the post",
         "a long shadow stretches out to the left of the post"),
        ("the light comes from high up on the right of the post",
         "a short shadow falls to the left of the post"),
        ("the light is directly above the post",
         "the shadow is a small pool right under the post"),
    ),
    draw_light_shadow,
)

ORDERS = tuple(itertools.permutations(range(3)))  # the 6 orders of three things


def draw_block_stack(pen: Pen, state: int, a: Attrs) -> None:
    for level, (colour, offset) in enumerate(zip(ORDERS[state], (0.0, -0.05, 0.04), strict=True)):
        pen.rect(0.22 + offset, 0.45 * level, 0.78 + offset, 0.45 * (level + 1),
                 rgb(a, f"c{colour}"))


BLOCK_STACK = Family(
    "block_stack", S, frozenset({"block"}), "three blocks coloured {c0}, {c1} and {c2}",
    {"c0": OBJECT_COLOURS, "c1": OBJECT_COLOURS, "c2": OBJECT_COLOURS},
    tuple(
        (f"the {{c{b}}} block holds up the {{c{m}}} block, which holds up the {{c{t}}} block",
         f"the {{c{b}}} block is at the bottom and the {{c{t}}} block is on top")
        for b, m, t in ORDERS
    ),
    draw_block_stack,
)

SHAPES = ("circle", "square", "triangle")


def draw_overlap_depth(pen: Pen, state: int, a: Attrs) -> None:
    front_to_back = ORDERS[state]
    for shape in reversed(front_to_back):
        colour = rgb(a, SHAPES[shape])
        # Placed so that each pair overlaps somewhere the third shape does not cover.
        if shape == 0:
            pen.circle(0.65, 1.32, 0.24, colour)
        elif shape == 1:
            pen.rect(0.13, 1.1, 0.57, 1.54, colour)
        else:
            pen.polygon([(0.14, 1.2), (0.86, 1.2), (0.5, 0.6)], colour)


OVERLAP_DEPTH = Family(
    "overlap_depth", S, frozenset(SHAPES),
    "a {circle} circle, a {square} square and a {triangle} triangle",
    {s: OBJECT_COLOURS for s in SHAPES},
    tuple(
        (f"the {SHAPES[f]} is nearest to the viewer and the {SHAPES[b]} is farthest away",
         f"the {SHAPES[f]} covers parts of the {SHAPES[m]} and the {SHAPES[b]}")
        for f, m, b in ORDERS
    ),
    draw_overlap_depth,
)


# --- A: attribute / state --------------------------------------------------------------

GLASS_LEVELS = (1.0, 0.72, 0.48, 0.22, 0.0)


def draw_glass_level(pen: Pen, state: int, a: Attrs) -> None:
    pen.rect(0.28, 0, 0.72, 1.3, GLASS, outline=False)
    level = GLASS_LEVELS[state]
    if level:
        pen.rect(0.28, 0.04, 0.72, 0.04 + 1.2 * level, COLOURS["orange"], outline=False)
    pen.rect(0.28, 1.2, 0.72, 1.3, rgb(a, "rim"), outline=False)
    pen.line([(0.28, 1.3), (0.28, 0), (0.72, 0), (0.72, 1.3)], OUTLINE, 0.045)


GLASS_LEVEL = Family(
    "glass_level", A, frozenset({"glass", "juice"}), "a tall drinking glass with a {rim} rim",
    {"rim": ("red", "blue", "green", "purple", "pink", "teal")},
    (
        ("nobody has drunk any of the juice yet", "the glass is filled to the brim"),
        ("someone has taken a few sips of the juice", "the juice is a little below the rim"),
        ("about half of the juice has been drunk", "the glass is half full"),
        ("the juice is almost finished", "only a little juice is left at the bottom"),
        ("someone has finished all of the juice", "the glass is empty"),
    ),
    draw_glass_level,
)


def draw_pot_heat(pen: Pen, state: int, a: Attrs) -> None:
    pen.rect(0.12, 0, 0.88, 0.28, (60, 60, 65))
    if state == 1:  # just lit: a row of small blue flames
        for u in (0.32, 0.5, 0.68):
            pen.polygon([(u - 0.07, 0.28), (u + 0.07, 0.28), (u, 0.42)], (70, 120, 255), False)
    elif state in (2, 4):  # full heat
        for u in (0.32, 0.5, 0.68):
            pen.polygon([(u - 0.08, 0.28), (u + 0.08, 0.28), (u, 0.5)], FLAME_CORE, False)
            pen.polygon([(u - 0.04, 0.28), (u + 0.04, 0.28), (u, 0.42)], FLAME, False)
    pot = rgb(a, "pot")
    pen.rect(0.2, 0.5, 0.8, 1.05, pot)
    pen.rect(0.08, 0.9, 0.2, 0.97, pot)
    pen.rect(0.8, 0.9, 0.92, 0.97, pot)
    if state in (2, 3, 4):  # steam: strong while boiling, thinner once the heat is off
        columns = (0.32, 0.5, 0.68) if state != 3 else (0.4, 0.6)
        top = 2.0 if state != 3 else 1.6
        for u in columns:
            pen.wave(u, 1.15, top, WHITE, 0.06)
    if state == 4:  # boiling over: foam on the rim and running down the sides
        pen.ellipse(0.5, 1.07, 0.34, 0.07, WHITE, outline=False)
        for u in (0.25, 0.42, 0.7):
            pen.rect(u - 0.04, 0.62 + 0.1 * (u > 0.5), u + 0.04, 1.06, WHITE, outline=False)


POT_HEAT = Family(
    "pot_heat", A, frozenset({"pot", "stove"}), "a {pot} pot on a stove",
    {"pot": ("red", "blue", "green", "purple", "orange", "teal", "grey")},
    (
        ("the pot is cold and safe to touch", "the burner is off and nothing rises from the pot"),
        ("the water in the pot is only starting to warm up",
         "a small flame has just been lit and there is no steam yet"),
        ("the water in the pot is boiling", "strong flames heat the pot and steam pours out"),
        ("the pot is still hot even though the heat is off",
         "steam rises from the pot while the burner is off"),
        ("the pot is boiling over and the heat should be turned down",
         "foam runs down the sides of the pot above strong flames"),
    ),
    draw_pot_heat,
)

ICE_STAGES = ((0.5, 0.0), (0.4, 0.2), (0.3, 0.3), (0.17, 0.37), (0.0, 0.44))  # cube, puddle


def draw_ice_melt(pen: Pen, state: int, a: Attrs) -> None:
    cube, puddle = ICE_STAGES[state]
    pen.ellipse(0.5, 0.06, 0.46, 0.07, rgb(a, "plate"))
    if puddle:
        pen.ellipse(0.5, 0.1, puddle, 0.045, WATER, outline=False)
    if cube:
        pen.rect(0.5 - cube / 2, 0.1, 0.5 + cube / 2, 0.1 + cube, (200, 235, 250))
        pen.line([(0.5 - cube / 3, 0.1 + cube * 0.8), (0.5 + cube / 4, 0.1 + cube * 0.8)],
                 WHITE, 0.04)


ICE_MELT = Family(
    "ice_melt", A, frozenset({"plate", "ice"}), "a {plate} plate on the floor",
    {"plate": ("red", "yellow", "green", "purple", "orange", "pink")},
    (
        ("the ice has only just come out of the freezer",
         "the ice cube is whole and there is no water around it"),
        ("the ice has started to melt", "a small puddle has formed under the ice cube"),
        ("the ice has been melting for a while", "the ice cube has shrunk in a wide puddle"),
        ("the ice has almost melted away", "only a sliver of ice is left in the puddle"),
        ("the ice has melted completely", "only a puddle of water is left on the plate"),
    ),
    draw_ice_melt,
)


def draw_leaf(pen: Pen, u: float, v: float, degrees: float, colour: RGB, length: float = 0.22
              ) -> None:
    pen.polygon(rotate([(u, v), (u + length / 2, v + 0.06), (u + length, v),
                        (u + length / 2, v - 0.06)], (u, v), degrees), colour)


def draw_plant_water(pen: Pen, state: int, a: Attrs) -> None:
    if state == 4:  # overwatered: a puddle round the flowerpot
        pen.ellipse(0.5, -0.06, 0.48, 0.07, WATER, outline=False)
    pen.polygon([(0.3, 0), (0.7, 0), (0.76, 0.45), (0.24, 0.45)], rgb(a, "flowerpot"))
    pen.rect(0.26, 0.38, 0.74, 0.45, (70, 45, 25) if state != 4 else WATER, outline=False)
    if state == 0:  # a sprout
        pen.line([(0.5, 0.45), (0.5, 0.64)], LEAF, 0.04)
        draw_leaf(pen, 0.5, 0.64, 25, LEAF, 0.12)
        draw_leaf(pen, 0.5, 0.64, 155, LEAF, 0.12)
    elif state in (1, 4):  # upright; yellowing leaves when overwatered
        colour = LEAF if state == 1 else (215, 200, 60)
        pen.line([(0.5, 0.45), (0.5, 1.6)], colour, 0.05)
        for v in (0.8, 1.1, 1.4):
            draw_leaf(pen, 0.5, v, 35, colour)
            draw_leaf(pen, 0.5, v, 145, colour)
    elif state == 2:  # drooping
        colour = (150, 165, 60)
        stem = [(0.5, 0.45), (0.52, 1.0), (0.62, 1.3), (0.76, 1.25), (0.84, 1.0)]
        pen.line(stem, colour, 0.05)
        for (u, v), d in zip(stem[1:], (-110, -70, -100, -80), strict=True):
            draw_leaf(pen, u, v, d, colour, 0.2)
    else:  # dead: a bare brown stem, dry leaves on the floor
        pen.line([(0.5, 0.45), (0.5, 1.3)], (120, 85, 50), 0.05)
        pen.line([(0.5, 1.0), (0.66, 1.15)], (120, 85, 50), 0.035)
        for u in (0.1, 0.82):
            draw_leaf(pen, u, -0.05, 10, (140, 95, 45), 0.16)


PLANT_WATER = Family(
    "plant_water", A, frozenset({"plant", "flowerpot"}), "a plant in a {flowerpot} flowerpot",
    {"flowerpot": ("red", "blue", "purple", "orange", "pink", "white", "teal")},
    (
        ("the seed was planted only recently", "a tiny sprout pokes out of the soil"),
        ("the plant is healthy and well watered", "the plant's green leaves stand upright"),
        ("the plant needs water soon", "the plant's stem and leaves droop"),
        ("the plant has died from lack of water",
         "the plant's stem is brown and bare and dry leaves lie on the floor"),
        ("the plant has been given too much water",
         "water has spilled over onto the floor around the flowerpot"),
    ),
    draw_plant_water,
)


# --- H: human / creature action --------------------------------------------------------

STAND = {
    "head": (0.5, 1.5), "neck": (0.5, 1.33), "hip": (0.5, 0.78),
    "elbow_b": (0.42, 1.1), "hand_b": (0.4, 0.88), "elbow_f": (0.58, 1.1), "hand_f": (0.6, 0.88),
    "knee_b": (0.47, 0.4), "foot_b": (0.46, 0.0), "knee_f": (0.53, 0.4), "foot_f": (0.54, 0.0),
}  # facing right; _b is the limb further back, _f the one further forward


def pose(du: float = 0.0, dv: float = 0.0, **joints: Point) -> dict[str, Point]:
    """The standing pose with some joints moved, then the whole body shifted."""
    return {k: (u + du, v + dv) for k, (u, v) in {**STAND, **joints}.items()}


def draw_person(pen: Pen, j: Mapping[str, Point], shirt: RGB) -> None:
    for side in "bf":
        pen.line([j["hip"], j[f"knee_{side}"], j[f"foot_{side}"]], TROUSERS, 0.07)
    pen.line([j["neck"], j["hip"]], shirt, 0.13)
    for side in "bf":
        pen.line([j["neck"], j[f"elbow_{side}"], j[f"hand_{side}"]], shirt, 0.06)
    pen.circle(*j["head"], 0.13, SKIN)


def draw_ball_play(pen: Pen, state: int, a: Attrs) -> None:
    shirt, ball, r = rgb(a, "shirt"), rgb(a, "ball"), 0.1
    if state == 0:  # arm cocked back behind the head, ball in hand
        j = pose(-0.12, elbow_f=(0.42, 1.5), hand_f=(0.3, 1.66), elbow_b=(0.62, 1.3),
                 hand_b=(0.74, 1.36), foot_b=(0.36, 0), foot_f=(0.64, 0))
        draw_person(pen, j, shirt)
        pen.circle(0.18, 1.7, r, ball)
    elif state == 1:  # arm stretched forward, the ball flying away
        j = pose(-0.22, elbow_f=(0.64, 1.36), hand_f=(0.76, 1.44), foot_b=(0.38, 0),
                 foot_f=(0.62, 0))
        draw_person(pen, j, shirt)
        pen.circle(0.86, 1.8, r, ball)
        motion_lines(pen, 0.56, 1.8, 0.16, 0.0)
    elif state == 2:  # both hands up, the ball flying towards them
        j = pose(-0.22, elbow_b=(0.6, 1.5), hand_b=(0.66, 1.7), elbow_f=(0.66, 1.42),
                 hand_f=(0.74, 1.6))
        draw_person(pen, j, shirt)
        pen.circle(0.82, 2.0, r, ball)
        motion_lines(pen, 0.94, 2.06, 0.1, 0.05)
    elif state == 3:  # bent over, hand on the ball on the floor
        j = pose(-0.14, hip=(0.42, 0.78), neck=(0.76, 1.05), head=(0.88, 1.12),
                 elbow_b=(0.78, 0.6), hand_b=(0.84, 0.24), elbow_f=(0.86, 0.64),
                 hand_f=(0.92, 0.26), knee_b=(0.46, 0.4), knee_f=(0.5, 0.42))
        draw_person(pen, j, shirt)
        pen.circle(0.8, r, r, ball)
    else:  # kicking leg swung back behind the ball
        j = pose(-0.14, knee_f=(0.38, 0.42), foot_f=(0.2, 0.26), hand_b=(0.3, 1.05),
                 elbow_b=(0.4, 1.12), hand_f=(0.74, 1.05), elbow_f=(0.62, 1.12))
        draw_person(pen, j, shirt)
        pen.circle(0.66, r, r, ball)


BALL_PLAY = Family(
    "ball_play", H, frozenset({"person", "ball"}), "a person in {shirt} and a {ball} ball",
    {"shirt": OBJECT_COLOURS, "ball": OBJECT_COLOURS},
    (
        ("the person is about to throw the ball", "the person holds the ball high behind the head"),
        ("the person has just thrown the ball",
         "the ball flies away from the person's outstretched arm"),
        ("the person is about to catch the ball",
         "the ball flies towards the person's raised hands"),
        ("the person is picking the ball up", "the person bends down with a hand on the ball"),
        ("the person is about to kick the ball", "the person swings a leg back behind the ball"),
    ),
    draw_ball_play,
)


def draw_gait(pen: Pen, state: int, a: Attrs) -> None:
    shirt = rgb(a, "shirt")
    if state == 0:  # standing
        draw_person(pen, pose(), shirt)
    elif state == 1:  # a small step
        draw_person(pen, pose(knee_b=(0.44, 0.4), foot_b=(0.36, 0), knee_f=(0.58, 0.4),
                              foot_f=(0.64, 0), hand_b=(0.36, 0.9), hand_f=(0.66, 0.92)), shirt)
    elif state == 2:  # leaning forward in a wide stride
        draw_person(pen, pose(hip=(0.45, 0.74), neck=(0.62, 1.24), head=(0.7, 1.38),
                              knee_b=(0.28, 0.38), foot_b=(0.08, 0.2), knee_f=(0.7, 0.56),
                              foot_f=(0.66, 0.16), elbow_f=(0.76, 1.04), hand_f=(0.86, 1.22),
                              elbow_b=(0.46, 0.98), hand_b=(0.34, 1.1)), shirt)
        motion_lines(pen, 0.0, 1.0, 0.14, 0.0)
    elif state == 3:  # both feet off the floor, arms up
        pen.ellipse(0.5, -0.05, 0.2, 0.05, SHADOW, outline=False)
        draw_person(pen, pose(0, 0.45, knee_b=(0.38, 0.42), knee_f=(0.62, 0.42),
                              elbow_b=(0.38, 1.45), hand_b=(0.32, 1.62), elbow_f=(0.62, 1.45),
                              hand_f=(0.68, 1.62)), shirt)
    else:  # lying flat, asleep
        j = {"head": (0.12, 0.13), "neck": (0.26, 0.1), "hip": (0.58, 0.1),
             "elbow_b": (0.38, 0.06), "hand_b": (0.5, 0.05), "elbow_f": (0.38, 0.14),
             "hand_f": (0.5, 0.16), "knee_b": (0.76, 0.08), "foot_b": (0.94, 0.06),
             "knee_f": (0.76, 0.12), "foot_f": (0.94, 0.1)}
        draw_person(pen, j, shirt)
        for u, v, s in ((0.2, 0.45, 0.1), (0.34, 0.7, 0.14)):  # a "z z" rising
            pen.line([(u, v + s), (u + s, v + s), (u, v), (u + s, v)], OUTLINE, 0.035)


GAIT = Family(
    "gait", H, frozenset({"person"}), "a person in a {shirt} shirt",
    {"shirt": OBJECT_COLOURS},
    (
        ("the person is standing still", "the person stands upright with both feet together"),
        ("the person is walking at an easy pace", "the person takes a small step"),
        ("the person is running fast", "the person leans forward in a wide stride"),
        ("the person is jumping", "both of the person's feet are off the floor"),
        ("the person is asleep", "the person lies flat on the floor"),
    ),
    draw_gait,
)


def draw_bird(pen: Pen, u: float, v: float, colour: RGB, head_down: bool = False,
              wings_up: bool = False, beak_open: bool = False, scale: float = 1.35) -> None:
    """A bird facing right with its body centred at (u, v)."""
    at = lambda du, dv: (u + du * scale, v + dv * scale)
    pen.polygon([at(-0.14, 0), at(-0.3, 0.08), at(-0.28, -0.06)], colour)  # tail
    pen.ellipse(u, v, 0.17 * scale, 0.11 * scale, colour)
    hu, hv = (0.17, -0.06) if head_down else (0.15, 0.1)
    if beak_open:
        pen.polygon([at(hu + 0.05, hv + 0.02), at(hu + 0.17, hv + 0.1), at(hu + 0.07, hv)],
                    FLAME_CORE)
        pen.polygon([at(hu + 0.05, hv - 0.02), at(hu + 0.17, hv - 0.08), at(hu + 0.07, hv)],
                    FLAME_CORE)
    else:
        tip = (hu + 0.06, hv - 0.14) if head_down else (hu + 0.15, hv)
        pen.polygon([at(hu + 0.04, hv + 0.03), at(*tip), at(hu + 0.06, hv - 0.03)], FLAME_CORE)
    pen.circle(*at(hu, hv), 0.08 * scale, colour)
    pen.circle(*at(hu + 0.03, hv + 0.02), 0.018 * scale, OUTLINE, outline=False)
    if wings_up:
        pen.polygon([at(-0.08, 0.05), at(-0.2, 0.42), at(0.06, 0.06)], colour)
        pen.polygon([at(-0.02, 0.06), at(0.04, 0.4), at(0.1, 0.05)], colour)
    else:
        pen.ellipse(*at(-0.03, 0.01), 0.1 * scale, 0.05 * scale,
                    tuple(c * 3 // 4 for c in colour))  # type: ignore[arg-type]


def draw_bird_action(pen: Pen, state: int, a: Attrs) -> None:
    bird = rgb(a, "bird")
    if state in (1, 3, 4):  # a branch from the left edge
        pen.line([(0.0, 1.0), (0.85, 1.06)], WOOD, 0.07)
    if state == 0:  # flying
        draw_bird(pen, 0.5, 1.6, bird, wings_up=True)
    elif state == 1:  # perched, quiet
        pen.line([(0.46, 1.2), (0.46, 1.04)], OUTLINE, 0.03)
        draw_bird(pen, 0.46, 1.22, bird)
    elif state == 2:  # pecking at seeds on the floor
        pen.line([(0.4, 0.2), (0.38, 0.0)], OUTLINE, 0.03)
        draw_bird(pen, 0.4, 0.3, bird, head_down=True)
        for u in (0.7, 0.8, 0.9):
            pen.circle(u, 0.03, 0.03, (230, 200, 120))
    elif state == 3:  # sitting in a nest
        draw_bird(pen, 0.46, 1.26, bird)
        pen.polygon([(0.14, 1.3), (0.86, 1.3), (0.74, 1.04), (0.26, 1.04)], (150, 100, 50))
        pen.line([(0.18, 1.2), (0.82, 1.14)], WOOD, 0.03)
    else:  # singing: beak open, sound rising
        pen.line([(0.36, 1.2), (0.36, 1.04)], OUTLINE, 0.03)
        draw_bird(pen, 0.36, 1.22, bird, beak_open=True)
        for r in (0.1, 0.18, 0.26):
            pen.arc(0.72, 1.36, r, -40, 60, OUTLINE)


BIRD = Family(
    "bird", H, frozenset({"bird"}), "a {bird} bird",
    {"bird": ("red", "blue", "yellow", "purple", "orange", "white", "teal")},
    (
        ("the bird is flying away", "the bird's wings are spread high in the air"),
        ("the bird is sitting still and resting", "the bird perches quietly on a branch"),
        ("the bird is feeding", "the bird pecks at seeds on the floor"),
        ("the bird is keeping its eggs warm", "the bird sits in a nest on a branch"),
        ("the bird is singing", "the bird's beak is open and sound rises from it"),
    ),
    draw_bird_action,
)


def draw_box_handling(pen: Pen, state: int, a: Attrs) -> None:
    shirt, box = rgb(a, "shirt"), rgb(a, "box")
    if state == 0:  # leaning into the box, arms forward
        pen.rect(0.64, 0, 0.98, 0.5, box)
        draw_person(pen, pose(hip=(0.3, 0.72), neck=(0.5, 1.2), head=(0.58, 1.34),
                              elbow_b=(0.58, 0.92), hand_b=(0.64, 0.42), elbow_f=(0.6, 0.98),
                              hand_f=(0.64, 0.34), knee_b=(0.14, 0.36), foot_b=(0.04, 0.0),
                              knee_f=(0.3, 0.38), foot_f=(0.22, 0.0)), shirt)
    elif state == 1:  # box held high above the head
        draw_person(pen, pose(elbow_b=(0.38, 1.62), hand_b=(0.36, 1.98), elbow_f=(0.62, 1.62),
                              hand_f=(0.64, 1.98)), shirt)
        pen.rect(0.28, 1.98, 0.72, 2.32, box)
    elif state == 2:  # box held at the chest while stepping forward
        draw_person(pen, pose(-0.1, knee_b=(0.44, 0.4), foot_b=(0.34, 0), knee_f=(0.6, 0.4),
                              foot_f=(0.66, 0), elbow_b=(0.56, 0.98), hand_b=(0.66, 1.0),
                              elbow_f=(0.6, 1.02), hand_f=(0.7, 1.06)), shirt)
        pen.rect(0.56, 0.86, 0.92, 1.22, box)
    elif state == 3:  # sitting on the box
        pen.rect(0.25, 0, 0.65, 0.45, box)
        draw_person(pen, pose(hip=(0.42, 0.52), neck=(0.42, 1.08), head=(0.42, 1.25),
                              knee_b=(0.7, 0.52), foot_b=(0.72, 0.0), knee_f=(0.74, 0.56),
                              foot_f=(0.78, 0.0), elbow_b=(0.5, 0.76), hand_b=(0.66, 0.6),
                              elbow_f=(0.54, 0.8), hand_f=(0.7, 0.64)), shirt)
    else:  # standing on the box, one arm reaching up
        pen.rect(0.28, 0, 0.72, 0.45, box)
        draw_person(pen, pose(0, 0.45, elbow_f=(0.6, 1.6), hand_f=(0.66, 1.86)), shirt)


BOX_HANDLING = Family(
    "box_handling", H, frozenset({"person", "box"}), "a person in {shirt} and a {box} box",
    {"shirt": OBJECT_COLOURS, "box": OBJECT_COLOURS},
    (
        ("the person is pushing the box across the floor",
         "the person leans into the box with both hands"),
        ("the person is lifting the box above the head", "the person holds the box up high"),
        ("the person is carrying the box somewhere",
         "the person steps forward with the box held at the chest"),
        ("the person is taking a rest on the box", "the person sits on the box"),
        ("the person is trying to reach something high up",
         "the person stands on the box with an arm stretched up"),
    ),
    draw_box_handling,
)


# --- T: temporal / phase ---------------------------------------------------------------

SKIES = ((110, 170, 240), (235, 215, 150), (245, 150, 70), (120, 80, 150), (20, 25, 60))


def draw_window_sky(pen: Pen, state: int, a: Attrs) -> None:
    pen.rect(0.06, 0.55, 0.94, 1.95, SKIES[state], outline=False)
    if state == 0:
        pen.circle(0.5, 1.7, 0.12, (255, 230, 60), outline=False)
    elif state == 1:
        pen.circle(0.28, 1.12, 0.12, (255, 200, 60), outline=False)
    elif state == 2:
        pen.circle(0.5, 0.78, 0.16, (235, 80, 40), outline=False)
    elif state == 3:
        pen.circle(0.72, 1.6, 0.025, WHITE, outline=False)
    else:
        pen.circle(0.62, 1.55, 0.13, (240, 240, 210), outline=False)
        pen.circle(0.68, 1.6, 0.12, SKIES[4], outline=False)
        for u, v in ((0.2, 1.8), (0.32, 1.35), (0.84, 1.15), (0.45, 1.05)):
            pen.circle(u, v, 0.02, WHITE, outline=False)
    hills = (70, 140, 70) if state < 3 else (25, 55, 35)
    pen.polygon([(0.06, 0.55), (0.06, 0.8), (0.3, 0.9), (0.6, 0.78), (0.94, 0.88),
                 (0.94, 0.55)], hills, outline=False)
    frame = rgb(a, "frame")
    for u0, v0, u1, v1 in ((0.0, 0.5, 1.0, 0.6), (0.0, 1.9, 1.0, 2.0), (0.0, 0.5, 0.08, 2.0),
                           (0.92, 0.5, 1.0, 2.0)):
        pen.rect(u0, v0, u1, v1, frame)


WINDOW_SKY = Family(
    "window_sky", T, frozenset({"window"}), "a window with a {frame} frame",
    {"frame": ("white", "brown", "blue", "red", "green", "black")},
    (
        ("outside the window it is around midday", "the sun stands high in a bright blue sky"),
        ("outside the window it is late in the afternoon",
         "the sun is halfway down a pale yellow sky"),
        ("outside the window the sun is setting and evening is starting",
         "a red sun touches the hills in an orange sky"),
        ("outside the window the sun has just gone down",
         "the sky is purple with the first star"),
        ("outside the window it is the middle of the night",
         "the moon and stars shine in a dark sky"),
    ),
    draw_window_sky,
)

CANDLE_HEIGHTS = (1.35, 1.35, 0.75, 0.25, 0.75)


def draw_candle(pen: Pen, state: int, a: Attrs) -> None:
    colour, top = rgb(a, "candle"), 0.08 + CANDLE_HEIGHTS[state]
    if state == 3:  # a pool of melted wax round the stub
        pen.ellipse(0.5, 0.1, 0.3, 0.05, colour)
    pen.ellipse(0.5, 0.05, 0.34, 0.05, (150, 150, 155))
    pen.rect(0.4, 0.08, 0.6, top, colour)
    if state == 2:  # wax drips down the sides
        for u, v in ((0.4, 0.5), (0.6, 0.35)):
            pen.rect(u - 0.03, v, u + 0.03, top, colour)
    pen.line([(0.5, top), (0.5, top + 0.08)], OUTLINE, 0.025)
    if state in (1, 2, 3):
        pen.ellipse(0.5, top + 0.2, 0.09, 0.16, FLAME, outline=False)
        pen.ellipse(0.5, top + 0.15, 0.04, 0.08, FLAME_CORE, outline=False)
    elif state == 4:  # smoke from a wick that was just put out
        pen.wave(0.5, top + 0.1, top + 0.8, (110, 110, 115), 0.04)


CANDLE = Family(
    "candle", T, frozenset({"candle"}), "a {candle} candle on a dish",
    {"candle": ("red", "blue", "green", "purple", "white", "pink", "teal")},
    (
        ("the candle has not been lit yet", "the tall candle has a clean, unburnt wick"),
        ("the candle was lit only a short time ago", "the candle is still tall and has a flame"),
        ("the candle has been burning for a while",
         "the candle has burned halfway down and wax has dripped"),
        ("the candle will soon burn out", "only a short stub of candle is left under the flame"),
        ("the candle was blown out a moment ago", "a thin line of smoke rises from the wick"),
    ),
    draw_candle,
)

CANOPY_DOTS = ((0.3, 1.5), (0.45, 1.75), (0.62, 1.62), (0.7, 1.3), (0.4, 1.2), (0.55, 1.35),
               (0.25, 1.25), (0.74, 1.55))


def draw_tree_season(pen: Pen, state: int, a: Attrs) -> None:
    trunk = (105, 70, 40)
    if state == 4:  # snow on the floor
        pen.rect(0.0, -0.12, 1.0, 0.0, WHITE, outline=False)
    pen.rect(0.44, 0, 0.56, 1.1, trunk)
    if state == 4:  # bare branches with snow on them
        for end in ((0.2, 1.7), (0.8, 1.75), (0.5, 1.95)):
            pen.line([(0.5, 1.05), end], trunk, 0.05)
            pen.circle(*end, 0.05, WHITE, outline=False)
        return
    canopy = {0: (175, 215, 145), 1: (40, 130, 50), 2: (40, 130, 50), 3: (225, 120, 30)}[state]
    pen.ellipse(0.5, 1.48, 0.44, 0.5, canopy)
    dots = {0: (245, 150, 200), 2: (215, 30, 30)}.get(state)
    if dots:  # blossom or fruit
        for u, v in CANOPY_DOTS:
            pen.circle(u, v, 0.05, dots, outline=False)
    if state == 3:  # falling leaves
        for u, v in ((0.12, 0.7), (0.85, 0.4), (0.2, 0.2), (0.78, -0.04), (0.1, -0.04)):
            pen.polygon([(u - 0.05, v), (u, v + 0.04), (u + 0.05, v), (u, v - 0.04)],
                        (225, 120, 30), outline=False)


TREE_SEASON = Family(
    "tree_season", T, frozenset({"tree"}), "a tree",
    {},
    (
        ("the tree shows that it is spring", "the tree is covered in pink blossom"),
        ("the tree shows that it is early summer", "the tree is in full green leaf"),
        ("the tree shows that it is late summer and harvest time",
         "ripe red fruit hangs among the leaves"),
        ("the tree shows that it is autumn", "orange leaves are falling from the tree"),
        ("the tree shows that it is winter", "the tree is bare and snow covers the ground"),
    ),
    draw_tree_season,
)

SAND_LEFT = (0.95, 0.72, 0.5, 0.2, 0.0)  # fraction of the sand still in the top bulb


def draw_hourglass(pen: Pen, state: int, a: Attrs) -> None:
    top_bulb = [(0.3, 1.5), (0.7, 1.5), (0.5, 0.8)]
    bottom_bulb = [(0.3, 0.1), (0.7, 0.1), (0.5, 0.8)]
    pen.polygon(top_bulb, GLASS, outline=False)
    pen.polygon(bottom_bulb, GLASS, outline=False)
    left = SAND_LEFT[state]
    h = 0.7 * math.sqrt(left)  # sand height in the top cone (area grows with height squared)
    if h:
        w = 0.2 * h / 0.7
        pen.polygon([(0.5 - w, 0.8 + h), (0.5 + w, 0.8 + h), (0.5, 0.8)], SAND, outline=False)
        pen.line([(0.5, 0.8), (0.5, 0.1)], SAND, 0.025)
    g = 0.7 - h  # the bottom pile's height, so both cones together hold all the sand
    if g:
        w = 0.2 * g / 0.7
        pen.polygon([(0.3, 0.1), (0.7, 0.1), (0.7 - w, 0.1 + g), (0.3 + w, 0.1 + g)], SAND,
                    outline=False)
    pen.line(top_bulb + [top_bulb[0]], OUTLINE, 0.03)
    pen.line(bottom_bulb + [bottom_bulb[0]], OUTLINE, 0.03)
    frame = rgb(a, "frame")
    pen.rect(0.22, 1.5, 0.78, 1.6, frame)
    pen.rect(0.22, 0.0, 0.78, 0.1, frame)
    pen.rect(0.22, 0.1, 0.26, 1.5, frame)
    pen.rect(0.74, 0.1, 0.78, 1.5, frame)


HOURGLASS = Family(
    "hourglass", T, frozenset({"hourglass"}), "an hourglass with a {frame} frame",
    {"frame": ("brown", "black", "red", "blue", "green", "purple")},
    (
        ("the hourglass was turned over only a moment ago",
         "nearly all of the sand is still in the top"),
        ("about a quarter of the hourglass time has passed",
         "most of the sand is still in the top"),
        ("half of the hourglass time has passed",
         "the sand is split evenly between the top and the bottom"),
        ("the hourglass time is almost up", "only a little sand is left in the top"),
        ("the hourglass time has run out", "all of the sand has fallen to the bottom"),
    ),
    draw_hourglass,
)


# --- P: physical intuition -------------------------------------------------------------

BOTTLE = [(-0.08, 0), (0.08, 0), (0.08, 0.4), (0.035, 0.46), (0.035, 0.58), (-0.035, 0.58),
          (-0.035, 0.46), (-0.08, 0.4)]  # outline about its base centre, standing up


def draw_bottle_spill(pen: Pen, state: int, a: Attrs) -> None:
    bottle, table = rgb(a, "bottle"), rgb(a, "table")
    for u in (0.04, 0.5):
        pen.rect(u, 0, u + 0.06, 0.75, table)
    pen.rect(0.0, 0.75, 0.6, 0.85, table)
    if state == 0:  # upright in the middle of the table
        pen.polygon(translate(BOTTLE, 0.3, 0.85), bottle)
    elif state == 1:  # tipping at the edge, water pouring from the neck
        shape = rotate(translate(BOTTLE, 0.52, 0.85), (0.6, 0.85), -50)
        nu, nv = rotate([(0.52, 0.85 + 0.58)], (0.6, 0.85), -50)[0]
        pen.line([(nu, nv), (nu + 0.1, nv - 0.1), (nu + 0.12, 0.0)], WATER, 0.05)
        pen.ellipse(nu + 0.12, -0.04, 0.14, 0.04, WATER, outline=False)
        pen.polygon(shape, bottle)
    elif state == 2:  # lying on its side, the water already out
        pen.polygon([(0.3, 0.85), (0.6, 0.85), (0.6, 0.88), (0.3, 0.88)], WATER, outline=False)
        pen.line([(0.6, 0.86), (0.62, 0.4)], WATER, 0.03)
        pen.ellipse(0.66, -0.04, 0.18, 0.04, WATER, outline=False)
        pen.polygon(rotate(translate(BOTTLE, 0.1, 0.93), (0.1, 0.93), -90), bottle)
    elif state == 3:  # in the air beside the table
        pen.polygon(rotate(translate(BOTTLE, 0.78, 0.3), (0.78, 0.5), -60), bottle)
        for u in (0.68, 0.78, 0.88):
            pen.line([(u, 0.9), (u, 1.15)], OUTLINE, 0.03)
    else:  # broken on the floor in a puddle
        pen.ellipse(0.74, -0.06, 0.26, 0.07, WATER, outline=False)
        for u, d in ((0.56, 20), (0.7, -30), (0.84, 60), (0.76, 150), (0.62, 100)):
            pen.polygon(rotate([(u, 0.0), (u + 0.12, 0.02), (u + 0.04, 0.13)], (u, 0), d), bottle)


BOTTLE_SPILL = Family(
    "bottle_spill", P, frozenset({"bottle", "table"}), "a {bottle} bottle and a {table} table",
    {"bottle": ("green", "blue", "teal", "purple", "red"),
     "table": ("brown", "white", "yellow", "orange")},
    (
        ("the bottle is steady and nothing will spill",
         "the bottle stands upright in the middle of the table"),
        ("the water is starting to spill out of the bottle",
         "the bottle leans over the edge and water pours from its neck"),
        ("the bottle was knocked over and the water has already spilled",
         "the bottle lies on its side with water dripping off the table"),
        ("the bottle is falling and is about to hit the floor",
         "the bottle is in the air below the edge of the table"),
        ("the bottle fell and broke on the floor",
         "pieces of the bottle lie in a puddle on the floor"),
    ),
    draw_bottle_spill,
)


def rest_on(p: Point, q: Point, t: float, r: float) -> Point:
    """Centre of a circle of radius r resting on segment p-q at fraction t (on its upper side)."""
    du, dv = q[0] - p[0], q[1] - p[1]
    n = math.hypot(du, dv)
    nu, nv = -dv / n, du / n
    if nv < 0:
        nu, nv = -nu, -nv
    return p[0] + t * du + r * nu, p[1] + t * dv + r * nv


def draw_boulder_hill(pen: Pen, state: int, a: Attrs) -> None:
    hill, boulder, r = rgb(a, "hill"), rgb(a, "boulder"), 0.14
    top, foot = (0.0, 1.1), (0.62, 0.0)
    if state in (0, 1, 4):  # a slope down to the right
        pen.polygon([(0.0, 0.0), foot, top], hill)
        center = (0.84, r) if state == 1 else rest_on(top, foot, 0.45, r)
        if state == 4:  # a small stone wedged under the boulder's downhill side
            su, sv = rest_on(top, foot, 0.45 + 0.24, 0.08)
            pen.circle(su, sv, 0.09, (150, 60, 40))
    elif state == 2:  # balanced on a peak
        pen.polygon([(0.05, 0.0), (0.95, 0.0), (0.5, 1.0)], hill)
        center = (0.5, 1.0 + r)
    else:  # in the bottom of a dip
        pen.polygon([(0.0, 0.0), (0.0, 1.0), (0.42, 0.15), (0.58, 0.15), (1.0, 1.0),
                     (1.0, 0.0)], hill)
        center = (0.5, 0.15 + r)
    pen.circle(*center, r, boulder)


BOULDER_HILL = Family(
    "boulder_hill", P, frozenset({"boulder", "hill"}), "a {boulder} boulder and a {hill} hill",
    {"boulder": ("grey", "white", "black"), "hill": ("green", "yellow", "teal")},
    (
        ("the boulder is about to roll down the hill",
         "the boulder sits on a steep slope with nothing holding it"),
        ("the boulder has already rolled down the hill and come to rest",
         "the boulder lies on flat ground at the foot of the slope"),
        ("a small push would send the boulder rolling down the hill",
         "the boulder is balanced on the very top of the hill"),
        ("the boulder will stay where it is on the hill",
         "the boulder sits in a dip between two slopes"),
        ("the boulder is kept from rolling down the hill",
         "a small stone is wedged under the boulder on the slope"),
    ),
    draw_boulder_hill,
)

BRICK_W, BRICK_H = 0.44, 0.26


def brick(u: float, v: float) -> list[Point]:
    """A brick with its bottom-left corner at (u, v)."""
    return [(u, v), (u + BRICK_W, v), (u + BRICK_W, v + BRICK_H), (u, v + BRICK_H)]


def draw_brick_tower(pen: Pen, state: int, a: Attrs) -> None:
    colour = rgb(a, "brick")
    if state in (0, 2):  # straight; falling = the straight tower tipped over its corner
        bricks = [brick(0.28, i * BRICK_H) for i in range(4)]
        if state == 2:
            bricks = [rotate(b, (0.72, 0.0), -28) for b in bricks]
            for r in (0.9, 1.05):  # the path the top has swept
                pen.arc(0.72, 0.0, r, 95, 120, OUTLINE, 0.03)
    elif state in (1, 4):  # each brick sticking out further than the one below
        bricks = [brick(0.1 + 0.11 * i, i * BRICK_H) for i in range(4)]
        if state == 4:  # a stick propping up the overhang
            pen.line([(0.98, 0.0), (0.76, 0.9)], WOOD, 0.08)
    else:  # collapsed on the floor
        bricks = [brick(0.02, 0.0), brick(0.54, 0.0),
                  rotate(brick(0.08, BRICK_H), (0.08, 0.26), 12),
                  rotate(brick(0.5, BRICK_H), (0.94, 0.26), -30)]
    for b in bricks:
        pen.polygon(b, colour)


BRICK_TOWER = Family(
    "brick_tower", P, frozenset({"brick"}), "a set of four {brick} bricks",
    {"brick": ("red", "orange", "brown", "yellow", "grey", "white")},
    (
        ("the brick tower is stable and will stay up",
         "the bricks are stacked straight on top of each other"),
        ("the brick tower is about to topple over",
         "each brick sticks out further than the one below"),
        ("the brick tower is falling over right now", "the whole tower tilts sharply to one side"),
        ("the brick tower has already collapsed", "the bricks lie scattered on the floor"),
        ("the leaning brick tower is held up and will not fall",
         "a stick props up the side that sticks out"),
    ),
    draw_brick_tower,
)


def weight_shape(u: float, v: float, s: float) -> list[Point]:
    """A trapezoid weight of size s with its bottom centre at (u, v)."""
    return [(u - s / 2, v), (u + s / 2, v), (u + s / 3, v + s * 0.8), (u - s / 3, v + s * 0.8)]


def draw_plank_load(pen: Pen, state: int, a: Attrs) -> None:
    plank, weight = rgb(a, "plank"), rgb(a, "weight")
    support = (140, 140, 145)
    if state != 3:
        pen.rect(0.02, 0.0, 0.16, 0.6, support)
        pen.rect(0.84, 0.0, 0.98, 0.6, support)
    if state in (0, 4):  # straight plank, small weight on it or big weight falling on it
        pen.rect(0.02, 0.6, 0.98, 0.68, plank)
        if state == 0:
            pen.polygon(weight_shape(0.5, 0.68, 0.18), weight)
        else:
            pen.polygon(weight_shape(0.5, 1.45, 0.32), weight)
            for u in (0.38, 0.5, 0.62):
                pen.line([(u, 1.78), (u, 2.05)], OUTLINE, 0.03)
    elif state == 1:  # bending deep under a big weight
        pen.line([(0.02, 0.64), (0.3, 0.5), (0.5, 0.42), (0.7, 0.5), (0.98, 0.64)], plank, 0.09)
        pen.polygon(weight_shape(0.5, 0.46, 0.32), weight)
    elif state == 2:  # snapped, the weight on the floor
        pen.line([(0.06, 0.64), (0.44, 0.2)], plank, 0.08)
        pen.line([(0.94, 0.64), (0.56, 0.2)], plank, 0.08)
        pen.polygon(weight_shape(0.5, 0.0, 0.32), weight)
    else:  # one support, weight on the overhanging end, the plank tipping
        pen.rect(0.16, 0.0, 0.32, 0.6, support)
        board = rotate([(0.02, 0.6), (0.98, 0.6), (0.98, 0.68), (0.02, 0.68)], (0.24, 0.6), -14)
        pen.polygon(board, plank)
        pen.polygon(rotate(weight_shape(0.86, 0.68, 0.26), (0.24, 0.6), -14), weight)


PLANK_LOAD = Family(
    "plank_load", P, frozenset({"plank", "weight"}), "a {plank} plank and a {weight} weight",
    {"plank": ("brown", "yellow", "orange", "white"),
     "weight": ("black", "red", "blue", "purple", "teal")},
    (
        ("the plank easily holds the light weight",
         "the plank stays straight under a small weight"),
        ("the plank is close to breaking under the heavy weight",
         "the plank bends deeply under a big weight"),
        ("the weight was too heavy and broke the plank",
         "the plank is snapped and the weight lies on the floor"),
        ("the plank will tip over and drop the weight",
         "the weight sits on the end of the plank past its only support"),
        ("the falling weight is about to hit the plank hard",
         "the weight is in the air above the plank"),
    ),
    draw_plank_load,
)

FAMILIES: tuple[Family, ...] = (
    BALL_BOX, LIGHT_SHADOW, BLOCK_STACK, OVERLAP_DEPTH,
    GLASS_LEVEL, POT_HEAT, ICE_MELT, PLANT_WATER,
    BALL_PLAY, GAIT, BIRD, BOX_HANDLING,
    WINDOW_SKY, CANDLE, TREE_SEASON, HOURGLASS,
    BOTTLE_SPILL, BOULDER_HILL, BRICK_TOWER, PLANK_LOAD,
)
FAMILY_BY_NAME = {f.name: f for f in FAMILIES}
FAMILIES_BY_CATEGORY = tuple(tuple(f for f in FAMILIES if f.category == c) for c in range(5))


# ---------------------------------------------------------------------------------------
# Scene specs: what to draw, sampled from (index, seed)
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FactSpec:
    """One drawn fact: a family in one state, in one slot, with its colours and placement."""

    family: str
    state: int
    slot: int  # 0 left, 1 middle, 2 right
    attrs: Mapping[str, str]
    size: float  # scale of the drawing within its slot
    shift: float  # horizontal offset within the slot, in slot widths

    @property
    def category(self) -> int:
        return FAMILY_BY_NAME[self.family].category

    def inference(self, state: int | None = None) -> str:
        """What the state lets one infer (of this fact's state, or of another state)."""
        template = FAMILY_BY_NAME[self.family].states[self.state if state is None else state][0]
        return with_articles(template.format(**self.attrs))

    def evidence(self, state: int | None = None) -> str:
        """The visible cue that supports the inference."""
        template = FAMILY_BY_NAME[self.family].states[self.state if state is None else state][1]
        return with_articles(template.format(**self.attrs))

    def description(self) -> str:
        return with_articles(FAMILY_BY_NAME[self.family].describe.format(**self.attrs))


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    wall: str
    floor: str
    facts: tuple[FactSpec, ...]  # one per image category, sorted by category


def with_articles(text: str) -> str:
    """Fixes "a orange" to "an orange" once colour names are filled into templates."""
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)


def scene_rng(index: int, seed: int) -> random.Random:
    # A string seed is hashed with SHA-512, so it is stable across runs and processes.
    return random.Random(f"reasonclip-scenes/{seed}/{index}")


def sample_fact(rng: random.Random, family: Family, slot: int) -> FactSpec:
    attrs: dict[str, str] = {}
    for name, palette in family.palettes.items():
        attrs[name] = rng.choice([c for c in palette if c not in attrs.values()])
    return FactSpec(family.name, rng.randrange(len(family.states)), slot, attrs,
                    size=rng.uniform(0.82, 1.0), shift=rng.uniform(-0.04, 0.04))


def sample_spec(rng: random.Random) -> SceneSpec:
    """Three categories, one fact of each, in a random slot order; states are uniform."""
    categories = sorted(rng.sample(range(5), 3))
    slots = rng.sample(range(3), 3)
    facts, nouns = [], set()
    for category, slot in zip(categories, slots, strict=True):
        family = rng.choice([f for f in FAMILIES_BY_CATEGORY[category] if not f.nouns & nouns])
        nouns |= family.nouns
        facts.append(sample_fact(rng, family, slot))
    return SceneSpec(rng.choice(sorted(WALLS)), rng.choice(sorted(FLOORS)), tuple(facts))


# ---------------------------------------------------------------------------------------
# Rendering and captions
# ---------------------------------------------------------------------------------------


def render(spec: SceneSpec, image_size: int) -> Image.Image:
    """Draws at an integer multiple of the size and box-filters down, for clean thin lines."""
    if not 16 <= image_size <= 1024:
        raise ValueError(f"image_size must be in 16..1024, got {image_size}")
    factor = max(2, -(-128 // image_size))
    n = image_size * factor
    image = Image.new("RGB", (n, n), WALLS[spec.wall])
    draw = ImageDraw.Draw(image)
    ground = GROUND * n
    draw.rectangle((0, ground, n, n), fill=FLOORS[spec.floor])
    for fact in spec.facts:
        pen = Pen(draw, fact.slot * n / 3, ground, n / 3, fact.size, fact.shift)
        FAMILY_BY_NAME[fact.family].draw(pen, fact.state, fact.attrs)
    return image.reduce(factor)


def sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def with_evidence(fact: FactSpec, state: int | None = None) -> str:
    return sentence(f"{fact.evidence(state)}, so {fact.inference(state)}")


def describe(spec: SceneSpec, rng: random.Random) -> tuple[str, str, str]:
    """Three descriptive captions: objects, colours and positions, never the states.
    Semicolons separate the facts, since one fact may name two objects."""
    left, middle, right = (f.description() for f in sorted(spec.facts, key=lambda f: f.slot))
    a, b, c = rng.sample(spec.facts, 3)
    return (
        with_articles(f"A room with a {spec.wall} wall and a {spec.floor} floor. On the left, "
                      f"{left}; in the middle, {middle}; on the right, {right}."),
        sentence("; ".join(f"{POSITIONS[f.slot]} there is {f.description()}" for f in (a, b, c))),
        f"A simple drawing of three things in front of a {spec.wall} wall: "
        f"{a.description()}; {b.description()}; and {c.description()}.",
    )


def explain(spec: SceneSpec) -> tuple[str, str, str]:
    """Three open-form reasoning captions, two sentences each: one fact with its evidence,
    then the bare inference of the next fact."""
    facts = spec.facts
    return tuple(  # type: ignore[return-value]
        sentence(f"{f.inference()}, because {f.evidence()}") + " "
        + sentence(facts[(i + 1) % 3].inference())
        for i, f in enumerate(facts)
    )


def bench_set(fact: FactSpec, rng: random.Random, phrase: Callable[[FactSpec, int], str]
              ) -> dict:
    """The fact's true caption against 4 other states of its family, phrased alike."""
    others = [s for s in range(len(FAMILY_BY_NAME[fact.family].states)) if s != fact.state]
    return {"tag": CATEGORIES[fact.category], "gt": phrase(fact, fact.state),
            "neg": [phrase(fact, s) for s in rng.sample(others, 4)]}


def bench_sets(spec: SceneSpec, rng: random.Random) -> tuple[dict, ...]:
    """Five sets: each fact's bare inference, then two facts again with their evidence."""
    bare = [bench_set(f, rng, lambda f, s: sentence(f.inference(s))) for f in spec.facts]
    evidenced = [bench_set(f, rng, with_evidence) for f in rng.sample(spec.facts, 2)]
    return tuple(bare + evidenced)


@dataclasses.dataclass(frozen=True)
class Scene:
    key: str
    image: Image.Image  # RGB, image_size x image_size
    desc: tuple[str, str, str]  # what is visible: objects, colours, positions
    reason: tuple[str, str, str]  # what follows from the cues, <= 2 sentences each
    image_labels: tuple[int, int, int]  # 3 distinct sorted category indices
    cat_captions: tuple[tuple[int, str], ...]  # (category, caption) per image label
    bench_sets: tuple[dict, ...]  # {"tag", "gt", "neg": [4 str]}


def render_scene(spec: SceneSpec, key: str, image_size: int, rng: random.Random) -> Scene:
    """A scene from a spec; rng only picks caption orders and benchmark negatives."""
    return Scene(
        key=key,
        image=render(spec, image_size),
        desc=describe(spec, rng),
        reason=explain(spec),
        image_labels=tuple(f.category for f in spec.facts),  # type: ignore[arg-type]
        cat_captions=tuple((f.category, with_evidence(f)) for f in spec.facts),
        bench_sets=bench_sets(spec, rng),
    )


def make_scene(index: int, seed: int, image_size: int = 64) -> Scene:
    """The scene number `index` of the stream `seed`; a pure function of its arguments
    (captions do not depend on image_size)."""
    rng = scene_rng(index, seed)
    return render_scene(sample_spec(rng), f"scene-{seed}-{index:08d}", image_size, rng)


def make_scenes(num_scenes: int, seed: int, image_size: int = 64) -> Iterator[Scene]:
    for index in range(num_scenes):
        yield make_scene(index, seed, image_size)


def contact_sheet(scenes: Sequence[Scene], columns: int = 6) -> Image.Image:
    size = scenes[0].image.size[0]
    rows = -(-len(scenes) // columns)
    sheet = Image.new("RGB", (columns * size, rows * size), WHITE)
    for i, scene in enumerate(scenes):
        sheet.paste(scene.image, ((i % columns) * size, (i // columns) * size))
    return sheet


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--sheet", default="", help="write the images here as one PNG")
    args = parser.parse_args(argv)
    scenes = list(make_scenes(args.num, args.seed, args.size))
    for scene in scenes:
        print(f"{scene.key}  labels={[CATEGORIES[c] for c in scene.image_labels]}")
        for text in scene.desc + scene.reason:
            print("   ", text)
        for category, text in scene.cat_captions:
            print(f"    [{CATEGORIES[category]}] {text}")
    if args.sheet:
        contact_sheet(scenes).save(args.sheet)
        print(f"wrote {args.sheet}")


if __name__ == "__main__":
    main()
