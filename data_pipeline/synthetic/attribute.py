"""A, attribute / state families: how full, how hot, how melted, how watered.

Each family is a `Family` (see drawing.py) with its draw function; the registry is
scenes.FAMILIES. Look at them:

    python -m data_pipeline.scenes --num 6 --seed 0 --sheet /tmp/scenes.png
"""

from __future__ import annotations

from data_pipeline.synthetic.drawing import (
    COLOURS,
    FLAME,
    FLAME_CORE,
    GLASS,
    LEAF,
    OUTLINE,
    RGB,
    WATER,
    WHITE,
    A,
    Attrs,
    Family,
    Pen,
    rgb,
    rotate,
)

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
