#!/usr/bin/env bash
# The README's test command: every unit, property, crash and cluster test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --locked "$@"
