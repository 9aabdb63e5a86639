"""Incremental detokenization: UTF-8 safety and stop strings."""

from __future__ import annotations

import random

import pytest

from vlmctl.daemon.frontend.detokenizer import IncrementalDetokenizer
from vlmctl.testing.tiny_models import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def stream(tokenizer, ids, stop=None, chunk=1):
    detok = IncrementalDetokenizer(tokenizer, stop)
    deltas = []
    for i in range(0, len(ids), chunk):
        part = ids[i : i + chunk]
        deltas.append(detok.add(part, final=i + chunk >= len(ids)))
    return detok, deltas


def test_deltas_add_up_to_the_full_decode_and_never_split_a_character(tokenizer):
    text = "A red circle 🙂 and 日本語 café ✓ then more words"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    # Byte-level BPE splits the emoji and CJK into several byte tokens.
    assert any("\ufffd" in tokenizer.decode([t]) for t in ids)
    detok, deltas = stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert all("\ufffd" not in d for d in deltas)


def test_random_token_streams_match_the_full_decode(tokenizer):
    rng = random.Random(0)
    vocab = len(tokenizer)
    for _ in range(50):
        ids = [rng.randrange(5, vocab) for _ in range(rng.randint(1, 30))]
        _, deltas = stream(tokenizer, ids, chunk=rng.randint(1, 3))
        assert "".join(deltas) == tokenizer.decode(ids)


def test_stop_string_ends_the_text_and_is_not_included(tokenizer):
    ids = tokenizer("a blue square. And a red star", add_special_tokens=False).input_ids
    detok, deltas = stream(tokenizer, ids, stop=["And", "zzz"])
    assert detok.matched_stop == "And"
    assert detok.text == "a blue square. "
    assert "".join(deltas) == "a blue square. "


def test_partial_stop_string_is_held_back_until_it_cannot_match(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, stop=["square."])
    shown = []
    for word in ["a blue", " squ", "are", " circle"]:
        detok.add(tokenizer(word, add_special_tokens=False).input_ids)
        shown.append(detok.text[: detok._emitted])
    assert shown == ["a blue", "a blue ", "a blue ", "a blue square circle"]
    assert detok.matched_stop is None


def test_held_back_text_is_released_at_the_end(tokenizer):
    ids = tokenizer("a blue sq", add_special_tokens=False).input_ids
    detok, deltas = stream(tokenizer, ids, stop=["square"])
    assert detok.matched_stop is None
    assert "".join(deltas) == "a blue sq"
