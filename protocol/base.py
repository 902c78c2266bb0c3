"""The protocol's version, its one error, and the base every message shares (JSON in, JSON out)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final, Self

from pydantic import BaseModel, ConfigDict, ValidationError

PROTOCOL: Final = "hashwork-protocol/1"

# What operators run to upgrade (README "Run a node", docs/deploy.md "Upgrading"). Not `pip install -U hashwork`:
# the agent is installed from a clone or built into an image, and a package of that name on PyPI is not ours.
UPGRADE = (
    "Upgrade the node agent: in its clone run `git pull && make install`; in Docker rebuild the image "
    "(docker/nodeagent.Dockerfile) and recreate the container (docs/deploy.md, Upgrading)."
)


class ProtocolError(ValueError):
    """A message this side cannot read: another protocol version, or a field missing or of the wrong type."""


class Message(BaseModel):
    """A wire message: `to_json()` gives the JSON object, `from_json(obj)` reads one or raises ProtocolError."""

    # Unknown fields are ignored so that a later release may add fields without a new protocol version.
    model_config = ConfigDict(frozen=True, extra="ignore")

    what: ClassVar[str] = "message"

    def to_json(self) -> dict[str, Any]:
        """The message as a JSON-ready dict."""
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Read a message from its JSON object; ProtocolError names every field that is missing or wrong."""
        if not isinstance(data, Mapping):
            raise ProtocolError(f"{cls.what}: expected a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ProtocolError(f"{cls.what}: {describe(exc)}") from None


def describe(exc: ValidationError) -> str:
    """Pydantic's errors as one line that names each field: `missing field 'job_id'; field 'seed': ...`."""
    parts = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(the object)"
        if error["type"] == "missing":
            parts.append(f"missing field {field!r}")
        else:
            parts.append(f"field {field!r}: {error['msg']}")
    return "; ".join(parts)


def check_version(what: str, data: Mapping[str, Any]) -> None:
    """Refuse a message of another protocol version before reading its fields, with the way to upgrade."""
    theirs = data.get("protocol")
    if theirs == PROTOCOL:
        return
    # Cut short: the value is the sender's and ends up in a log line and the marketplace's 500-character reason.
    how = "without a protocol version" if theirs is None else f"in protocol {str(theirs)[:40]!r}"
    raise ProtocolError(f"The marketplace sent this {what} {how}; this node agent speaks {PROTOCOL!r}. {UPGRADE}")
