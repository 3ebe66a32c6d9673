#!/bin/sh
# Extract one day of orders into its own partition, data/raw/orders/dt=<ds>/.
# Idempotent: the file is written aside and renamed into place, so a retry or a rerun
# replaces the partition instead of adding to it.
set -eu
ds="$1"
out="data/raw/orders/dt=$ds"
mkdir -p "$out"
tmp="$out/.orders.csv.tmp.$$"
# Deterministic example data: the row count depends on the date.
n=$(( $(printf '%s' "$ds" | tr -d '-') % 97 + 100 ))
{
  echo "order_id,ds,amount"
  i=1
  while [ "$i" -le "$n" ]; do
    echo "$ds-$i,$ds,$(( (i * 37) % 500 + 1 ))"
    i=$((i + 1))
  done
} > "$tmp"
mv "$tmp" "$out/orders.csv"
echo "extracted $n orders for $ds into $out"
# Report figures to nightshift: they land in the run's rows_loaded.
echo "{\"rows_loaded\": $n}" >> "$NIGHTSHIFT_METRICS"
