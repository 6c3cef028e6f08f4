"""The endpoint: one call of the service in, one reply out.

A call is `{runId, threadId, nodeId, input, executionContext, runnerState, responses,
idempotencyKey}` (docs/AGENTS.md). Without `responses` the agent starts on the node's
input; with them, the stored `RunState` is rebuilt, each pending tool approval is approved
or rejected by its call id, and the run continues. Either way the reply is `completed`
(the final output), `interrupted` (one item per tool approval, the state as
`runnerState`) or `failed`.

Served by the standard library's threading HTTP server: the adapter needs no web
framework or ASGI server beside the SDK, and each call runs the agent to its next stop on
its own thread (`asyncio.run`), which is what a call is.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping, Union

from agents import Agent, Runner, RunState

AgentSource = Union[Agent, Callable[[], Agent]]


@dataclass
class Reply:
    """An HTTP answer: status and JSON body."""

    status: int
    body: dict

    def encode(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


class _Answers:
    """Answers by idempotency key, in SQLite, so a redelivery (the service retrying after
    a timeout, or after it was killed mid-call) gets the answer the first delivery gave
    instead of running the agent — and its tools — again."""

    def __init__(self, path: str):
        self._path = path
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("pragma journal_mode = wal")
            db.execute(
                "create table if not exists answers (key text primary key, status text not null, "
                "owner text not null, reply text, updated real not null)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self._path, timeout=30, isolation_level=None)

    def claim(self, key: str, owner: str) -> tuple[str, Reply | None]:
        """`("done", reply)`, `("busy", None)` while this process still works on it, or
        `("mine", None)`: the caller must run it. A key left `running` by another process
        (one that died mid-call) is taken over."""
        with self._lock, self._connect() as db:
            db.execute("begin immediate")
            row = db.execute("select status, owner, reply from answers where key = ?", (key,)).fetchone()
            if row and row[0] == "done":
                db.execute("commit")
                stored = json.loads(row[2])
                return "done", Reply(stored["status"], stored["body"])
            if row and row[1] == owner:
                db.execute("commit")
                return "busy", None
            db.execute(
                "insert into answers (key, status, owner, updated) values (?, 'running', ?, ?) "
                "on conflict (key) do update set status = 'running', owner = excluded.owner, "
                "updated = excluded.updated",
                (key, owner, time.time()),
            )
            db.execute("commit")
            return "mine", None

    def finish(self, key: str, reply: Reply) -> None:
        stored = json.dumps({"status": reply.status, "body": reply.body})
        with self._lock, self._connect() as db:
            db.execute(
                "update answers set status = 'done', reply = ?, updated = ? where key = ?",
                (stored, time.time(), key),
            )

    def forget(self, key: str) -> None:
        with self._lock, self._connect() as db:
            db.execute("delete from answers where key = ? and status = 'running'", (key,))


class AgentEndpoint:
    """An `agent.webhook` endpoint running `agent` (an `Agent`, or a function making one
    per call, for agents whose model or tools hold per-call state).

    `secret`: the service's `HITL_AGENT_SIGNING_SECRET`; when set, a call without a
    matching `X-Hitl-Signature` is refused with 401. `store`: the SQLite file remembering
    answers by idempotency key. `input_of`: what the agent starts on, from the call
    (default: the node input's `prompt`, else the whole input as JSON). `busy_wait`: how
    long a redelivery of a call still running here waits for it before answering 503
    (the service then retries).
    """

    def __init__(
        self,
        agent: AgentSource,
        *,
        secret: str | None = None,
        store: str = "hitl-adapter.sqlite",
        input_of: Callable[[dict], Any] | None = None,
        busy_wait: float = 20.0,
    ):
        self._agent = agent
        self._secret = secret.encode() if secret else None
        self._answers = _Answers(store)
        self._owner = uuid.uuid4().hex
        self._input_of = input_of or _default_input
        self._busy_wait = busy_wait

    def _make_agent(self) -> Agent:
        return self._agent if isinstance(self._agent, Agent) else self._agent()

    def handle(self, body: bytes, headers: Mapping[str, str]) -> Reply:
        """Answers one call (`headers` with lower-case names)."""
        if self._secret is not None:
            expected = "sha256=" + hmac.new(self._secret, body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(headers.get("x-hitl-signature", ""), expected):
                return Reply(401, {"message": "the adapter refused the call: X-Hitl-Signature is "
                                              "missing or does not match the body (HTTP 401)"})
        try:
            call = json.loads(body)
        except ValueError as e:
            return Reply(400, {"message": f"the call is not JSON: {e}"})
        key = call.get("idempotencyKey") or headers.get("idempotency-key")
        if not isinstance(call, dict) or not key:
            return Reply(400, {"message": "the call carries no idempotencyKey"})
        deadline = time.monotonic() + self._busy_wait
        while True:
            claim, stored = self._answers.claim(key, self._owner)
            if claim == "done":
                return stored
            if claim == "mine":
                break
            if time.monotonic() > deadline:
                return Reply(503, {"message": "this call is still running here; try again"})
            time.sleep(0.05)
        try:
            reply = asyncio.run(self._run(call))
        except BaseException:
            # Not answered: a redelivery must run it (nothing was stored).
            self._answers.forget(key)
            raise
        self._answers.finish(key, reply)
        return reply

    async def _run(self, call: dict) -> Reply:
        agent = self._make_agent()
        responses = call.get("responses")
        try:
            if responses is None:
                result = await Runner.run(agent, self._input_of(call))
            else:
                if not isinstance(call.get("runnerState"), dict):
                    return _failed("resumed without the runner state this adapter returned")
                state = await RunState.from_json(agent, call["runnerState"])
                answered = _decide(state, responses)
                if answered is not None:
                    return answered
                result = await Runner.run(agent, state)
        except Exception as e:  # the agent's own failure: the run fails with it
            return _failed(f"{type(e).__name__}: {e}")
        if result.interruptions:
            state = result.to_state()
            items = [_item(i) for i in result.interruptions]
            prompt = f"{agent.name} wants to run {len(items)} tool call(s)"
            return Reply(200, {"status": "interrupted",
                               "request": {"prompt": prompt, "items": items},
                               "runnerState": json.loads(state.to_string())})
        return Reply(200, {"status": "completed", "output": _jsonable(result.final_output),
                           "runnerState": None})

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
        """A server for this endpoint (any path); call `serve_forever()` on it."""
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    reply = endpoint.handle(body, headers)
                except Exception as e:
                    reply = Reply(500, {"message": f"adapter error: {type(e).__name__}"})
                data = reply.encode()
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                if reply.status == 503:
                    self.send_header("retry-after", "1")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return ThreadingHTTPServer((host, port), Handler)


def _default_input(call: dict) -> Any:
    node_input = call.get("input") or {}
    if isinstance(node_input, dict) and isinstance(node_input.get("prompt"), str):
        return node_input["prompt"]
    return json.dumps(node_input)


def _decide(state: RunState, responses: list) -> Reply | None:
    """Approves or rejects each pending tool call by its call id; a rejection's text is
    what the model sees. Returns a failure when an interruption has no answer."""
    by_item: dict[str, list[dict]] = {}
    for r in responses:
        by_item.setdefault(r.get("itemId"), []).append(r)
    for item in state.get_interruptions():
        answers = by_item.get(item.call_id)
        if not answers:
            return _failed(f"no answer for tool call {item.call_id}")
        rejected = [a for a in answers if a.get("responseType") == "rejection" or a.get("approved") is False]
        if rejected:
            message = next((a.get("freeformText") for a in rejected if a.get("freeformText")), None)
            state.reject(item, rejection_message=message or "The operator rejected this tool call.")
        else:
            state.approve(item)
    return None


def _item(interruption) -> dict:
    try:
        arguments = json.loads(interruption.arguments or "{}")
    except ValueError:
        arguments = interruption.arguments
    return {"itemId": interruption.call_id, "kind": "tool_approval",
            "title": f"Run {interruption.name}",
            "tool": {"name": interruption.name, "arguments": arguments},
            # The SDK's approve() takes no arguments: `edit` cannot be honoured.
            "responseTypes": ["approval", "rejection"]}


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        dump = getattr(value, "model_dump", None)
        return dump(mode="json") if callable(dump) else str(value)


def _failed(message: str) -> Reply:
    return Reply(200, {"status": "failed", "message": message})
