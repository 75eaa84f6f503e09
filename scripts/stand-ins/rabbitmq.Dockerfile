# Stand-in for rabbitmq:3.13-management, built by scripts/compose-test only
# when Docker Hub cannot be reached: Debian bookworm's rabbitmq-server 3.10
# with the management plugin, behind the part of the official image's
# contract that docker-compose.yml relies on (RABBITMQ_DEFAULT_USER /
# RABBITMQ_DEFAULT_PASS on first start, data in /var/lib/rabbitmq, node name
# from the hostname, logs on stdout, rabbitmq-diagnostics). Quorum queues,
# x-delivery-limit and single active consumer exist in 3.10.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends rabbitmq-server \
 && rm -rf /var/lib/apt/lists/* \
 && rabbitmq-plugins enable --offline rabbitmq_management
COPY rabbitmq-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV RABBITMQ_LOGS=- HOME=/var/lib/rabbitmq
VOLUME /var/lib/rabbitmq
EXPOSE 5672 15672
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["rabbitmq-server"]
LABEL org.wa-ingest.stand-in="rabbitmq: Debian bookworm's rabbitmq-server with the management plugin"
