"""The synthetic shapes scenes behind the demo model: what is drawn is what is said."""

from __future__ import annotations

import random

import pytest

from vlmctl.demo.shapes import (
    COLOURS,
    SAME_ANSWER,
    Scene,
    Shape,
    difference_pair,
    different,
    question_set,
    random_scene,
    render,
)


def scenes(n: int, seed: int = 0) -> list[Scene]:
    rng = random.Random(seed)
    return [random_scene(rng) for _ in range(n)]


def test_same_seed_same_scene_and_pixels():
    a, b = scenes(5, seed=3), scenes(5, seed=3)
    assert a == b
    assert render(a[0]).tobytes() == render(b[0]).tobytes()
    assert scenes(5, seed=4) != a


def test_description_names_shapes_left_to_right():
    for scene in scenes(50):
        xs = [s.x for s in scene.shapes]
        assert xs == sorted(xs)
        text = scene.describe()
        positions = [text.index(s.name) for s in scene.shapes]
        assert positions == sorted(positions) and text.endswith(".") and text[0].isupper()


@pytest.mark.parametrize("size", [(64, 48), (336, 336), (640, 360), (1600, 1200)])
def test_each_shape_is_drawn_in_its_colour_at_its_centre(size):
    for scene in scenes(30, seed=size[0]):
        image = render(scene, size)
        assert image.size == size and image.mode == "RGB"
        for shape in scene.shapes:
            x = min(size[0] - 1, int(shape.x * size[0]))
            y = min(size[1] - 1, int(shape.y * size[1]))
            pixel = image.getpixel((x, y))
            distance = max(abs(p - c) for p, c in zip(pixel, COLOURS[shape.colour]))
            assert distance < 60, (shape, pixel)


def test_jpeg_round_trip_keeps_the_colours_recognisable():
    scene = scenes(1, seed=9)[0]
    image = render(scene, (336, 336), jpeg_quality=40)
    shape = scene.shapes[0]
    pixel = image.getpixel((int(shape.x * 336), int(shape.y * 336)))
    nearest = min(COLOURS, key=lambda c: sum((p - q) ** 2 for p, q in zip(pixel, COLOURS[c])))
    assert nearest == shape.colour


def test_backgrounds_and_counts_vary():
    sample = scenes(200)
    assert {s.background for s in sample} == {"plain", "gradient", "noise"}
    assert {len(s.shapes) for s in sample} == {1, 2, 3}
    assert all(len({sh.colour for sh in s.shapes}) == len(s.shapes) for s in sample)


def test_answers_follow_from_the_scene():
    rng = random.Random(0)
    yes = 0
    for scene in scenes(300):
        qa = question_set(scene, rng)
        count = len(scene.shapes)
        assert qa["count"][1] == f"There {'is' if count == 1 else 'are'} " + (
            ("one shape", "two shapes", "three shapes")[count - 1] + ".")
        assert qa["describe"][1] == scene.describe()
        question, answer = qa["yesno"]
        colour, kind = question.removeprefix("Is there ").rstrip("?").split(" ")[1:]
        expected = any(s.colour == colour and s.kind == kind for s in scene.shapes)
        assert answer == ("Yes." if expected else "No.")
        yes += expected
        question, answer = qa["colour"]
        named = [s for s in scene.shapes if question.endswith(f" {s.kind}?") or question.endswith(f" {s.position}?")]
        assert len(named) == 1 and answer == f"It is {named[0].colour}."
        question, answer = qa["where"]
        (named,) = [s for s in scene.shapes if question == f"Where is the {s.name}?"]
        assert answer == f"It is {named.position}."
    assert 0.4 < yes / 300 < 0.6  # balanced


def test_positions_follow_the_order_left_to_right():
    for scene in scenes(200):
        positions = [s.position for s in scene.shapes]
        assert positions == {1: ["in the middle"], 2: ["on the left", "on the right"],
                             3: ["on the left", "in the middle", "on the right"]}[len(scene.shapes)]


def test_difference_pairs_include_identical_scenes():
    rng = random.Random(2)
    answers = [difference_pair(scene, rng) for scene in scenes(90)]
    same = [second for second, answer in answers if answer == SAME_ANSWER]
    assert 15 < len(same) < 45


def test_a_difference_changes_exactly_one_shape_and_says_so():
    rng = random.Random(1)
    for scene in scenes(50):
        changed, answer = different(scene, rng)
        diffs = [(a, b) for a, b in zip(scene.shapes, changed.shapes) if a != b]
        assert len(diffs) == 1 and answer.startswith("Yes.")
        old, new = diffs[0]
        assert new.colour in answer or new.kind in answer


def test_articles_are_english():
    scene = Scene((Shape("star", "orange", 0.25, 0.5, 0.1, 0.0), Shape("circle", "red", 0.75, 0.5, 0.1, 0.0)), "plain", 0)
    assert scene.describe() == "An orange star and a red circle."
