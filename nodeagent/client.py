"""The agent's HTTP client for the marketplace API; every call goes through the retry helper."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from nodeagent.retry import TransientError, retry
from nodeagent.upload import MultipartFile
from protocol import Heartbeat, HeartbeatReply


class ApiError(Exception):
    """The marketplace refused a request (4xx); `status` and the server's message say why."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.body = body


class Conflict(ApiError):
    """409: the assignment was cancelled, expired, handed back or already done."""


class MarketplaceClient:
    def __init__(self, base_url: str, *, token: str | None = None, scheme: str = "Node", timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"{scheme} {token}"
        self.timeout = timeout

    def _call(
        self, method: str, path: str, *, body_factory: Callable[[], MultipartFile] | None = None, **kwargs: Any
    ) -> Any:
        def once() -> Any:
            # The body is made again for each try (its file reopened), so a retried upload sends the whole artifact.
            body = body_factory() if body_factory else None
            if body is not None:
                kwargs.update(data=body, headers={"Content-Type": body.content_type})
            try:
                response = self.session.request(method, f"{self.base_url}{path}", timeout=self.timeout, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise TransientError(str(exc)) from exc
            finally:
                if body is not None:
                    body.close()
            if response.status_code >= 500 or response.status_code == 429:
                raise TransientError(f"HTTP {response.status_code} from {path}")
            try:
                body = response.json()
            except ValueError:
                body = None
            if response.status_code >= 400:
                message = body.get("message", response.reason) if isinstance(body, dict) else response.reason
                error = Conflict if response.status_code == 409 else ApiError
                raise error(response.status_code, str(message), body)
            return body

        return retry(once, what=f"{method} {path}")

    def enroll(self, **body: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/api/nodes/enroll/", json=body)
        return result

    def heartbeat(self, beat: Heartbeat) -> HeartbeatReply:
        """Report the node alive; the reply says what to stop and whether to withdraw (ProtocolError if unreadable)."""
        return HeartbeatReply.from_json(self._call("POST", "/api/nodes/heartbeat/", json=beat.to_json()))

    def me(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/api/nodes/me/")
        return result

    def my_assignments(self, limit: int = 10) -> list[dict[str, Any]]:
        body = self._call("GET", f"/api/nodes/me/assignments/?limit={limit}")
        return list(body["results"])

    def earnings(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/api/nodes/me/earnings/")
        return result

    def chain(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/api/chain/")
        return result

    def download(self, path: str, target: Path) -> None:
        """Fetch an input file (retried like every call) into `target`."""

        def once() -> None:
            try:
                with self.session.get(f"{self.base_url}{path}", timeout=self.timeout, stream=True) as response:
                    if response.status_code >= 500 or response.status_code == 429:
                        raise TransientError(f"HTTP {response.status_code} from {path}")
                    if response.status_code >= 400:
                        error = Conflict if response.status_code == 409 else ApiError
                        raise error(response.status_code, f"cannot fetch {path}")
                    with target.open("wb") as out:
                        for chunk in response.iter_content(chunk_size=1 << 20):
                            out.write(chunk)
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise TransientError(str(exc)) from exc

        retry(once, what=f"GET {path}")

    def start(self, assignment_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/api/assignments/{assignment_id}/start/")
        return result

    def fail(self, assignment_id: str, reason: str) -> None:
        self._call("POST", f"/api/assignments/{assignment_id}/fail/", json={"reason": reason[-2000:]})

    def release(self, assignment_id: str) -> None:
        self._call("POST", f"/api/assignments/{assignment_id}/release/")

    def release_all(self, *, accepting: bool) -> int:
        body = self._call("POST", "/api/nodes/release/", json={"accepting": accepting})
        return int(body["released"])

    def submit(
        self, assignment_id: str, *, artifact: Path, sha256: str, signature: str, metrics: str
    ) -> dict[str, Any]:
        """Upload a result, streamed from its file. Safe to repeat after a network error: the marketplace answers a
        repeated identical upload with the first result."""

        def body() -> MultipartFile:
            fields = {"sha256": sha256, "signature": signature, "metrics": metrics}
            return MultipartFile(fields, field="artifact", path=artifact)

        result: dict[str, Any] = self._call("POST", f"/api/assignments/{assignment_id}/result/", body_factory=body)
        return result
