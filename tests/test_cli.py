"""The installed `vlmctl` executable, with VLMCTL_HOME in a temporary directory."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_harness import image_server
from parity import noise_image

pytestmark = pytest.mark.slow
VLMCTL = shutil.which("vlmctl") or str(Path(sys.executable).parent / "vlmctl")


def write_config(home: Path, model: Path, **daemon) -> None:
    options = {"dtype": "float32", "device": "cpu", "max_total_tokens": 8192, **daemon}
    lines = [f'model = "{model}"', 'chat_template = "vicuna_v1.1"', "", "[daemon]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "config.toml").write_text("\n".join(lines) + "\n")


def vlmctl(home: Path, *args: str, input: bytes | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLMCTL_HOME": str(home), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    env.pop("VLMCTL_SOCKET", None)
    env.pop("VLMCTL_URL", None)
    return subprocess.run([VLMCTL, *args], env=env, input=input, capture_output=True, timeout=timeout)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_llama_llava):
    home = tmp_path_factory.mktemp("vlmctl-home")
    write_config(home, tiny_llama_llava, allow_private_image_urls=True, decode_log_interval=1)
    yield home
    vlmctl(home, "stop")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for i in range(2):
        noise_image(i, (120, 90)).save(root / f"img{i}.png")
    return root


def test_ask_starts_the_daemon_and_answers(home, images):
    out = vlmctl(home, "ask", str(images / "img0.png"), "What is in this image?", "--max-tokens", "6")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().strip()
    assert (home / "run" / "vlmctl.sock").exists()
    status = json.loads(vlmctl(home, "status", "--json").stdout)
    assert status["model_path"].endswith(Path(status["model_path"]).name) and status["pid"] > 0
    assert status["kv_tokens_total"] == 8192 and status["running_requests"] == 0


def test_ask_with_a_path_a_url_and_stdin(home, images):
    args = ("Describe.", "--max-tokens", "6", "--json")
    by_path = vlmctl(home, "ask", str(images / "img1.png"), *args)
    with image_server(images) as url:
        by_url = vlmctl(home, "ask", f"{url}/img1.png", *args)
    by_stdin = vlmctl(home, "ask", "-", *args, input=(images / "img1.png").read_bytes())
    usages = [json.loads(out.stdout)["usage"] for out in (by_path, by_url, by_stdin)]
    # The same image arrived each way: the same number of prompt tokens (text + image tokens).
    assert usages[0]["prompt_tokens"] > 256
    assert all(u == usages[0] for u in usages) and usages[0]["completion_tokens"] == 6
    streamed = vlmctl(home, "ask", str(images / "img1.png"), "Describe.", "--max-tokens", "6")
    assert streamed.returncode == 0 and streamed.stdout.endswith(b"\n")


def test_ask_json_and_compare(home, images):
    out = vlmctl(home, "ask", str(images / "img0.png"), "What?", "--json", "--max-tokens", "4")
    response = json.loads(out.stdout)
    assert response["usage"]["completion_tokens"] == 4 and response["usage"]["prompt_tokens"] > 256
    compare = vlmctl(home, "compare", str(images / "img0.png"), str(images / "img1.png"), "--max-tokens", "4",
                     "--json")
    assert json.loads(compare.stdout)["usage"]["prompt_tokens"] > 512


def test_metrics_follow_prints_step_lines_and_top_renders(home, images):
    env = {**os.environ, "VLMCTL_HOME": str(home), "NO_COLOR": "1"}
    follower = subprocess.Popen([VLMCTL, "metrics", "--follow"], env=env, stdout=subprocess.PIPE)
    time.sleep(1.0)
    assert vlmctl(home, "ask", str(images / "img0.png"), "What?", "--max-tokens", "4").returncode == 0
    top = vlmctl(home, "top")
    assert top.returncode == 0 and b"running requests" in top.stdout
    assert vlmctl(home, "metrics").stdout.startswith(b"# HELP")
    follower.terminate()
    lines = follower.communicate(timeout=10)[0].decode().splitlines()
    assert any(line.startswith("Prefill batch. #new-seq: 1") for line in lines)
    assert any(line.startswith("Decode batch.") for line in lines)


def test_chat_logs_and_restart(home, images):
    script = f"/image {images / 'img0.png'}\nWhat is this?\nAnd now?\n/clear\nHi\n/quit\n".encode()
    out = vlmctl(home, "chat", "--max-tokens", "3", input=script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(b">>> ") >= 5
    log = vlmctl(home, "logs", "-n", "200")
    assert log.returncode == 0 and b"Prefill batch." in log.stdout
    old = json.loads(vlmctl(home, "status", "--json").stdout)["pid"]
    assert vlmctl(home, "restart").returncode == 0
    new = json.loads(vlmctl(home, "status", "--json").stdout)["pid"]
    assert new != old and not pid_alive(old)


def test_models_lists_the_cache_and_pull_fails_cleanly_offline(tmp_path, tiny_llama_llava):
    snapshot = tmp_path / "hub" / "models--tiny--llava" / "snapshots" / "abc"
    shutil.copytree(tiny_llama_llava, snapshot)
    (tmp_path / "hub" / "models--tiny--llava" / "refs").mkdir()
    (tmp_path / "hub" / "models--tiny--llava" / "refs" / "main").write_text("abc")
    env = {**os.environ, "VLMCTL_HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([VLMCTL, "models"], env=env, capture_output=True, timeout=60)
    assert out.returncode == 0 and re.search(rb"tiny/llava\s+[\d.]+ (KB|MB)", out.stdout)
    pulled = subprocess.run([VLMCTL, "pull", "nobody/nothing-here"], env=env, capture_output=True, timeout=60)
    assert pulled.returncode == 1 and len(pulled.stderr.strip().splitlines()) == 1


def test_a_different_model_is_a_clear_error(home, images, tmp_path):
    out = vlmctl(home, "ask", "--model", str(tmp_path), str(images / "img0.png"), "What?")
    assert out.returncode == 1 and b"vlmctl restart --model" in out.stderr


def test_bench_runs_a_small_workload_and_prints_its_table(home):
    out = vlmctl(home, "bench", "--num-requests", "6", "--concurrency", "3", "--output-len", "5", "--image-size", "64")
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    for row in ("Successful requests", "Output token throughput (tok/s)", "Median TTFT (ms)", "P99 ITL (ms)"):
        assert row in text
    assert re.search(r"Successful requests\s+6\n", text) and re.search(r"Failed requests\s+0\n", text)
    data = json.loads(vlmctl(home, "bench", "-n", "4", "--request-rate", "50", "--output-len", "3", "--json").stdout)
    assert data["completed"] == 4 and data["total_output_tokens"] == 12 and data["ttft_ms"]["p99"] > 0


def test_stop_leaves_no_process_and_no_socket(home, images):
    pid = json.loads(vlmctl(home, "status", "--json").stdout)["pid"]
    env = {**os.environ, "VLMCTL_HOME": str(home), "NO_COLOR": "1"}
    follower = subprocess.Popen([VLMCTL, "metrics", "--follow"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    time.sleep(1.0)
    assert vlmctl(home, "stop").returncode == 0
    # metrics --follow ends by itself, cleanly, when the daemon goes.
    assert follower.wait(timeout=20) == 0
    assert not pid_alive(pid)
    assert not (home / "run" / "vlmctl.sock").exists()
    assert vlmctl(home, "status").returncode == 3


def test_idle_timeout_ends_an_auto_started_daemon(tmp_path, tiny_llama_llava, images):
    write_config(tmp_path, tiny_llama_llava, idle_timeout=300)
    out = vlmctl(tmp_path, "ask", str(images / "img0.png"), "What?", "--max-tokens", "2", "--idle-timeout", "2")
    assert out.returncode == 0
    pid = int((tmp_path / "run" / "vlmctl.pid").read_text())
    deadline = time.monotonic() + 30
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not pid_alive(pid)
    assert not (tmp_path / "run" / "vlmctl.sock").exists()
    assert "--idle-timeout" in (tmp_path / "logs" / "daemon.log").read_text()


@pytest.mark.parametrize("args", [
    ["no-such-command"], ["ask"], ["ask", "--max-tokens", "x", "a", "b"], ["compare", "one.png"],
    ["completions", "tcsh"], ["status", "--bogus"], ["ask", "--temperature", "-1", "q"],
])
def test_usage_errors_exit_2_with_one_line(tmp_path, args):
    out = vlmctl(tmp_path, *args)
    assert out.returncode == 2, out
    assert len(out.stderr.decode().strip().splitlines()) == 1 and out.stdout == b""


def test_unreachable_daemon_exits_3(tmp_path):
    for args in (["status"], ["metrics"], ["--url", "http://127.0.0.1:9", "status"]):
        out = vlmctl(tmp_path, *args)
        assert out.returncode == 3 and len(out.stderr.decode().strip().splitlines()) == 1


def test_no_model_at_all_is_a_clear_error(tmp_path, monkeypatch):
    """Without --model, a configured model or the bundled one (a build without package data)."""
    from vlmctl.cli import common

    monkeypatch.setenv("VLMCTL_HOME", str(tmp_path))
    monkeypatch.setattr(common, "bundled_model", lambda: None)
    with pytest.raises(common.CommandError, match="--model"):
        common.resolve_model(common.Globals(), None)
    assert common.resolve_model(common.Globals(), "some/model") == "some/model"


def test_missing_image_is_one_line(home):
    out = vlmctl(home, "ask", "/no/such/image.png", "What?")
    assert out.returncode == 1 and b"cannot read image" in out.stderr
