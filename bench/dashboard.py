"""Dashboard server time: the median time Django takes to render each page (no network, no browser) on the demo's
data, against a trivial view (the health check) measured in the same run.

    make demo DEMO_ARGS=--headless        # once: the demo's render and train jobs are the data
    .venv/bin/python bench/dashboard.py [--runs 30] [--var var]

Reads the demo's SQLite database under --var (HASHWORK_VAR_DIR); DATABASE_URL must be unset. Aim: < 300 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="requests per page (default 30)")
    parser.add_argument("--var", default=str(ROOT / "var"), help="the demo's var folder (default var/)")
    args = parser.parse_args()
    if os.environ.get("DATABASE_URL"):
        parser.error("unset DATABASE_URL: the benchmark reads the demo's SQLite database")
    os.environ["HASHWORK_VAR_DIR"] = str(Path(args.var).resolve())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.test import Client

    from marketplace.jobs.models import Job, JobState

    users = get_user_model().objects
    poster, operator = users.filter(username="demo-poster").first(), users.filter(username="demo-operator").first()
    render = Job.objects.filter(poster=poster, kind="render", state=JobState.COMPLETED).order_by("-created_at").first()
    train = Job.objects.filter(poster=poster, kind="train", state=JobState.COMPLETED).order_by("-created_at").first()
    if poster is None or render is None or train is None or operator is None:
        print("No demo data here: run `make demo DEMO_ARGS=--headless` first.", file=sys.stderr)
        return 1
    as_poster, as_operator, anonymous = (Client(HTTP_HOST="127.0.0.1") for _ in range(3))
    as_poster.force_login(poster)
    as_operator.force_login(operator)
    pages = [
        ("health check (baseline)", anonymous, "/healthz/"),
        ("network (public)", anonymous, "/network/"),
        ("my jobs", as_poster, "/jobs/"),
        ("render job page", as_poster, f"/jobs/{render.id}/"),
        ("render job, live part", as_poster, f"/jobs/{render.id}/live/"),
        ("train job page", as_poster, f"/jobs/{train.id}/"),
        ("post a render job", as_poster, "/jobs/new/render/"),
        ("post a train job", as_poster, "/jobs/new/train/"),
        ("my nodes", as_operator, "/nodes/"),
    ]
    print(f"{Job.objects.count()} jobs in {args.var}; {args.runs} requests per page, median server time")
    baseline = None
    for name, client, url in pages:
        client.get(url)  # warm: templates compiled, connections open
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (url, response.status_code)
        median = statistics.median(times)
        baseline = baseline or median
        verdict = "ok" if median < 300 else "OVER 300 ms"
        print(f"  {name:<26} {median:7.1f} ms  ({median / baseline:5.1f}× baseline)  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
