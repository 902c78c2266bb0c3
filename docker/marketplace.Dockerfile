# The marketplace: one image for every process of it (web, worker, settlement, beat, flower and the one-shot
# migrate and deploy); docker/compose.yml gives each its command. Build from the repository root:
#   docker build -f docker/marketplace.Dockerfile -t hashwork/marketplace:local .
FROM python:3.11-slim-bookworm

# Headless Blender (bpy re-renders label passes for spot checks and draws merge previews) needs EGL, Mesa's
# software rasteriser and the X client libraries it links against; without them bpy aborts the process.
# tini is PID 1: it forwards signals and reaps the Blender and torch children that a worker leaves behind.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 \
        libice6 libsm6 libx11-6 libxext6 libxfixes3 libxi6 libxkbcommon0 libxrender1 libxt6 \
        tini \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

WORKDIR /app

# Dependencies first, read from pyproject.toml (one list to maintain), so this multi-GB layer survives source
# changes. torch comes from PyTorch's CPU index: the marketplace replays and evaluates training on the CPU, and
# PyPI's Linux build would bring several GB of CUDA libraries. 2.13.0+cpu satisfies the torch==2.13.0 pin and
# sorts above 2.13.0, so pip takes it; the check after the install fails the build if a CUDA build slipped in.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['s3']))" > /tmp/requirements.txt \
    && pip install --extra-index-url https://download.pytorch.org/whl/cpu -r /tmp/requirements.txt \
    && python -c "import torch; assert torch.version.cuda is None, 'not the CPU build: ' + torch.__version__" \
    && rm /tmp/requirements.txt

# The project itself, editable: setuptools would leave contracts/build/*.json out of a wheel (no package data is
# declared), and the ABIs must be there to deploy and call the escrow.
COPY . .
RUN pip install --no-deps -e . \
    && python -c "import bpy, torch; print('bpy', bpy.app.version_string, 'torch', torch.__version__)"

# Everything the processes write lives under /var/lib/hashwork: compose mounts named volumes on media/ (results,
# datasets) and chain/ (the deployment record); static/ and beat's schedule stay in the container.
RUN useradd --create-home --uid 10001 --user-group hashwork \
    && mkdir -p /var/lib/hashwork/media /var/lib/hashwork/chain \
    && chown -R hashwork:hashwork /var/lib/hashwork
ENV DJANGO_SETTINGS_MODULE=marketplace.settings \
    HASHWORK_VAR_DIR=/var/lib/hashwork \
    MEDIA_ROOT=/var/lib/hashwork/media
USER hashwork

# Static files are collected into the image (whitenoise serves them). The settings refuse to load without a
# SECRET_KEY and would otherwise write a random one into the image: this throwaway value is used here only.
RUN SECRET_KEY=collectstatic-at-build-time-only-not-a-secret python manage.py collectstatic --noinput -v 0

EXPOSE 8000
ENTRYPOINT ["tini", "--"]
CMD ["gunicorn", "marketplace.wsgi:application", "--bind", "0.0.0.0:8000", "--worker-class", "gthread", \
     "--workers", "3", "--threads", "4", "--timeout", "120", "--access-logfile", "-"]
