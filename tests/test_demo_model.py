"""The bundled demo model: it ships, it sees, and the engine runs it as transformers does."""

from __future__ import annotations

import random
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from parity import HFReference

from vlmctl import Engine, SamplingParams
from vlmctl.cli.common import bundled_model
from vlmctl.daemon.frontend.chat_templates import ChatMessage, load_chat_template
from vlmctl.demo import recipe, shapes

MODEL = bundled_model()
ROOT = Path(__file__).resolve().parents[1]


def test_the_package_bundles_a_small_model():
    assert MODEL is not None, "vlmctl/models/default is missing: run scripts/train_demo_model.py"
    folder = Path(MODEL)
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert 0 < weights <= 25 * 1000**2
    for name in ("config.json", "tokenizer.json", "processor_config.json", "MODEL_CARD.md"):
        assert (folder / name).is_file() or (name == "processor_config.json"
                                             and (folder / "preprocessor_config.json").is_file()), name


def test_its_chat_template_is_the_builtin_vicuna_one():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    own = load_chat_template(None, tokenizer, recipe.IMAGE_TOKEN)
    builtin = load_chat_template("vicuna_v1.1", tokenizer, recipe.IMAGE_TOKEN)
    conversations = [
        [ChatMessage("user", [("image", "a"), ("text", "What's in this image?")])],
        [ChatMessage("user", [("image", "a"), ("image", "b"), ("text", shapes.COMPARE_QUESTIONS[0])])],
        [ChatMessage("system", [("text", "Be brief.")]),
         ChatMessage("user", [("image", "a"), ("text", "Describe the image.")]),
         ChatMessage("assistant", [("text", "A red star.")]), ChatMessage("user", [("text", "And?")])],
    ]
    for messages in conversations:
        assert own.render(messages).prompt == builtin.render(messages).prompt
    assert own.render(conversations[0]).prompt == recipe.prompt([("What's in this image?", None)], 1)
    assert own.render(conversations[1]).prompt == recipe.prompt([(shapes.COMPARE_QUESTIONS[0], None)], 2)


def fresh_cases():
    """Three scenes drawn with a seed neither training nor evaluation uses."""
    rng = random.Random(90125)
    cases = []
    for count, size, kind in ((1, (320, 240), "describe"), (2, (800, 600), "describe"), (3, (150, 150), "count")):
        scene = shapes.random_scene(rng, count)
        question, answer = shapes.question_set(scene, rng)[kind]
        cases.append((recipe.prompt([(question, None)], 1), [shapes.render(scene, size, 85)], answer))
    return cases


@pytest.fixture(scope="module")
def engine():
    with Engine(model=MODEL, device="cpu", dtype="float32") as engine:
        yield engine


def test_the_engine_answers_fresh_images_correctly(engine):
    cases = fresh_cases()
    outputs = engine.generate([{"prompt": p, "images": images} for p, images, _ in cases],
                              SamplingParams(max_tokens=40, temperature=0.0))
    assert [o.text.strip() for o in outputs] == [answer for _, _, answer in cases]


def test_the_engine_gives_transformers_tokens(engine):
    reference = HFReference(MODEL)
    rng = random.Random(4)
    first, second = shapes.random_scene(rng, 2), shapes.random_scene(rng, 1)
    cases = fresh_cases() + [
        (recipe.prompt([(shapes.COMPARE_QUESTIONS[0], None)], 2),
         [shapes.render(first, (200, 200)), shapes.render(second, (300, 200))], None),
        (recipe.prompt([("Tell me a story.", None)], 1), [shapes.render(first, (64, 64))], None),
    ]
    outputs = engine.generate([{"prompt": p, "images": images} for p, images, _ in cases],
                              SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True))
    for (prompt, images, _), output in zip(cases, outputs):
        expected = reference.greedy(prompt, images, 24)
        assert list(output.token_ids) == expected.token_ids


@pytest.mark.slow
def test_the_built_wheel_contains_the_weights(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("vlmctl-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("model.safetensors", "config.json", "tokenizer.json", "MODEL_CARD.md"):
        assert f"vlmctl/models/default/{name}" in names


@pytest.mark.slow
def test_vlmctl_ask_uses_the_bundled_model_by_default(tmp_path):
    """The README's main command, on a machine with no model configured."""
    from test_cli import vlmctl

    try:
        answer = vlmctl(tmp_path, "ask", str(ROOT / "examples" / "shapes.png"), "What's in this image?")
        assert answer.returncode == 0, answer.stderr.decode()
        assert answer.stdout.decode().strip() == "A red circle and a blue square."
        models = vlmctl(tmp_path, "models")
        assert "(bundled) default" in models.stdout.decode()
    finally:
        vlmctl(tmp_path, "stop")
