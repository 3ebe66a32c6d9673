#!/usr/bin/env bash
# The whole test suite, as CI runs it (README quickstart, second command).
# Installs what the tests need: the pinned dbt in .venv (tools/dbt/install), and Chromium,
# promtool and the Python test servers (tools/testdeps/install).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== dbt"
bash tools/dbt/install
export NIGHTSHIFT_TEST_DBT="$PWD/.venv/bin/dbt"

echo "== test tools (chromium, promtool, postgresql, aiosmtpd, openapi-spec-validator)"
bash tools/testdeps/install

echo "== format"
cargo fmt --all -- --check

echo "== lint"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== doctests"
cargo test --workspace --doc --quiet

echo "== tests"
# Property tests keep their case counts modest for 2-core machines.
export PROPTEST_CASES="${PROPTEST_CASES:-32}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
  passed=$(sed -n 's/.* tests run: \([0-9]*\) passed.*/\1/p' "$log" | tail -1)
  failed=$(sed -n 's/.* \([0-9]*\) failed.*/\1/p' "$log" | tail -1)
else
  cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
  passed=$(sed -n 's/^test result: .* \([0-9]*\) passed.*/\1/p' "$log" | paste -sd+ | bc)
  failed=$(sed -n 's/^test result: .* \([0-9]*\) failed.*/\1/p' "$log" | paste -sd+ | bc)
fi
echo "${passed:-0} passed, ${failed:-0} failed"
exit "$status"
