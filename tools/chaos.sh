#!/usr/bin/env bash
# The long chaos run: the suite's chaos test (crates/nightshift/tests/it/chaos.rs) with
# ten minutes of faults, a random process SIGKILLed every 5 to 20 s, PostgreSQL restarted
# once. Prints the seed and the figures; rerun a failure with the same seed in its message.
#   bash tools/chaos.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
export NIGHTSHIFT_CHAOS_SECONDS="${1:-600}"
export NIGHTSHIFT_CHAOS_EVERY="5-20"
exec cargo nextest run -p nightshift --test it chaos:: --no-capture --slow-timeout 60s
