"""S, spatial families: what holds what up, where the light is, stacking and depth order.

Each family is a `Family` (see drawing.py) with its draw function; the registry is
scenes.FAMILIES. Look at them:

    python -m data_pipeline.scenes --num 6 --seed 0 --sheet /tmp/scenes.png
"""

from __future__ import annotations

import itertools

from data_pipeline.synthetic.drawing import (
    OBJECT_COLOURS,
    OUTLINE,
    SHADOW,
    Attrs,
    Family,
    Pen,
    S,
    rgb,
)


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
