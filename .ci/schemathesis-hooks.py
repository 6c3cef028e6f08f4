"""Schemathesis hooks for .ci/schemathesis: what the fuzzer must know beyond /openapi.json.

A plan has rules JSON Schema cannot state: node ids unique within the plan, option ids
unique within a node, each `next` entry keyed by an option id of its node and naming
another node of the plan, and an `agent.webhook` node's `config.url` under the
deployment's allow-list (HITL_AGENT_ALLOWED_URLS). Instead of excusing the 422
`invalid_plan` those draw, which would excuse any other 422 of POST /api/runs too (a
check's expected statuses are per operation, not per error code), this hook makes every
schema-valid (positive) plan meet them before it is sent: it renames a repeated id,
drops or re-points a `next` entry, and points an agent node at the allowed URL. The plan
stays valid against the document, so every check, positive_data_acceptance included,
still holds the answer to the document. Schema-violating (negative) cases are sent as
drawn.

One refusal of a schema-valid request depends on what earlier requests stored, so no
schema can foresee it; `filter_failure` drops exactly that one, after checking each
here (the summary counts what it dropped): 422 `idempotency_key_reused`, when this run
did send the same key with a different request to the same route before (the fuzzer
draws keys from a small space). See docs/API.md, "Fuzzing".
"""

import json
import os
from urllib.parse import urlsplit

import schemathesis

AGENT_URL = os.environ["FUZZ_AGENT_URL"]


def _fresh(taken, prefix):
    n = 0
    while f"{prefix}{n}" in taken:
        n += 1
    taken.add(f"{prefix}{n}")
    return f"{prefix}{n}"


def _repair(nodes):
    nodes = [n for n in nodes if isinstance(n, dict)]
    ids = set()
    for node in nodes:
        if node.get("id") in ids:
            node["id"] = _fresh(ids, "n")
        ids.add(node.get("id"))
    for node in nodes:
        if node.get("type") == "task" and node.get("capability") == "agent.webhook":
            if isinstance(node.get("config"), dict):
                node["config"]["url"] = AGENT_URL
        if node.get("type") != "hitl":
            continue
        options = node.get("options") if isinstance(node.get("options"), list) else []
        option_ids = set()
        for option in options:
            if isinstance(option, dict) and option.get("id") in option_ids:
                option["id"] = _fresh(option_ids, "o")
            if isinstance(option, dict):
                option_ids.add(option.get("id"))
        routes = node.get("next")
        if not isinstance(routes, dict):
            continue
        others = sorted(i for i in ids if i != node.get("id"))
        for key in list(routes):
            if key not in option_ids or not others:
                del routes[key]
            elif routes[key] not in others:
                routes[key] = others[0]


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.method.upper() != "POST" or case.path != "/api/runs":
        return
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    plan = case.body.get("plan") if isinstance(case.body, dict) else None
    if isinstance(plan, dict) and isinstance(plan.get("nodes"), list):
        _repair(plan["nodes"])


# (route, Idempotency-Key) -> the (path, body) of each request sent with it. A key is
# scoped to the command kind, that is the route: a retry's key covers every run.
_SENT_WITH_KEY = {}


def _body(request):
    try:
        return json.loads(request.body or b"null")
    except ValueError:
        return request.body


@schemathesis.hook
def after_call(context, case, response):
    request = response.request
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        sent = (urlsplit(request.url).path, _body(request))
        _SENT_WITH_KEY.setdefault((case.path, key.strip()), []).append(sent)


def _error(response):
    try:
        return json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        return {}


def _key_reused_by_the_fuzzer(case, response):
    request = response.request
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return False
    this = (urlsplit(request.url).path, _body(request))
    return any(sent != this for sent in _SENT_WITH_KEY.get((case.path, key.strip()), []))


def _excused(case, response):
    error = _error(response)
    if error.get("code") == "idempotency_key_reused":
        return _key_reused_by_the_fuzzer(case, response)
    return False


@schemathesis.hook
def filter_failure(context, failure, case, response):
    if type(failure).__name__ != "RejectedPositiveData" or response.status_code != 422:
        return True
    if not _excused(case, response):
        return True
    # What was dropped, one line each, for whoever wants to look.
    with open(os.environ.get("FUZZ_DROPPED", os.devnull), "a") as log:
        print(json.dumps({"route": f"{case.method} {case.path}", "error": _error(response)}), file=log)
    return False
