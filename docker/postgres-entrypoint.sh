#!/bin/sh
# hashwork/postgres: make the cluster and the database on the first start, then run the server in the foreground.
set -eu
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
user="${POSTGRES_USER:-postgres}"
database="${POSTGRES_DB:-$user}"
port="${PGPORT:-5432}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    secret="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$secret"
    initdb --username="$user" --pwfile="$secret" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null
    rm -f "$secret"
    printf "listen_addresses = '%s'\n" "${POSTGRES_LISTEN:-*}" >> "$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p $port" -w start >/dev/null
    if [ "$database" != postgres ]; then
        createdb --port "$port" --username "$user" "$database"
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "postgres: made database $database for $user"
fi
exec postgres -D "$PGDATA" -p "$port"
