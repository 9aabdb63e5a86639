"""Each built-in chat template against the prompt its model family expects."""

from __future__ import annotations

import json

import pytest

from vlmctl.daemon.frontend.chat_templates import ChatMessage, TemplateError, load_chat_template

IMG = "https://example.invalid/cat.png"


def user(*parts):
    return ChatMessage("user", [("image", p[1:]) if p.startswith("@") else ("text", p) for p in parts])


def render(name, messages, image_token="<image>"):
    return load_chat_template(name, tokenizer=None, image_token=image_token).render(messages)


VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")
LLAVA_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content "
                "that the user provides, and assist the user with a variety of tasks using natural language.")


def test_vicuna_v1_1_is_llava_1_5s_prompt():
    out = render("vicuna_v1.1", [user("@" + IMG, "What is this?")])
    assert out.prompt == f"{VICUNA_SYSTEM} USER: <image>\nWhat is this? ASSISTANT:"
    assert out.images == [IMG] and out.stop == []


def test_vicuna_multi_turn_with_system_and_two_images():
    messages = [
        ChatMessage("system", [("text", "Be brief.")]),
        user("@a", "@b", "Compare."),
        ChatMessage("assistant", [("text", "They differ.")]),
        user("How?"),
    ]
    out = render("vicuna_v1.1", messages)
    # Several images in one message get bare tokens, as SGLang writes them.
    assert out.prompt == "Be brief. USER: <image><image>Compare. ASSISTANT: They differ.</s>USER: How? ASSISTANT:"
    assert out.images == ["a", "b"]


def test_chatml_llava():
    out = render("chatml-llava", [user("@x", "Describe.")])
    assert out.prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                          "<|im_start|>user\n<image>\nDescribe.<|im_end|>\n<|im_start|>assistant\n")
    assert out.stop == ["<|endoftext|>", "<|im_end|>"]


def test_llava_llama_3():
    out = render("llava_llama_3", [user("@x", "Describe.")])
    assert out.prompt == (f"<|start_header_id|>system<|end_header_id|>\n\n{LLAVA_SYSTEM}<|eot_id|>"
                          "<|start_header_id|>user<|end_header_id|>\n\n<image>\nDescribe.<|eot_id|>"
                          "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "<|eot_id|>" in out.stop


def test_llama_3_vision_uses_the_mllama_image_token():
    out = render("llama_3_vision", [user("@x", "Describe.")], image_token="<|image|>")
    assert "<|start_header_id|>user<|end_header_id|>\n\n<|image|>\nDescribe.<|eot_id|>" in out.prompt


def test_qwen2_vl():
    token = "<|vision_start|><|image_pad|><|vision_end|>"
    out = render("qwen2-vl", [user("@x", "Describe.")], image_token=token)
    assert out.prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                          f"<|im_start|>user\n{token}Describe.<|im_end|>\n<|im_start|>assistant\n")


def test_template_that_cannot_place_images_names_the_option():
    with pytest.raises(TemplateError, match="--chat-template"):
        render("llama_3_vision", [user("@x", "Describe.")], image_token="<image>")


def test_missing_template_asks_for_one():
    class NoTemplate:
        chat_template = None

    template = load_chat_template(None, NoTemplate(), "<image>")
    with pytest.raises(TemplateError, match="--chat-template"):
        template.render([user("hi")])


def test_json_file_in_sglang_format(tmp_path):
    spec = {"name": "mine", "system": "SYS", "system_message": "hello", "user": "U", "assistant": "A",
            "sep_style": "ADD_COLON_SINGLE", "sep": "\n", "stop_str": ["\nU"]}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(spec))
    out = render(str(path), [user("@x", "hi")])
    assert out.prompt == "SYS\nhello\nU: <image>\nhi\nA:"
    assert out.stop == ["\nU"]


def test_jinja_file_renders_through_the_tokenizer(tmp_path):
    from vlmctl.testing.tiny_models import build_tokenizer

    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}{{ m.role }}:{% for c in m.content %}"
                    "{% if c.type == 'image' %}<image>{% else %}{{ c.text }}{% endif %}{% endfor %}{{ '\\n' }}"
                    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    out = load_chat_template(str(path), build_tokenizer(), "<image>").render([user("@x", "hi")])
    assert out.prompt == "user:<image>hi\nassistant:"


def test_unknown_template_name_is_an_error():
    with pytest.raises(ValueError, match="neither a built-in"):
        load_chat_template("no-such-template", None, "<image>")
