"""The agent the tests run: a scripted model (no network, no API key) that asks for two
tools needing approval in one turn — `send_email` and `delete_file` — and, when its prompt
says `twice`, a third (`archive`) after those ran; then it answers with what the tools
returned, rejection messages included. It decides from its input alone, so it behaves the
same after a restart. Each tool appends `ran <tool> <argument>` to the file in
`DEMO_TOOL_LOG`, after `DEMO_TOOL_DELAY` seconds.

`python demo_agent.py PORT STORE [SECRET]` serves it.
"""

import os
import sys
import time

from agents import Agent, function_tool, set_tracing_disabled
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from hitl_adapter import AgentEndpoint  # noqa: E402

set_tracing_disabled(True)


def _ran(tool: str, argument: str) -> str:
    log = os.environ.get("DEMO_TOOL_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"start {tool} {argument}\n")
    time.sleep(float(os.environ.get("DEMO_TOOL_DELAY", "0")))
    if log:
        with open(log, "a") as f:
            f.write(f"ran {tool} {argument}\n")
    return f"{tool} done: {argument}"


@function_tool(needs_approval=True)
def send_email(to: str) -> str:
    """Send the launch mail."""
    return _ran("send_email", to)


@function_tool(needs_approval=True)
def delete_file(path: str) -> str:
    """Delete a file."""
    return _ran("delete_file", path)


@function_tool(needs_approval=True)
def archive(folder: str) -> str:
    """Archive a folder."""
    return _ran("archive", folder)


def _items(call_input):
    return call_input if isinstance(call_input, list) else [{"role": "user", "content": call_input}]


def decide(call) -> ModelStep:
    items = _items(call.input)
    outputs = [i for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"]
    prompt = " ".join(str(i.get("content")) for i in items if isinstance(i, dict) and i.get("role") == "user")
    if not outputs:
        return ModelStep(output=[
            function_call("send_email", {"to": "press@example.com"}, call_id="call_mail"),
            function_call("delete_file", {"path": "/drafts/old.md"}, call_id="call_rm"),
        ])
    if "twice" in prompt and not any(o.get("call_id") == "call_archive" for o in outputs):
        return ModelStep(output=[function_call("archive", {"folder": "/drafts"}, call_id="call_archive")])
    said = "; ".join(f"{o.get('call_id')}: {o.get('output')}" for o in outputs)
    return ModelStep(output=[assistant_message(f"finished. {said}")])


def make_agent() -> Agent:
    # A fresh script per call: one responder step per model turn is plenty.
    model = ScriptedModel([ModelStep.respond(decide) for _ in range(10)])
    return Agent(name="launch assistant", instructions="Help with the launch.", model=model,
                 tools=[send_email, delete_file, archive])


def main() -> None:
    port, store = int(sys.argv[1]), sys.argv[2]
    secret = sys.argv[3] if len(sys.argv) > 3 else None
    server = AgentEndpoint(make_agent, secret=secret, store=store).serve("127.0.0.1", port)
    print(f"adapter listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
