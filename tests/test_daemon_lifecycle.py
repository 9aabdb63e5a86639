"""Starting, refusing to start, authenticating and stopping the daemon."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys

import pytest
from daemon_harness import daemon_command, free_port, image_server, running_daemon
from parity import noise_image

pytestmark = pytest.mark.slow
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def png_data_uri() -> str:
    buffer = io.BytesIO()
    noise_image(0, (64, 64)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def guarded(tiny_llama_llava, tmp_path_factory):
    """A daemon with an API key, a template that cannot place LLaVA's images, default URL rules."""
    with running_daemon(tiny_llama_llava, tmp_path_factory.mktemp("guarded"), "--api-key", "s3cret",
                        "--chat-template", "llama_3_vision") as daemon:
        yield daemon


def test_missing_or_wrong_api_key_is_401(guarded):
    with guarded.uds_client() as http:
        assert http.get("/health").status_code == 200  # health stays open for probes
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = http.get("/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert http.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_template_that_cannot_place_images_is_400_naming_the_option(guarded):
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri()}},
                                                      {"type": "text", "text": "What?"}]}]}
    with guarded.uds_client(headers={"Authorization": "Bearer s3cret"}) as http:
        r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and "--chat-template" in r.json()["error"]["message"]


def test_loopback_image_urls_are_refused_by_default(guarded, tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    with image_server(tmp_path) as url, guarded.uds_client(headers={"Authorization": "Bearer s3cret"}) as http:
        for image in (f"{url}/a.png", f"http://localhost:{url.rsplit(':', 1)[1]}/a.png"):
            r = http.post("/generate", json={"text": "hi", "image_data": image})
            assert r.status_code == 400
            assert "--allow-private-image-urls" in r.json()["error"]["message"]


def test_second_daemon_on_a_live_socket_exits_1(guarded, tiny_llama_llava):
    out = subprocess.run(daemon_command(tiny_llama_llava, guarded.socket, None), capture_output=True, text=True,
                         env=ENV, timeout=60)
    assert out.returncode == 1
    assert "already listening" in out.stderr
    assert guarded.socket.exists()


def test_sigterm_removes_the_socket(tiny_llama_llava, tmp_path):
    with running_daemon(tiny_llama_llava, tmp_path, port=False) as daemon:
        assert daemon.socket.exists()
        assert daemon.stop(signal.SIGTERM) == 0
        assert not daemon.socket.exists()


def test_sigterm_lets_in_flight_requests_finish(tiny_llama_llava, tmp_path):
    import threading

    with running_daemon(tiny_llama_llava, tmp_path, port=False) as daemon:
        result = {}

        def request():
            with daemon.uds_client() as http:
                result["r"] = http.post("/generate", json={"text": "USER: hi ASSISTANT:", "sampling_params": {
                    "max_new_tokens": 300, "ignore_eos": True}})

        thread = threading.Thread(target=request)
        thread.start()
        with daemon.uds_client() as http:  # wait until the engine is generating for it
            while http.get("/get_server_info").json()["num_running_reqs"] == 0:
                pass
        assert daemon.stop(signal.SIGTERM) == 0
        thread.join(30)
    response = result["r"]
    assert response.status_code == 200
    assert response.json()["meta_info"]["completion_tokens"] == 300


def test_stale_socket_is_replaced(tiny_llama_llava, tmp_path):
    import socket

    stale = tmp_path / "run" / "vlmctl.sock"
    stale.parent.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(stale))
    listener.close()  # the file stays, nobody listens: what a killed daemon leaves
    with running_daemon(tiny_llama_llava, tmp_path, port=False) as daemon:
        with daemon.uds_client() as http:
            assert http.get("/health").status_code == 200


def test_non_loopback_host_without_api_key_refuses_to_start(tiny_llama_llava, tmp_path):
    cmd = daemon_command(tiny_llama_llava, tmp_path / "s.sock", free_port()) + ["--host", "0.0.0.0"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=60)
    assert out.returncode == 1 and "--api-key" in out.stderr


@pytest.mark.parametrize("args, message", [
    (["--no-such-option"], "unrecognized arguments"),
    (["--max-running-requests", "0"], "must be at least 1"),
    (["--mem-fraction-static", "2"], "between 0 and 1"),
    (["--dtype", "int3"], "invalid choice"),
])
def test_bad_options_are_one_line_errors(tiny_llama_llava, tmp_path, args, message):
    cmd = daemon_command(tiny_llama_llava, tmp_path / "s.sock", None) + args
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_missing_model_fails_with_a_clear_message(tmp_path):
    cmd = [sys.executable, "-m", "vlmctl.daemon", "--model-path", str(tmp_path / "nothing"), "--socket",
           str(tmp_path / "s.sock"), "--device", "cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 1
    assert "neither a local folder nor a hub id" in out.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "s.sock").exists()
