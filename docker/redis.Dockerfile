# hashwork/redis: Debian bookworm's Redis 7.0, for machines where no registry serves valkey/valkey (docker/compose.yml
# takes either: HASHWORK_REDIS_IMAGE). Build from the repository root after hashwork/base:
#   docker build -f docker/redis.Dockerfile -t hashwork/redis:local .
# The command line is the service's (compose, docker/stack.py): a password, the append-only file and maxmemory.
ARG BASE_IMAGE=hashwork/base:local
FROM ${BASE_IMAGE}
USER root
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data \
    && ln -s /usr/bin/redis-server /usr/local/bin/valkey-server \
    && ln -s /usr/bin/redis-cli /usr/local/bin/valkey-cli
WORKDIR /data
USER redis
HEALTHCHECK --interval=5s --timeout=5s --retries=12 \
    CMD ["sh", "-c", "redis-cli --no-auth-warning -p \"${REDIS_PORT:-6379}\" ${REDIS_PASSWORD:+-a \"$REDIS_PASSWORD\"} ping | grep -q PONG"]
ENTRYPOINT ["tini", "--"]
CMD ["redis-server", "--protected-mode", "no"]

# Last, so that a new revision changes only this metadata layer.
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hashwork/redis" \
      org.opencontainers.image.revision="${REVISION}"
