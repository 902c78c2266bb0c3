"""Build Hashwork's images, reusing each one whose inputs have not changed: `make images` runs this.

    python docker/images.py [--force] [--only NAME ...] [--debian-image IMAGE]

Images, in build order (each later one starts FROM hashwork/base:local):
  base        Debian bookworm + Python 3.11 + what headless Blender links against
  marketplace web, workers, beat, settlement, Flower, migrate, deploy
  nodeagent   the node agent (CPU), and the image every sandboxed task runs in
  anvil       the local chain
  postgres    Debian's PostgreSQL 15 (where no registry serves postgres:17-bookworm)
  redis       Debian's Redis 7 (where no registry serves valkey/valkey)
  nodeagent-cuda  the node agent for NVIDIA GPUs: only when nvidia/cuda's base is here, or with --cuda

The Debian base is `--debian-image` when given, else debian:bookworm-slim when it is present or can be pulled, else
one made here with debootstrap (no registry needed: about 40 s, once). Python wheels come from the host's pip
(docker/stage/wheels; it knows where torch's CPU build lies) and are served to the build on 127.0.0.1 only while it
runs, so they never enter a layer. An image is rebuilt only when the hash of its inputs (its Dockerfile, its parent
image, the files of the build context, the pinned wheels) differs from the `io.hashwork.inputs` label it carries.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "docker" / "stage"
WHEELS = STAGE / "wheels"
LOGS = ROOT / "var" / "images"
TAG = "local"
DEBOOTSTRAP_IMAGE = "hashwork/debootstrap:bookworm"
DEBIAN_MIRROR = os.environ.get("HASHWORK_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The wheel server's address, fixed so that Docker's cache keys of the install layer do not change between builds.
WHEELS_PORT = int(os.environ.get("HASHWORK_WHEELS_PORT", "8631"))
WHEELS_URL = f"http://127.0.0.1:{WHEELS_PORT}/"
IMAGES = ["base", "marketplace", "nodeagent", "anvil", "postgres", "redis"]
# The CUDA node agent starts from NVIDIA's image, which only a registry serves: built when that base is on this
# machine already (pulled by its operator), or with --cuda (which pulls it).
CUDA_BASE = "nvidia/cuda:13.0.0-base-ubuntu22.04"
PYTHON_IMAGES = {"marketplace", "nodeagent"}
# Top-level names the build context leaves out (.dockerignore), so a change to them rebuilds nothing.
# Packages that the images' Python (Debian's 3.11.2) needs and the host's newer 3.11 does not, by environment markers
# (redis: `async-timeout; python_full_version < "3.11.3"`): the host's pip would not fetch them.
DEBIAN_PYTHON_EXTRAS = ["async-timeout>=4.0.3"]
NOT_IN_CONTEXT = {".git", ".ci", ".venv", "node_modules", "var", "tests", "bench", "docs", "build", "dist"}


class BuildError(Exception):
    """An image did not build; the message names it and its log."""


def say(message: str) -> None:
    print(message, flush=True)


def image_name(name: str) -> str:
    return f"hashwork/{name}:{TAG}"


def docker(*args: str, capture: bool = True, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=capture, text=True, check=check)


def label_of(image: str, label: str) -> str | None:
    done = docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', image, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def image_id(image: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()


def revision() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    head = done.stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=False)
    return head + ("-dirty" if dirty.stdout.strip() else "")


def context_files() -> list[Path]:
    """The files of the build context that an image copies: tracked and untracked-but-not-ignored ones."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    files = [Path(p) for p in listed.split("\0") if p]
    return sorted(p for p in files if p.parts[0] not in NOT_IN_CONTEXT and (ROOT / p).is_file())


def inputs_hash(name: str, parent: str | None) -> str:
    digest = hashlib.sha256()
    digest.update((ROOT / "docker" / f"{name}.Dockerfile").read_bytes())
    if parent:
        digest.update(parent.encode())
    if name in PYTHON_IMAGES or name == "nodeagent-cuda":
        for path in context_files():
            digest.update(str(path).encode() + b"\0" + (ROOT / path).read_bytes())
    elif name == "anvil":
        digest.update((STAGE / "anvil" / "anvil").read_bytes())
    elif name == "postgres":
        digest.update((ROOT / "docker" / "postgres-entrypoint.sh").read_bytes())
    return digest.hexdigest()[:32]


# Staging ---------------------------------------------------------------------------------------------------------


def requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"]["s3"])


def stage_requirements() -> None:
    """pyproject.toml's dependencies as a requirements file, what the images' deps stage installs (and keys its
    cache on: the rest of pyproject.toml changes nothing in the images)."""
    target = STAGE / "requirements.txt"
    STAGE.mkdir(parents=True, exist_ok=True)
    text = "\n".join(requirements()) + "\n"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def stage_wheels() -> None:
    """Wheels for every pinned requirement, built or fetched by the host's pip (which knows torch's CPU build)."""
    wanted = hashlib.sha256(
        "\n".join(requirements() + DEBIAN_PYTHON_EXTRAS).encode() + (ROOT / "constraints.txt").read_bytes()
    ).hexdigest()
    stamp = WHEELS / ".inputs"
    if stamp.exists() and stamp.read_text() == wanted:
        return
    say("==> staging Python wheels for the images (docker/stage/wheels; once per change of the pins)")
    shutil.rmtree(WHEELS, ignore_errors=True)
    WHEELS.mkdir(parents=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as reqs:
        reqs.write("\n".join(requirements() + DEBIAN_PYTHON_EXTRAS) + "\n")
        reqs.flush()
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--wheel-dir", str(WHEELS),
             "-c", str(ROOT / "constraints.txt"), "-r", reqs.name],
            check=True,
        )  # fmt: skip
    stamp.write_text(wanted)
    size = sum(p.stat().st_size for p in WHEELS.glob("*.whl")) / 2**20
    say(f"    {len(list(WHEELS.glob('*.whl')))} wheels, {size:.0f} MiB, in {time.monotonic() - started:.0f} s")


def stage_anvil() -> None:
    sys.path.insert(0, str(ROOT))
    from contracts import devchain

    binary = devchain.anvil_path()
    target = STAGE / "anvil" / "anvil"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists() or target.read_bytes() != Path(binary).read_bytes():
        shutil.copyfile(binary, target)
        target.chmod(0o755)


@contextlib.contextmanager
def wheel_server() -> Iterator[None]:
    """Serve docker/stage/wheels on 127.0.0.1 while the Python images build (their pip reads it: host networking)."""
    handler = functools.partial(_QuietHandler, directory=str(WHEELS))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", WHEELS_PORT), handler)
    except OSError as exc:
        raise BuildError(
            f"cannot serve the wheels on {WHEELS_URL} ({exc}): set HASHWORK_WHEELS_PORT to a free port"
        ) from exc
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


# The Debian base -------------------------------------------------------------------------------------------------


def debian_image(explicit: str | None) -> str:
    if explicit:
        return explicit
    if docker("image", "inspect", "debian:bookworm-slim", check=False).returncode == 0:
        return "debian:bookworm-slim"
    if docker("image", "inspect", DEBOOTSTRAP_IMAGE, check=False).returncode == 0:
        return DEBOOTSTRAP_IMAGE
    if docker("pull", "--quiet", "debian:bookworm-slim", check=False).returncode == 0:
        return "debian:bookworm-slim"
    if shutil.which("debootstrap") is None:
        raise BuildError(
            "No registry serves debian:bookworm-slim and debootstrap is not installed: "
            "apt-get install debootstrap (or pass --debian-image with a Debian bookworm image you have)."
        )
    say(f"==> no registry answers: making {DEBOOTSTRAP_IMAGE} with debootstrap from {DEBIAN_MIRROR} (about 40 s)")
    LOGS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hashwork-rootfs-") as rootfs:
        with open(LOGS / "debootstrap.log", "w") as log:
            done = subprocess.run(
                ["debootstrap", "--variant=minbase", "bookworm", rootfs, DEBIAN_MIRROR], stdout=log, stderr=log
            )
        if done.returncode != 0:
            raise BuildError(f"debootstrap failed: see {LOGS / 'debootstrap.log'}")
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", DEBOOTSTRAP_IMAGE], stdin=tar.stdout, capture_output=True, check=True)
        tar.wait()
    return DEBOOTSTRAP_IMAGE


# Building --------------------------------------------------------------------------------------------------------


def build(
    name: str,
    *,
    parent: str | None,
    build_args: dict[str, str],
    force: bool,
    context: Path = ROOT,
    prepare: Callable[[], None] | None = None,
) -> bool:
    """Build one image unless its inputs are unchanged; True when it was built. The context is the repository root
    (.dockerignore trims it), except for Anvil's: its staged binary alone."""
    image = image_name(name)
    wanted = inputs_hash(name, parent)
    if not force and label_of(image, "io.hashwork.inputs") == wanted:
        say(f"==> {image}: up to date (inputs {wanted[:12]})")
        return False
    if prepare is not None:
        prepare()  # what only a build needs (the wheels: half a minute even from pip's cache)
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{name}.log"
    say(f"==> {image}: building (log: {log_path.relative_to(ROOT)})")
    started = time.monotonic()
    args = [f"--build-arg={key}={value}" for key, value in build_args.items()]
    command = [
        "docker", "build", "--force-rm", "--network", "host", "--file", f"docker/{name}.Dockerfile", "--tag", image,
        "--label", f"io.hashwork.inputs={wanted}", "--build-arg", f"REVISION={revision()}", *args, str(context),
    ]  # fmt: skip
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # the classic builder: no buildx plugin needed
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            log.flush()
            if line.startswith("Step "):
                say(f"    {line.rstrip()[:110]}")
        code = process.wait()
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise BuildError(f"{image} did not build (exit {code}); the end of {log_path}:\n{tail}")
    say(f"    built in {time.monotonic() - started:.0f} s")
    return True


def cuda_build(*, wanted: bool, force: bool) -> None:
    """hashwork/nodeagent-cuda when NVIDIA's base image is here (or --cuda pulls it); else say how to get it."""
    present = docker("image", "inspect", CUDA_BASE, check=False).returncode == 0
    if not present and wanted:
        say(f"==> pulling {CUDA_BASE} for the CUDA node agent")
        pulled = docker("pull", "--quiet", CUDA_BASE, check=False)
        if pulled.returncode != 0:
            raise BuildError(f"cannot pull {CUDA_BASE} (no registry answers?): {pulled.stderr.strip()[:300]}")
        present = True
    if not present:
        say(f"==> hashwork/nodeagent-cuda:local: skipped ({CUDA_BASE} is not here; `make images IMAGES_ARGS=--cuda` "
            "pulls it where a registry answers)")  # fmt: skip
        return
    build("nodeagent-cuda", parent=image_id(CUDA_BASE), build_args={}, force=force)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Images: " + ", ".join(IMAGES))
    parser.add_argument("--force", action="store_true", help="rebuild even when an image's inputs are unchanged")
    parser.add_argument("--only", nargs="+", choices=IMAGES, metavar="NAME", help="build only these (and base)")
    parser.add_argument("--debian-image", help="the Debian bookworm image to start from (default: see above)")
    parser.add_argument(
        "--cuda", action="store_true", help=f"also build hashwork/nodeagent-cuda, pulling {CUDA_BASE} if needed"
    )
    args = parser.parse_args(argv)
    if shutil.which("docker") is None or docker("info", check=False).returncode != 0:
        say("No Docker engine answers: start one (`make docker-engine` does, as root on Debian), then run this again.")
        return 1
    wanted = ["base", *[n for n in IMAGES[1:] if not args.only or n in args.only]]
    started = time.monotonic()
    try:
        debian = debian_image(args.debian_image)
        build("base", parent=image_id(debian), build_args={"DEBIAN_IMAGE": debian}, force=args.force)
        base = image_id(image_name("base"))
        if "anvil" in wanted:
            stage_anvil()
        if PYTHON_IMAGES & set(wanted):
            stage_requirements()
        with wheel_server():
            for name in wanted[1:]:
                build_args = {"BASE_IMAGE": image_name("base")}
                if name in PYTHON_IMAGES:
                    build_args["WHEELS_URL"] = WHEELS_URL
                context = STAGE / "anvil" if name == "anvil" else ROOT
                prepare = stage_wheels if name in PYTHON_IMAGES else None
                build(name, parent=base, build_args=build_args, force=args.force, context=context, prepare=prepare)
        cuda_build(wanted=args.cuda, force=args.force)
    except BuildError as exc:
        say(f"images: {exc}")
        return 1
    except subprocess.CalledProcessError as exc:
        say(f"images: {' '.join(map(str, exc.cmd))} failed (exit {exc.returncode}): {exc.stderr or ''}")
        return 1
    say(f"==> images ready in {time.monotonic() - started:.0f} s: " + ", ".join(image_name(n) for n in wanted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
