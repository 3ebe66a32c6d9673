#!/usr/bin/env bash
# The soak test: one pipeline every minute on the simulated clock for 30 simulated days
# (NIGHTSHIFT_SOAK_DAYS to change), with random task failures. Not part of tools/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -p nightshift --test it -- --ignored --nocapture soak
