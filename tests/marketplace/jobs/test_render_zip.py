"""The render kind verifies a chunk straight from its zip (chunk_open, nothing unpacked): every zip, honest,
malformed or hostile, gets the same verdict as unpacking it first (chunk_unpack) did — refused, accepted or
rejected — and the merge of zips is the merge of their folders."""

from __future__ import annotations

import io
import json
import random
import shutil
import warnings
import zipfile
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from marketplace.jobs.kinds.render import chunk_open, chunk_unpack, manifest_check
from synthetic import compare, merge
from tests.faults.chunks import (
    many_entries_zip,
    payload_of,
    png_header_bomb,
    rle_bomb,
    small_render_spec,
    write_chunk,
    zip_bomb_bytes,
    zip_bytes,
)

PAYLOAD = payload_of(small_render_spec())


@pytest.fixture
def honest(tmp_path: Path) -> Path:
    return write_chunk(tmp_path / "honest", PAYLOAD)


@pytest.fixture
def result_of(tmp_path: Path) -> Callable[[bytes], Any]:
    """A result (as the verifier sees one) whose artifact is these bytes, in a real file."""
    ids = count()

    def make(data: bytes) -> Any:
        n = next(ids)
        artifact = tmp_path / f"artifact-{n}.zip"
        artifact.write_bytes(data)
        return SimpleNamespace(
            id=f"r{n}",
            artifact=SimpleNamespace(open=lambda mode: artifact.open(mode)),
            assignment=SimpleNamespace(task=SimpleNamespace(payload=PAYLOAD)),
        )

    return make


@pytest.fixture(autouse=True)
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return tmp_path / "media"


def _verdict(read: Callable[[Any], Any], result: Any, honest: Path) -> tuple[str, bool | None]:
    """("refused", None) when reading the result is a ValueError, else ("read", whether it agrees with honest)."""
    try:
        root = read(result)
        manifest_check(root, PAYLOAD)
    except ValueError:
        return "refused", None
    return "read", compare(honest, root).ok


def _edited(honest: Path, out: Path, edit: Callable[[Path], None]) -> bytes:
    shutil.copytree(honest, out)
    edit(out)
    return zip_bytes(out)


def _coco(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def run(root: Path) -> None:
        coco = json.loads((root / "annotations.json").read_text())
        edit(coco)
        (root / "annotations.json").write_text(json.dumps(coco))

    return run


def _rebuilt(honest_zip: bytes, target: str, how: str) -> bytes:
    """The honest zip with member `target` renamed, dropped, doubled, encrypted-flagged, or shadowed by a folder."""
    source = zipfile.ZipFile(io.BytesIO(honest_zip))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as out:
        warnings.simplefilter("ignore", UserWarning)  # a doubled name is the point
        for member in source.infolist():
            body = source.read(member)
            info = zipfile.ZipInfo(member.filename)
            if member.filename == target:
                if how.startswith("rename:"):
                    info.filename = how.removeprefix("rename:")
                elif how == "drop":
                    continue
                elif how == "double":
                    out.writestr(info, body[: len(body) // 2])
                elif how == "encrypted":
                    info.flag_bits |= 0x1
                elif how == "dir-clash":
                    out.writestr(f"{member.filename}/inner.json", b"{}")
            out.writestr(info, body)
    return buffer.getvalue()


def _corpus(honest: Path, tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    whole = zip_bytes(honest)
    yield "honest", whole
    yield "no category_id", _edited(honest, tmp_path / "a", _coco(lambda c: c["annotations"][1].pop("category_id")))
    yield (
        "RLE bomb",
        _edited(honest, tmp_path / "b", _coco(lambda c: c["annotations"][0].update(segmentation=rle_bomb(4000, 4000)))),
    )
    yield (
        "PNG header bomb",
        _edited(honest, tmp_path / "c", lambda r: (r / "normals" / "00000000.png").write_bytes(png_header_bomb())),
    )
    yield "zip bomb", zip_bomb_bytes(64 << 20)
    yield "many entries", many_entries_zip(5000)
    yield "not a zip", b"PK\x03\x04 not really"
    yield "empty", b""
    names = sorted(zipfile.ZipFile(io.BytesIO(whole)).namelist())
    for target in ("chunk.json", "annotations.json", "rgb/00000001.png", "meta/00000000.json"):
        for how in ("drop", "double", "encrypted", "dir-clash", "rename:../x.json", "rename:/abs.json"):
            yield f"{how} {target}", _rebuilt(whole, target, how)
    yield "a file named like a folder", _rebuilt(whole, names[-1], "rename:meta")
    yield "a folder entry named chunk.json/", _rebuilt(whole, "annotations.json", "rename:chunk.json/")
    rng = random.Random(7)
    for n in range(40):
        flipped = bytearray(whole)
        for position in rng.sample(range(len(flipped)), rng.randint(1, 8)):
            flipped[position] ^= rng.randint(1, 255)
        yield f"flipped {n}", bytes(flipped)
    for n in range(10):
        yield f"truncated {n}", whole[: rng.randrange(len(whole))]


def test_every_zip_gets_the_same_verdict_read_in_place_as_unpacked(
    honest: Path, tmp_path: Path, result_of: Callable[[bytes], Any]
) -> None:
    verdicts = {}
    for what, data in _corpus(honest, tmp_path / "corpus"):
        before = _verdict(chunk_unpack, result_of(data), honest)
        after = _verdict(chunk_open, result_of(data), honest)
        assert after == before, what
        verdicts[what] = after
    # The corpus reaches all three outcomes, so the comparison above is not vacuous.
    assert verdicts["honest"] == ("read", True)
    assert verdicts["no category_id"] == ("read", False)
    assert verdicts["zip bomb"] == ("refused", None)
    assert verdicts["drop rgb/00000001.png"] == ("read", False)


def test_reading_in_place_unpacks_nothing(honest: Path, media: Path, result_of: Callable[[bytes], Any]) -> None:
    root = chunk_open(result_of(zip_bytes(honest)))
    assert compare(honest, root).ok
    assert not (media / "unpacked").exists()


def test_a_member_whose_bytes_fail_their_crc_is_refused_before_any_comparison(
    honest: Path, result_of: Callable[[bytes], Any]
) -> None:
    # A chunk accepted alone (replication 1, no spot check) is never compared: its members must still be proven
    # whole, as unpacking them did.
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(honest.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(honest).as_posix())
    data = bytearray(stored.getvalue())
    offset = data.index(b"IDAT") + 8  # inside the first PNG's image data, stored as is
    data[offset] ^= 0xFF
    with pytest.raises(ValueError, match="CRC"):
        chunk_open(result_of(bytes(data)))


def test_the_merge_of_zips_read_in_place_is_the_merge_of_their_folders(
    tmp_path: Path, result_of: Callable[[bytes], Any]
) -> None:
    first = write_chunk(tmp_path / "c0", payload_of(small_render_spec(), start=0))
    second = write_chunk(tmp_path / "c1", payload_of(small_render_spec(), start=2))
    from_dirs = merge([first, second], tmp_path / "dirs.zip")
    roots = [chunk_open(result_of(zip_bytes(root))) for root in (first, second)]
    from_zips = merge(roots, tmp_path / "zips.zip")
    assert from_zips == from_dirs
    a, b = zipfile.ZipFile(tmp_path / "dirs.zip"), zipfile.ZipFile(tmp_path / "zips.zip")
    assert sorted(a.namelist()) == sorted(b.namelist())
    assert all(a.read(name) == b.read(name) for name in a.namelist())
