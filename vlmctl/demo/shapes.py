"""Synthetic scenes of coloured shapes, and the questions the demo model learns to answer.

A scene is one to three shapes (circle, square, triangle, star) in distinct colours, placed
left to right in their own columns so "left to right" is never ambiguous. Rendering varies
size, position, rotation, background (plain, gradient, noise), image size and JPEG quality.
Every answer is derived from the scene, so a model's answer can be checked exactly.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (240, 215, 30), "green": (40, 160, 60),
    "blue": (35, 70, 215), "purple": (130, 50, 180), "pink": (240, 120, 180), "brown": (120, 75, 35),
}
BACKGROUNDS = ("plain", "gradient", "noise")
POSITIONS = ("on the left", "in the middle", "on the right")


@dataclass(frozen=True, slots=True)
class Shape:
    kind: str
    colour: str
    x: float  # centre, as a fraction of the width
    y: float  # centre, as a fraction of the height
    size: float  # radius, as a fraction of the shorter side
    rotation: float  # degrees

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"

    @property
    def position(self) -> str:
        return POSITIONS[min(2, int(self.x * 3))]


@dataclass(frozen=True, slots=True)
class Scene:
    shapes: tuple[Shape, ...]  # left to right
    background: str
    background_seed: int

    def describe(self) -> str:
        """'A red circle and a blue square.' with the shapes named left to right."""
        names = [article(s.name) for s in self.shapes]
        text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return text[0].upper() + text[1:] + "."


def random_scene(rng: random.Random, count: int | None = None) -> Scene:
    """One to three shapes (one and two twice as often as three), or exactly `count`."""
    count = count or rng.choice((1, 1, 2, 2, 3))
    colours = rng.sample(list(COLOURS), count)
    shapes = []
    for column, colour in enumerate(colours):
        width = 1.0 / count
        shapes.append(Shape(
            kind=rng.choice(SHAPES), colour=colour,
            x=width * (column + 0.5) + rng.uniform(-0.15, 0.15) * width,
            y=rng.uniform(0.35, 0.65),
            size=rng.uniform(0.09, min(0.2, 0.42 * width)),
            rotation=rng.uniform(-12.0, 12.0),
        ))
    return Scene(tuple(shapes), rng.choice(BACKGROUNDS), rng.randrange(1 << 30))


def random_image_size(rng: random.Random) -> tuple[int, int]:
    """(width, height) from thumbnail (40 px) to photo-sized (1400 px), aspect 0.6 to 1.8."""
    if rng.random() < 0.06:
        side = rng.uniform(640, 1400)
    else:
        side = math.exp(rng.uniform(math.log(40), math.log(640)))
    aspect = math.exp(rng.uniform(math.log(0.6), math.log(1.8)))
    return max(24, int(side * math.sqrt(aspect))), max(24, int(side / math.sqrt(aspect)))


def random_jpeg_quality(rng: random.Random) -> int | None:
    """None (no JPEG round trip) a third of the time, else a quality from 35 to 90."""
    return rng.choice((None, None, 90, 70, 50, 35))


def _background(scene: Scene, size: tuple[int, int]) -> Image.Image:
    rng = random.Random(scene.background_seed)
    base = tuple(rng.randint(205, 250) for _ in range(3))
    if scene.background == "plain":
        return Image.new("RGB", size, base)
    if scene.background == "gradient":
        other = tuple(rng.randint(170, 250) for _ in range(3))
        ramp = Image.linear_gradient("L").resize(size).rotate(rng.choice((0, 90, 180, 270)))
        return Image.composite(Image.new("RGB", size, other), Image.new("RGB", size, base), ramp)
    noise = Image.effect_noise(size, rng.uniform(10, 30)).convert("RGB")
    return Image.blend(Image.new("RGB", size, base), noise, 0.25)


def outline(shape: Shape, width: int, height: int) -> list[tuple[float, float]]:
    cx, cy, r = shape.x * width, shape.y * height, shape.size * min(width, height)
    if shape.kind == "square":
        corners, radius = [45 + 90 * i for i in range(4)], [r * math.sqrt(2) * 0.8] * 4
    elif shape.kind == "triangle":
        corners, radius = [-90 + 120 * i for i in range(3)], [r * 1.15] * 3
    elif shape.kind == "star":
        corners = [-90 + 36 * i for i in range(10)]
        radius = [r * 1.15 if i % 2 == 0 else r * 0.48 for i in range(10)]
    else:
        corners, radius = [i * 360 / 48 for i in range(48)], [r] * 48
    return [
        (cx + rad * math.cos(math.radians(a + shape.rotation)), cy + rad * math.sin(math.radians(a + shape.rotation)))
        for a, rad in zip(corners, radius)
    ]


def render(scene: Scene, size: tuple[int, int] = (336, 336), jpeg_quality: int | None = None) -> Image.Image:
    """The scene as an RGB image; with jpeg_quality, as a JPEG round trip would leave it."""
    image = _background(scene, size)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        draw.polygon(outline(shape, *size), fill=COLOURS[shape.colour])
    if min(size) >= 96:
        image = image.filter(ImageFilter.GaussianBlur(0.6))
    if jpeg_quality is not None:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=jpeg_quality)
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image


QUESTION_TYPES = ("describe", "colour", "count", "where", "yesno")
DESCRIBE_QUESTIONS = ("What's in this image?", "Describe the image.", "What do you see?", "What is in the picture?")
COMPARE_QUESTIONS = (
    "Are there any differences between these two images?",
    "Are there any differences between these images? Describe them.",
    "What is different between these images?",
)
SAME_ANSWER = "No. Both images show the same shapes."


def question_set(scene: Scene, rng: random.Random) -> dict[str, tuple[str, str]]:
    """One (question, answer) pair of each type in QUESTION_TYPES about the scene.

    Yes/no questions are balanced: half name a shape in the scene, half a shape that is not
    there but shares its colour or kind with one that is (or neither).
    """
    shape = rng.choice(scene.shapes)
    count = len(scene.shapes)
    unique_kind = sum(s.kind == shape.kind for s in scene.shapes) == 1
    present = {(s.colour, s.kind) for s in scene.shapes}
    if rng.random() < 0.5:
        asked = rng.choice(sorted(present))
    else:
        base = rng.choice(scene.shapes)
        pick = rng.random()
        while True:
            colour = base.colour if pick < 0.35 else rng.choice(list(COLOURS))
            kind = base.kind if 0.35 <= pick < 0.7 else rng.choice(SHAPES)
            if (colour, kind) not in present:
                break
        asked = (colour, kind)
    colour_word = rng.choice(("colour", "colour", "color"))
    return {
        "describe": (rng.choice(DESCRIBE_QUESTIONS), scene.describe()),
        "colour": (f"What {colour_word} is the {shape.kind}?" if unique_kind
                   else f"What {colour_word} is the shape {shape.position}?", f"It is {shape.colour}."),
        "count": (rng.choice(("How many shapes are there?", "How many shapes are in the image?")),
                  f"There {'is' if count == 1 else 'are'} {_number(count)}."),
        "where": (f"Where is the {shape.name}?", f"It is {shape.position}."),
        "yesno": (f"Is there {article(asked[0])} {asked[1]}?", "Yes." if asked in present else "No."),
    }


def questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """(question, answer) pairs about one scene, one of each type."""
    return list(question_set(scene, rng).values())


def different(scene: Scene, rng: random.Random) -> tuple[Scene, str]:
    """A changed copy of the scene and the answer to 'Are there any differences ...?'."""
    index = rng.randrange(len(scene.shapes))
    old = scene.shapes[index]
    if rng.random() < 0.5:
        colour = rng.choice([c for c in COLOURS if c not in {s.colour for s in scene.shapes}])
        new = replace(old, colour=colour)
        answer = f"Yes. The {old.kind} {old.position} is {colour} instead of {old.colour}."
    else:
        kind = rng.choice([k for k in SHAPES if k != old.kind])
        new = replace(old, kind=kind)
        answer = f"Yes. The {old.colour} {old.kind} became {article(old.colour)} {kind}."
    shapes = list(scene.shapes)
    shapes[index] = new
    return replace(scene, shapes=tuple(shapes)), answer


def difference_pair(scene: Scene, rng: random.Random, same: float = 1 / 3) -> tuple[Scene, str]:
    """A second scene for 'Are there any differences ...?' and its answer: the same scene
    (with probability `same`; it is drawn again, so only the pixels differ) or one change."""
    if rng.random() < same:
        return scene, SAME_ANSWER
    return different(scene, rng)


def article(phrase: str) -> str:
    """'a red circle', 'an orange star'."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _number(n: int) -> str:
    return ("no shapes", "one shape", "two shapes", "three shapes")[n]
