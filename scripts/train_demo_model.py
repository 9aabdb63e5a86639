"""Train the bundled demo model: a 4.6 M-parameter LLaVA that answers about shapes and colours.

    python scripts/train_demo_model.py --out vlmctl/models/default

Everything is seeded; on 2 CPU cores the default schedule takes about two hours. The recipe:

1. Data. 36,000 scenes from vlmctl.demo.shapes rendered at sizes from 40 px to photo-sized
   (some as JPEG), squashed to 96 x 96 by the model's own image processor. A third of the
   scenes get a second image for the two-image difference question (a third of those the same
   scene drawn again). The last 512 scenes are held out.
2. Vision stage, two cycles (2,600 + 1,500 steps of 64 images). The CLIP vision tower alone,
   with auxiliary heads on its last layer (the layer LLaVA passes on): every patch learns the
   kind, colour and left-to-right rank of the shape covering it, and the first three patch
   tokens (top-left, always background) learn to hold the first, second and third shape from
   the left ("slots"), the fourth the count. The slots give the language model a fixed place
   to read each shape from. Shape kind is learned last, so the second cycle (a warm restart)
   adds weight to it.
3. Language stage, two cycles (2,000 steps of 48 conversations, then a warm restart of
   1,500). Vision tower frozen (its features computed once); projector and Llama language
   model learn the answers, in conversations of one to four questions in shuffled order, a
   quarter of them about two images. Two scaffolding losses help the language model find
   the shape a question names. Grounding (both cycles): every image token that carries a
   shape predicts that shape's colour, kind and position words through the tied word
   embedding, at the projector's output and at the last layer, so "triangle" in a question
   and the triangle's image tokens share a direction. Attention supervision (second cycle,
   --attend-weight): while an answer is written, one head in each of layers 1 and 2 is
   taught to look at the image tokens of the shape the question names (for the difference
   question, the shape that changed, in both images).
4. Joint stage (--joint-steps, none by default). Everything trains together at a lower rate,
   the auxiliary vision losses kept so the slots stay put.

The heads are training scaffolding and are not saved: the result is a plain
LlavaForConditionalGeneration checkpoint with its tokenizer, processor and chat template.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from vlmctl.demo import recipe, shapes

KINDS = ("none",) + shapes.SHAPES
COLOURS = ("none",) + tuple(shapes.COLOURS)
SLOTS = 3  # patch tokens 0..2 hold the shapes left to right; token 3 holds the count
COUNT_TOKEN = 3
_PROCESSOR = None


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


# --- data ---------------------------------------------------------------------------------

def labels(scene: shapes.Scene, size: tuple[int, int], shape: recipe.Shape) -> np.ndarray:
    """Per patch (kind, colour, rank) of the shape covering most of it (0 = background),
    with the slots and the count written over the first tokens."""
    grid = shape.image_size // shape.patch_size
    side = shape.image_size * 2  # draw at twice the resolution for coverage fractions
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    for index, item in enumerate(scene.shapes):
        points = shapes.outline(item, *size)
        draw.polygon([(x * side / size[0], y * side / size[1]) for x, y in points], fill=index + 1)
    cells = np.asarray(mask).reshape(grid, side // grid, grid, side // grid).transpose(0, 2, 1, 3).reshape(
        grid * grid, -1)
    out = np.zeros((grid * grid, 3), dtype=np.int64)
    for p, cell in enumerate(cells):
        counts = np.bincount(cell, minlength=len(scene.shapes) + 1)
        best = int(counts[1:].argmax()) + 1 if len(counts) > 1 else 0
        if counts[best] >= 0.2 * cell.size:
            item = scene.shapes[best - 1]
            out[p] = (KINDS.index(item.kind), COLOURS.index(item.colour), best)
    for k in range(SLOTS + 1):
        out[k] = (-1, -1, -1)
    for k, item in enumerate(scene.shapes):
        out[k] = (KINDS.index(item.kind), COLOURS.index(item.colour), -1)
    for k in range(len(scene.shapes), SLOTS):
        out[k] = (0, 0, -1)
    out[COUNT_TOKEN] = (-1, -1, len(scene.shapes))
    return out


def _render_one(args) -> tuple[np.ndarray, tuple[int, int]]:
    scene, seed, out_dir = args
    global _PROCESSOR
    if _PROCESSOR is None:
        from transformers import AutoImageProcessor

        _PROCESSOR = AutoImageProcessor.from_pretrained(out_dir)
    rng = random.Random(seed)
    size = shapes.random_image_size(rng)
    image = shapes.render(scene, size, shapes.random_jpeg_quality(rng))
    pixels = _PROCESSOR(images=[image], return_tensors="np")["pixel_values"][0].astype(np.float16)
    return pixels, size


class Data:
    """Scenes, their rendered pixels and labels; pairs for the difference question."""

    def __init__(self, count: int, seed: int, out_dir: Path, shape: recipe.Shape, cache: Path,
                 pair_fraction: float = 1 / 3, held: int = 512) -> None:
        rng = random.Random(seed)
        self.scenes = [shapes.random_scene(rng) for _ in range(count)]
        self.pairs: list[tuple[int, int, str]] = []  # (image a, image b, answer)
        jobs = [(scene, rng.randrange(1 << 30), str(out_dir)) for scene in self.scenes]
        for index, scene in enumerate(self.scenes):
            if rng.random() < pair_fraction:
                second, answer = shapes.difference_pair(scene, rng)
                if second is scene:  # drawn again: a new background sample and size
                    second = shapes.Scene(scene.shapes, scene.background, rng.randrange(1 << 30))
                self.pairs.append((index, len(jobs), answer))
                jobs.append((second, rng.randrange(1 << 30), str(out_dir)))
        started = time.time()
        key = f"{count}-{seed}-{pair_fraction}-{shape.image_size}"
        if cache.is_file() and (saved := torch.load(cache))["key"] == key:
            self.pixels, sizes = saved["pixels"], saved["sizes"]
        else:
            with mp.get_context("fork").Pool(2) as pool:
                results = pool.map(_render_one, jobs, chunksize=64)
            self.pixels = torch.from_numpy(np.stack([r[0] for r in results]))
            sizes = [r[1] for r in results]
            torch.save({"key": key, "pixels": self.pixels, "sizes": sizes}, cache)
        self.labels = torch.from_numpy(np.stack([labels(job[0], size, shape) for job, size in zip(jobs, sizes)]))
        self.image_scenes = [job[0] for job in jobs]
        # The last `held` scenes and their second images are never trained on.
        self.held_scenes = list(range(count - held, count))
        held_images = set(self.held_scenes) | {b for a, b, _ in self.pairs if a >= count - held}
        self.train_images = torch.tensor([i for i in range(len(jobs)) if i not in held_images])
        self.held_images = torch.tensor(sorted(held_images))
        log(f"{len(jobs)} images ({count} scenes, {len(self.pairs)} pairs) in {time.time() - started:.0f} s")


# --- vision stage -------------------------------------------------------------------------

class VisionHeads(torch.nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.kind_weight = 0.0
        self.norm = torch.nn.LayerNorm(hidden)
        self.kind = torch.nn.Linear(hidden, len(KINDS))
        self.colour = torch.nn.Linear(hidden, len(COLOURS))
        self.rank = torch.nn.Linear(hidden, SLOTS + 1)

    def loss(self, features: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """features: [B, P, H] patch tokens (CLS dropped); target: [B, P, 3]."""
        h = self.norm(features)
        kind, colour, rank = self.kind(h), self.colour(h), self.rank(h)
        losses = [F.cross_entropy(x.flatten(0, 1), target[..., i].flatten(), ignore_index=-1)
                  for i, x in enumerate((kind, colour, rank))]
        slot = slice(0, SLOTS)
        # Patches a shape covers (past the slot and count tokens): their kinds and logits.
        covered = target[:, SLOTS + 1:, 0] > 0
        covered_kind, covered_logits = target[:, SLOTS + 1:, 0][covered], kind[:, SLOTS + 1:][covered]
        with torch.no_grad():
            slot_ok = ((kind[:, slot].argmax(-1) == target[:, slot, 0]) &
                       (colour[:, slot].argmax(-1) == target[:, slot, 1])).all(-1).float().mean().item()
            count_ok = (rank[:, COUNT_TOKEN].argmax(-1) == target[:, COUNT_TOKEN, 2]).float().mean().item()
            dense_ok = (covered_logits.argmax(-1) == covered_kind).float().mean().item()
        slot_loss = (F.cross_entropy(kind[:, slot].flatten(0, 1), target[:, slot, 0].flatten())
                     + F.cross_entropy(colour[:, slot].flatten(0, 1), target[:, slot, 1].flatten()))
        fg_kind = F.cross_entropy(covered_logits, covered_kind) if covered.any() else 0.0
        total = sum(losses) + 2.0 * slot_loss + self.kind_weight * fg_kind
        return total, {"slots": slot_ok, "count": count_ok, "patch_kind": dense_ok}


def patch_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """What LLaVA passes on: the vision tower's last layer, CLS dropped."""
    tower = model.model.vision_tower
    out = tower(pixel_values=pixels, output_hidden_states=True)
    return out.hidden_states[-1][:, 1:]


def schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_vision(model, heads: VisionHeads, data: Data, steps: int, batch: int, lr: float, seed: int) -> None:
    params = list(model.model.vision_tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(seed)
    started = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * schedule(step, steps, 200)
        index = data.train_images[torch.randint(0, len(data.train_images), (batch,), generator=gen)]
        pixels = data.pixels[index].float()
        if torch.rand((), generator=gen) < 0.5:  # brightness/contrast jitter in normalised space
            pixels = pixels * (1 + 0.1 * torch.randn(batch, 1, 1, 1, generator=gen)) + 0.1 * torch.randn(
                batch, 3, 1, 1, generator=gen)
        loss, stats = heads.loss(patch_features(model, pixels), data.labels[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            held = evaluate_vision(model, heads, data)
            log(f"vision {step}/{steps} loss {loss.item():.3f} train {stats} held-out {held} "
                f"{(time.time() - started) / (step + 1):.2f} s/step")


@torch.no_grad()
def evaluate_vision(model, heads: VisionHeads, data: Data) -> dict[str, float]:
    model.eval()
    index = data.held_images
    _, stats = heads.loss(patch_features(model, data.pixels[index].float()), data.labels[index])
    model.train()
    return {k: round(v, 3) for k, v in stats.items()}


# --- language stages ----------------------------------------------------------------------

class Conversations:
    """Token ids with loss masks for conversations about the data's images."""

    def __init__(self, data: Data, tokenizer, shape: recipe.Shape, seed: int, pair_weight: float = 0.25) -> None:
        self.data, self.tokenizer, self.shape, self.pair_weight = data, tokenizer, shape, pair_weight
        self.rng = random.Random(seed)
        self.image_id = tokenizer.convert_tokens_to_ids(recipe.IMAGE_TOKEN)
        held = set(data.held_scenes)
        self.singles = [i for i in range(len(data.scenes)) if i not in held]
        self.pairs = [p for p in data.pairs if p[0] not in held]

    def sample(self) -> tuple[list[int], list[int], list[int], list[list[tuple[int, int]]]]:
        """(ids with one image token per image, answer number per token (0: not an answer),
        image indices, and per answer the (image, rank) of the shapes its question names)."""
        rng = self.rng
        if self.pairs and rng.random() < self.pair_weight:
            a, b, answer = rng.choice(self.pairs)
            qa = [(rng.choice(shapes.COMPARE_QUESTIONS), answer)]
            first, second = self.data.image_scenes[a].shapes, self.data.image_scenes[b].shapes
            changed = [r for r, (x, y) in enumerate(zip(first, second), 1) if x != y]
            named = [[(0, r) for r in changed] + [(1, r) for r in changed]]
            if rng.random() < 0.3:  # a follow-up about the first image
                qa.append(("How many shapes are there?", shapes.question_set(self.data.scenes[a], rng)["count"][1]))
                named.append([])
            images = [a, b]
        else:
            index = rng.choice(self.singles)
            scene = self.data.scenes[index]
            asked = shapes.question_set(scene, rng)
            # Weighted toward the questions that need finding a named shape.
            kinds = rng.choices(shapes.QUESTION_TYPES, weights=(1.0, 1.6, 0.5, 1.5, 1.6), k=4)
            kinds = list(dict.fromkeys(kinds))[: rng.choice((1, 1, 2, 3, 4))]
            qa = [asked[k] for k in kinds]
            named = [[(0, r)] if (r := named_shape(scene, k, asked[k][0])) else [] for k in kinds]
            images = [index]
        return *self.encode(qa, len(images)), images, named

    def encode(self, qa: list[tuple[str, str]], num_images: int) -> tuple[list[int], list[int]]:
        text = recipe.prompt(qa, num_images)
        enc = self.tokenizer(text, return_offsets_mapping=True)
        spans, cursor = [], 0
        for _, answer in qa:
            start = text.index(" " + answer + "</s>", cursor)
            cursor = start + len(answer) + 5
            spans.append((start, cursor))
        mask = [next((q + 1 for q, (s, e) in enumerate(spans) if s <= a and b <= e and b > a), 0)
                for a, b in enc.offset_mapping]
        return list(enc.input_ids), mask


def named_shape(scene: shapes.Scene, kind: str, question: str) -> int | None:
    """Rank (1 = leftmost) of the shape a question of this kind names, if it is in the scene."""
    for rank, item in enumerate(scene.shapes, 1):
        if kind == "colour" and (question.endswith(f"shape {item.position}?") or (
                question.endswith(f" {item.kind}?") and sum(s.kind == item.kind for s in scene.shapes) == 1)):
            return rank
        if kind in ("where", "yesno") and question.endswith(f" {item.name}?"):
            return rank
    return None


class Grounding(torch.nn.Module):
    """Language-stage scaffolding that ties image tokens to words.

    Every image token that carries a shape (the three slots, and the patches a shape covers)
    learns to predict, through the tied word embedding, that shape's colour, kind and
    position words: at the projector's output (what the language model's first layer reads)
    and at the language model's last layer. The image tokens of the red triangle then lie
    near the words "red" and "triangle", so a question's words can find them by attention.
    """

    def __init__(self, data: Data, tokenizer, shape: recipe.Shape) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(shape.text_hidden)

        def word(text: str) -> int:
            ids = tokenizer(" " + text, add_special_tokens=False).input_ids
            if len(ids) != 1:
                raise ValueError(f"{text!r} is not one token")
            return ids[0]

        words = {w: word(w) for w in (*shapes.COLOURS, *shapes.SHAPES, "left", "middle", "right")}
        # Per image, the words of its shape of rank r (1 to 3, left to right); row 0 is none.
        per_shape = torch.full((len(data.image_scenes), SLOTS + 1, 3), -1)
        for i, scene in enumerate(data.image_scenes):
            for r, item in enumerate(scene.shapes, 1):
                per_shape[i, r] = torch.tensor(
                    [words[item.colour], words[item.kind], words[item.position.split()[-1]]])
        rank = data.labels[..., 2].clone()  # patches: rank of the covering shape, 0 for none
        rank[:, COUNT_TOKEN] = 0  # the count token carries the count, not a shape
        count = torch.tensor([len(scene.shapes) for scene in data.image_scenes])
        for k in range(SLOTS):
            rank[:, k] = torch.where(k < count, k + 1, 0)
        self.rank = rank  # [N, P]: which shape (1 to 3) each image token carries, 0 for none
        self.targets = torch.gather(per_shape, 1, rank[..., None].expand(-1, -1, 3))  # [N, P, 3]

    def loss(self, logits: torch.Tensor, images: list[int]) -> torch.Tensor:
        """logits: [N, P, V] at the image tokens of `images`."""
        target = self.targets[images]
        keep = target[..., 0] >= 0
        logits, target = logits[keep], target[keep]
        return sum(F.cross_entropy(logits, target[:, j]) for j in range(3)) / 3


ATTEND = ((1, 0), (2, 0))  # (layer, head) pairs the attention supervision steers


def language_loss(model, conv: Conversations, batch: int, features_of, grounding: Grounding | None = None,
                  attend_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token loss on answer tokens, plus the grounding loss if given, plus (with
    attend_weight) attention supervision: while an answer is written, heads ATTEND look at
    the image tokens of the shape its question names (the one that changed, for the
    difference question). features_of(image indices) -> [N, P, H] vision features."""
    P = conv.shape.image_tokens
    samples = [conv.sample() for _ in range(batch)]
    image_list = [i for s in samples for i in s[2]]
    features = model.model.multi_modal_projector(features_of(image_list))
    rows, answers, image_rows = [], [], []
    for sample_ids, sample_answers, _, _ in samples:
        row, row_answer, where = [], [], []
        for t, q in zip(sample_ids, sample_answers):
            if t == conv.image_id:
                where.append(len(row))
                row += [0] * P
                row_answer += [0] * P
            else:
                row.append(t)
                row_answer.append(q)
        rows.append(row)
        answers.append(row_answer)
        image_rows.append(where)
    length = max(len(r) for r in rows)
    ids = torch.full((batch, length), conv.tokenizer.pad_token_id)
    answer_of = torch.zeros(batch, length, dtype=torch.long)
    attention = torch.zeros(batch, length, dtype=torch.long)
    for b, (row, q) in enumerate(zip(rows, answers)):
        ids[b, : len(row)] = torch.tensor(row)
        answer_of[b, : len(row)] = torch.tensor(q)
        attention[b, : len(row)] = 1
    embeds = model.model.language_model.embed_tokens(ids).clone()
    image = iter(features)  # in the order the samples listed their images
    for b, where in enumerate(image_rows):
        for start in where:
            embeds[b, start: start + P] = next(image)
    out = model.model.language_model(inputs_embeds=embeds, attention_mask=attention,
                                     output_attentions=attend_weight > 0)
    hidden = out.last_hidden_state
    # predict token t+1 from position t; the loss is on answer tokens (and their </s>)
    target_mask = answer_of[:, 1:] > 0
    logits = model.lm_head(hidden[:, :-1][target_mask])
    targets = ids[:, 1:][target_mask]
    loss = F.cross_entropy(logits, targets)
    stats = {}
    with torch.no_grad():
        stats["token_acc"] = (logits.argmax(-1) == targets).float().mean().item()
    if grounding is not None:
        embedding = model.model.language_model.embed_tokens.weight
        last = torch.stack([hidden[b, start: start + P] for b, where in enumerate(image_rows) for start in where])
        ground_loss = (grounding.loss(F.linear(grounding.norm(features), embedding), image_list)
                       + grounding.loss(model.lm_head(last), image_list))
        loss = loss + 0.5 * ground_loss
        stats["grounding"] = ground_loss.item()
    if attend_weight > 0:
        where_b, where_t, sets = [], [], []
        for b, (_, _, images, named) in enumerate(samples):
            for q, shapes_named in enumerate(named, 1):
                if not shapes_named:
                    continue
                target = torch.zeros(length, dtype=torch.bool)  # the named shape's image tokens
                for j, rank in shapes_named:
                    start = image_rows[b][j]
                    target[start: start + P] = grounding.rank[images[j]] == rank
                writing = (answer_of[b, 1:] == q).nonzero().flatten().tolist()  # positions writing answer q
                where_b += [b] * len(writing)
                where_t += writing
                sets += [target] * len(writing)
        if sets:
            sets = torch.stack(sets)
            attend = 0.0
            for layer, head in ATTEND:
                weights = out.attentions[layer][where_b, head, where_t]  # [M, T]
                mass = (weights * sets).sum(-1)
                attend = attend + -torch.log(mass + 1e-4).mean()
                stats[f"attend{layer}"] = mass.mean().item()
            loss = loss + attend_weight * attend / len(ATTEND)
    return loss, stats


def train_language(model, conv: Conversations, steps: int, batch: int, lr: float, features_of, params,
                   name: str, extra_loss=None, held_out=None, grounding: Grounding | None = None,
                   check_every: int = 500, attend_weight: float = 0.0) -> None:
    if grounding is not None:
        params = params + list(grounding.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    started = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * schedule(step, steps, 150)
        loss, stats = language_loss(model, conv, batch, features_of, grounding, attend_weight)
        if extra_loss is not None:
            loss = loss + extra_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            check = held_out is not None and (step % check_every == 0 and step > 0 or step == steps - 1)
            shown = " ".join(f"{k} {v:.3f}" for k, v in stats.items())
            log(f"{name} {step}/{steps} loss {loss.item():.3f} {shown} "
                f"{(time.time() - started) / (step + 1):.2f} s/step {held_out() if check else ''}")


@torch.no_grad()
def greedy_check(model, tokenizer, data: Data, features_of, count: int = 100) -> str:
    """Exact match of greedy answers on held-out images, by question type, and on held-out
    pairs for the difference question (a quick proxy for scripts/eval_demo_model.py)."""
    model.eval()
    rng = random.Random(7)
    image_id = tokenizer.convert_tokens_to_ids(recipe.IMAGE_TOKEN)

    def answer(question: str, images: list[int]) -> str:
        feats = iter(model.model.multi_modal_projector(features_of(images)))
        ids = tokenizer(recipe.prompt([(question, None)], len(images))).input_ids
        parts = [next(feats) if t == image_id else model.model.language_model.embed_tokens(torch.tensor([t]))
                 for t in ids]
        embeds = torch.cat(parts)[None]
        out = []
        for _ in range(24):
            hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state
            token = int(model.lm_head(hidden[0, -1]).argmax())
            if token == tokenizer.eos_token_id:
                break
            out.append(token)
            embeds = torch.cat([embeds, model.model.language_model.embed_tokens(torch.tensor([[token]]))], 1)
        return tokenizer.decode(out).strip()

    right: dict[str, list[int]] = {k: [] for k in (*shapes.QUESTION_TYPES, "differ")}
    for index in data.held_scenes[:count]:
        for kind, (question, expected) in shapes.question_set(data.scenes[index], rng).items():
            right[kind].append(int(answer(question, [index]) == expected))
    held = set(data.held_scenes)
    for a, b, expected in [p for p in data.pairs if p[0] in held][:count]:
        right["differ"].append(int(answer(shapes.COMPARE_QUESTIONS[0], [a, b]) == expected))
    model.train()
    return "greedy " + " ".join(f"{k} {sum(v) / max(1, len(v)):.2f}" for k, v in right.items())


# --- main ---------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("vlmctl/models/default"))
    parser.add_argument("--work", type=Path, default=Path("build/demo-model"), help="checkpoints between stages")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=36000)
    parser.add_argument("--vision-steps", type=int, default=2600)
    parser.add_argument("--language-steps", type=int, default=2000)
    parser.add_argument("--joint-steps", type=int, default=0)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--patch-size", type=int, default=recipe.Shape.patch_size)
    parser.add_argument("--vision-lr", type=float, default=5e-4)
    parser.add_argument("--vision-restart-steps", type=int, default=1500)
    parser.add_argument("--restart-kind-weight", type=float, default=1.0,
                        help="extra loss on shape kind where a shape is, in the second vision cycle")
    parser.add_argument("--images", type=Path, help="rendered-image cache (default: WORK/images.pt)")
    parser.add_argument("--check-every", type=int, default=500, help="steps between held-out greedy checks")
    parser.add_argument("--stop-after", choices=("vision", "language"), help="end after this stage (experiments)")
    parser.add_argument("--resume", choices=("vision1", "vision2", "language", "language2"),
                        help="start after this stage's checkpoint (in --work)")
    parser.add_argument("--vision-from", type=Path,
                        help="take the trained vision tower from this saved model and skip the vision stages")
    parser.add_argument("--no-grounding", action="store_true", help="language stage without the grounding loss")
    parser.add_argument("--language-restart-steps", type=int, default=1500,
                        help="steps of the language stage's second cycle (with attention supervision)")
    parser.add_argument("--attend-weight", type=float, default=1.0,
                        help="weight of the attention supervision in the second language cycle (0: none)")
    parser.add_argument("--pair-weight", type=float, default=0.25,
                        help="fraction of conversations about two images (the difference question)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    shape = recipe.Shape(patch_size=args.patch_size)
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer = recipe.build_tokenizer(shape.vocab_size, args.seed)
    processor = recipe.image_processor(shape)
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    config = recipe.llava_config(shape, tokenizer)
    model = LlavaForConditionalGeneration(config)
    # The processor first: the renderers load it from the output folder.
    args.out.mkdir(parents=True, exist_ok=True)
    LlavaProcessor(image_processor=processor, tokenizer=tokenizer, patch_size=shape.patch_size,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=recipe.CHAT_TEMPLATE).save_pretrained(args.out)
    log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, vocabulary {len(tokenizer)}")

    data = Data(args.scenes, args.seed + 1, args.out, shape, args.images or args.work / "images.pt")
    heads = VisionHeads(shape.vision_hidden)
    stages = ("vision1", "vision2", "language", "language2")
    done = stages.index(args.resume) + 1 if args.resume else 0
    if args.resume:
        state = torch.load(args.work / f"{args.resume}.pt")
        model.load_state_dict(state["model"])
        heads.load_state_dict(state["heads"])
    elif args.vision_from:
        trained = LlavaForConditionalGeneration.from_pretrained(args.vision_from)
        model.model.vision_tower.load_state_dict(trained.model.vision_tower.state_dict())
        del trained
        done = 2
        log(f"vision tower from {args.vision_from}")
    if done < 1:
        train_vision(model, heads, data, args.vision_steps, 64, args.vision_lr, args.seed)
        torch.save({"model": model.state_dict(), "heads": heads.state_dict()}, args.work / "vision1.pt")
    if done < 2:
        # A warm restart with extra weight on shape kind, which the first cycle learns last.
        heads.kind_weight = args.restart_kind_weight
        train_vision(model, heads, data, args.vision_restart_steps, 64, args.vision_lr, args.seed + 10)
        torch.save({"model": model.state_dict(), "heads": heads.state_dict()}, args.work / "vision2.pt")
    if args.stop_after == "vision":
        return 0

    conv = Conversations(data, tokenizer, shape, args.seed + 2, args.pair_weight)
    if args.no_grounding and args.attend_weight > 0:
        parser.error("--attend-weight needs the grounding (it finds a shape's image tokens through it)")
    grounding = None if args.no_grounding else Grounding(data, tokenizer, shape)
    if done < 4:
        model.model.vision_tower.eval()
        with torch.no_grad():
            cached = torch.cat([patch_features(model, data.pixels[i: i + 256].float())
                                for i in range(0, len(data.pixels), 256)]).to(torch.float16)
        log("vision features cached")

        def cached_features(indices):
            return cached[indices].float()

        params = (list(model.model.multi_modal_projector.parameters())
                  + list(model.model.language_model.parameters()))
        if done < 3:
            train_language(model, conv, args.language_steps, args.batch, 1.5e-3, cached_features, params,
                           "language", held_out=lambda: greedy_check(model, tokenizer, data, cached_features, 40),
                           grounding=grounding, check_every=args.check_every)
            torch.save({"model": model.state_dict(), "heads": heads.state_dict()}, args.work / "language.pt")
            if args.stop_after == "language":
                return 0
        # A warm restart that also steers two heads to the shape each question names.
        if args.attend_weight > 0:
            model.set_attn_implementation("eager")  # attention weights are only returned by eager
        train_language(model, conv, args.language_restart_steps, args.batch, 1e-3, cached_features, params,
                       "language2", held_out=lambda: greedy_check(model, tokenizer, data, cached_features, 40),
                       grounding=grounding, check_every=args.check_every, attend_weight=args.attend_weight)
        model.set_attn_implementation("sdpa")
        torch.save({"model": model.state_dict(), "heads": heads.state_dict()}, args.work / "language2.pt")
        del cached

    # Joint: the vision tower learns too, its auxiliary losses kept so the slots stay put.
    model.train()
    gen = torch.Generator().manual_seed(args.seed + 3)

    def live_features(indices):
        return patch_features(model, data.pixels[indices].float())

    def vision_aux():
        index = data.train_images[torch.randint(0, len(data.train_images), (16,), generator=gen)]
        return 0.3 * heads.loss(patch_features(model, data.pixels[index].float()), data.labels[index])[0]

    vision_params = list(model.model.vision_tower.parameters()) + list(heads.parameters())
    other = [p for name, p in model.named_parameters() if not name.startswith("model.vision_tower.")]
    train_language(model, conv, args.joint_steps, 24, 3e-4, live_features, vision_params + other, "joint",
                   extra_loss=vision_aux, held_out=lambda: greedy_check(model, tokenizer, data, live_features, 30))

    model.eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(args.out)
    (args.out / "training.json").write_text(json.dumps({
        "shape": asdict(shape), "args": {k: str(v) for k, v in vars(args).items()},
        "torch": torch.__version__, "python": sys.version.split()[0],
    }, indent=2) + "\n")
    log(f"saved to {args.out}: {greedy_check(model, tokenizer, data, live_features, 100)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
