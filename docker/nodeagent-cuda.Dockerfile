# The node agent for a GPU host: renders with Blender (bpy, Cycles on OptiX or CUDA) and trains with torch on CUDA.
# Build from the repository root:
#   docker build -f docker/nodeagent.Dockerfile -t hashwork/nodeagent:local .
# Run it (docs/deploy.md): docker run -d --gpus all -v hashwork-node:/var/lib/nodeagent \
#   -e NODEAGENT_MARKETPLACE_URL=https://… -e NODEAGENT_ENROLL_TOKEN=… hashwork/nodeagent:local
#
# The `base` flavour is enough: torch's wheels bring their own CUDA libraries (PyPI's Linux torch 2.13.0 is the
# CUDA 13.0 build, with cuBLAS, cuDNN and NCCL as wheels) and Cycles needs only the driver's libcuda and libnvoptix,
# which the NVIDIA Container Toolkit mounts from the host. The `runtime` flavour would ship those libraries twice.
# CUDA 13 needs an NVIDIA driver >= 580 on the host (the toolkit refuses to start the container on an older one).
FROM nvidia/cuda:13.0.0-base-ubuntu22.04

ARG DEBIAN_FRONTEND=noninteractive
# bpy 5.0.1 exists for Python 3.11 only and Ubuntu 22.04 ships 3.10: Python 3.11 comes from the deadsnakes PPA,
# which builds current 3.11 releases for this Ubuntu against its own libraries (copying python:3.11's /usr/local
# from a Debian image would link against Debian's glibc 2.36, newer than Ubuntu 22.04's 2.35).
# Blender also needs EGL, Mesa's software rasteriser and the X client libraries it links against; tini is PID 1,
# forwarding signals and reaping the render and training children.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gnupg software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv \
        libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 \
        libice6 libsm6 libx11-6 libxext6 libxfixes3 libxi6 libxkbcommon0 libxrender1 libxt6 \
        tini \
    && apt-get purge -y --auto-remove software-properties-common \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python3.11 -m venv /opt/venv

WORKDIR /app

# Dependencies first, read from pyproject.toml, so this multi-GB layer survives source changes. torch is PyPI's
# CUDA 13.0 build, which runs on Turing (RTX 20xx) and newer only. For Pascal and Volta cards (GTX 10xx: many a
# former mining rig) build with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126: its
# 2.13.0+cu126 sorts above 2.13.0, so pip takes it (driver 580 still runs those cards). The check after the install
# fails the build if a CPU-only torch was installed instead.
ARG TORCH_INDEX_URL=""
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies']))" > /tmp/requirements.txt \
    && pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -c constraints.txt -r /tmp/requirements.txt \
    && python -c "import torch; assert torch.version.cuda, 'not a CUDA build: ' + torch.__version__" \
    && rm /tmp/requirements.txt

# The project itself, editable: setuptools would leave contracts/build/*.json (the escrow ABI that
# `nodeagent withdraw` needs) out of a wheel.
COPY . .
RUN pip install --no-deps -e . \
    && python -c "import bpy, torch; print('bpy', bpy.app.version_string, 'torch', torch.__version__)"

# The config (node token and wallet key) and the working directories of running work live in one volume.
# `task` (uid 10002) is who a sandboxed assignment runs as (nodeagent/sandbox.py): it owns nothing here.
RUN useradd --create-home --uid 10001 --user-group nodeagent \
    && useradd --no-create-home --uid 10002 --user-group task \
    && mkdir -p /var/lib/nodeagent \
    && chown nodeagent:nodeagent /var/lib/nodeagent
# graphics: the toolkit mounts libnvoptix (OptiX, Cycles' first choice on RTX cards) only with it
# (https://github.com/NVIDIA/nvidia-docker/issues/1545); compute and utility give CUDA and NVML.
ENV HASHWORK_AGENT_CONFIG=/var/lib/nodeagent/nodeagent.json \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics
USER nodeagent

# Healthy while the agent's worker consumes its queue: it rewrites its broker health file as it does.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "nodeagent", "health"]
ENTRYPOINT ["tini", "--", "sh", "/app/docker/nodeagent-entrypoint.sh"]
CMD ["run"]

# Last, so that a new revision changes only this metadata layer.
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hashwork/nodeagent-cuda" \
      org.opencontainers.image.revision="${REVISION}"
