# hashwork/postgres: Debian bookworm's PostgreSQL 15, for machines where no registry serves postgres:17-bookworm
# (docker/compose.yml takes either: HASHWORK_POSTGRES_IMAGE). Build from the repository root after hashwork/base:
#   docker build -f docker/postgres.Dockerfile -t hashwork/postgres:local .
# Like the official image it reads POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB and makes that database on
# its first start (docker/postgres-entrypoint.sh); PGPORT moves it off 5432 (host networking).
ARG BASE_IMAGE=hashwork/base:local
FROM ${BASE_IMAGE}
USER root
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /run/postgresql
COPY docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER postgres
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=12 \
    CMD ["sh", "-c", "pg_isready --host 127.0.0.1 --port \"${PGPORT:-5432}\" --username \"${POSTGRES_USER:-postgres}\""]
ENTRYPOINT ["tini", "--", "sh", "/usr/local/bin/postgres-entrypoint.sh"]

# Last, so that a new revision changes only this metadata layer.
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hashwork/postgres" \
      org.opencontainers.image.revision="${REVISION}"
