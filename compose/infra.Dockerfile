# The stack's infrastructure images, built locally like the service image (nothing is ever pulled
# when BASE_IMAGE is local):
#   --target redis -> gobalancer-redis:local  (Redis for the stack and the tests' testcontainers fixture)
#   --target front -> gobalancer-front:local  (HAProxy in TCP mode spreading clients over the proxy replicas)
# The build context is this directory; nothing is copied (the HAProxy config is mounted by Compose).
# From the local debootstrap base (scripts/docker-up) redis-server and haproxy are already installed;
# from a stock Debian image they are installed with apt-get (needs network).

ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS redis
RUN command -v redis-server >/dev/null \
 || (apt-get update && apt-get install -y --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/*)
WORKDIR /var/lib/redis
USER redis
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s --retries=5 CMD ["redis-cli", "ping"]
CMD ["redis-server", "--protected-mode", "no", "--save", "", "--appendonly", "yes", "--dir", "/var/lib/redis"]

FROM ${BASE_IMAGE} AS front
RUN command -v haproxy >/dev/null \
 || (apt-get update && apt-get install -y --no-install-recommends haproxy && rm -rf /var/lib/apt/lists/*)
USER haproxy
EXPOSE 8080
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-W", "-db", "-f", "/etc/gobalancer/haproxy.cfg"]
