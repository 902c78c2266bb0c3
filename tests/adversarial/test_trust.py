"""Trust that has to be earned: an operator farms accepted results on jobs it posts itself (replication 1, price 1)
to be trusted, skip replication and get a lazy render paid. Nodes enrol, heartbeat, start and submit (with real
signatures) through the real API on the real database and Redis; verification, spot checks (a real Blender
re-render) and payouts are the real services."""

from __future__ import annotations

import hashlib
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from marketplace.jobs import dispatch, reputation, services, verification
from marketplace.jobs.models import Assignment, AssignmentState, Job, JobNodeBlock, JobState, Task, TaskState
from marketplace.nodes.models import Node, NodeReputation
from marketplace.payments.models import Payout
from synthetic import chunk, render_chunk
from tests.adversarial.test_sybil_replication import INVENTED, SPEC, Rig, enrol, honest_checksum, operator_client
from tests.factories import UserFactory
from tests.marketplace.jobs.test_render_kind import render_spec

RENDER_SPEC = render_spec(images=2, chunk_size=2, output={"resolution": [48, 48], "samples": 8})
RENDER_CAPS = {"cpu_cores": 4, "ram_mb": 16000, "software": {"bpy": "5.0.1"}}
MARKET_PRICE = 10
HALF_LIFE = timedelta(days=14)  # REPUTATION_HALF_LIFE_DAYS


def post(poster: Any, *, kind: str = "benchmark", price: int = MARKET_PRICE, replication: int = 2, **spec: Any) -> Job:
    """A funded, running job of `poster` (a User): `tasks` benchmark tasks, or the small render spec's one chunk."""
    body = RENDER_SPEC if kind == "render" else {**SPEC, **spec}
    job = services.job_create(poster=poster, kind=kind, spec=body, price_per_replica=price, replication=replication)
    services.job_transition(job_id=job.id, to=JobState.FUNDED)
    services.job_split(job_id=job.id)
    return Job.objects.get(id=job.id)


def market(poster: Any, *, price: int = MARKET_PRICE, kind: str = "benchmark") -> None:
    """A funded job nobody works on yet: it sets the market price that reputation is measured against."""
    job = services.job_create(
        poster=poster, kind=kind, spec=RENDER_SPEC if kind == "render" else SPEC, price_per_replica=price, replication=2
    )
    services.job_transition(job_id=job.id, to=JobState.FUNDED)


def user(username: str) -> Any:
    return get_user_model().objects.get(username=username)


def work(*rigs: Rig, liar: Rig | None = None) -> None:
    """Run the network until the rigs hold no leased work: each submits the honest result (`liar`: an invented
    one) for whatever it leased, and every touched task is verified."""
    by_id = {r.node_id: r for r in rigs}
    for _ in range(60):
        dispatch.schedule()
        leased = list(Assignment.objects.filter(node_id__in=by_id, state=AssignmentState.LEASED).select_related("task"))
        if not leased:
            return
        for a in leased:
            checksum = INVENTED if liar is not None and a.node_id == liar.node_id else honest_checksum(a.task)
            by_id[a.node_id].submit(str(a.id), checksum)
        for task_id in {a.task_id for a in leased}:
            verification.task_verify(task_id=task_id)
    raise AssertionError("the network never ran out of work")


def rep(rig: Rig, kind: str = "benchmark") -> float:
    return reputation.reputation_of(node_id=rig.node_id, kind=kind)


def earned(rig: Rig, score: float, kind: str, *, ago: timedelta = timedelta(0)) -> None:
    """Reputation the node earned before the test (`ago`: when it last changed)."""
    NodeReputation.objects.update_or_create(
        node_id=rig.node_id, kind=kind, defaults={"score": score, "updated_at": timezone.now() - ago}
    )


def renders(rig: Rig) -> Rig:
    Node.objects.filter(id=rig.node_id).update(capabilities=RENDER_CAPS, valid_count=1)
    return rig


pytestmark = pytest.mark.django_db


def test_an_operator_farming_its_own_cheap_unreplicated_jobs_is_not_trusted(settings: Any) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "REPLICATION_P": 0.0}
    market(UserFactory(username="paula"))
    mallory = enrol(operator_client("mallory"), "farm", "203.0.113.10")
    # Mallory posts herself twelve tasks, replication 1, at price 1: nobody else would take them, or check them.
    farm = post(user("mallory"), price=1, replication=1, tasks=12)
    work(mallory)
    assert set(farm.tasks.values_list("state", flat=True)) == {TaskState.COMPLETED}
    node = Node.objects.get(id=mallory.node_id)
    # The old rule (a streak of TRUSTED_AFTER accepted results, on any job) would trust her now …
    assert node.consecutive_valid == node.valid_count == 12 >= settings.HASHWORK["TRUSTED_AFTER"]
    # … none of it counts: her own jobs, unreplicated, below the market price.
    assert rep(mallory) == rep(mallory, "render") == 0
    assert not NodeReputation.objects.filter(node_id=mallory.node_id, score__gt=0).exists()
    # The harm did not happen: on another poster's render job her replica is one of two, never spot-checked alone.
    renders(mallory)
    job = post(user("paula"), kind="render")
    (leased,) = dispatch.schedule()
    assert Assignment.objects.get(id=leased).node_id == mallory.node_id
    task = job.tasks.get()
    assert (task.replicas_wanted, task.spot_check) == (2, False)


@pytest.mark.parametrize(
    ("poster", "replication", "price", "mallory_earns", "olga_earns"),
    [
        ("mallory", 2, MARKET_PRICE, 0, 1),  # her own job: only the other operator's node earns
        ("paula", 1, MARKET_PRICE, 0, 0),  # one replica: nothing checked it
        ("pete", 2, 1, 0, 0),  # below the market price (each poster counted once: paula 10, pete 1)
        ("paula", 2, MARKET_PRICE, 1, 1),  # the honest path: another poster, two replicas, the market price
    ],
    ids=["self-posted", "unreplicated", "underpaid", "honest"],
)
def test_only_results_on_other_posters_replicated_jobs_at_the_market_price_earn_reputation(
    poster: str, replication: int, price: int, mallory_earns: int, olga_earns: int
) -> None:
    market(UserFactory(username="paula"))
    UserFactory(username="pete")
    mallory = enrol(operator_client("mallory"), "m", "203.0.113.10")
    olga = enrol(operator_client("olga"), "o", "198.51.100.20")
    job = post(user(poster), price=price, replication=replication, tasks=1)
    work(mallory, olga)
    assert job.tasks.get().state == TaskState.COMPLETED
    assert rep(mallory) == pytest.approx(mallory_earns, abs=1e-3)
    assert rep(olga) == pytest.approx(olga_earns, abs=1e-3)


def test_replicated_results_on_other_posters_jobs_earn_trust_on_that_kind_only() -> None:
    market(UserFactory(username="pete"), price=1)  # a cheap poster does not drag the market price down
    UserFactory(username="paula")
    olga = enrol(operator_client("olga"), "o", "198.51.100.20")
    oscar = enrol(operator_client("oscar"), "x", "192.0.2.30")
    assert not reputation.trusted(node_id=olga.node_id, kind="benchmark")
    # TRUSTED_AFTER (10) plus one: the first results have decayed by a few seconds' worth when the last lands.
    job = post(user("paula"), replication=2, tasks=11)
    work(olga, oscar)
    assert set(job.tasks.values_list("state", flat=True)) == {TaskState.COMPLETED}
    for rig in (olga, oscar):
        assert rep(rig) == pytest.approx(11, abs=1e-2)
        assert reputation.trusted(node_id=rig.node_id, kind="benchmark")
        # Kept per kind: eleven benchmark results say nothing about rendering.
        assert not reputation.trusted(node_id=rig.node_id, kind="render")


def test_trust_decays_with_its_half_life(settings: Any) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "REPLICATION_P": 0.0}
    UserFactory(username="paula")
    stale = renders(enrol(operator_client("sam"), "stale", "203.0.113.10"))
    fresh = renders(enrol(operator_client("fay"), "fresh", "198.51.100.20"))
    earned(stale, 12, "render", ago=HALF_LIFE)
    earned(fresh, 12, "render")
    assert rep(stale, "render") == pytest.approx(6, abs=1e-3)
    assert rep(fresh, "render") == pytest.approx(12, abs=1e-3)
    later = timezone.now() + 2 * HALF_LIFE
    assert reputation.reputation_of(node_id=fresh.node_id, kind="render", now=later) == pytest.approx(3, abs=1e-3)
    assert not reputation.trusted(node_id=stale.node_id, kind="render")
    assert not reputation.trusted(node_id=fresh.node_id, kind="render", now=later)
    # At the lease: the fresh node's chunk is spot-checked, the stale node's is replicated (the harm — trust kept
    # long after the work that earned it — does not happen).
    Node.objects.filter(id=stale.node_id).update(accepting=False)
    fresh_job = post(user("paula"), kind="render")
    (leased,) = dispatch.schedule()
    assert Assignment.objects.get(id=leased).node_id == fresh.node_id
    assert Task.objects.filter(job=fresh_job, replicas_wanted=1, spot_check=True).exists()
    Node.objects.filter(id=fresh.node_id).update(accepting=False)
    Node.objects.filter(id=stale.node_id).update(accepting=True)
    stale_job = post(user("paula"), kind="render")
    (leased,) = dispatch.schedule()
    assert Assignment.objects.get(id=leased).node_id == stale.node_id
    assert Task.objects.filter(job=stale_job, replicas_wanted=2, spot_check=False).exists()
    # A new result adds to the decayed score, not the old one.
    for job in (fresh_job, stale_job):
        dispatch.work_stop(job_id=job.id, reason="the render part of the test is over")
    earned(stale, 12, "benchmark", ago=HALF_LIFE)
    olga = enrol(operator_client("olga"), "o", "192.0.2.30")
    Node.objects.filter(id=fresh.node_id).update(accepting=True)
    post(user("paula"), tasks=1)
    work(stale, olga, fresh)
    assert rep(stale) == pytest.approx(7, abs=1e-2)


def test_a_wrong_result_resets_the_kinds_reputation_and_blocks_the_node_from_the_job() -> None:
    UserFactory(username="paula")
    liar = enrol(operator_client("mallory"), "liar", "203.0.113.10")
    honest = [enrol(operator_client(f"h{i}"), f"h{i}", f"198.51.{100 + i}.20") for i in range(3)]
    Node.objects.filter(id__in=[liar.node_id, *(h.node_id for h in honest)]).update(valid_count=1)
    earned(liar, 20, "benchmark")
    earned(liar, 20, "render")
    # Three replicas of each of two tasks; the liar is offered work first (it has the reputation) but holds one slot.
    job = post(user("paula"), replication=3, tasks=2)
    work(liar, *honest, liar=liar)
    first, second = job.tasks.order_by("index")
    lie = Assignment.objects.get(task=first, node_id=liar.node_id)
    assert lie.state == AssignmentState.REJECTED
    assert lie.state_reason.startswith("differs from the majority of replicas")
    assert not Payout.objects.filter(assignment_id=lie.id).exists()
    # Reset on that kind; its render reputation is another kind's and stays.
    assert rep(liar) == 0
    assert rep(liar, "render") == pytest.approx(20, abs=1e-2)
    assert JobNodeBlock.objects.get(job=job, node_id=liar.node_id).blocked
    # The harm did not happen: the liar got none of the job's other task, which honest nodes completed …
    assert not Assignment.objects.filter(task=second, node_id=liar.node_id).exists()
    assert (first.state, second.state) == (TaskState.COMPLETED, TaskState.COMPLETED)
    assert all(rep(h) > 0 for h in honest)
    # … and the block is this job's only: another job's work still reaches it (with one honest node left to take
    # the other replica: the reputable ones would come first).
    Node.objects.filter(id__in=[h.node_id for h in honest[1:]]).update(accepting=False)
    other = post(user("paula"), replication=2, tasks=1)
    work(liar, honest[0])
    assert Assignment.objects.filter(task__job=other, node_id=liar.node_id, state=AssignmentState.ACCEPTED).exists()


@pytest.fixture(scope="module")
def chunks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The render job's only chunk, zipped: honest, and lazy (¼ of the samples, its manifest claiming the spec)."""
    from marketplace.jobs import kinds

    kind = kinds.get("render")
    (plan,) = kind.split(kinds.parse_spec(kind, RENDER_SPEC))
    spec, start, count = plan.payload["spec"], plan.payload["start"], plan.payload["count"]
    root = tmp_path_factory.mktemp("trust")
    render_chunk(spec, start, count, root / "honest", device="cpu")
    lazy_spec = {**spec, "output": {**spec["output"], "samples": spec["output"]["samples"] // 4}}
    render_chunk(lazy_spec, start, count, root / "lazy", device="cpu")
    manifest = chunk.read_json(root / "lazy" / chunk.MANIFEST)
    manifest["spec_digest"] = chunk.read_json(root / "honest" / chunk.MANIFEST)["spec_digest"]
    chunk.write_json(root / "lazy" / chunk.MANIFEST, manifest)
    return {name: _zip(root / name) for name in ("honest", "lazy")}


def _zip(folder: Path) -> bytes:
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(folder).as_posix())
    return archive.read_bytes()


def upload(rig: Rig, assignment_id: UUID, data: bytes) -> None:
    """What the render runner does: start, then upload the zipped chunk, signed."""
    assert rig.client.post(f"/api/assignments/{assignment_id}/start/").status_code == 200
    sha256 = hashlib.sha256(data).hexdigest()
    body = {
        "artifact": SimpleUploadedFile("chunk.zip", data),
        "sha256": sha256,
        "signature": rig.wallet.sign_result(str(assignment_id), sha256),
    }
    reply = rig.client.post(f"/api/assignments/{assignment_id}/result/", body, format="multipart")
    assert reply.status_code == 201, reply.json()


def test_a_trusted_nodes_lazy_render_fails_the_full_spot_check_and_is_not_paid(
    settings: Any, chunks: dict[str, bytes]
) -> None:
    settings.HASHWORK = {**settings.HASHWORK, "REPLICATION_P": 0.0}
    UserFactory(username="paula")
    lazy = renders(enrol(operator_client("larry"), "lazy", "203.0.113.10"))
    honest = renders(enrol(operator_client("olga"), "honest", "198.51.100.20"))
    earned(lazy, 12.5, "render")  # first in line
    earned(honest, 12, "render")
    lazy_job, honest_job = post(user("paula"), kind="render"), post(user("paula"), kind="render")
    assert len(dispatch.schedule()) == 2
    lazy_task, honest_task = lazy_job.tasks.get(), honest_job.tasks.get()
    # Both trusted: each chunk has one replica, to be spot-checked by a full re-render of one of its images.
    assert (lazy_task.replicas_wanted, lazy_task.spot_check) == (honest_task.replicas_wanted, True) == (1, True)
    cheat = Assignment.objects.get(task=lazy_task)
    work_done = Assignment.objects.get(task=honest_task)
    assert (cheat.node_id, work_done.node_id) == (lazy.node_id, honest.node_id)
    upload(lazy, cheat.id, chunks["lazy"])
    upload(honest, work_done.id, chunks["honest"])
    assert verification.task_verify(task_id=lazy_task.id) == TaskState.RUNNING
    assert verification.task_verify(task_id=honest_task.id) == TaskState.COMPLETED
    # The harm did not happen: the lazy chunk is rejected on its RGB alone (its labels are exact), and not paid.
    cheat.refresh_from_db()
    assert cheat.state == AssignmentState.REJECTED
    assert cheat.state_reason.startswith("spot check failed: image ")
    assert "rgb PSNR" in cheat.state_reason
    assert "pass differs" not in cheat.state_reason
    assert not Payout.objects.filter(assignment_id=cheat.id).exists()
    assert rep(lazy, "render") == 0
    assert JobNodeBlock.objects.get(job=lazy_job, node_id=lazy.node_id).blocked
    lazy_task.refresh_from_db()
    assert (lazy_task.replicas_wanted, lazy_task.spot_check) == (2, False)
    # The honest chunk passed the same check: accepted, paid, and its node's reputation grew.
    work_done.refresh_from_db()
    assert work_done.state == AssignmentState.ACCEPTED
    assert "re-rendered in full" in work_done.state_reason
    assert Payout.objects.filter(assignment_id=work_done.id).exists()
    assert rep(honest, "render") == pytest.approx(13, abs=1e-2)
