"""Serve an OpenAI Agents SDK agent as an hitl-orchestrator `agent.webhook` endpoint.

    from hitl_adapter import AgentEndpoint
    AgentEndpoint(make_agent, secret=os.environ["HITL_AGENT_SIGNING_SECRET"]).serve("0.0.0.0", 9000)

Each tool approval the agent stops for becomes one item of the run's HITL request; the
operator's answer to each comes back as `state.approve` / `state.reject(rejection_message=…)`
by call id, and the run goes on. Every answer is remembered by the call's idempotency key,
so a redelivered call never runs a tool again. See docs/AGENTS.md.
"""

from .endpoint import AgentEndpoint, Reply

__all__ = ["AgentEndpoint", "Reply"]
