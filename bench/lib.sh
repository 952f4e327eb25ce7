# Shared helpers for the bench scripts: start servers on loopback, wait until they answer,
# stop them by PID. Source it; it sets a trap that stops every server it started.
# Installs nothing: the scripts check that memcached and redis-server exist.

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KVSERVER=${KVSERVER:-$BENCH_ROOT/target/release/kvserver}
KVBENCH=${KVBENCH:-$BENCH_ROOT/target/release/kvbench}
BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/textkv-bench.XXXXXX")
STARTED_PIDS=()

# Stops one process by PID: SIGTERM, up to 20 s to exit, then SIGKILL.
stop_pid() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "pid $pid did not stop on SIGTERM; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup_all() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do stop_pid "$pid"; done
  STARTED_PIDS=()
  [ -n "${KEEP_TMP:-}" ] || rm -rf "$BENCH_TMP"
}
trap cleanup_all EXIT
trap 'exit 130' INT TERM

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "missing: $1 (Debian package $2); this script installs nothing" >&2; exit 1; }
}

# Waits (up to $3 s, default 30) until a server on 127.0.0.1:$2 answers a request in
# protocol $1 (line, memcached or resp). Redis answers -LOADING while it loads: not ready.
wait_ready() {
  local proto=$1 port=$2 limit=${3:-30} reply
  local deadline=$(( $(date +%s) + limit ))
  while [ "$(date +%s)" -le "$deadline" ]; do
    reply=$( { exec 3<>"/dev/tcp/127.0.0.1/$port" &&
      case $proto in
        line) printf 'ping\n' >&3 ;;
        memcached) printf 'version\r\n' >&3 ;;
        resp) printf 'PING\r\n' >&3 ;;
      esac && timeout 2 head -c 4 <&3; } 2>/dev/null ) || true
    case $reply in PONG | VERS | +PON) return 0 ;; esac
    sleep 0.02
  done
  echo "server on port $port ($proto) not ready after ${limit}s" >&2
  return 1
}

# Each start_* function starts a server in the background, sets SERVER_PID, and waits
# until it answers.
start_memcached() { # port [memory MB]
  local user=()
  [ "$(id -u)" = 0 ] && user=(-u root)
  memcached -l 127.0.0.1 -p "$1" -U 0 -t 2 -m "${2:-2048}" -c 4096 "${user[@]}" &
  SERVER_PID=$!
  STARTED_PIDS+=("$SERVER_PID")
  wait_ready memcached "$1"
}

start_redis() { # port dir mode(none|everysec|always)
  local port=$1 dir=$2 mode=$3 persist=()
  mkdir -p "$dir"
  case $mode in
    none) persist=(--appendonly no) ;;
    everysec | always) persist=(--appendonly yes --appendfsync "$mode") ;;
  esac
  redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save '' --daemonize no \
    --logfile "$dir/redis.log" --maxclients 4096 "${persist[@]}" "${REDIS_EXTRA[@]}" &
  SERVER_PID=$!
  STARTED_PIDS+=("$SERVER_PID")
  wait_ready resp "$port" "${READY_LIMIT:-30}"
}

# Whether this kvserver has the memcached listener.
textkv_has_memcached() {
  "$KVSERVER" --help 2>/dev/null | grep -q -- '--memcached'
}

start_textkv() { # line-port dir fsync [memcached-port]
  local port=$1 dir=$2 fsync=$3 mc=()
  mkdir -p "$dir"
  [ -n "${4:-}" ] && mc=(--memcached "127.0.0.1:$4")
  RUST_LOG=${RUST_LOG:-warn} "$KVSERVER" --db "$dir/database.txt" --listen "127.0.0.1:$port" \
    --fsync "$fsync" "${mc[@]}" "${TEXTKV_EXTRA[@]}" 2>>"$dir/kvserver.log" &
  SERVER_PID=$!
  STARTED_PIDS+=("$SERVER_PID")
  wait_ready line "$port" "${READY_LIMIT:-30}"
  [ -z "${4:-}" ] || wait_ready memcached "$4" "${READY_LIMIT:-30}"
}

# Stops the server started last (SERVER_PID) and forgets it.
stop_server() {
  stop_pid "$SERVER_PID"
  local keep=() pid
  for pid in "${STARTED_PIDS[@]}"; do [ "$pid" = "$SERVER_PID" ] || keep+=("$pid"); done
  STARTED_PIDS=("${keep[@]}")
}

# VmRSS of a PID in kB.
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# A field of a kvbench summary line: field NAME LINE
field() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }
