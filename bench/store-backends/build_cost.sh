#!/usr/bin/env bash
# Build cost of each backend alone: crates in its dependency graph (cargo tree, normal+build
# edges, the trivial bin itself not counted), whether the graph has `cc` (needs a C compiler),
# and the wall time of a clean `cargo build --release` of a trivial bin with just that dependency.
# Usage: bench/store-backends/build_cost.sh [runs]   (default 3; prints medians)
set -euo pipefail
runs=${1:-3}
work=$(mktemp -d /tmp/storebench-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
declare -A dep=(
  [redb]='redb = "5.0.0"'
  [fjall]='fjall = "3.1.13"'
  [rusqlite]='rusqlite = { version = "0.43.0", features = ["bundled"] }'
)
printf '| dependency | crates | has cc (C compiler) | clean release build s (median of %s) | all runs |\n|---|---:|---|---:|---|\n' "$runs"
for name in redb fjall rusqlite; do
  d="$work/$name"
  mkdir -p "$d/src"
  printf '[package]\nname = "only-%s"\nversion = "0.1.0"\nedition = "2021"\n\n[workspace]\n\n[dependencies]\n%s\n' "$name" "${dep[$name]}" > "$d/Cargo.toml"
  printf 'use %s as _;\nfn main() {}\n' "$name" > "$d/src/main.rs"
  (cd "$d" && cargo fetch -q)
  crates=$(cd "$d" && cargo tree -q -e normal,build --prefix none | sed 's/ (\*)$//' | sort -u | grep -v '^only-' | wc -l)
  cc=$(cd "$d" && cargo tree -q -e normal,build --prefix none | grep -q '^cc v' && echo yes || echo no)
  times=()
  for _ in $(seq "$runs"); do
    rm -rf "$d/target"
    s=$(date +%s.%N)
    (cd "$d" && CARGO_TARGET_DIR="$d/target" cargo build -q --release --offline)
    times+=("$(echo "$(date +%s.%N) - $s" | bc)")
  done
  med=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (runs + 1) / 2 ))p")
  printf '| %s | %s | %s | %.1f | %s |\n' "$name" "$crates" "$cc" "$med" "$(printf '%.1f ' "${times[@]}")"
done
