"""Sybil replication: one operator's nodes, or nodes on one network, try to hold every replica of a task and
outvote the honest one with an invented result. Nodes are enrolled, heartbeat, start, submit (with real EIP-191
signatures) and fail through the real API on the real database and Redis; verification is the real service."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from rest_framework.test import APIClient

from marketplace.jobs import dispatch, services, verification
from marketplace.jobs.models import Assignment, AssignmentState, Job, JobState, Task, TaskState
from marketplace.nodes.models import Node
from nodeagent.runners import benchmark
from nodeagent.signer import Wallet
from tests.factories import UserFactory

SPEC = {"tasks": 1, "matrix_size": 16, "seed": 5}
INVENTED = "f" * 64


@dataclass
class Rig:
    """A node as its agent drives it: over HTTP, from `address`, signing with its own wallet."""

    node_id: UUID
    client: APIClient
    wallet: Wallet
    address: str

    def beat(self) -> None:
        reply = self.client.post("/api/nodes/heartbeat/", {"free_slots": 1}, format="json", REMOTE_ADDR=self.address)
        assert reply.status_code == 200, reply.json()

    def leased(self) -> list[str]:
        reply = self.client.get("/api/nodes/me/assignments/", REMOTE_ADDR=self.address).json()
        return [a["id"] for a in reply["results"] if a["state"] == "leased"]

    def upload(self, assignment_id: str, checksum: str) -> Any:
        """Upload a signed benchmark result for a started assignment; the API's reply."""
        data = json.dumps({"checksum": checksum}).encode()
        sha256 = hashlib.sha256(data).hexdigest()
        body = {
            "artifact": SimpleUploadedFile("result.json", data),
            "sha256": sha256,
            "signature": self.wallet.sign_result(assignment_id, sha256),
        }
        return self.client.post(f"/api/assignments/{assignment_id}/result/", body, format="multipart")

    def submit(self, assignment_id: str, checksum: str) -> None:
        assert self.client.post(f"/api/assignments/{assignment_id}/start/").status_code == 200
        reply = self.upload(assignment_id, checksum)
        assert reply.status_code == 201, reply.json()

    def fail(self, assignment_id: str, reason: str = "runner crashed") -> None:
        reply = self.client.post(f"/api/assignments/{assignment_id}/fail/", {"reason": reason}, format="json")
        assert reply.status_code == 200, reply.json()


def operator_client(username: str) -> APIClient:
    user = UserFactory(username=username)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {user.auth_token.key}")
    return client


def enrol(operator: APIClient, name: str, address: str, *, slots: int = 1) -> Rig:
    """Enrol a node through the API from `address` and send its first heartbeat from there too."""
    wallet = Wallet.create()
    body = {
        "name": name,
        "wallet_address": wallet.address,
        "capabilities": {"cpu_cores": 4, "ram_mb": 8000},
        "slots": slots,
    }
    reply = operator.post("/api/nodes/enroll/", body, format="json", REMOTE_ADDR=address)
    assert reply.status_code == 201, reply.json()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {reply.json()['token']}")
    rig = Rig(UUID(reply.json()["node"]["id"]), client, wallet, address)
    rig.beat()
    return rig


def prove(*rigs: Rig) -> None:
    """Give nodes a record (an attacker may have earned one): they are past probation and preferred by leasing."""
    Node.objects.filter(id__in=[r.node_id for r in rigs]).update(valid_count=50, consecutive_valid=5)


def benchmark_job(*, replication: int, tasks: int = 1, poster: str = "poster") -> Job:
    poster_user = UserFactory(username=poster)
    job = services.job_create(
        poster=poster_user,
        kind="benchmark",
        spec={**SPEC, "tasks": tasks},
        price_per_replica=10,
        replication=replication,
    )
    services.job_transition(job_id=job.id, to=JobState.FUNDED)
    services.job_split(job_id=job.id)
    return Job.objects.get(id=job.id)


def honest_checksum(task: Task) -> str:
    return str(benchmark.run(task.payload)["checksum"])


def holders(task: Task) -> set[UUID]:
    return set(
        Assignment.objects.filter(task=task, state__in=["leased", "running", "submitted", "accepted"]).values_list(
            "node_id", flat=True
        )
    )


@pytest.mark.django_db
class TestOneOperator:
    def test_two_nodes_of_one_operator_cannot_hold_two_replicas_and_the_honest_replica_wins(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        mallory = operator_client("mallory")
        sybil_a = enrol(mallory, "sybil-a", "203.0.113.10")
        sybil_b = enrol(mallory, "sybil-b", "198.51.100.20")
        honest = enrol(operator_client("olga"), "honest", "192.0.2.30")
        prove(sybil_a, sybil_b)  # preferred: without the rule they would take both replicas
        job = benchmark_job(replication=2)
        task = job.tasks.get()
        with caplog.at_level(logging.DEBUG, logger="marketplace.jobs.leasing"):
            assert len(dispatch.schedule()) == 2
        # The harm did not happen: one of Mallory's nodes and the honest one, never both of hers.
        held = holders(task)
        assert honest.node_id in held
        assert len(held & {sybil_a.node_id, sybil_b.node_id}) == 1
        assert "one replica per operator" in caplog.text
        (liar,) = [r for r in (sybil_a, sybil_b) if r.node_id in held]
        liar.submit(liar.leased()[0], INVENTED)
        honest.submit(honest.leased()[0], honest_checksum(task))
        verification.task_verify(task_id=task.id)
        task.refresh_from_db()
        assert (task.state, task.replicas_wanted) == (TaskState.RUNNING, 3)
        # The tie-break replica obeys the rule too: Mallory's other node is idle and proven, yet gets nothing …
        assert dispatch.schedule() == []
        other = sybil_b if liar is sybil_a else sybil_a
        assert not Assignment.objects.filter(task=task, node_id=other.node_id).exists()
        # … and a third operator breaks the tie, honestly: the job completes, the invented result is rejected.
        referee = enrol(operator_client("rita"), "referee", "100.24.0.5")
        (third,) = dispatch.schedule()
        assert Assignment.objects.get(id=third).node_id == referee.node_id
        referee.submit(str(third), honest_checksum(task))
        assert verification.task_verify(task_id=task.id) == TaskState.COMPLETED
        states = {a.node_id: a.state for a in Assignment.objects.filter(task=task)}
        assert states == {
            liar.node_id: AssignmentState.REJECTED,
            honest.node_id: AssignmentState.ACCEPTED,
            referee.node_id: AssignmentState.ACCEPTED,
        }
        assert verification.job_complete_if_done(job_id=job.id)
        assert Job.objects.get(id=job.id).state == JobState.COMPLETED


@pytest.mark.django_db
class TestOneNetwork:
    def test_nodes_of_two_operators_on_one_slash_24_cannot_hold_two_replicas(self) -> None:
        near = enrol(operator_client("ned"), "near", "203.0.113.10")
        neighbour = enrol(operator_client("nora"), "neighbour", "203.0.113.200")
        prove(near, neighbour)
        far = enrol(operator_client("fay"), "far", "198.51.100.7")
        job = benchmark_job(replication=2)
        task = job.tasks.get()
        assert len(dispatch.schedule()) == 2
        held = holders(task)
        assert far.node_id in held
        assert len(held & {near.node_id, neighbour.node_id}) == 1

    def test_the_network_is_the_one_the_heartbeat_comes_from(self) -> None:
        # Enrolled apart, then both behind one /24: the heartbeat's address is what counts.
        a = enrol(operator_client("ann"), "a", "198.51.100.7")
        b = enrol(operator_client("bob"), "b", "192.0.2.8")
        prove(a, b)
        b.address = "198.51.100.99"
        b.beat()
        assert Node.objects.get(id=b.node_id).address == "198.51.100.99"
        job = benchmark_job(replication=2)
        assert len(dispatch.schedule()) == 1
        assert job.tasks.get().live_replicas == 1

    def test_with_the_network_rule_off_one_slash_24_may_hold_both(self, settings: Any) -> None:
        settings.HASHWORK = {**settings.HASHWORK, "REPLICA_DISTINCT_NETWORKS": False}
        near = enrol(operator_client("ned"), "near", "203.0.113.10")
        neighbour = enrol(operator_client("nora"), "neighbour", "203.0.113.200")
        job = benchmark_job(replication=2)
        assert len(dispatch.schedule()) == 2
        assert holders(job.tasks.get()) == {near.node_id, neighbour.node_id}

    def test_loopback_nodes_group_only_when_private_networks_are_one(self, settings: Any) -> None:
        # Local stacks run every node on 127.0.0.1: by default that groups nobody …
        first = enrol(operator_client("lena"), "first", "127.0.0.1")
        second = enrol(operator_client("lars"), "second", "127.0.0.1")
        job = benchmark_job(replication=2)
        assert len(dispatch.schedule()) == 2
        # … and, when configured, it is one network.
        settings.HASHWORK = {**settings.HASHWORK, "PRIVATE_NETWORKS_ARE_ONE": True}
        other = benchmark_job(replication=2)
        Node.objects.filter(id__in=[first.node_id, second.node_id]).update(slots=2, valid_count=1)
        assert len(dispatch.schedule()) == 1
        assert other.tasks.get().live_replicas == 1
        assert job.tasks.get().live_replicas == 2

    def test_an_x_forwarded_for_header_counts_only_from_a_trusted_proxy(self, settings: Any) -> None:
        spoofer = operator_client("sam")
        faked = spoofer.post(
            "/api/nodes/enroll/",
            {"name": "spoof", "wallet_address": Wallet.create().address},
            format="json",
            REMOTE_ADDR="203.0.113.10",
            HTTP_X_FORWARDED_FOR="198.51.100.1",
        )
        assert Node.objects.get(id=faked.json()["node"]["id"]).address == "203.0.113.10"
        settings.HASHWORK = {**settings.HASHWORK, "TRUSTED_PROXIES": ["10.0.0.0/8"]}
        proxied = spoofer.post(
            "/api/nodes/enroll/",
            {"name": "proxied", "wallet_address": Wallet.create().address},
            format="json",
            REMOTE_ADDR="10.1.2.3",
            HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.1, 10.0.0.9",
        )
        assert Node.objects.get(id=proxied.json()["node"]["id"]).address == "198.51.100.1"


@pytest.mark.django_db(transaction=True)
def test_two_leases_at_once_for_one_operators_nodes_cannot_both_pass() -> None:
    # The scheduler's early skip is not what enforces the rule: two leases racing on one task, each for a node of
    # the same operator, are decided under the task's row lock.
    mallory = operator_client("mallory")
    rigs = [enrol(mallory, f"sybil-{i}", f"198.51.{i}.10") for i in range(2)]
    prove(*rigs)
    job = benchmark_job(replication=2)
    task = Task.objects.select_related("job").get(job=job)
    nodes = [Node.objects.get(id=r.node_id) for r in rigs]
    barrier = threading.Barrier(2)
    outcomes: list[dispatch.LeaseOutcome] = []

    def lease(node: Node) -> None:
        try:
            barrier.wait()
            outcomes.append(dispatch.assignment_lease(task=task, node=node))
        finally:
            connection.close()

    threads = [threading.Thread(target=lease, args=(n,)) for n in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o.assignment is not None for o in outcomes) == [False, True]
    (refused,) = [o for o in outcomes if o.assignment is None]
    assert "one replica per operator" in refused.refused
    task.refresh_from_db()
    assert task.live_replicas == 1
    assert Assignment.objects.filter(task=task).count() == 1
    assert sum(Node.objects.get(id=n.id).busy_slots for n in nodes) == 1
    # The honest path: another operator's node takes the second replica.
    honest = enrol(operator_client("olga"), "honest", "192.0.2.30")
    assert dispatch.assignment_lease(task=task, node=Node.objects.get(id=honest.node_id)).assignment is not None
