# Cairn node image: one statically linked binary in an empty root (no base image can be pulled
# on the build machine, and none is needed). Build it with scripts/docker-image.sh, which makes
# the static binary and stages it under target/docker/ (the only paths .dockerignore lets in).
FROM scratch

# The binary, owned by root and not writable by the node's user.
COPY target/docker/cairn /cairn
# The data directory, owned by the node's user; a fresh named volume mounted on /data copies
# this ownership, so the non-root node can write it.
COPY --chown=10001:10001 target/docker/data/ /data/

USER 10001:10001
VOLUME ["/data"]

# Every `cairn node` flag has a CAIRN_* variable; these are the container's defaults. Members,
# bootstrap addresses and the cluster secret come from the deployment (deploy/docker-compose.yml).
ENV CAIRN_DATA_DIR=/data \
    CAIRN_HTTP=0.0.0.0:8080 \
    CAIRN_P2P=/ip4/0.0.0.0/tcp/7000 \
    CAIRN_DATA=0.0.0.0:7001 \
    CAIRN_LOG_FORMAT=json

# 8080: REST API; 7000: node-to-node (libp2p, TCP).
EXPOSE 8080 7000 7001

HEALTHCHECK --interval=5s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/cairn", "healthcheck", "--quiet"]

ENTRYPOINT ["/cairn"]
CMD ["node"]
