"""Offline throughput: vlmctl's engine against transformers' generate, same model, same run.

    python benchmarks/offline.py                       # tiny test model on the CPU
    python benchmarks/offline.py --mixed               # output lengths 16..128
    python benchmarks/offline.py --preset 7b --device cuda --dtype bfloat16

Workload: N requests (default 32), each one image (336 px) plus a ~20-token question, 64
output tokens with EOS ignored (or mixed lengths). Baselines, measured in the same process:
(a) transformers one request at a time, against the engine with no cap on its running
batch; (b) transformers in static batches of --batch-size, left-padded, against the engine
capped at the same running batch. Also a single request end to end. Every timing
is the best of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

QUESTIONS = [
    "What is in this image? Describe the shapes, their colours and where they are.",
    "Describe the image in one short sentence, naming every shape from left to right.",
    "How many shapes are in this picture, and which one of them is the largest here?",
    "Is there a green triangle in this image, and if so is it left of the red star?",
]


def make_requests(n: int, mixed: bool, seed: int = 0):
    rng = random.Random(seed)
    requests = []
    for i in range(n):
        pixels = np.random.default_rng(seed + i).integers(0, 256, (336, 336, 3), dtype=np.uint8)
        question = QUESTIONS[i % len(QUESTIONS)]
        length = rng.randint(16, 128) if mixed else 64
        requests.append((f"USER: <image>\n{question} ASSISTANT:", Image.fromarray(pixels), length))
    return requests


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class HFRunner:
    def __init__(self, path: Path, device: str, dtype: torch.dtype) -> None:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        self.processor = AutoProcessor.from_pretrained(path)
        self.processor.tokenizer.padding_side = "left"
        self.model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device).eval()
        self.model.generation_config.eos_token_id = None  # ignore EOS, as the engine does
        self.device = device

    @torch.inference_mode()
    def generate(self, batch) -> int:
        """Generate for a static batch; returns the number of useful tokens."""
        prompts, images, lengths = zip(*batch)
        inputs = self.processor(images=list(images), text=list(prompts), return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        self.model.generate(**inputs, max_new_tokens=max(lengths), do_sample=False,
                            pad_token_id=self.processor.tokenizer.pad_token_id)
        return sum(lengths)


REPEATS = 3


def timed(fn, device: str) -> tuple[float, object]:
    """Best wall time of REPEATS runs (a shared machine adds noise, never speed)."""
    best, result = float("inf"), None
    for _ in range(REPEATS):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def measure_transformers(path, device, dtype, requests, single, batch_size, num_serial) -> tuple[float, float, float]:
    """Seconds for: the single request, the first `num_serial` requests one by one, all
    requests in static batches."""
    hf = HFRunner(path, device, dtype)
    hf.generate(requests[:1])  # warm-up
    single_s, _ = timed(lambda: hf.generate(single), device)
    serial_s, _ = timed(lambda: [hf.generate([r]) for r in requests[:num_serial]], device)
    batches = [requests[i : i + batch_size] for i in range(0, len(requests), batch_size)]
    static_s, _ = timed(lambda: [hf.generate(b) for b in batches], device)
    return single_s, serial_s, static_s


def run(args) -> dict:
    from vlmctl import SamplingParams
    from vlmctl.testing.tiny_models import PRESETS, build_tiny_llava

    dtype = getattr(torch, args.dtype)
    if args.model:
        path = Path(args.model)
    else:
        path = Path(tempfile.mkdtemp(prefix="vlmctl-bench-")) / args.preset
        print(f"building the {args.preset} model in {path} ...", file=sys.stderr)
        build_tiny_llava(path, PRESETS[args.preset], device=args.device, dtype=dtype)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    requests = make_requests(args.num_requests, args.mixed)
    batch_size = args.batch_size or args.num_requests
    total = sum(r[2] for r in requests)

    def params(length):
        return SamplingParams(max_tokens=length, temperature=0.0, ignore_eos=True)

    single = [(requests[0][0], requests[0][1], 64)]
    num_serial = min(args.serial_requests or len(requests), len(requests))
    serial_tokens = sum(r[2] for r in requests[:num_serial])
    hf_single, hf_serial, hf_static = measure_transformers(
        path, args.device, dtype, requests, single, batch_size, num_serial
    )
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()

    prompts = [{"prompt": p, "images": [im]} for p, im, _ in requests]
    sampling = [params(n) for _, _, n in requests]
    # (a) uses the engine as deployed (every request may run at once); (b) caps it at the
    # static batches' size, so the two differ only in how batches are formed.
    ours_single, ours_all = run_engine(path, args, len(requests), prompts, sampling, single, measure_single=True)
    if batch_size < len(requests):
        _, ours_capped = run_engine(path, args, batch_size, prompts, sampling, single, measure_single=False)
    else:
        ours_capped = ours_all
    return {
        "machine": machine_name(args.device),
        "model": args.model or args.preset,
        "dtype": args.dtype,
        "num_requests": args.num_requests,
        "batch_size": batch_size,
        "output_lengths": "16-128 mixed" if args.mixed else "64",
        "total_tokens": total,
        "engine_tok_s": total / ours_all,
        "engine_capped_tok_s": total / ours_capped,
        "hf_serial_tok_s": serial_tokens / hf_serial,
        "serial_requests": num_serial,
        "hf_static_tok_s": total / hf_static,
        "ratio_vs_serial": (total / ours_all) / (serial_tokens / hf_serial),
        "ratio_vs_static": hf_static / ours_capped,
        "single_engine_s": ours_single,
        "single_hf_s": hf_single,
        "single_ratio": ours_single / hf_single,
    }


def run_engine(path, args, max_running, prompts, sampling, single, measure_single):
    """(single-request seconds or None, seconds for all prompts) with the engine."""
    from vlmctl import Engine, SamplingParams

    options = dict(device=args.device, dtype=args.dtype, max_running_requests=max_running, log_level="warning",
                   cpu_threads=args.cpu_threads or None)
    if args.max_total_tokens:
        options["max_total_tokens"] = args.max_total_tokens
    elif args.device == "cpu":
        options["max_total_tokens"] = 32768
    else:
        options["mem_fraction_static"] = 0.8
    greedy64 = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True)
    with Engine(str(path), **options) as engine:
        engine.generate(prompts[0], SamplingParams(max_tokens=4, temperature=0.0))  # warm-up
        single_s = None
        if measure_single:
            single_s, _ = timed(
                lambda: engine.generate({"prompt": single[0][0], "images": [single[0][1]]}, greedy64), "cpu"
            )
        all_s, outputs = timed(lambda: engine.generate(prompts, sampling), "cpu")
    assert sum(len(o.token_ids) for o in outputs) == sum(p.max_tokens for p in sampling)
    return single_s, all_s


def machine_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a LLaVA checkpoint folder (default: build one from --preset)")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "7b"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8, help="engine running batch and static batch size; "
                        "0 means all requests at once")
    parser.add_argument("--mixed", action="store_true", help="output lengths uniform in 16..128")
    parser.add_argument("--max-total-tokens", type=int, default=0)
    parser.add_argument("--cpu-threads", type=int, default=0, help="engine torch threads on CPU (default: cores - 1)")
    parser.add_argument("--serial-requests", type=int, default=0, help="measure transformers one at a time on "
                        "only the first N requests (its tokens/s; default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs for every timing")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = parser.parse_args()
    global REPEATS
    REPEATS = args.repeats
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    print(f"machine: {result['machine']}; model: {result['model']} ({result['dtype']}); "
          f"{result['num_requests']} requests, batch {result['batch_size']}, output {result['output_lengths']}")
    print(f"{'':34}{'tok/s':>10}")
    print(f"{'vlmctl engine':34}{result['engine_tok_s']:>10.1f}")
    print(f"{'vlmctl engine, batch capped':34}{result['engine_capped_tok_s']:>10.1f}")
    serial_note = "" if result["serial_requests"] == result["num_requests"] else f" ({result['serial_requests']} requests)"
    print(f"{'transformers, one at a time':34}{result['hf_serial_tok_s']:>10.1f}{serial_note}")
    print(f"{'transformers, static batches':34}{result['hf_static_tok_s']:>10.1f}")
    print(f"ratio (a) vs one at a time: {result['ratio_vs_serial']:.2f}x")
    print(f"ratio (b) vs static batches (engine capped at the same batch): {result['ratio_vs_static']:.2f}x")
    print(f"single request: engine {result['single_engine_s'] * 1000:.0f} ms, transformers "
          f"{result['single_hf_s'] * 1000:.0f} ms (engine/transformers = {result['single_ratio']:.2f})")


if __name__ == "__main__":
    main()
