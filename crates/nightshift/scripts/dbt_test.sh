#!/bin/sh
# Test: the mart exists, has revenue, and counts every extracted order.
set -eu
ds="$1"
raw=$(( $(wc -l < "data/raw/orders/dt=$ds/orders.csv") - 1 ))
mart=$(tail -n 1 "data/marts/daily_revenue/dt=$ds/revenue.csv")
orders=$(echo "$mart" | cut -d, -f2)
revenue=$(echo "$mart" | cut -d, -f3)
[ "$orders" -eq "$raw" ] || { echo "FAIL: mart counts $orders orders, raw has $raw" >&2; exit 1; }
[ "$revenue" -gt 0 ] || { echo "FAIL: revenue is $revenue" >&2; exit 1; }
echo "PASS: $orders orders, revenue $revenue"
