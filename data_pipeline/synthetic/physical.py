"""P, physical intuition families: spilling, rolling, toppling and breaking under load.

Each family is a `Family` (see drawing.py) with its draw function; the registry is
scenes.FAMILIES. Look at them:

    python -m data_pipeline.scenes --num 6 --seed 0 --sheet /tmp/scenes.png
"""

from __future__ import annotations

import math

from data_pipeline.synthetic.drawing import (
    OUTLINE,
    WATER,
    WOOD,
    Attrs,
    Family,
    P,
    Pen,
    Point,
    rgb,
    rotate,
    translate,
)

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
