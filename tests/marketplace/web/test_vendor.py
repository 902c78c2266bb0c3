"""The vendored front-end files are exactly npm's (package.json pins the versions; `make vendor` copies them)."""

from __future__ import annotations

import pytest

from marketplace.web import vendor


@pytest.mark.parametrize("name", sorted(vendor.FILES))
def test_the_vendored_file_is_the_npm_packages_file(name: str) -> None:
    source = vendor.source(name)
    assert source.exists(), f"{source} is missing: `make test` runs `npm install` first"
    assert (vendor.TARGET / name).read_bytes() == source.read_bytes(), f"{name} is stale: run `make vendor`"


def test_pages_load_the_vendored_files_from_our_own_server() -> None:
    base = (vendor.TARGET.parents[2] / "templates" / "web" / "base.html").read_text()
    assert "{% static 'web/vendor/bootstrap.min.css' %}" in base
    assert "https://" not in base  # no CDN: deployments and tests may be offline
