"""Issue [faults] item 4: a Redis restart used to fail every running job. Node ACL users lived only in Redis; after a
restart (no ACL file) the agents kept heartbeating while their workers could not log in, the scheduler kept leasing
to them, the leases expired, tasks ran out of attempts and nodes lost reputation.

Now the marketplace makes the users again from the stored password hashes (at worker start, on beat, and when an
agent reports that its worker cannot log in), the scheduler leases nothing to a node whose worker is not
consuming, and a lease that a broker fault kept from its node is released, never expired against it. Also item 8's
broker part: a ban whose ACL deletion failed is completed by the same restore."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from celery.signals import worker_ready
from django.conf import settings
from django.utils import timezone
from kombu import Connection
from rest_framework.test import APIClient

from marketplace.celery import app
from marketplace.core import embedded_redis, redis_admin
from marketplace.core.ports import free_port
from marketplace.jobs import delivery, dispatch
from marketplace.jobs.models import Assignment, AssignmentState, JobNodeBlock, Task
from marketplace.nodes import broker, services
from marketplace.nodes import tasks as node_tasks
from marketplace.nodes.models import Node
from marketplace.nodes.selectors import nodes_leasable, nodes_online
from tests.adversarial.test_sybil_replication import benchmark_job
from tests.e2e.stack import Stack
from tests.factories import NodeFactory, UserFactory
from tests.faults.node_worker import NodeWorker, marketplace
from tests.helpers import wait_for
from tests.protocol.messages import an_assignment

CAPABILITIES = {"cpu_cores": 4, "ram_mb": 8000}
# What the worker reports when Redis has no such user (redis-py drops the WRONGPASS code from the message).
WRONGPASS = "AuthenticationError: invalid username-password pair or user is disabled."


def _enroll(name: str, operator: Any = None) -> services.Enrolment:
    return services.node_enroll(
        operator=operator or UserFactory(), name=name, wallet_address="0x" + "4" * 40, capabilities=CAPABILITIES,
        slots=1, min_price={},
    )  # fmt: skip


def _logs_in(enrolment: services.Enrolment) -> bool:
    assert enrolment.broker_url is not None
    try:
        return bool(redis.Redis.from_url(enrolment.broker_url).ping())
    except (redis.AuthenticationError, redis.ConnectionError):
        return False


def _lose_users(*enrolments: services.Enrolment) -> None:
    """What a Redis restart without an ACL file does to node users (Redis stays up here)."""
    for enrolment in enrolments:
        broker.broker_user_delete(username=enrolment.node.broker_username)
    assert not any(_logs_in(e) for e in enrolments)


@pytest.fixture
def enrolled() -> Iterator[list[services.Enrolment]]:
    made: list[services.Enrolment] = []
    yield made
    for enrolment in made:
        broker.broker_user_delete(username=enrolment.node.broker_username)


def _agent_client(enrolment: services.Enrolment) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {enrolment.token}")
    return client


def _beat(enrolment: services.Enrolment, **broker_health: Any) -> Any:
    body: dict[str, Any] = {"free_slots": 1}
    if broker_health:
        body["broker"] = broker_health
    return _agent_client(enrolment).post("/api/nodes/heartbeat/", body, format="json", REMOTE_ADDR="198.51.100.7")


@pytest.mark.django_db
def test_restoring_makes_every_lost_user_again_with_the_credentials_the_agents_hold(
    enrolled: list[services.Enrolment],
) -> None:
    enrolled += [_enroll("r1"), _enroll("r2")]
    digest = Node.objects.get(id=enrolled[0].node.id).broker_password_sha256
    assert len(digest) == 64
    assert enrolled[0].broker_url is not None
    assert urlsplit(enrolled[0].broker_url).password not in digest
    _lose_users(*enrolled)
    done = services.broker_users_restore()
    assert set(done.restored) == {e.node.id for e in enrolled}
    assert all(_logs_in(e) for e in enrolled)
    # Idempotent, and cheap once nothing is missing.
    assert services.broker_users_restore().restored == []


@pytest.mark.django_db
def test_a_ban_whose_broker_deletion_failed_is_completed_by_the_restore(
    enrolled: list[services.Enrolment], redis_url: str
) -> None:
    banned, honest = _enroll("banned"), _enroll("honest")
    enrolled += [banned, honest]
    # The marketplace's Redis connection as a user who may not manage ACL users: DELUSER fails, as with Redis down.
    admin = redis.Redis.from_url(redis_url)
    username, password = f"{settings.REDIS_PREFIX.rstrip(':')}.limited", secrets.token_urlsafe(16)
    admin.execute_command("ACL", "SETUSER", username, "reset", "on", f">{password}", "~*", "&*", "+@all", "-@admin")
    parts = urlsplit(redis_url)
    original = settings.REDIS_URL
    settings.REDIS_URL = urlunsplit(
        (parts.scheme, f"{username}:{password}@{parts.netloc.split('@')[-1]}", "/0", "", "")
    )
    redis_admin._admin.clear()
    try:
        assert services.node_deactivate(node_id=banned.node.id, reason="banned for lying")
    finally:
        settings.REDIS_URL = original
        redis_admin._admin.clear()
        admin.execute_command("ACL", "DELUSER", username)
    assert not Node.objects.get(id=banned.node.id).is_active
    assert _logs_in(banned), "the fault did not happen: the ban deleted the user"
    done = services.broker_users_restore()
    assert banned.node.broker_username in done.deleted
    assert not _logs_in(banned)
    assert _logs_in(honest)
    # A later restore (after a restart, say) never makes the banned node's user again.
    assert services.broker_users_restore(full=True).restored == [honest.node.id]
    assert not _logs_in(banned)


@pytest.mark.django_db
def test_a_node_enrolled_before_hashes_were_stored_gets_its_hash_read_back_from_redis(
    enrolled: list[services.Enrolment],
) -> None:
    old = _enroll("old")
    enrolled.append(old)
    digest = Node.objects.get(id=old.node.id).broker_password_sha256
    Node.objects.filter(id=old.node.id).update(broker_password_sha256="")
    assert services.broker_users_restore().adopted == [old.node.id]
    assert Node.objects.get(id=old.node.id).broker_password_sha256 == digest
    _lose_users(old)
    assert services.broker_users_restore().restored == [old.node.id]
    assert _logs_in(old)


class _Consumer:
    """What Celery sends worker_ready with: the worker's consumer, which knows its app."""

    def __init__(self, celery_app: object) -> None:
        self.app = celery_app


@pytest.mark.django_db
def test_a_marketplace_worker_starting_restores_the_users_and_another_apps_worker_does_not(
    enrolled: list[services.Enrolment],
) -> None:
    enrolled.append(_enroll("w1"))
    _lose_users(*enrolled)
    worker_ready.send(sender=_Consumer(object()))
    assert not _logs_in(enrolled[0])
    worker_ready.send(sender=_Consumer(app))
    assert _logs_in(enrolled[0])
    _lose_users(*enrolled)
    assert node_tasks.broker_users_restore_task() == 1
    assert _logs_in(enrolled[0])


@pytest.mark.django_db
def test_a_node_reporting_a_broken_broker_is_leased_nothing_loses_nothing_and_gets_its_user_back(
    enrolled: list[services.Enrolment],
) -> None:
    rig = _enroll("rig")
    enrolled.append(rig)
    assert _beat(rig).status_code == 200
    job = benchmark_job(replication=1, tasks=2)
    first, second = Task.objects.filter(job=job).order_by("index")
    lease = dispatch.assignment_lease(task=first, node=Node.objects.get(id=rig.node.id)).assignment
    assert lease is not None
    _lose_users(rig)

    reply = _beat(rig, ok=False, error=WRONGPASS)

    assert reply.status_code == 200, reply.json()
    assert reply.json()["node"]["broker_ok"] is False
    node = Node.objects.get(id=rig.node.id)
    assert (node.broker_ok, node.broker_error) == (False, WRONGPASS)
    assert node.broker_failed_at is not None
    # Its unstarted lease is handed back with no mark on anyone, and it is leased nothing more.
    lease.refresh_from_db()
    assert lease.state == AssignmentState.RELEASED
    assert (node.expired_count, node.busy_slots) == (0, 0)
    assert Task.objects.get(id=first.id).lost_attempts == 0
    assert not JobNodeBlock.objects.filter(node=node).exists()
    assert node in nodes_online()  # still online (it heartbeats), but not leasable
    assert node not in nodes_leasable()
    assert dispatch.schedule() == []
    # Its user is made again: the agent's own credentials work, and no new secret was sent.
    assert _logs_in(rig)

    assert _beat(rig, ok=True).status_code == 200
    node.refresh_from_db()
    assert (node.broker_ok, node.broker_error) == (True, "")
    # An agent too old to report is taken as consuming (as before): a downgrade never strands a node.
    assert _beat(rig, ok=False, error="lost").status_code == 200
    assert _beat(rig).status_code == 200
    node.refresh_from_db()
    assert (node.broker_ok, node.broker_error) == (True, "")
    assert len(dispatch.schedule()) == 1
    assert {first.id, second.id} & set(
        Assignment.objects.filter(node=node, state=AssignmentState.LEASED).values_list("task_id", flat=True)
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("report", "why"),
    [
        ({"ok": "maybe"}, "ok"),
        ({"error": "no ok"}, "ok"),
        ({"ok": False, "error": "x" * 501}, "error"),
        ({"ok": False, "error": 7}, "error"),
        ("down", "broker"),
    ],
)
def test_a_malformed_broker_report_is_refused_naming_the_field_and_changes_nothing(
    enrolled: list[services.Enrolment], report: Any, why: str
) -> None:
    rig = _enroll("bad-report")
    enrolled.append(rig)
    before = Node.objects.get(id=rig.node.id)
    reply = _agent_client(rig).post("/api/nodes/heartbeat/", {"free_slots": 1, "broker": report}, format="json")
    assert reply.status_code == 400
    fields = reply.json()["extra"]["fields"]
    assert "broker" in fields
    assert why in json.dumps(fields["broker"])
    after = Node.objects.get(id=rig.node.id)
    assert (after.last_heartbeat, after.broker_ok, after.broker_failed_at) == (before.last_heartbeat, True, None)


@pytest.mark.django_db
def test_an_unstarted_lease_of_a_node_that_reported_a_broker_failure_is_released_not_expired() -> None:
    job = benchmark_job(replication=1, tasks=2)
    first, second = Task.objects.filter(job=job).order_by("index")
    cut_off = UserFactory(username="cut-off")
    healthy = UserFactory(username="healthy")
    a = NodeFactory(operator=cut_off, capabilities=CAPABILITIES)
    b = NodeFactory(operator=healthy, capabilities=CAPABILITIES, address="203.0.113.1")
    lost = dispatch.assignment_lease(task=first, node=a).assignment
    idle = dispatch.assignment_lease(task=second, node=b).assignment
    assert lost is not None
    assert idle is not None
    # The node's worker lost the broker after the lease (and has recovered since): the message never reached it.
    Node.objects.filter(id=a.id).update(broker_failed_at=timezone.now())
    later = timezone.now() + timedelta(hours=1)

    assert delivery.leases_release_broker_down(now=later) == 1
    assert dispatch.assignments_expire(now=later) == 1

    lost.refresh_from_db()
    idle.refresh_from_db()
    assert (lost.state, idle.state) == (AssignmentState.RELEASED, AssignmentState.EXPIRED)
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.expired_count, b.expired_count) == (0, 1)
    assert (Task.objects.get(id=first.id).lost_attempts, Task.objects.get(id=second.id).lost_attempts) == (0, 1)


@pytest.mark.django_db
def test_a_lease_whose_publish_fails_is_released_at_once_and_one_that_is_published_waits_on_the_queue(
    enrolled: list[services.Enrolment], monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = _enroll("publish")
    enrolled.append(rig)
    job = benchmark_job(replication=1, tasks=2)
    first, second = Task.objects.filter(job=job).order_by("index")
    node = Node.objects.get(id=rig.node.id)
    undelivered = dispatch.assignment_lease(task=first, node=node).assignment
    assert undelivered is not None
    message = dispatch.assignment_message(assignment=undelivered, task=first, job=job)
    # A broker nobody listens on: kombu's publish retries give up, as while Redis is down.
    dead = Connection(f"redis://127.0.0.1:{free_port()}/0", transport_options={"global_keyprefix": rig.broker_prefix})
    monkeypatch.setattr(broker, "_connection", lambda prefix: dead)
    assert not delivery.lease_deliver(assignment_id=undelivered.id, node_id=node.id, message=message)
    undelivered.refresh_from_db()
    assert undelivered.state == AssignmentState.RELEASED
    assert "not delivered" in undelivered.state_reason
    node.refresh_from_db()
    assert (node.expired_count, node.busy_slots, Task.objects.get(id=first.id).lost_attempts) == (0, 0, 0)

    monkeypatch.undo()
    delivered = dispatch.assignment_lease(task=second, node=node).assignment
    assert delivered is not None
    message = dispatch.assignment_message(assignment=delivered, task=second, job=job)
    assert delivery.lease_deliver(assignment_id=delivered.id, node_id=node.id, message=message)
    delivered.refresh_from_db()
    assert delivered.state == AssignmentState.LEASED
    assert broker.admin_client().llen(f"{rig.broker_prefix}{broker.node_queue(node.id)}") == 1


@pytest.mark.slow
@pytest.mark.django_db
def test_a_worker_whose_user_is_lost_says_so_and_consumes_again_once_the_user_is_restored(
    enrolled: list[services.Enrolment], tmp_path: Path
) -> None:
    rig = _enroll("lost")
    enrolled.append(rig)
    with marketplace() as market:
        worker = NodeWorker(tmp_path, rig, market.url).start()
        try:
            worker.wait_health(True)
            # Redis drops the user's connections with the user; every reconnection is then refused.
            _lose_users(rig)
            assert worker.wait_health(False, contains="invalid username-password").error.startswith(
                "AuthenticationError"
            )
            message = an_assignment(assignment_id="6c1d1f8e-0000-4000-8000-0000000000f4", input_urls=[])
            broker.assignment_publish(node_id=rig.node.id, message=message.to_json())
            assert services.node_broker_restore(node_id=rig.node.id)
            # No restart, no new credentials: it logs in again within seconds and takes what waited on its queue.
            worker.wait_health(True, timeout=15)
            wait_for(lambda: market.started(message.assignment_id), timeout=15, what="the queued assignment to start")
        finally:
            worker.stop()


def test_an_embedded_redis_restart_keeps_its_port_and_data_but_not_its_acl_users(tmp_path: Path) -> None:
    server, _ = embedded_redis.start(tmp_path)
    try:
        client = redis.Redis.from_url(server.url)
        client.lpush("hw:queue", "kept")
        client.execute_command("ACL", "SETUSER", "hw.node.x", "on", ">pw", "~hw:*", "+@all")
        again = embedded_redis.restart(tmp_path)
        assert (again.port, again.password) == (server.port, server.password)
        assert again.pid != server.pid
        assert client.lrange("hw:queue", 0, -1) == [b"kept"]
        assert client.acl_getuser("hw.node.x") is None
    finally:
        embedded_redis.stop(tmp_path)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Path]:
    """A Redis of this test's own (the embedded Valkey), so that restarting it disturbs no other test."""
    var_dir = tmp_path / "broker"
    embedded_redis.start(var_dir)
    try:
        yield var_dir
    finally:
        embedded_redis.stop(var_dir)


@pytest.mark.slow
def test_a_redis_restart_mid_job_fails_no_task_and_costs_the_node_nothing(tmp_path: Path, private_redis: Path) -> None:
    server = embedded_redis.running(private_redis)
    assert server is not None
    stack = Stack(tmp_path, REDIS_URL=server.url).start()
    try:
        rig = stack.agent("rig")
        spec = {"tasks": 10, "matrix_size": 1400, "seed": 21}
        job_id = stack.post_job(spec, replication=1)

        def accepted() -> int:
            return sum(1 for a in rig.assignments() if a["state"] == "accepted")

        wait_for(lambda: accepted() >= 2, timeout=90, what="the job to be under way")
        assert stack.job(job_id)["state"] == "running"
        admin = redis.Redis.from_url(embedded_redis.restart(private_redis).url)
        username = f"{stack.prefix.rstrip(':')}.node.{rig.node_id.replace('-', '')}"
        assert admin.acl_getuser(username) is None, "the restart kept the node's user: no fault was played"

        job = stack.wait_job(job_id, timeout=180)

        assert job["tasks"] == {"completed": spec["tasks"]}
        states = [a["state"] for a in rig.assignments()]
        assert set(states) <= {"accepted", "released"}, states
        me = rig.me()
        assert (me["expired_count"], me["invalid_count"], me["valid_count"]) == (0, 0, spec["tasks"])
        # The agent saw its worker lose the broker and said so; it is consuming again, with its own credentials.
        assert me["broker_failed_at"] is not None
        assert me["broker_ok"] is True
        assert admin.acl_getuser(username) is not None
    finally:
        stack.stop()
