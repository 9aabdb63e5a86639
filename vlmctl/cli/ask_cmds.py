"""ask, compare, chat: questions about images, answered as they are generated."""

from __future__ import annotations

import base64
import json
import mimetypes
import sys
from pathlib import Path
from typing import Annotated

import typer

from vlmctl.cli.common import DEFAULT_IDLE_TIMEOUT, CommandError, Globals, UsageError, ensure_daemon, run

COMPARE_QUESTION = "Are there any differences between these images? Describe them."

Model = Annotated[str | None, typer.Option("--model", "-m", help="model to use; starts a daemon if none runs")]
MaxTokens = Annotated[int, typer.Option("--max-tokens", min=1, help="answer length limit")]
Temperature = Annotated[float, typer.Option("--temperature", min=0.0, help="0 is greedy")]
TopP = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)]
Seed = Annotated[int | None, typer.Option("--seed", help="reproducible sampling")]
System = Annotated[str | None, typer.Option("--system", help="system prompt")]
AsJson = Annotated[bool, typer.Option("--json", help="print the whole response as JSON")]
IdleTimeout = Annotated[float, typer.Option("--idle-timeout", min=1.0,
                                            help="seconds a daemon started here waits for requests before exiting")]


def register(app: typer.Typer) -> None:
    app.command()(ask)
    app.command()(compare)
    app.command()(chat)


def image_url(source: str) -> str:
    """A local path (or - for stdin) becomes a data URI; URLs go as they are."""
    if source.startswith(("http://", "https://", "data:")):
        return source
    if source == "-":
        data, mime = sys.stdin.buffer.read(), "application/octet-stream"
        if not data:
            raise CommandError("no image on standard input")
    else:
        path = Path(source).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read image {source}: {exc.strerror or exc}") from exc
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def build_body(images: list[str], question: str, system: str | None, max_tokens: int, temperature: float,
               top_p: float, seed: int | None) -> dict:
    content = [{"type": "image_url", "image_url": {"url": image_url(i)}} for i in images]
    content.append({"type": "text", "text": question})
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
    if seed is not None:
        body["seed"] = seed
    return body


async def answer(g: Globals, model: str | None, body: dict, as_json: bool,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> str:
    await ensure_daemon(g, model, idle_timeout)
    async with g.client() as client:
        if as_json:
            response = await client.post("/v1/chat/completions", body)
            print(json.dumps(response))
            return response["choices"][0]["message"]["content"]
        text = []
        async for event in client.events("POST", "/v1/chat/completions", {**body, "stream": True}):
            for choice in event.get("choices", []):
                delta = choice.get("delta", {}).get("content")
                if delta and not text:  # the answer's leading space (LLaVA answers start with one)
                    delta = delta.lstrip()
                if delta:
                    text.append(delta)
                    sys.stdout.write(delta)
                    sys.stdout.flush()
        sys.stdout.write("\n")
        return "".join(text)


def ask(ctx: typer.Context,
        args: Annotated[list[str], typer.Argument(help="IMAGE... QUESTION: paths, http(s) URLs or - for stdin")],
        model: Model = None, max_tokens: MaxTokens = 256, temperature: Temperature = 0.0, top_p: TopP = 1.0,
        seed: Seed = None, system: System = None, as_json: AsJson = False,
        idle_timeout: IdleTimeout = DEFAULT_IDLE_TIMEOUT):
    """Ask a question about one or more images; the answer streams to stdout.

    Examples:
      vlmctl ask photo.jpg "What's in this image?"
      curl -s https://example.com/cat.png | vlmctl ask - "What animal is this?"
    """
    *images, question = args
    if not question.strip():
        raise UsageError("the question is empty")
    body = build_body(images, question, system, max_tokens, temperature, top_p, seed)
    run(answer(ctx.obj, model, body, as_json, idle_timeout))


def compare(ctx: typer.Context,
            images: Annotated[list[str], typer.Argument(help="two or more images (paths, URLs, -)")],
            question: Annotated[str, typer.Option("--question", "-q", help="what to ask")] = COMPARE_QUESTION,
            model: Model = None, max_tokens: MaxTokens = 256, temperature: Temperature = 0.0, top_p: TopP = 1.0,
            seed: Seed = None, system: System = None, as_json: AsJson = False,
            idle_timeout: IdleTimeout = DEFAULT_IDLE_TIMEOUT):
    """Compare two or more images in one request.

    Example: vlmctl compare before.png after.png --question "What changed?"
    """
    if len(images) < 2:
        raise UsageError("compare needs at least two images")
    body = build_body(images, question, system, max_tokens, temperature, top_p, seed)
    run(answer(ctx.obj, model, body, as_json, idle_timeout))


def chat(ctx: typer.Context,
         images: Annotated[list[str] | None, typer.Argument(help="images to start the conversation with")] = None,
         model: Model = None, max_tokens: MaxTokens = 512, temperature: Temperature = 0.0, system: System = None,
         idle_timeout: IdleTimeout = DEFAULT_IDLE_TIMEOUT):
    """An interactive multi-turn chat. Commands: /image PATH, /clear, /quit.

    Example: vlmctl chat photo.jpg
    """
    g: Globals = ctx.obj
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    pending = [image_url(i) for i in images or []]
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    run(ensure_daemon(g, model, idle_timeout))
    while True:
        try:
            line = input(">>> ").strip()
        except EOFError:
            print()
            return
        if not line:
            continue
        if line in ("/quit", "/exit", "/bye"):
            return
        if line == "/clear":
            history, pending = history[:1] if system else [], []
            continue
        if line.startswith("/image "):
            pending.append(image_url(line.removeprefix("/image ").strip()))
            continue
        content = [{"type": "image_url", "image_url": {"url": url}} for url in pending]
        content.append({"type": "text", "text": line})
        history.append({"role": "user", "content": content})
        pending = []
        body = {"messages": history, "max_tokens": max_tokens, "temperature": temperature}
        reply = run(answer(g, None, body, False))
        history.append({"role": "assistant", "content": reply})
