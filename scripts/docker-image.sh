#!/usr/bin/env bash
# Builds the FROM-scratch Docker image of Cairn (default tag cairn:latest, override with
# CAIRN_IMAGE): a statically linked release binary (glibc, static-pie), stripped of debug
# symbols, staged under target/docker/, then `docker build` with the repository's Dockerfile.
# The release build takes 10+ minutes on 2 cores from a clean target/.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${CAIRN_IMAGE:-cairn:latest}
TARGET=x86_64-unknown-linux-gnu

# --target keeps +crt-static away from build scripts and proc-macros (they must stay dynamic).
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target "$TARGET" -p cairn

bin="target/$TARGET/release/cairn"
if command -v file >/dev/null; then
    if ! file "$bin" | grep -Eq 'static(-pie)? linked|statically linked'; then
        echo "error: $bin is not statically linked: $(file "$bin")" >&2
        exit 1
    fi
else
    echo "warning: no file(1) here; not checking that $bin is statically linked" >&2
fi

rm -rf target/docker
mkdir -p target/docker/data
if command -v strip >/dev/null; then
    strip --strip-debug -o target/docker/cairn "$bin"
else
    cp "$bin" target/docker/cairn
fi
chmod 0755 target/docker/cairn

docker build -t "$TAG" -f Dockerfile .
docker image ls "$TAG"
