"""`manage.py demo --stack docker`: the demo's start on a stack of containers that docker/stack.py brought up."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings

from marketplace.celery import use_broker
from marketplace.core import dockerstack
from marketplace.core.localstack import LocalStack, LocalStackError, wait_until
from marketplace.core.management.demo_checks import chain_matches_database
from marketplace.core.management.demo_steps import DEMO_AGENTS, DEMO_OPERATORS, DEMO_POSTER, Say, demo_user
from marketplace.nodes.models import Node
from marketplace.nodes.services import node_deactivate


def container_supervisor(stack: LocalStack) -> dockerstack.ContainerSupervisor:
    """The stack's supervisor for the containers of the stack whose state lies in HASHWORK_VAR_DIR (stack.json)."""
    state = dockerstack.StackState.load(settings.VAR_DIR)
    supervisor = dockerstack.ContainerSupervisor(state, dockerstack.client())
    stack.supervisor = supervisor
    return supervisor


def demo_start_docker(stack: LocalStack, *, timeout: float, say: Say) -> tuple[str, str, dict[str, Any]]:
    """Like demo_steps.demo_start, but every service already runs in a container: check the chain and the web
    server, make the demo users and start DEMO_AGENTS node agent containers (or keep the ones running); returns the
    base URL, the demo poster's API token and the figures of it all."""
    supervisor = stack.supervisor
    if not isinstance(supervisor, dockerstack.ContainerSupervisor):
        raise LocalStackError("--stack docker needs the stack's container supervisor (container_supervisor()).")
    state, engine = supervisor.state, supervisor.engine
    if not (settings.REDIS_URL and settings.ETH_RPC_URL) or settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        raise LocalStackError(
            "--stack docker runs against the containers of docker/stack.py: start it with `make docker-demo` or "
            "`make docker-up` (which set DATABASE_URL, REDIS_URL and ETH_RPC_URL)."
        )
    say(f"Redis: {settings.REDIS_URL.split('@')[-1]} (container {state.project}-redis)")
    use_broker(settings.REDIS_URL)
    stack.env.update(REDIS_URL=settings.REDIS_URL, ETH_RPC_URL=settings.ETH_RPC_URL)
    chain_matches_database(stack)
    dep = stack.contracts_ensure()
    say(f"Chain: {settings.ETH_RPC_URL} (container {state.project}-anvil, chain {dep.chain_id}), escrow {dep.escrow}")
    db = settings.DATABASES["default"]
    say(f"Database: postgresql {db['NAME']} on {db.get('HOST')}:{db.get('PORT')} (container {state.project}-postgres)")
    base_url = state.web_url
    stack.web_wait(base_url, timeout=timeout)
    token = demo_user(DEMO_POSTER)
    running = dockerstack.agents_running(state, engine)
    run_tag = uuid.uuid4().hex[:6]
    nodes = [running.get(n) or f"demo-{n}-{run_tag}" for n in range(1, DEMO_AGENTS + 1)]
    stale = Node.objects.filter(operator__username__in=DEMO_OPERATORS, is_active=True).exclude(name__in=nodes)
    for old in stale:
        node_deactivate(node_id=old.id, reason="replaced by a new demo run")
    for n, (name, operator) in enumerate(zip(nodes, DEMO_OPERATORS, strict=True), start=1):
        if n not in running:
            dockerstack.agent_start(state, engine, index=n, name=name, token=demo_user(operator))
    say(f"Node agent containers {', '.join(f'{state.project}-agent-{n}' for n in range(1, DEMO_AGENTS + 1))}: "
        "enrolling (nodeagent enroll in each, then nodeagent run)…")  # fmt: skip
    wait_until(
        supervisor,
        lambda: Node.objects.filter(name__in=nodes, is_active=True, last_heartbeat__isnull=False).count() == len(nodes),
        timeout=timeout,
        failure=f"The node agent containers did not enrol and report within {timeout:.0f}s; see `docker logs "
        f"{state.project}-agent-1`.",
    )
    say(f"Enrolled and started {DEMO_AGENTS} node agents in containers (their tasks run as each agent's child).")
    return (
        base_url,
        token,
        {
            "redis": {"embedded": False, "started": False, "container": f"{state.project}-redis"},
            "chain": {"rpc": settings.ETH_RPC_URL, "chain_id": dep.chain_id, "escrow": dep.escrow},
            "database": {"engine": "postgresql", "name": str(db["NAME"])},
            "port": state.port("web"),
            "nodes": nodes,
            "stack": "docker",
        },
    )
