"""Train the bundled demo model: a 4.6 M-parameter LLaVA that answers about shapes and colours.

    python scripts/train_demo_model.py --out vlmctl/models/default

Everything is seeded; on 2 CPU cores the default schedule takes about 95 minutes. The recipe:

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
3. Language stage (2,000 steps of 48 conversations). Vision tower frozen (its features
   computed once); projector and Llama language model learn the answers, in conversations of
   one to three questions in shuffled order, a fifth of them about two images.
4. Joint stage (150 steps of 24). Everything trains together at a lower rate, the auxiliary
   vision losses kept so the slots stay put.

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

    def __init__(self, data: Data, tokenizer, shape: recipe.Shape, seed: int) -> None:
        self.data, self.tokenizer, self.shape = data, tokenizer, shape
        self.rng = random.Random(seed)
        self.image_id = tokenizer.convert_tokens_to_ids(recipe.IMAGE_TOKEN)
        held = set(data.held_scenes)
        self.singles = [i for i in range(len(data.scenes)) if i not in held]
        self.pairs = [p for p in data.pairs if p[0] not in held]

    def sample(self, pair_weight: float = 0.2) -> tuple[list[int], list[int], list[int]]:
        """(ids with one image token per image, loss mask, image indices)."""
        rng = self.rng
        if self.pairs and rng.random() < pair_weight:
            a, b, answer = rng.choice(self.pairs)
            qa = [(rng.choice(shapes.COMPARE_QUESTIONS), answer)]
            if rng.random() < 0.3:  # a follow-up about the first image
                qa.append(("How many shapes are there?", shapes.question_set(self.data.scenes[a], rng)["count"][1]))
            images = [a, b]
        else:
            index = rng.choice(self.singles)
            asked = shapes.question_set(self.data.scenes[index], rng)
            # Weighted toward the questions that need finding a named shape.
            kinds = rng.choices(shapes.QUESTION_TYPES, weights=(1.2, 1.5, 0.6, 1.3, 1.5), k=3)
            kinds = list(dict.fromkeys(kinds))[: rng.choice((1, 1, 2, 3))]
            qa = [asked[k] for k in kinds]
            images = [index]
        return *self.encode(qa, len(images)), images

    def encode(self, qa: list[tuple[str, str]], num_images: int) -> tuple[list[int], list[int]]:
        text = recipe.prompt(qa, num_images)
        enc = self.tokenizer(text, return_offsets_mapping=True)
        spans, cursor = [], 0
        for _, answer in qa:
            start = text.index(" " + answer + "</s>", cursor)
            cursor = start + len(answer) + 5
            spans.append((start, cursor))
        mask = [int(any(s <= a and b <= e for s, e in spans) and b > a) for a, b in enc.offset_mapping]
        return list(enc.input_ids), mask


def language_loss(model, conv: Conversations, batch: int, features_of) -> tuple[torch.Tensor, float]:
    """Next-token loss on answer tokens; features_of(image indices) -> [N, P, H] vision features."""
    shape = conv.shape
    samples = [conv.sample() for _ in range(batch)]
    image_list = [i for s in samples for i in s[2]]
    features = model.model.multi_modal_projector(features_of(image_list))
    rows, masks, image_rows = [], [], []
    for ids, mask, _ in samples:
        row, row_mask, where = [], [], []
        for t, m in zip(ids, mask):
            if t == conv.image_id:
                where.append(len(row))
                row += [0] * shape.image_tokens
                row_mask += [0] * shape.image_tokens
            else:
                row.append(t)
                row_mask.append(m)
        rows.append(row)
        masks.append(row_mask)
        image_rows.append(where)
    length = max(len(r) for r in rows)
    ids = torch.full((batch, length), conv.tokenizer.pad_token_id)
    loss_mask = torch.zeros(batch, length, dtype=torch.bool)
    attention = torch.zeros(batch, length, dtype=torch.long)
    for b, (row, m) in enumerate(zip(rows, masks)):
        ids[b, : len(row)] = torch.tensor(row)
        loss_mask[b, : len(row)] = torch.tensor(m, dtype=torch.bool)
        attention[b, : len(row)] = 1
    embeds = model.model.language_model.embed_tokens(ids).clone()
    image = iter(features)  # in the order the samples listed their images
    for b, where in enumerate(image_rows):
        for start in where:
            embeds[b, start: start + shape.image_tokens] = next(image)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=attention).last_hidden_state
    # predict token t+1 from position t; the loss is on answer tokens (and their </s>)
    target_mask = loss_mask[:, 1:]
    logits = model.lm_head(hidden[:, :-1][target_mask])
    targets = ids[:, 1:][target_mask]
    loss = F.cross_entropy(logits, targets)
    with torch.no_grad():
        accuracy = (logits.argmax(-1) == targets).float().mean().item()
    return loss, accuracy


def train_language(model, conv: Conversations, steps: int, batch: int, lr: float, features_of, params,
                   name: str, extra_loss=None, held_out=None) -> None:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    started = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * schedule(step, steps, 150)
        loss, accuracy = language_loss(model, conv, batch, features_of)
        if extra_loss is not None:
            loss = loss + extra_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            extra = held_out() if held_out is not None and (step % 1000 == 0 and step > 0 or step == steps - 1) else ""
            log(f"{name} {step}/{steps} loss {loss.item():.3f} token acc {accuracy:.3f} "
                f"{(time.time() - started) / (step + 1):.2f} s/step {extra}")


@torch.no_grad()
def greedy_check(model, tokenizer, data: Data, features_of, count: int = 100) -> str:
    """Exact match of greedy answers on held-out images, by question type (a quick proxy for
    the engine evaluation in scripts/eval_demo_model.py)."""
    model.eval()
    rng = random.Random(7)
    held = data.held_scenes[:count]
    right: dict[str, list[int]] = {k: [] for k in shapes.QUESTION_TYPES}
    image_id = tokenizer.convert_tokens_to_ids(recipe.IMAGE_TOKEN)
    for index in held:
        feats = model.model.multi_modal_projector(features_of([index]))[0]
        for kind, (question, answer) in shapes.question_set(data.scenes[index], rng).items():
            ids = tokenizer(recipe.prompt([(question, None)], 1)).input_ids
            at = ids.index(image_id)
            embeds = model.model.language_model.embed_tokens(torch.tensor(ids))
            embeds = torch.cat([embeds[:at], feats, embeds[at + 1:]])[None]
            out = []
            for _ in range(24):
                hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state
                token = int(model.lm_head(hidden[0, -1]).argmax())
                if token == tokenizer.eos_token_id:
                    break
                out.append(token)
                embeds = torch.cat([embeds, model.model.language_model.embed_tokens(torch.tensor([[token]]))], 1)
            right[kind].append(int(tokenizer.decode(out).strip() == answer))
    model.train()
    return "greedy " + " ".join(f"{k} {sum(v) / len(v):.2f}" for k, v in right.items())


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
    parser.add_argument("--stop-after", choices=("vision", "language"), help="end after this stage (experiments)")
    parser.add_argument("--resume", choices=("vision1", "vision2", "language"),
                        help="start after this stage's checkpoint (in --work)")
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
    stages = ("vision1", "vision2", "language")
    done = stages.index(args.resume) + 1 if args.resume else 0
    if args.resume:
        state = torch.load(args.work / f"{args.resume}.pt")
        model.load_state_dict(state["model"])
        heads.load_state_dict(state["heads"])
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

    conv = Conversations(data, tokenizer, shape, args.seed + 2)
    if done < 3:
        model.model.vision_tower.eval()
        with torch.no_grad():
            cached = torch.cat([patch_features(model, data.pixels[i: i + 256].float())
                                for i in range(0, len(data.pixels), 256)]).to(torch.float16)
        log("vision features cached")

        def cached_features(indices):
            return cached[indices].float()

        params = (list(model.model.multi_modal_projector.parameters())
                  + list(model.model.language_model.parameters()))
        train_language(model, conv, args.language_steps, args.batch, 1.5e-3, cached_features, params, "language",
                       held_out=lambda: greedy_check(model, tokenizer, data, cached_features, 30))
        torch.save({"model": model.state_dict(), "heads": heads.state_dict()}, args.work / "language.pt")
        del cached
        if args.stop_after == "language":
            return 0

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
