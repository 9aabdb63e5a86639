"""Server pieces that need no running daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmctl.daemon.frontend.images import ImageError
from vlmctl.daemon.frontend.media import MediaLimits, _address_allowed, decode_data_uri
from vlmctl.daemon.server.args import parse_args
from vlmctl.daemon.server.protocol import APIError, parse_chat
from vlmctl.daemon.server.state import ServerState


def test_queue_full_is_503_and_frees_on_release(tmp_path):
    config = parse_args(["--model", str(tmp_path), "--device", "cpu", "--max-running-requests", "1",
                         "--max-queued-requests", "1", "--socket", str(tmp_path / "s")])
    state = ServerState(config)
    with pytest.raises(APIError) as loading:
        state.admit()
    assert loading.value.status == 503 and "loading" in loading.value.message
    state.ready = True
    state.admit()
    state.admit()
    with pytest.raises(APIError) as full:
        state.admit()
    assert full.value.status == 503 and "capacity" in full.value.message
    state.release()
    state.admit()


@pytest.mark.parametrize("address, allowed", [
    ("8.8.8.8", True), ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.0.1", False),
    ("169.254.169.254", False), ("::1", False), ("::ffff:127.0.0.1", False), ("224.0.0.1", False),
    ("0.0.0.0", False), ("2606:4700:4700::1111", True),
])
def test_internal_addresses_are_refused(address, allowed):
    assert _address_allowed(address) is allowed


def test_data_uri_checks():
    limits = MediaLimits(max_image_bytes=10)
    assert decode_data_uri("data:image/png;base64,aGVsbG8=", limits) == b"hello"
    for uri, message in [("data:text/plain;base64,aGk=", "not an image"), ("data:image/png,abc", "base64"),
                         ("data:image/png;base64,!!!", "invalid base64"),
                         ("data:image/png;base64," + "A" * 100, "larger than")]:
        with pytest.raises(ImageError, match=message):
            decode_data_uri(uri, limits)


def test_chat_parsing_keeps_part_order_and_ignores_unknown_fields():
    chat = parse_chat({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "u", "detail": "high"}},
        {"type": "text", "text": "b"}]}], "unknown_field": 1, "max_completion_tokens": 7}, None)
    assert chat.messages[0].parts == [("text", "a"), ("image", "u"), ("text", "b")]
    assert chat.params.max_tokens == 7


def test_default_socket_is_in_the_user_runtime_directory(tmp_path):
    config = parse_args(["--model", str(tmp_path), "--device", "cpu"])
    assert config.socket.name == "vlmctl.sock" and config.socket.parent.name == "vlmctl"
    assert isinstance(config.socket, Path)
