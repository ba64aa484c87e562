#!/usr/bin/env bash
# Builds the cargo-fuzz targets (fuzz/, libFuzzer, stable Rust with `--sanitizer none`) and runs
# each for a bounded time on its committed seed corpus (fuzz/corpus/<target>). New inputs go to
# target/fuzz/work/<target>; the committed corpus is only read. A crash fails the run and leaves
# the input under fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh            every target, 10 s each (what scripts/test.sh runs)
#   scripts/fuzz.sh 300        every target, 300 s each
#   scripts/fuzz.sh 60 jose    one target
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH="${1:-10}"
shift || true
CARGO_FUZZ=target/tools/bin/cargo-fuzz
if [ ! -x "$CARGO_FUZZ" ]; then
  echo "==> installing cargo-fuzz into target/tools"
  cargo install -q cargo-fuzz --version 0.13.2 --locked --root target/tools
fi

TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  mapfile -t TARGETS < <(cd fuzz && "../$CARGO_FUZZ" list)
fi

echo "==> building ${#TARGETS[@]} fuzz targets (release, coverage instrumentation)"
(cd fuzz && "../$CARGO_FUZZ" build -s none --target-dir ../target/fuzz)

for t in "${TARGETS[@]}"; do
  mkdir -p "target/fuzz/work/$t"
  log="target/fuzz/work/$t.log"
  if ! (cd fuzz && "../$CARGO_FUZZ" run -s none --target-dir ../target/fuzz "$t" \
      "../target/fuzz/work/$t" "corpus/$t" -- \
      -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=60 -print_final_stats=1) >"$log" 2>&1; then
    echo "error: fuzz target $t failed; its output:" >&2
    tail -40 "$log" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
  printf '    %-14s %10s runs in %ss, coverage %s edges, no crash\n' "$t" "$runs" "$SECONDS_EACH" "$cov"
done
