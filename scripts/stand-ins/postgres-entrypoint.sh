#!/bin/bash
# Entrypoint of the postgres stand-in (postgres.Dockerfile). Like the official
# image's: on the first start it initialises PGDATA with the superuser
# POSTGRES_USER / POSTGRES_PASSWORD and creates POSTGRES_DB, then it runs the
# server as the postgres user, listening on every interface. The set-up
# server listens on a private socket only, so that pg_isready (and clients)
# see nothing until the real server runs.
set -euo pipefail

if [ "${1:-}" != postgres ]; then
    exec "$@"
fi
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 0700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set on the first start}"
    user=${POSTGRES_USER:-postgres}
    db=${POSTGRES_DB:-$user}
    setup=$(mktemp -d)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$setup/pwfile"
    initdb --username="$user" --pwfile="$setup/pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$setup/pwfile"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    if [ "$db" != postgres ]; then
        pg_ctl --wait --silent --options="-c listen_addresses='' -c unix_socket_directories=$setup" start
        psql --host="$setup" --username="$user" --dbname=postgres --set=ON_ERROR_STOP=1 --quiet \
            --command="CREATE DATABASE \"$db\""
        pg_ctl --wait --silent --mode=fast stop
    fi
    rmdir "$setup"
    echo "postgres stand-in: initialised $PGDATA (user $user, database $db)"
fi
exec "$@"
