#!/bin/sh
# Transform: daily revenue for one ds, into data/marts/daily_revenue/dt=<ds>/.
set -eu
ds="$1"
src="data/raw/orders/dt=$ds/orders.csv"
out="data/marts/daily_revenue/dt=$ds"
mkdir -p "$out"
tmp="$out/.revenue.csv.tmp.$$"
awk -F, 'NR > 1 { n++; s += $3 } END { print "ds,orders,revenue"; printf "%s,%d,%d\n", ds, n, s }' ds="$ds" "$src" > "$tmp"
mv "$tmp" "$out/revenue.csv"
echo "built daily_revenue for $ds"
