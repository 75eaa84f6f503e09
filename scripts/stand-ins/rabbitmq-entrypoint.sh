#!/bin/bash
# Entrypoint of the rabbitmq stand-in (rabbitmq.Dockerfile): turns
# RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS into rabbitmq.conf (the
# account is created on the node's first start, as with the official image),
# then runs the broker as the rabbitmq user.
set -euo pipefail

if [ "${1:-}" != rabbitmq-server ]; then
    exec "$@"
fi
if [ "$(id -u)" = 0 ]; then
    conf=/etc/rabbitmq/rabbitmq.conf
    : >"$conf"
    if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
        echo "default_user = $RABBITMQ_DEFAULT_USER" >>"$conf"
    fi
    if [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then
        echo "default_pass = $RABBITMQ_DEFAULT_PASS" >>"$conf"
    fi
    chown root:rabbitmq "$conf"
    chmod 0640 "$conf"
    chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$0" "$@"
fi
exec /usr/lib/rabbitmq/bin/rabbitmq-server
