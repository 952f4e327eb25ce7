#!/bin/bash
# The cost of peer authentication (--cluster-secret: an HMAC-SHA256 per record of peer
# traffic): write throughput and p99 of a 3-node cluster through its leader with and
# without a secret, alternated over three rounds; --fsync always, 100-byte sets, 5 s per
# point, servers pinned to CPU 0, kvbench to CPU 1. Needs nc.
# Usage: cargo build --release --bins && bash bench/cluster_secret.sh
set -u
. "$(dirname "$0")/cluster_lib.sh"
B=${1:-target/release}
D=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait; rm -rf $D' EXIT
head -c 32 /dev/urandom | base64 > $D/secret; chmod 600 $D/secret
run() { # addr conns
  taskset -c 1 $B/kvbench --addr $1 -c $2 --get-ratio 0 --duration 5 --keys 10000 --value-size 100 2>&1 | grep -iE "ops/s|p99|throughput" | tr '\n' ' '; echo; }
IC=1=127.0.0.1:27101,2=127.0.0.1:27102,3=127.0.0.1:27103
for round in 1 2 3; do
  for mode in plain secret; do
    flags=""; [ $mode = secret ] && flags="--cluster-secret $D/secret"
    rm -rf $D/n1 $D/n2 $D/n3
    for i in 1 2 3; do mkdir $D/n$i; taskset -c 0 $B/kvserver --db $D/n$i/database.txt --listen 127.0.0.1:2701$i --node-id $i --initial-cluster $IC $flags 2>$D/n$i.log & done
    sleep 3
    L=$(cluster_leader 2701)
    for c in 8 50; do echo -n "round $round $mode via leader $L c=$c: "; run 127.0.0.1:2701$L $c; done
    kill $(jobs -p) 2>/dev/null; wait 2>/dev/null
  done
done
