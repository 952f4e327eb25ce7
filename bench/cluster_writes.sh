#!/bin/bash
# Write throughput and p99: one kvserver against a 3-node cluster (issue 12), --fsync always,
# sets only, 5 s per point; servers pinned to CPU 0, kvbench to CPU 1. Needs nc.
# Usage: cargo build --release --bins && bash bench/cluster_writes.sh
set -u
. "$(dirname "$0")/cluster_lib.sh"
B=${1:-target/release}
D=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait; rm -rf $D' EXIT
run() { # addr conns
  taskset -c 1 $B/kvbench --addr $1 -c $2 --get-ratio 0 --duration 5 --keys 10000 --value-size 100 2>&1 | grep -iE "ops/s|p99|throughput" | tr '\n' ' '; echo; }
mkdir $D/s; taskset -c 0 $B/kvserver --db $D/s/database.txt --listen 127.0.0.1:27001 2>$D/s.log & sleep 1
for c in 1 8 50; do echo -n "single c=$c: "; run 127.0.0.1:27001 $c; done
kill %1; wait %1 2>/dev/null
IC=1=127.0.0.1:27101,2=127.0.0.1:27102,3=127.0.0.1:27103
for i in 1 2 3; do mkdir $D/n$i; taskset -c 0 $B/kvserver --db $D/n$i/database.txt --listen 127.0.0.1:2701$i --node-id $i --initial-cluster $IC 2>$D/n$i.log & done
sleep 3
L=$(cluster_leader 2701)
echo "leader $L"
for c in 1 8 50; do echo -n "cluster via leader c=$c: "; run 127.0.0.1:2701$L $c; done
F=$(( L % 3 + 1 ))
echo -n "cluster via follower $F c=8: "; run 127.0.0.1:2701$F 8
