"""What a node reports it can do (`nodeagent probe`), at enrolment and in heartbeats: typed and bounded, so that a
malformed or hostile report is refused at the edge (400, naming the field) and never reaches the scheduler."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, StringConstraints

from protocol.base import Message

Name = Annotated[str, StringConstraints(max_length=128)]
Version = Annotated[str, StringConstraints(max_length=64)]


class Gpu(Message):
    what: ClassVar[str] = "gpu"

    index: int = Field(default=0, ge=0, le=255)
    name: Name = ""
    vram_mb: int = Field(default=0, ge=0, le=2**24)
    driver: Version = ""
    cuda: Version = ""
    temperature_c: int | None = Field(default=None, ge=-50, le=200)


class Capabilities(Message):
    """Unknown fields are dropped (a newer agent may report more); known ones must have their type and range."""

    what: ClassVar[str] = "capabilities"

    gpus: list[Gpu] = Field(default_factory=list, max_length=64)
    no_gpu_reason: Annotated[str, StringConstraints(max_length=500)] = ""
    cpu_cores: int = Field(default=1, ge=1, le=4096)
    ram_mb: int = Field(default=0, ge=0, le=2**32)
    disk_free_mb: int = Field(default=0, ge=0, le=2**40)
    max_gpus: int | None = Field(default=None, ge=0, le=64)
    software: dict[Name, Version] = Field(default_factory=dict, max_length=64)
