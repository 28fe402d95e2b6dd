"""T, temporal / phase families: time of day, burn-down, season, sand run-out.

Each family is a `Family` (see drawing.py) with its draw function; the registry is
scenes.FAMILIES. Look at them:

    python -m data_pipeline.scenes --num 6 --seed 0 --sheet /tmp/scenes.png
"""

from __future__ import annotations

import math

from data_pipeline.synthetic.drawing import (
    FLAME,
    FLAME_CORE,
    GLASS,
    OUTLINE,
    SAND,
    WHITE,
    Attrs,
    Family,
    Pen,
    T,
    rgb,
)

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
