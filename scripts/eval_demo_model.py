"""Measure the demo model through vlmctl's engine: exact match by question type.

    python scripts/eval_demo_model.py [--model vlmctl/models/default] [--per-type 300] [--seed 2026]

Scenes are drawn with a seed the training never used, rendered at random sizes (some as
JPEG) like the training images; every prompt goes through the engine (continuous batching,
paged KV cache, greedy decoding) as a served request would. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

from vlmctl import Engine, SamplingParams
from vlmctl.demo import recipe, shapes

BARS = {  # the quality bar of each row (issue 5)
    "describe, one shape": 0.98, "describe, two shapes": 0.90, "describe, three shapes": None,
    "count": 0.95, "colour of a named shape": 0.90, "position": 0.80, "yes/no": 0.80,
    "two-image differences": 0.80,
}
ROW = {"colour": "colour of a named shape", "count": "count", "where": "position", "yesno": "yes/no"}


def image(scene: shapes.Scene, rng: random.Random):
    return shapes.render(scene, shapes.random_image_size(rng), shapes.random_jpeg_quality(rng))


def cases(per_type: int, seed: int) -> list[tuple[str, str, list, str]]:
    """(row, prompt, images, expected answer)."""
    rng = random.Random(seed)
    out = []
    for count, row in ((1, "describe, one shape"), (2, "describe, two shapes"), (3, "describe, three shapes")):
        for _ in range(per_type):
            scene = shapes.random_scene(rng, count)
            question, answer = shapes.question_set(scene, rng)["describe"]
            out.append((row, recipe.prompt([(question, None)], 1), [image(scene, rng)], answer))
    for kind, row in ROW.items():
        for _ in range(per_type):
            scene = shapes.random_scene(rng)
            question, answer = shapes.question_set(scene, rng)[kind]
            out.append((row, recipe.prompt([(question, None)], 1), [image(scene, rng)], answer))
    for _ in range(per_type):
        scene = shapes.random_scene(rng)
        second, answer = shapes.difference_pair(scene, rng)
        if second is scene:
            second = shapes.Scene(scene.shapes, scene.background, rng.randrange(1 << 30))
        question = rng.choice(shapes.COMPARE_QUESTIONS)
        out.append(("two-image differences", recipe.prompt([(question, None)], 2),
                    [image(scene, rng), image(second, rng)], answer))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "vlmctl/models/default"))
    parser.add_argument("--per-type", type=int, default=300)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--show-errors", type=int, default=0, help="print this many wrong answers per row")
    args = parser.parse_args()

    all_cases = cases(args.per_type, args.seed)
    started = time.time()
    with Engine(model=args.model, device="cpu", dtype="float32") as engine:
        outputs = engine.generate([{"prompt": p, "images": images} for _, p, images, _ in all_cases],
                                  SamplingParams(max_tokens=40, temperature=0.0))
    elapsed = time.time() - started
    right: dict[str, list[bool]] = defaultdict(list)
    errors: dict[str, list[str]] = defaultdict(list)
    for (row, _, _, expected), output in zip(all_cases, outputs):
        got = output.text.strip()
        right[row].append(got == expected)
        if got != expected:
            errors[row].append(f"expected {expected!r}, got {got!r}")
    print("| question | images | exact match | bar |\n|---|---:|---:|---:|")
    results = {}
    for row, bar in BARS.items():
        hits = right[row]
        score = sum(hits) / len(hits)
        results[row] = {"n": len(hits), "exact_match": round(score, 4), "bar": bar}
        mark = "" if bar is None else (" ✓" if score >= bar else " ✗")
        print(f"| {row} | {len(hits)} | {100 * score:.1f}%{mark} | {'-' if bar is None else f'{100 * bar:.0f}%'} |")
    print(f"\n{len(all_cases)} requests through the engine in {elapsed:.0f} s (seed {args.seed})")
    for row, lines in errors.items():
        for line in lines[: args.show_errors]:
            print(f"  {row}: {line}")
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
