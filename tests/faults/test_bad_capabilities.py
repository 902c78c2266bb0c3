"""Issue [faults] item 1: one node's malformed capabilities used to stop all scheduling (`int("x")` on every
scheduler run, for every job) and break the public /network/ page. They are now refused at the edge (400, naming
the field, nothing written), and a malformed record already in the database (from before that check, or written
by hand) is skipped by the scheduler and the page instead of raising."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from marketplace.jobs import dispatch
from marketplace.jobs.models import Assignment
from marketplace.nodes.models import Node
from nodeagent import probe
from nodeagent.signer import Wallet
from protocol.capabilities import Capabilities
from tests.adversarial.test_sybil_replication import benchmark_job, enrol, operator_client, prove

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("capabilities", "field"),
    [
        ({"cpu_cores": "x"}, "cpu_cores"),
        ({"cpu_cores": 0}, "cpu_cores"),
        ({"ram_mb": -1}, "ram_mb"),
        ({"gpus": "lots"}, "gpus"),
        ({"gpus": [{"vram_mb": "big"}]}, "gpus.0.vram_mb"),
        ({"gpus": [{}] * 65}, "gpus"),
        ({"software": {"bpy": 5}}, "software.bpy"),
        ({"software": ["bpy"]}, "software"),
        ("not an object", "capabilities"),
    ],
)
def test_malformed_capabilities_are_refused_at_enrolment_and_in_heartbeats_and_change_nothing(
    capabilities: Any, field: str
) -> None:
    operator = operator_client("op-bad")
    body = {"name": "bad", "wallet_address": Wallet.create().address, "capabilities": capabilities}
    refused = operator.post("/api/nodes/enroll/", body, format="json", REMOTE_ADDR="203.0.113.9")
    assert refused.status_code == 400
    assert "capabilities" in refused.json()["extra"]["fields"]
    assert field.split(".")[0] in str(refused.json()["extra"]["fields"]["capabilities"])
    assert not Node.objects.filter(name="bad").exists()
    rig = enrol(operator, "good", "203.0.113.10")
    before = Node.objects.get(id=rig.node_id).capabilities
    beat = rig.client.post(
        "/api/nodes/heartbeat/", {"free_slots": 1, "capabilities": capabilities}, format="json", REMOTE_ADDR=rig.address
    )
    assert beat.status_code == 400
    assert Node.objects.get(id=rig.node_id).capabilities == before


def test_what_the_real_probe_reports_passes_and_keeps_its_figures() -> None:
    reported = probe.probe()
    checked = Capabilities.from_json(reported).model_dump(mode="json", exclude_unset=True, exclude_none=True)
    for key in ("cpu_cores", "ram_mb", "disk_free_mb", "software"):
        assert checked[key] == reported[key]
    assert len(checked["gpus"]) == len(reported["gpus"])


def test_a_malformed_record_already_stored_never_stops_the_scheduler_or_the_network_page() -> None:
    job = benchmark_job(replication=1, tasks=2)
    bad = enrol(operator_client("op-x"), "bad", "203.0.113.20")
    good = enrol(operator_client("op-y"), "good", "203.0.113.30", slots=2)
    prove(bad, good)
    # What a node could write before validation at the edge, or an operator by hand in the admin.
    Node.objects.filter(id=bad.node_id).update(
        capabilities={"cpu_cores": "x", "gpus": "lots", "software": ["bpy"]}, min_price={"benchmark": "cheap"}
    )
    leased = dispatch.schedule()
    assert len(leased) == 2
    assert set(Assignment.objects.filter(task__job=job).values_list("node_id", flat=True)) == {good.node_id}
    page = Client().get("/network/")
    assert page.status_code == 200
