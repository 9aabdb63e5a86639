"""The daemon end to end: the openai client, curl, the Unix socket, errors, metrics."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import threading
import time

try:  # openai 3 moved to httpx2 (same API); older releases use httpx
    import httpx2 as httpx
except ImportError:
    import httpx
import openai
import pytest
from daemon_harness import image_server, running_daemon
from parity import noise_image

pytestmark = pytest.mark.slow


def png_bytes(seed: int, size=(96, 80)) -> bytes:
    buffer = io.BytesIO()
    noise_image(seed, size).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    for i in range(3):
        (root / f"img{i}.png").write_bytes(png_bytes(i))
    (root / "broken.png").write_bytes(b"not an image at all")
    with image_server(root) as url:
        yield root, url


@pytest.fixture(scope="module")
def daemon(tiny_llama_llava, tmp_path_factory, media):
    root, _ = media
    tmp = tmp_path_factory.mktemp("daemon")
    with running_daemon(tiny_llama_llava, tmp, "--chat-template", "vicuna_v1.1", "--allow-private-image-urls",
                        "--allowed-local-media-path", str(root), "--served-model-name", "tiny-llava",
                        "--max-images-per-request", "4", "--decode-log-interval", "1") as d:
        yield d


@pytest.fixture(scope="module")
def client(daemon):
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", max_retries=0)


def ask(**kwargs) -> dict:
    return {"model": "tiny-llava", "max_tokens": 8, "temperature": 0, **kwargs}


# ----- openai client ----------------------------------------------------------------------


def test_openai_chat_with_a_data_uri_image(client):
    response = client.chat.completions.create(**ask(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"}, image_part(data_uri(png_bytes(0)))]}]))
    choice = response.choices[0]
    assert choice.finish_reason == "length" and response.usage.completion_tokens == 8
    assert response.usage.prompt_tokens > 256  # the image's tokens are counted
    assert response.usage.prompt_tokens_details.cached_tokens == 0
    assert isinstance(choice.message.content, str) and response.model == "tiny-llava"


def test_openai_streaming_matches_non_streaming(client):
    messages = [{"role": "user", "content": [image_part(data_uri(png_bytes(1))), {"type": "text", "text": "Hi"}]}]
    full = client.chat.completions.create(**ask(messages=messages, max_tokens=12)).choices[0].message.content
    chunks = list(client.chat.completions.create(**ask(messages=messages, max_tokens=12), stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full
    assert chunks[-1].usage.completion_tokens == 12
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_two_images_by_url_and_a_redirect(client, media):
    _, url = media
    content = [image_part(f"{url}/img0.png"), image_part(f"{url}/redirect/img1.png"),
               {"type": "text", "text": "Are there any differences between these two images?"}]
    by_url = client.chat.completions.create(**ask(messages=[{"role": "user", "content": content}]))
    inline = [image_part(data_uri(png_bytes(0))), image_part(data_uri(png_bytes(1))), content[2]]
    by_data = client.chat.completions.create(**ask(messages=[{"role": "user", "content": inline}]))
    assert by_url.choices[0].message.content == by_data.choices[0].message.content
    assert by_url.usage.prompt_tokens == by_data.usage.prompt_tokens > 512


def test_system_prompt_multi_turn_n_and_logprobs(client):
    response = client.chat.completions.create(**ask(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
                  {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Name a shape."}],
        n=2, temperature=1.0, seed=3, logprobs=True, top_logprobs=2))
    assert len(response.choices) == 2
    for choice in response.choices:
        assert len(choice.logprobs.content) == 8
        assert all(len(entry.top_logprobs) == 2 and entry.logprob <= 0 for entry in choice.logprobs.content)


def test_stop_string_is_reported(client):
    messages = [{"role": "user", "content": "Describe a red circle."}]
    text = client.chat.completions.create(**ask(messages=messages, max_tokens=20)).choices[0].message.content
    stop = next(text[i:i + 2] for i in range(3, len(text) - 2) if text[i:i + 2].isprintable())
    response = client.chat.completions.create(**ask(messages=messages, max_tokens=20, stop=[stop]))
    assert response.choices[0].finish_reason == "stop"
    assert response.choices[0].message.content == text[: text.index(stop)]


def test_completions_and_models(client):
    response = client.completions.create(model="tiny-llava", prompt="USER: hi ASSISTANT:", max_tokens=5,
                                         temperature=0)
    assert response.choices[0].finish_reason == "length" and response.usage.completion_tokens == 5
    assert [m.id for m in client.models.list().data] == ["tiny-llava"]


def test_openai_client_over_the_unix_socket(daemon):
    http_client = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)))
    client = openai.OpenAI(base_url="http://vlmctl/v1", api_key="unused", http_client=http_client, max_retries=0)
    response = client.chat.completions.create(**ask(messages=[{"role": "user", "content": [
        image_part(data_uri(png_bytes(2))), {"type": "text", "text": "What?"}]}]))
    assert response.usage.completion_tokens == 8
    assert oct(daemon.socket.stat().st_mode & 0o777) == "0o600"
    assert oct(daemon.socket.parent.stat().st_mode & 0o777) == "0o700"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_chat_completion(daemon):
    body = json.dumps(ask(messages=[{"role": "user", "content": "hello"}]))
    out = subprocess.run(["curl", "-s", "--unix-socket", str(daemon.socket), "http://x/v1/chat/completions",
                          "-H", "Content-Type: application/json", "-d", body],
                         capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout)["object"] == "chat.completion"


# ----- native routes -----------------------------------------------------------------------


def test_native_generate_with_url_base64_and_local_path(daemon, media):
    root, url = media
    sources = [f"{url}/img0.png", base64.b64encode(png_bytes(0)).decode(), str(root / "img0.png")]
    texts = []
    with daemon.uds_client() as http:
        for source in sources:
            r = http.post("/generate", json={"text": "USER: <image>\nWhat? ASSISTANT:", "image_data": source,
                                             "sampling_params": {"max_new_tokens": 6, "temperature": 0}})
            assert r.status_code == 200, r.text
            texts.append(r.json()["text"])
            assert r.json()["meta_info"]["completion_tokens"] == 6
    assert len(set(texts)) == 1


def test_local_path_outside_the_allowed_directory_is_refused(daemon, tmp_path):
    outside = tmp_path / "x.png"
    outside.write_bytes(png_bytes(0))
    with daemon.uds_client() as http:
        r = http.post("/generate", json={"text": "<image>\nhi", "image_data": str(outside)})
    assert r.status_code == 400 and "outside the allowed directory" in r.json()["error"]["message"]


def test_info_health_flush_and_openapi(daemon):
    with daemon.uds_client() as http:
        assert http.get("/get_model_info").json()["is_generation"] is True
        info = http.get("/get_server_info").json()
        assert info["kv_pool"]["num_total_tokens"] == 8192 and info["served_model_name"] == "tiny-llava"
        assert http.get("/health_generate").status_code == 200
        assert http.post("/flush_cache").status_code == 200
        spec = http.get("/openapi.json").json()
        assert {"/v1/chat/completions", "/generate", "/metrics"} <= set(spec["paths"])


def test_abort_request_by_rid(daemon):
    with daemon.uds_client() as http:
        result = {}

        def long_generate():
            result["r"] = http.post("/generate", json={"text": "USER: story ASSISTANT:", "rid": "long-one",
                                                       "sampling_params": {"max_new_tokens": 1500, "ignore_eos": True}})

        thread = threading.Thread(target=long_generate)
        thread.start()
        with daemon.uds_client() as other:
            for _ in range(100):
                if other.post("/abort_request", json={"rid": "long-one"}).status_code == 200:
                    break
                time.sleep(0.05)
        thread.join(60)
    meta = result["r"].json()["meta_info"]
    assert meta["finish_reason"]["type"] == "abort" and meta["completion_tokens"] < 1500


# ----- errors ------------------------------------------------------------------------------


ERROR_CASES = [
    ("invalid json", b"{not json", 400, None),
    ("wrong type", {"messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}, 400, "max_tokens"),
    ("bad temperature", {"messages": [{"role": "user", "content": "x"}], "temperature": -1}, 400, "temperature"),
    ("no messages", {"messages": []}, 400, "messages"),
    ("bad part", {"messages": [{"role": "user", "content": [{"type": "video"}]}]}, 400,
     "messages[0].content[0]"),
    ("bad base64", {"messages": [{"role": "user", "content": [image_part("data:image/png;base64,@@@")]}]}, 400,
     "messages"),
    ("undecodable", {"messages": [{"role": "user", "content": [image_part(data_uri(b"nope"))]}]}, 400, "messages"),
    ("too many images", {"messages": [{"role": "user", "content": [image_part(data_uri(png_bytes(0)))] * 5}]},
     400, "messages"),
    ("too long", {"messages": [{"role": "user", "content": "red circle " * 3000}]}, 400, "messages"),
    ("unknown model", {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
    ("ftp url", {"messages": [{"role": "user", "content": [image_part("ftp://example.invalid/x.png")]}]}, 400,
     "messages"),
]


@pytest.mark.parametrize("name, body, status, param", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_user_errors_are_openai_error_bodies(daemon, name, body, status, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with daemon.uds_client() as http:
        r = http.post("/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert error["param"] == param
        if name == "too long":
            assert error["code"] == "context_length_exceeded"
        # The daemon keeps serving.
        assert http.get("/health").status_code == 200


def test_unknown_route_is_404_json(daemon):
    with daemon.uds_client() as http:
        r = http.get("/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()


def test_broken_url_image_is_400(daemon, media):
    _, url = media
    with daemon.uds_client() as http:
        for path in ("broken.png", "missing.png"):
            r = http.post("/v1/chat/completions", json=ask(messages=[{"role": "user", "content": [
                image_part(f"{url}/{path}")]}]))
            assert r.status_code == 400, r.text


# ----- load, disconnects, metrics ----------------------------------------------------------


def wait_pool_empty(http: httpx.Client, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = http.get("/get_server_info").json()
        if info["kv_pool"]["num_used_tokens"] == 0 and info["num_running_reqs"] == 0:
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"pool not empty: {info}")
        time.sleep(0.1)


def test_disconnect_mid_stream_frees_the_pool(daemon):
    body = ask(messages=[{"role": "user", "content": "Tell a long story."}], max_tokens=1500, stream=True,
               ignore_eos=True)
    with daemon.uds_client() as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            received = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in received)
        with daemon.uds_client() as other:
            wait_pool_empty(other)
            # Aborted, not finished: 1500 tokens would take seconds longer.
            assert re.search(r'vlmctl_requests_total\{[^}]*status="abort"\} [1-9]', other.get("/metrics").text)


def abort_count(http) -> int:
    found = re.findall(r'vlmctl_requests_total\{[^}]*status="abort"\} (\d+)', http.get("/metrics").text)
    return int(found[0]) if found else 0


def test_disconnect_mid_request_aborts_it(daemon):
    body = ask(messages=[{"role": "user", "content": "Tell a long story."}], max_tokens=1500, ignore_eos=True)
    with daemon.uds_client() as http:
        before = abort_count(http)
        with pytest.raises(httpx.TimeoutException):
            http.post("/v1/chat/completions", json=body, timeout=0.5)
        wait_pool_empty(http, timeout=5)
        assert abort_count(http) == before + 1


def test_metrics_parse_as_prometheus_text(daemon, client):
    client.chat.completions.create(**ask(messages=[{"role": "user", "content": "hi"}]))
    with daemon.uds_client() as http:
        text = http.get("/metrics").text
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? -?[0-9.e+-]+(Inf)?$')
    for line in text.strip().splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    assert re.search(r'vlmctl_requests_total\{model_name="tiny-llava",status="length"\} [1-9]', text)
    assert re.search(r"vlmctl_time_to_first_token_seconds_count\{[^}]*\} [1-9]", text)


def test_metrics_stream_yields_records_while_requests_run(daemon, client):
    records = []

    def listen():
        with daemon.uds_client() as http, http.stream("GET", "/v1/metrics/stream") as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    records.append(json.loads(line[6:]))
                    if len(records) >= 3:
                        return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(0.5)
    client.chat.completions.create(**ask(messages=[{"role": "user", "content": "hi"}], max_tokens=6))
    thread.join(30)
    assert len(records) >= 3
    assert records[0]["kind"] == "prefill" and records[0]["line"].startswith("Prefill batch. #new-seq: 1")
    assert any(r["kind"] == "decode" for r in records)
