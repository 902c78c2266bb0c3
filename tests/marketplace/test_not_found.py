"""A path under /api/ that matches no endpoint (an id that is not a UUID, a typo) answers in the API's error shape,
as JSON, as documented; pages outside the API keep Django's HTML 404 (found by schemathesis: text/html)."""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/api/results/0/artifact/", "/api/jobs/not-a-uuid/", "/api/no-such-endpoint/"])
def test_an_unknown_api_path_is_a_json_404_in_the_error_shape(path: str) -> None:
    reply = Client().get(path)
    assert reply.status_code == 404
    assert reply["Content-Type"] == "application/json"
    assert reply.json() == {"message": "Not found.", "extra": {"code": "not_found"}}


def test_an_unknown_page_outside_the_api_is_still_an_html_404() -> None:
    reply = Client().get("/no-such-page/")
    assert reply.status_code == 404
    assert reply["Content-Type"].startswith("text/html")
