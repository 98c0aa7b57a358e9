#!/usr/bin/env bash
# Engine benchmark: Cairn's log engine beside the disk's own limits and beside fjall, in one run.
# Builds in release mode with the fjall baseline, runs, and rewrites the engine section of
# docs/benchmarks.md (between the engine markers), with the machine description.
#
# Usage: scripts/bench-engine.sh [extra engine-bench flags, e.g. --repeats 5 --duration-ms 3000]
set -euo pipefail
cd "$(dirname "$0")/.."

out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo build --release --locked -p cairn-engine-bench --features fjall
mkdir -p target/bench-tmp
./target/release/cairn-engine-bench --dir target/bench-tmp --markdown "$out" "$@"

machine=$(
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD)"
  echo "- cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "- memory: $(free -g | awk '/Mem:/ {print $2}') GiB; kernel $(uname -r)"
  echo "- disk: $(df -h target/bench-tmp | awk 'NR==2 {print $1 ", " $2 " total, fs " }')$(stat -f -c %T target/bench-tmp)"
)
section=$(printf '<!-- engine:begin -->\n## Engine (scripts/bench-engine.sh)\n\n%s\n\n%s\n<!-- engine:end -->\n' "$machine" "$(cat "$out")")

doc=docs/benchmarks.md
[ -f "$doc" ] || printf '# Benchmarks\n\nEvery table here is written by a script; rerun it to refresh.\n\n' > "$doc"
if grep -q '<!-- engine:begin -->' "$doc"; then
  python3 - "$doc" "$section" <<'PY'
import re, sys
path, section = sys.argv[1], sys.argv[2]
text = open(path).read()
text = re.sub(r'<!-- engine:begin -->.*?<!-- engine:end -->\n?', lambda _: section, text, flags=re.S)
open(path, 'w').write(text)
PY
else
  printf '%s\n' "$section" >> "$doc"
fi
echo "wrote $doc"
