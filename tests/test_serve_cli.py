"""``mmllm serve`` as a user starts it: the URL it prints answers, Ctrl-C stops it, unsafe flags are refused."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from mmllm_sdk.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_the_printed_url_serves_the_api_and_the_page_until_ctrl_c_exits_130(tmp_path):
    command = [sys.executable, "-m", "mmllm_sdk.cli", "serve", str(ROOT / "examples" / "tiny.yaml"), "--port", "0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = server.stdout.readline()
        url = re.search(r"on (http://127\.0\.0\.1:\d+) ", line).group(1)
        models = httpx.get(f"{url}/v1/models", timeout=30).json()
        assert models["data"][0]["id"] == "mmllm" and "image" in models["data"][0]["modalities"]["input"]
        assert "<title>" in httpx.get(f"{url}/", timeout=30).text
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
            timeout=60,
        )
        assert reply.status_code == 200
    finally:
        server.send_signal(signal.SIGINT)
        _, log = server.communicate(timeout=60)
    assert server.returncode == 130 and " POST /v1/chat/completions 200 " in log and "Traceback" not in log


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_a_non_loopback_host_needs_an_api_key(host, capsys, monkeypatch):
    monkeypatch.delenv("MMLLM_API_KEY", raising=False)
    assert main(["serve", str(ROOT / "examples" / "tiny.yaml"), "--host", host]) == 2
    assert f"--host {host} accepts connections from other machines, so it needs --api-key" in capsys.readouterr().err


def test_a_port_in_use_is_a_sentence(capsys):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = str(taken.getsockname()[1])
        assert main(["serve", str(ROOT / "examples" / "tiny.yaml"), "--port", port]) == 2
    finally:
        taken.close()
    assert f"Cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_the_api_key_may_come_from_the_environment(tmp_path):
    environment = {**os.environ, "MMLLM_API_KEY": "from-env"}
    command = [sys.executable, "-m", "mmllm_sdk.cli", "serve", str(ROOT / "examples" / "tiny.yaml"), "--port", "0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    try:
        url = re.search(r"on (http://127\.0\.0\.1:\d+) ", server.stdout.readline()).group(1)
        assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 401
        headers = {"Authorization": "Bearer from-env"}
        assert httpx.get(f"{url}/v1/models", headers=headers, timeout=30).status_code == 200
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=60)
