"""The adapter behind the real service binary (`HITL_BIN`, built by `cargo build`; `.ci/run`
sets it), with its embedded PostgreSQL: two tool approvals in one turn answered one by
one across restarts of both, the service killed while the resumed call is in flight, and a
bad signature failing the run."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).parent
TOKEN = "e2e-token-0123456789abcdef"
SECRET = "e2e-signing-secret-0123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_binary() -> str:
    path = os.environ.get("HITL_BIN")
    assert path and Path(path).is_file(), (
        "set HITL_BIN to the built service binary (cargo build; .ci/run does this)"
    )
    return path


class Service:
    """`hitl-orchestrator serve` on a free port with its embedded PostgreSQL in `data`."""

    def __init__(self, data: Path, agent_port: int):
        self.env = dict(os.environ, HITL_DATA_DIR=str(data), API_KEY=TOKEN,
                        LISTEN_ADDR="127.0.0.1:0", RUST_LOG="warn",
                        HITL_AGENT_ALLOWED_URLS=f"http://127.0.0.1:{agent_port}/",
                        HITL_AGENT_SIGNING_SECRET=SECRET, HITL_AGENT_BACKOFF="100ms",
                        HITL_AGENT_BACKOFF_MAX="500ms", HITL_WORKER_HEARTBEAT="200ms",
                        HITL_WORKER_ORPHAN_TIMEOUT="1s")
        self.data = data
        self.process = None
        self.base = None

    def start(self):
        self.process = subprocess.Popen([service_binary(), "serve"], env=self.env,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        found = {}

        def read():
            for line in self.process.stdout:
                if "listening on " in line and "url" not in found:
                    found["url"] = line.split("listening on ", 1)[1].strip()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 60
        while "url" not in found:
            assert self.process.poll() is None, "the service exited at start"
            assert time.monotonic() < deadline, "the service did not start listening"
            time.sleep(0.05)
        self.base = found["url"]
        return self

    def stop(self, sig=signal.SIGTERM):
        self.process.send_signal(sig)
        self.process.wait(timeout=30)

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"authorization": f"Bearer {TOKEN}",
                                                  "content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def wait_for(self, run, status, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            code, snap = self.call("GET", f"/api/runs/{run}")
            assert code == 200, snap
            if snap["status"] == status:
                return snap
            assert time.monotonic() < deadline, f"run never got {status}: {snap['status']} {snap.get('statusReason')}"
            time.sleep(0.1)

    def stop_database(self):
        # A killed service leaves its postmaster running for the next start to adopt.
        for pid_file in self.data.rglob("postmaster.pid"):
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass


class Adapter:
    """tests/demo_agent.py served on `port`."""

    def __init__(self, port, store, log, secret=SECRET):
        self.args = [sys.executable, str(HERE / "demo_agent.py"), str(port), str(store), secret]
        self.log = log
        self.port = port
        self.process = None

    def start(self, delay=0.0):
        env = dict(os.environ, DEMO_TOOL_LOG=str(self.log), DEMO_TOOL_DELAY=str(delay))
        self.process = subprocess.Popen(self.args, env=env, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                assert time.monotonic() < deadline, "the adapter did not start"
                time.sleep(0.05)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)

    def lines(self, prefix):
        if not self.log.exists():
            return []
        return [l.split(" ", 1)[1] for l in self.log.read_text().splitlines() if l.startswith(prefix + " ")]


def plan(port):
    return {"nodes": [{"id": "tools", "type": "task", "capability": "agent.webhook",
                       "input": {"prompt": "Launch the post"},
                       "config": {"url": f"http://127.0.0.1:{port}/agent"}}]}


@pytest.fixture
def world(tmp_path):
    port = free_port()
    service = Service(tmp_path / "data", port)
    adapter = Adapter(port, tmp_path / "answers.sqlite", tmp_path / "tools.log")
    yield service, adapter
    for p in (service.process, adapter.process):
        if p and p.poll() is None:
            p.kill()
            p.wait()
    service.stop_database()


def test_two_approvals_survive_restarts_and_a_kill_mid_call_and_each_tool_runs_at_most_once(world):
    service, adapter = world
    service.start()
    adapter.start()
    code, created = service.call("POST", "/api/runs", {
        "brief": {"title": "Launch", "content": {}}, "plan": plan(adapter.port)})
    assert code == 202, created
    run = created["runId"]
    parked = service.wait_for(run, "awaiting_hitl")
    request = parked["hitlRequests"][0]
    assert [i["itemId"] for i in request["items"]] == ["call_mail", "call_rm"]
    assert request["items"][0]["tool"] == {"name": "send_email", "arguments": {"to": "press@example.com"}}

    # Both restart before the operator answers.
    service.stop()
    adapter.stop()
    service.start()
    adapter.start(delay=3)
    answers = [{"itemId": "call_mail", "responseType": "approval", "approved": True},
               {"itemId": "call_rm", "responseType": "rejection", "freeformText": "keep the old draft"}]
    code, accepted = service.call("POST", "/api/hitl/resume", {
        "runId": run, "requestId": request["requestId"], "responses": answers,
        "operator": {"id": "op-7", "displayName": "Ops"}})
    assert code == 202, accepted

    # The service dies while the resumed call is running its tool, and comes back.
    deadline = time.monotonic() + 30
    while not adapter.lines("start"):
        assert time.monotonic() < deadline, "the approved tool never started"
        time.sleep(0.05)
    service.stop(signal.SIGKILL)
    service.start()
    done = service.wait_for(run, "completed")
    assert adapter.lines("ran") == ["send_email press@example.com"], "approved ran once, rejected never"
    assert "call_rm: keep the old draft" in done["executionContext"]["tools"], done["executionContext"]


def test_a_call_with_a_bad_signature_is_refused_and_the_run_fails_naming_it(world, tmp_path):
    service, _ = world
    impostor = Adapter(int(service.env["HITL_AGENT_ALLOWED_URLS"].rsplit(":", 1)[1].strip("/")),
                       tmp_path / "other.sqlite", tmp_path / "other.log", secret="another-secret-0123")
    service.start()
    impostor.start()
    try:
        code, created = service.call("POST", "/api/runs", {
            "brief": {"title": "Launch", "content": {}}, "plan": plan(impostor.port)})
        assert code == 202, created
        failed = service.wait_for(created["runId"], "failed")
        assert "X-Hitl-Signature" in failed["statusReason"] and "401" in failed["statusReason"], failed
        assert impostor.lines("ran") == []
    finally:
        impostor.stop()
