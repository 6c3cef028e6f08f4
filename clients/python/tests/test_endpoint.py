"""The adapter against the real Agents SDK with a scripted model: calls as the service
sends them, over real HTTP on port 0."""

import hashlib
import hmac
import json
import threading
import urllib.error
import urllib.request

import pytest

import demo_agent
from hitl_adapter import AgentEndpoint


@pytest.fixture
def tool_log(tmp_path, monkeypatch):
    log = tmp_path / "tools.log"
    monkeypatch.setenv("DEMO_TOOL_LOG", str(log))
    return log


def ran(log):
    if not log.exists():
        return []
    return [line.split(" ", 1)[1] for line in log.read_text().splitlines() if line.startswith("ran ")]


@pytest.fixture
def endpoint(tmp_path):
    servers = []

    def start(secret=None, store=None):
        ep = AgentEndpoint(demo_agent.make_agent, secret=secret, store=str(store or tmp_path / "answers.sqlite"))
        server = ep.serve("127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/agent"

    yield start
    for s in servers:
        s.shutdown()


def post(url, call, secret=None, signature=None):
    body = json.dumps(call).encode()
    headers = {"content-type": "application/json", "idempotency-key": call["idempotencyKey"]}
    if secret:
        headers["x-hitl-signature"] = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if signature:
        headers["x-hitl-signature"] = signature
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def first_call(prompt="Launch the post", key="run_1:tools:1"):
    return {"runId": "run_1", "threadId": "t1", "nodeId": "tools", "input": {"prompt": prompt},
            "executionContext": {}, "runnerState": None, "responses": None, "idempotencyKey": key}


def resume_call(previous, responses, key):
    call = first_call(key=key)
    call["input"] = previous["input"]
    call["runnerState"] = previous["runnerState"]
    call["responses"] = responses
    return call


def answers(**by_item):
    out = []
    for item, answer in by_item.items():
        if answer is True:
            out.append({"itemId": item, "responseType": "approval", "approved": True})
        else:
            out.append({"itemId": item, "responseType": "rejection", "freeformText": answer})
    return out


def test_two_tool_approvals_become_two_items_with_the_state_as_runner_state(endpoint, tool_log):
    url = endpoint()
    status, reply = post(url, first_call())
    assert status == 200 and reply["status"] == "interrupted", reply
    items = reply["request"]["items"]
    assert [i["itemId"] for i in items] == ["call_mail", "call_rm"]
    assert items[0]["tool"] == {"name": "send_email", "arguments": {"to": "press@example.com"}}
    assert items[1]["responseTypes"] == ["approval", "rejection"], "no edit: approve() takes no arguments"
    assert reply["runnerState"]["$schemaVersion"], "RunState.to_string() as JSON"
    assert ran(tool_log) == [], "nothing runs before it is approved"


def test_approve_one_reject_the_other_with_a_message_the_model_sees(endpoint, tool_log):
    url = endpoint()
    _, paused = post(url, first_call())
    call = resume_call(paused | {"input": {"prompt": "Launch the post"}},
                       answers(call_mail=True, call_rm="keep the old draft"), "run_1:tools:2")
    status, reply = post(url, call)
    assert status == 200 and reply["status"] == "completed", reply
    assert ran(tool_log) == ["send_email press@example.com"], "the rejected tool never ran"
    assert "call_rm: keep the old draft" in reply["output"], reply["output"]
    assert reply["runnerState"] is None


def test_a_second_interruption_after_the_resume_is_a_new_request(endpoint, tool_log):
    url = endpoint()
    _, paused = post(url, first_call(prompt="Launch the post twice"))
    call = resume_call(paused | {"input": {"prompt": "Launch the post twice"}},
                       answers(call_mail=True, call_rm=True), "run_1:tools:2")
    _, again = post(url, call)
    assert again["status"] == "interrupted", again
    assert [i["itemId"] for i in again["request"]["items"]] == ["call_archive"]
    call = resume_call(again | {"input": {"prompt": "Launch the post twice"}},
                       answers(call_archive=True), "run_1:tools:3")
    _, done = post(url, call)
    assert done["status"] == "completed", done
    # Approved calls of one turn run concurrently: in no set order.
    assert sorted(ran(tool_log)) == ["archive /drafts", "delete_file /drafts/old.md", "send_email press@example.com"]


def test_a_redelivered_key_gets_the_stored_answer_and_runs_no_tool_again(endpoint, tool_log, tmp_path):
    store = tmp_path / "kept.sqlite"
    url = endpoint(store=store)
    _, paused = post(url, first_call())
    call = resume_call(paused | {"input": {"prompt": "Launch the post"}},
                       answers(call_mail=True, call_rm=True), "run_1:tools:2")
    first = post(url, call)
    assert sorted(ran(tool_log)) == ["delete_file /drafts/old.md", "send_email press@example.com"]
    assert post(url, call) == first, "the same answer"
    # And after the adapter restarts on the same store.
    assert post(endpoint(store=store), call) == first
    assert len(ran(tool_log)) == 2, "no tool ran twice"


def test_a_redelivery_while_the_first_is_running_waits_for_its_answer(endpoint, tool_log, monkeypatch):
    monkeypatch.setenv("DEMO_TOOL_DELAY", "1")
    url = endpoint()
    _, paused = post(url, first_call())
    call = resume_call(paused | {"input": {"prompt": "Launch the post"}},
                       answers(call_mail=True, call_rm="no"), "run_1:tools:2")
    results = []
    threads = [threading.Thread(target=lambda: results.append(post(url, call))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == results[1] and results[0][1]["status"] == "completed"
    assert ran(tool_log) == ["send_email press@example.com"]


def test_a_bad_or_missing_signature_is_refused_with_401_before_anything_runs(endpoint, tool_log):
    url = endpoint(secret="s3cret-signing-key")
    status, reply = post(url, first_call(), signature="sha256=" + "0" * 64)
    assert status == 401 and "X-Hitl-Signature" in reply["message"]
    assert post(url, first_call(key="other"))[0] == 401
    status, reply = post(url, first_call(key="signed"), secret="s3cret-signing-key")
    assert status == 200 and reply["status"] == "interrupted"
    assert ran(tool_log) == []
