#!/bin/sh
# Notify: one line per run in data/notifications.log (a real pipeline posts to chat or email).
set -eu
mkdir -p data
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) run $1 of $NIGHTSHIFT_PIPELINE (ds $NIGHTSHIFT_DS) finished" >> data/notifications.log
echo "notified for run $1"
