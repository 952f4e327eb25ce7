# Shared by the cluster bench scripts. Source it.

# The leader most of the three members name: `cluster_leader 2701` asks the line listeners
# on 127.0.0.1:27011, 27012 and 27013 for `cluster_leader` in `stats`.
cluster_leader() {
  for i in 1 2 3; do printf 'stats\n' | timeout 2 nc -q1 127.0.0.1 "$1$i" | awk '/cluster_leader/ {print $3}'; done |
    sort | uniq -c | sort -rn | head -1 | awk '{print $2}'
}
