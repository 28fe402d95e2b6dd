"""H, human / creature action families: stick figures and a bird caught mid-action.

Each family is a `Family` (see drawing.py) with its draw function; the registry is
scenes.FAMILIES. Look at them:

    python -m data_pipeline.scenes --num 6 --seed 0 --sheet /tmp/scenes.png
"""

from __future__ import annotations

from collections.abc import Mapping

from data_pipeline.synthetic.drawing import (
    FLAME_CORE,
    OBJECT_COLOURS,
    OUTLINE,
    RGB,
    SHADOW,
    SKIN,
    TROUSERS,
    WOOD,
    Attrs,
    Family,
    H,
    Pen,
    Point,
    motion_lines,
    rgb,
)

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
