"""Procedural scenes whose reasoning captions follow from small visible cues.

The built-in synthetic data source: every image is a room with three "facts" side by
side (left, middle, right), one per reasoning category it shows. A fact belongs to a
family (a pot on a stove, a candle, a stick figure with a ball, ...) and is drawn in one
of that family's states (5 or 6 of them). The state is the visible cue; it decides the
inference caption ("the water in the pot is boiling") but never the descriptive caption,
which names only objects, colours and positions ("a red pot on a stove on the left").
Descriptive matching therefore cannot tell the states apart, while a model that looks at
the cue can. Each reasoning caption states all three facts' inferences, one of them with
its evidence; each category caption (stage 2) states one fact with its evidence.

Every fact fills its third of the image at the same place (`jitter=True`, or
`data_pipeline.build --scene-jitter`, varies its size and offset instead): at an image size
divisible by 3 x P, each slot covers whole P-pixel ViT patches.

Families, 4 per category (see FAMILIES; one module per category):
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

    python -m data_pipeline.synthetic.scenes --num 12 --seed 0 --size 64 --sheet /tmp/scenes.png
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

from PIL import Image, ImageDraw

from data_pipeline.synthetic.attribute import GLASS_LEVEL, ICE_MELT, PLANT_WATER, POT_HEAT
from data_pipeline.synthetic.drawing import FLOORS, WALLS, WHITE, Family, Pen
from data_pipeline.synthetic.human import BALL_PLAY, BIRD, BOX_HANDLING, GAIT
from data_pipeline.synthetic.physical import BOTTLE_SPILL, BOULDER_HILL, BRICK_TOWER, PLANK_LOAD
from data_pipeline.synthetic.spatial import BALL_BOX, BLOCK_STACK, LIGHT_SHADOW, OVERLAP_DEPTH
from data_pipeline.synthetic.temporal import CANDLE, HOURGLASS, TREE_SEASON, WINDOW_SKY
from reasonclip_jax.data.records import CATEGORIES
from reasonclip_jax.tools import cli

POSITIONS = ("on the left", "in the middle", "on the right")
GROUND = 0.8  # floor line, as a fraction of the image height

# The order is part of the data: sample_spec draws a family by its index in this tuple.
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


def sample_fact(rng: random.Random, family: Family, slot: int, jitter: bool = False
                ) -> FactSpec:
    """A fact of `family` in `slot`: its state, colours and, with `jitter`, a random size
    and offset within the slot (otherwise full size, centred)."""
    attrs: dict[str, str] = {}
    for name, palette in family.palettes.items():
        attrs[name] = rng.choice([c for c in palette if c not in attrs.values()])
    state = rng.randrange(len(family.states))
    size, shift = rng.uniform(0.82, 1.0), rng.uniform(-0.04, 0.04)  # drawn either way
    return FactSpec(family.name, state, slot, attrs, *((size, shift) if jitter else (1.0, 0.0)))


def sample_spec(rng: random.Random, layout_rng: random.Random | None = None,
                jitter: bool = False) -> SceneSpec:
    """Three categories, one fact of each, in a random slot order; states are uniform.
    `layout_rng` (default `rng`) draws the categories, slots and families, `rng` the rest:
    scenes that share a layout rng are siblings, the same families in other states,
    colours and rooms. `jitter`: see sample_fact."""
    layout_rng = layout_rng or rng
    categories = sorted(layout_rng.sample(range(5), 3))
    slots = layout_rng.sample(range(3), 3)
    facts, nouns = [], set()
    for category, slot in zip(categories, slots, strict=True):
        family = layout_rng.choice(
            [f for f in FAMILIES_BY_CATEGORY[category] if not f.nouns & nouns])
        nouns |= family.nouns
        facts.append(sample_fact(rng, family, slot, jitter))
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


MAX_CATEGORY_WORDS = 30  # the recipe's limit for a ReasonPro caption


def grounded(fact: FactSpec) -> str:
    """A stage-2 category caption: the fact's objects as seen (colours included, as
    visually grounded captions name them), then its evidence and inference; without the
    evidence when that would pass MAX_CATEGORY_WORDS."""
    text = sentence(f"{fact.description()}: {fact.evidence()}, so {fact.inference()}")
    if len(text.split()) > MAX_CATEGORY_WORDS:
        text = sentence(f"{fact.description()}: {fact.inference()}")
    return text


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


MAX_REASON_WORDS = 50  # the recipe's limit for a ReasonLite caption


def explain(spec: SceneSpec, rng: random.Random) -> tuple[str, str, str]:
    """Three reasoning captions, each stating the inferences of all three facts, one of
    them with its evidence ("inference, because evidence" or "evidence, so inference";
    bare inferences when that would pass MAX_REASON_WORDS). Caption k starts at fact k, so
    each fact leads, with its evidence, in one caption. In a batch of sibling scenes (the
    same families in other states) a caption is told apart from its siblings' only by the
    states, and every caption carries all three: three times the signal of one fact."""
    offset = rng.randrange(2)
    captions = []
    for k in range(3):
        first, *rest = spec.facts[k:] + spec.facts[:k]
        lead = (f"{first.inference()}, because {first.evidence()}" if (k + offset) % 2 else
                f"{first.evidence()}, so {first.inference()}")
        bare = [f.inference() for f in rest]
        text = sentence(f"{lead}; {bare[0]}; and {bare[1]}")
        if len(text.split()) > MAX_REASON_WORDS:
            text = sentence(f"{first.inference()}; {bare[0]}; and {bare[1]}")
        captions.append(text)
    return tuple(captions)  # type: ignore[return-value]


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
        reason=explain(spec, rng),
        image_labels=tuple(f.category for f in spec.facts),  # type: ignore[arg-type]
        cat_captions=tuple((f.category, grounded(f)) for f in spec.facts),
        bench_sets=bench_sets(spec, rng),
    )


def group_key(index: int, seed: int, group_size: int) -> str:
    """The hard-negative group of scene `index` ("" when scenes are independent)."""
    return f"scenes-{seed}-of{group_size}-{index // group_size:08d}" if group_size > 1 else ""


def make_scene(index: int, seed: int, image_size: int = 64, group_size: int = 1,
               jitter: bool = False) -> Scene:
    """The scene number `index` of the stream `seed`; a pure function of its arguments
    (captions do not depend on image_size or jitter). With `group_size` G > 1, scenes
    [kG, (k+1)G) are siblings: the same families in the same slots, each in its own
    states, colours and room, so that a batch holding them has, for every reasoning
    caption, images of other states of the same family as negatives. Without `jitter`
    every fact fills its slot at the same place, so at an image size divisible by 3 x P
    each slot covers whole P-pixel ViT patches; with it, facts vary in size and offset."""
    rng = scene_rng(index, seed)
    group = group_key(index, seed, group_size)
    layout_rng = random.Random(f"reasonclip-scenes/{group}") if group else None
    return render_scene(sample_spec(rng, layout_rng, jitter), f"scene-{seed}-{index:08d}",
                        image_size, rng)


def make_scenes(num_scenes: int, seed: int, image_size: int = 64, jitter: bool = False
                ) -> Iterator[Scene]:
    for index in range(num_scenes):
        yield make_scene(index, seed, image_size, jitter=jitter)


def contact_sheet(scenes: Sequence[Scene], columns: int = 6) -> Image.Image:
    size = scenes[0].image.size[0]
    rows = -(-len(scenes) // columns)
    sheet = Image.new("RGB", (columns * size, rows * size), WHITE)
    for i, scene in enumerate(scenes):
        sheet.paste(scene.image, ((i % columns) * size, (i // columns) * size))
    return sheet


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> None:
    parser = cli.ArgumentParser(prog="python -m data_pipeline.scenes",
                                description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--sheet", default="", help="write the images here as one PNG")
    parser.add_argument("--jitter", action="store_true",
                        help="vary each fact's size and offset within its slot")
    args = parser.parse_args(argv)
    scenes = list(make_scenes(args.num, args.seed, args.size, args.jitter))
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
