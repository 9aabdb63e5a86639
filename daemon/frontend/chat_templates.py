"""Chat templates: OpenAI messages -> one prompt string with an image token per image.

Three kinds, behind `ChatTemplate.render`:
- built-in conversation templates named as SGLang names them (`vicuna_v1.1`, `chatml-llava`,
  `llama_3_vision`, `llava_llama_3`, `qwen2-vl`), producing the same strings;
- the model's own Jinja template (the default), through the tokenizer;
- a file: a Jinja template, or a JSON file in SGLang's conversation format.
"""

from __future__ import annotations

import enum
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vlmctl.daemon.engine.sampling_params import InvalidRequest


class TemplateError(InvalidRequest):
    """The messages cannot be rendered with the configured chat template."""


@dataclass(slots=True)
class ChatMessage:
    """One message after validation: text and image parts in order."""

    role: str
    parts: list[tuple[str, Any]]  # ("text", str) or ("image", source)

    @property
    def num_images(self) -> int:
        return sum(1 for kind, _ in self.parts if kind == "image")

    def text_only(self, what: str) -> str:
        if self.num_images:
            raise TemplateError(f"{what} messages cannot hold images")
        return "".join(value for _, value in self.parts)


@dataclass(slots=True)
class RenderedChat:
    prompt: str
    images: list[Any]  # image sources in prompt order
    stop: list[str] = field(default_factory=list)  # the template's own stop strings


class Style(enum.Enum):
    ADD_COLON_SINGLE = "ADD_COLON_SINGLE"
    ADD_COLON_TWO = "ADD_COLON_TWO"
    NO_COLON_SINGLE = "NO_COLON_SINGLE"
    ADD_NEW_LINE_SINGLE = "ADD_NEW_LINE_SINGLE"
    CHATML = "CHATML"
    LLAMA3 = "LLAMA3"


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation template in SGLang's (FastChat's) model."""

    name: str
    roles: tuple[str, str]
    style: Style
    sep: str
    sep2: str = ""
    system_template: str = "{system_message}"
    system_message: str = ""
    stop: tuple[str, ...] = ()
    image_token: str = "<image>"

    def format(self, system: str, turns: list[tuple[str, str | None]]) -> str:
        """`turns` alternate user/assistant; the last is (assistant, None) to generate."""
        head = self.system_template.format(system_message=system)
        style = self.style
        if style is Style.ADD_COLON_TWO:
            seps = (self.sep, self.sep2)
            out = head + seps[0]
            for i, (role, text) in enumerate(turns):
                out += f"{role}: {text}{seps[i % 2]}" if text else f"{role}:"
            return out
        if style is Style.ADD_COLON_SINGLE:
            out = head + self.sep
            for role, text in turns:
                out += f"{role}: {text}{self.sep}" if text else f"{role}:"
            return out
        if style is Style.NO_COLON_SINGLE:
            out = head
            for role, text in turns:
                out += f"{role}{text}{self.sep}" if text else role
            return out
        if style is Style.ADD_NEW_LINE_SINGLE:
            out = head + self.sep if head else ""
            for role, text in turns:
                out += f"{role}\n{text}{self.sep}" if text else f"{role}\n"
            return out
        if style is Style.CHATML:
            out = head + self.sep + "\n" if head else ""
            for role, text in turns:
                out += f"{role}\n{text}{self.sep}\n" if text else f"{role}\n"
            return out
        # LLAMA3: the system block only when there is a system message.
        out = head if system else ""
        for role, text in turns:
            out += f"<|start_header_id|>{role}<|end_header_id|>\n\n"
            if text:
                out += f"{text.strip()}<|eot_id|>"
        return out


_LLAVA_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)
BUILTIN: dict[str, Conversation] = {
    "vicuna_v1.1": Conversation(
        "vicuna_v1.1", ("USER", "ASSISTANT"), Style.ADD_COLON_TWO, " ", "</s>",
        system_message="A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    ),
    "chatml-llava": Conversation(
        "chatml-llava", ("<|im_start|>user", "<|im_start|>assistant"), Style.CHATML, "<|im_end|>",
        system_template="<|im_start|>system\n{system_message}", system_message="You are a helpful assistant.",
        stop=("<|endoftext|>", "<|im_end|>"),
    ),
    "llama_3_vision": Conversation(
        "llama_3_vision", ("user", "assistant"), Style.LLAMA3, "",
        system_template="<|start_header_id|>system<|end_header_id|>\n\n{system_message}<|eot_id|>",
        system_message=_LLAVA_SYSTEM, stop=("<|end_of_text|>", "<|eot_id|>"), image_token="<|image|>",
    ),
    "llava_llama_3": Conversation(
        "llava_llama_3", ("user", "assistant"), Style.LLAMA3, "",
        system_template="<|start_header_id|>system<|end_header_id|>\n\n{system_message}<|eot_id|>",
        system_message=_LLAVA_SYSTEM, stop=("<|end_of_text|>", "<|eot_id|>"),
    ),
    "qwen2-vl": Conversation(
        "qwen2-vl", ("<|im_start|>user", "<|im_start|>assistant"), Style.ADD_NEW_LINE_SINGLE, "<|im_end|>\n",
        system_template="<|im_start|>system\n{system_message}", system_message="You are a helpful assistant.",
        stop=("<|im_end|>",), image_token="<|vision_start|><|image_pad|><|vision_end|>",
    ),
}


class ChatTemplate(ABC):
    """Renders validated messages; `image_token` is what the model's processor expects."""

    def __init__(self, name: str, image_token: str | None) -> None:
        self.name = name
        self.model_image_token = image_token

    @abstractmethod
    def render(self, messages: list[ChatMessage]) -> RenderedChat:
        """The prompt with one image token per image, the images in order, and the
        template's own stop strings; TemplateError when the messages cannot be rendered."""

    def check_images(self, rendered: RenderedChat) -> RenderedChat:
        """A template that drops or misplaces images is an error, never a text-only answer."""
        if not rendered.images:
            return rendered
        token = self.model_image_token
        found = rendered.prompt.count(token) if token else 0
        if found != len(rendered.images):
            raise TemplateError(
                f"the chat template {self.name!r} placed {found} image token(s) {token!r} for "
                f"{len(rendered.images)} image(s); start the daemon with a --chat-template that "
                "places images for this model (for example vicuna_v1.1 for LLaVA-1.5)"
            )
        return rendered


class ConversationTemplate(ChatTemplate):
    def __init__(self, conversation: Conversation, image_token: str | None) -> None:
        super().__init__(conversation.name, image_token)
        self.conversation = conversation

    def render(self, messages: list[ChatMessage]) -> RenderedChat:
        conv = self.conversation
        system = conv.system_message
        turns: list[tuple[str, str | None]] = []
        images: list[Any] = []
        for message in messages:
            if message.role in ("system", "developer"):
                system = message.text_only("system")
            elif message.role == "user":
                turns.append((conv.roles[0], self._user_text(message, images)))
            elif message.role == "assistant":
                turns.append((conv.roles[1], message.text_only("assistant")))
            else:
                raise TemplateError(f"unknown message role {message.role!r}")
        turns.append((conv.roles[1], None))
        rendered = RenderedChat(conv.format(system, turns), images, list(conv.stop))
        return self.check_images(rendered)

    def _user_text(self, message: ChatMessage, images: list[Any]) -> str:
        # As SGLang: one image in a message gets the token and a newline; several get bare tokens.
        token = self.conversation.image_token
        if message.num_images == 1 and "qwen2" not in self.conversation.name:
            token += "\n"
        text = ""
        for kind, value in message.parts:
            if kind == "text":
                text += value
            else:
                text += token
                images.append(value)
        return text


class JinjaTemplate(ChatTemplate):
    """The model's own template (or a Jinja file), rendered by the tokenizer."""

    def __init__(self, tokenizer, template: str | None, name: str, image_token: str | None) -> None:
        super().__init__(name, image_token)
        self.tokenizer = tokenizer
        self.template = template

    def render(self, messages: list[ChatMessage]) -> RenderedChat:
        images: list[Any] = []
        converted = []
        for message in messages:
            content = []
            for kind, value in message.parts:
                if kind == "text":
                    content.append({"type": "text", "text": value})
                else:
                    content.append({"type": "image"})
                    images.append(value)
            converted.append({"role": message.role, "content": content})
        try:
            prompt = self.tokenizer.apply_chat_template(
                converted, chat_template=self.template, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # jinja raises many types; all mean "cannot render"
            raise TemplateError(f"the chat template {self.name!r} failed on these messages: {exc}") from exc
        return self.check_images(RenderedChat(prompt, images))


class MissingTemplate(ChatTemplate):
    def render(self, messages: list[ChatMessage]) -> RenderedChat:
        raise TemplateError(
            "this model has no chat template; start the daemon with --chat-template NAME "
            f"(one of {', '.join(BUILTIN)}) or --chat-template FILE"
        )


def load_chat_template(spec: str | None, tokenizer, image_token: str | None) -> ChatTemplate:
    """A built-in name, a .jinja/.json file, or None for the model's own template."""
    if spec is None:
        if getattr(tokenizer, "chat_template", None):
            return JinjaTemplate(tokenizer, None, "the model's own", image_token)
        return MissingTemplate("none", image_token)
    if spec in BUILTIN:
        return ConversationTemplate(BUILTIN[spec], image_token)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ValueError(
            f"--chat-template {spec!r} is neither a built-in ({', '.join(BUILTIN)}) nor a file"
        )
    text = path.read_text()
    if path.suffix == ".json":
        return ConversationTemplate(_conversation_from_json(text, path), image_token)
    return JinjaTemplate(tokenizer, text, path.name, image_token)


def _conversation_from_json(text: str, path: Path) -> Conversation:
    """SGLang's JSON template format: name, system, user, assistant, sep_style, sep, stop_str."""
    try:
        data = json.loads(text)
        style = Style[data["sep_style"]]
        conversation = Conversation(
            name=data.get("name", path.stem), roles=(data["user"], data["assistant"]), style=style,
            sep=data.get("sep", "\n"), sep2=data.get("sep2", ""),
            system_template=data.get("system", "") + "\n{system_message}",
            system_message=data.get("system_message", ""),
            stop=tuple([data["stop_str"]] if isinstance(data.get("stop_str"), str) else data.get("stop_str") or ()),
        )
    except (KeyError, ValueError, TypeError) as exc:
        styles = ", ".join(s.name for s in Style)
        raise ValueError(
            f"{path} is not a chat template in SGLang's JSON format (name, system, user, assistant, "
            f"sep_style in {styles}, sep, stop_str): {exc}"
        ) from exc
    if "image_token" in data:
        conversation = replace(conversation, image_token=data["image_token"])
    return conversation
