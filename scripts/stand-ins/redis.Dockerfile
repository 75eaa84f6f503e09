# Stand-in for redis:7, built by scripts/compose-test only when Docker Hub
# cannot be reached: Debian bookworm's redis-server 7.0 with the official
# image's contract (data in /data, port 6379, reachable from other
# containers without a password, redis-cli for health checks).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
WORKDIR /data
VOLUME /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--bind", "0.0.0.0", "::", "--protected-mode", "no", "--dir", "/data"]
LABEL org.wa-ingest.stand-in="redis: Debian bookworm's redis-server"
