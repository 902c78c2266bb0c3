# hashwork/base: Debian bookworm with Python 3.11 (bookworm's own python3, which bpy 5.0.1's cp311 wheel needs),
# the libraries headless Blender links against, tini and the unprivileged user every Hashwork image runs as.
# Every other image here starts FROM it. Build from the repository root (`make images` does all of this):
#   docker build -f docker/base.Dockerfile -t hashwork/base:local .
# DEBIAN_IMAGE is any Debian bookworm image: debian:bookworm-slim where a registry is reachable, or one made
# locally without a registry (docker/images.py does this when no registry answers):
#   debootstrap --variant=minbase bookworm ROOTFS http://deb.debian.org/debian
#   tar -C ROOTFS -c . | docker import - hashwork/debootstrap:bookworm
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}


ARG DEBIAN_FRONTEND=noninteractive
# Headless Blender (bpy) needs EGL, Mesa's software rasteriser and the X client libraries it links against;
# without them bpy aborts the process. tini is PID 1: it forwards signals and reaps children.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates python3 python3-venv tini \
        libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 \
        libice6 libsm6 libx11-6 libxext6 libxfixes3 libxi6 libxkbcommon0 libxrender1 libxt6 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'

# One unprivileged user (uid 10001) for every image; a sandboxed task runs as another (see nodeagent.Dockerfile).
RUN useradd --create-home --uid 10001 --user-group hashwork
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8
# Images built on this one switch to root only for the steps that need it (apt-get, chown), then back.
USER hashwork

# Last, so that a new revision changes only this metadata layer.
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hashwork/base" \
      org.opencontainers.image.source="https://github.com/hashwork/hashwork" \
      org.opencontainers.image.revision="${REVISION}"
