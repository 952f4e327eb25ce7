#!/bin/bash
# The cost of linearizable reads (issue 12): GETs on one kvserver and on a 3-node cluster
# with --read-consistency linearizable (ReadIndex), lease and local, via the leader and a follower,
# 100,000 keys filled first, 5 s per point; servers pinned to CPU 0, kvbench to CPU 1.
# Usage: cargo build --release --bins && bash bench/cluster_reads.sh
set -u
. "$(dirname "$0")/cluster_lib.sh"
B=${1:-target/release}
D=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait; rm -rf $D' EXIT
bench() { # addr conns get-ratio
  taskset -c 1 $B/kvbench --addr $1 -c $2 --get-ratio $3 --duration 5 --keys 10000 --value-size 100 2>&1 |
    grep -o "ops_per_sec=[0-9]*\|p99_us=[0-9.]*" | tr '\n' ' '; echo; }
fill() { taskset -c 1 $B/kvbench --addr $1 -c 8 --get-ratio 0 --duration 2 --keys 10000 --value-size 100 >/dev/null 2>&1; }

mkdir $D/s; taskset -c 0 $B/kvserver --db $D/s/database.txt --listen 127.0.0.1:28001 2>$D/s.log & S=$!; sleep 1
fill 127.0.0.1:28001
for c in 1 8 50; do echo -n "single GET c=$c: "; bench 127.0.0.1:28001 $c 1; done
kill $S; wait $S 2>/dev/null

for mode in linearizable lease local; do
  IC=1=127.0.0.1:28101,2=127.0.0.1:28102,3=127.0.0.1:28103
  PIDS=""
  for i in 1 2 3; do rm -rf $D/n$i; mkdir $D/n$i
    taskset -c 0 $B/kvserver --db $D/n$i/database.txt --listen 127.0.0.1:2801$i --node-id $i --initial-cluster $IC \
      --read-consistency $mode 2>$D/n$i.log & PIDS="$PIDS $!"; done
  sleep 3
  L=$(cluster_leader 2801); F=$(( L % 3 + 1 ))
  fill 127.0.0.1:2801$L
  for c in 1 8 50; do echo -n "$mode GET via leader c=$c: "; bench 127.0.0.1:2801$L $c 1; done
  for c in 1 8 50; do echo -n "$mode GET via follower c=$c: "; bench 127.0.0.1:2801$F $c 1; done
  echo -n "$mode mix 1:1 via follower c=8: "; bench 127.0.0.1:2801$F 8 0.5
  kill $PIDS; wait $PIDS 2>/dev/null
done
