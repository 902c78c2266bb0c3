# hashwork/marketplace: one image for every process of the marketplace (web, worker, replay, settlement, beat,
# flower and the one-shot migrate and deploy); docker/compose.yml gives each its command. Build from the
# repository root after hashwork/base (`make images` builds them in order):
#   docker build -f docker/marketplace.Dockerfile -t hashwork/marketplace:local .
ARG BASE_IMAGE=hashwork/base:local

# --- deps: the virtual environment, from the project's own pins (constraints.txt) ---------------------------------
FROM ${BASE_IMAGE} AS deps
USER root
# WHEELS_URL: wheels that docker/images.py serves on 127.0.0.1 while it builds (docker/stage/wheels, made by the
# host's pip, which knows where torch's CPU build lies); they never enter a layer. Without it, pip uses PyPI and PyTorch's CPU index: PyPI's Linux torch is a multi-GB CUDA
# build, and the marketplace only replays and evaluates training on the CPU. The check fails a CUDA build.
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
    DJANGO_SETTINGS_MODULE=marketplace.settings \
    HASHWORK_VAR_DIR=/var/lib/hashwork \
    MEDIA_ROOT=/var/lib/hashwork/media
WORKDIR /app
# The project's source, not installed: PYTHONPATH finds it, and contracts/build/*.json (the escrow's ABI) stays
# beside the code that reads it.
COPY --chown=root:root . /app
RUN python -c "import bpy, torch; print('bpy', bpy.app.version_string, 'torch', torch.__version__)" \
    && mkdir -p /var/lib/hashwork/media /var/lib/hashwork/chain \
    && chown -R hashwork:hashwork /var/lib/hashwork
USER hashwork
# Static files are collected into the image (whitenoise serves them). The settings refuse to load without a
# SECRET_KEY and would otherwise write a random one into the image: this throwaway value is used here only.
RUN SECRET_KEY=collectstatic-at-build-time-only-not-a-secret python manage.py collectstatic --noinput -v 0

EXPOSE 8000
# The web process answers /healthz/; docker/compose.yml and docker/stack.py give the other processes their own.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/healthz/', timeout=5)"]
ENTRYPOINT ["tini", "--"]
CMD ["gunicorn", "marketplace.wsgi:application", "--bind", "0.0.0.0:8000", "--worker-class", "gthread", \
     "--workers", "3", "--threads", "4", "--timeout", "120", "--access-logfile", "-"]

# Last, so that a new revision changes only this metadata layer.
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hashwork/marketplace" \
      org.opencontainers.image.revision="${REVISION}"
