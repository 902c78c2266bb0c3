# hashwork/nodeagent (CPU): the node agent, and the image each sandboxed task runs in (nodeagent/sandbox.py).
# Renders with Blender (bpy, Cycles on the CPU) and trains with torch's CPU build. Build from the repository root
# after hashwork/base (`make images`):
#   docker build -f docker/nodeagent.Dockerfile -t hashwork/nodeagent:local .
# The CUDA variant is nodeagent-cuda.Dockerfile (it needs an nvidia/cuda base from a registry; docs/deploy.md).
ARG BASE_IMAGE=hashwork/base:local

# --- deps: the same virtual environment as the marketplace's (these steps are shared in Docker's cache) ------------
FROM ${BASE_IMAGE} AS deps
USER root
ARG WHEELS_URL=""
# The requirements are pyproject.toml's dependencies, written out by docker/images.py: a change to the rest of
# pyproject.toml (a linter's settings) leaves this multi-GB layer cached.
COPY docker/stage/requirements.txt constraints.txt /tmp/
RUN python3 -m venv /opt/venv \
    && if [ -n "$WHEELS_URL" ]; then source="--no-index --find-links $WHEELS_URL"; \
       else source="--extra-index-url https://download.pytorch.org/whl/cpu"; fi \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check $source \
        -c /tmp/constraints.txt -r /tmp/requirements.txt \
    && /opt/venv/bin/python -c "import torch; assert torch.version.cuda is None, 'not the CPU build: ' + torch.__version__"

# --- the image -------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
USER root
COPY --from=deps /opt/venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    HASHWORK_AGENT_CONFIG=/var/lib/nodeagent/nodeagent.json
WORKDIR /app
COPY --chown=root:root . /app
# `nodeagent` on the PATH (the source is not installed: PYTHONPATH finds it). A second user, `task` (uid 10002),
# is who a sandboxed assignment runs as: it owns nothing here, and never sees the agent's config or wallet key.
RUN printf '#!/bin/sh\nexec python -m nodeagent "$@"\n' > /usr/local/bin/nodeagent \
    && chmod 0755 /usr/local/bin/nodeagent \
    && useradd --no-create-home --uid 10002 --user-group task \
    && mkdir -p /var/lib/nodeagent \
    && chown hashwork:hashwork /var/lib/nodeagent \
    && python -c "import bpy, torch; print('bpy', bpy.app.version_string, 'torch', torch.__version__)"
USER hashwork
# Healthy while the agent's worker consumes its queue: it rewrites its broker health file as it does.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "nodeagent", "health"]
ENTRYPOINT ["tini", "--", "sh", "/app/docker/nodeagent-entrypoint.sh"]
CMD ["run"]

# Last, so that a new revision changes only this metadata layer.
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hashwork/nodeagent" \
      org.opencontainers.image.revision="${REVISION}"
