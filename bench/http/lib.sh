# shellcheck shell=bash
# bench/http/lib.sh: sourced by bench/run. Installs the peers, starts every
# HTTP server under bench control and stops it by its PID.
#
# A server is started with setsid, so its PID is also its process group: at
# the end it gets TERM by PID, then whatever is left of its group and of its
# descendants (even those that moved to another group) gets KILL. cleanup_all
# runs from bench/run's EXIT trap, so an error or ^C stops everything too.
# Every server binds 127.0.0.1 only, on a port of its own, and keeps its
# config, pid file and logs in its own folder under $WORK.

HTTP_DIR=${HTTP_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
PROC="python3 $HTTP_DIR/proc.py"

declare -A SRV_PID=() SRV_PORT=() SRV_DIR=() SRV_PATH=()  # SRV_PATH: what wrk asks, default /hello

note() { echo "  $*"; echo "$*" >>"$RESULTS/notes.txt"; }

# The peers' packages. Debian starts a service on install where it can
# (nginx and apache2 on *:80): a policy-rc.d that says no is put in place for
# the install when none exists, and removed afterwards.
ensure_bench_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "bench/run needs these Debian packages: ${missing[*]}" >&2
    echo "install them with:  sudo apt-get install --no-install-recommends ${missing[*]}" >&2
    echo "or run bench/run --no-install to measure what is there" >&2
    exit 1
  fi
  echo "installing ${missing[*]} ..."
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
  fi
  apt-get update -qq || true
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >"$WORK/apt.log" 2>&1 || rc=$?
  [ $made_policy -eq 1 ] && rm -f "$policy"
  if [ $rc -ne 0 ]; then
    echo "apt-get install ${missing[*]} failed (see $WORK/apt.log); measuring what is there" >&2
  fi
}

# start_server NAME PORT DIR COMMAND...: starts it, waits until GET /hello
# answers "Hello, World!" (READY_SECONDS at most). Returns 1, with a
# "skipped:" line, when it cannot.
start_server() {
  local name=$1 port=$2 dir=$3 pid
  shift 3
  if ! $PROC port-free "$port"; then
    note "skipped: $name (127.0.0.1:$port is in use)"
    return 1
  fi
  # No job control here, so the background child is not a group leader and
  # setsid makes it one without forking: $! is the server itself.
  setsid "$@" >"$dir/stdout.log" 2>"$dir/stderr.log" </dev/null &
  pid=$!
  SRV_PID[$name]=$pid SRV_PORT[$name]=$port SRV_DIR[$name]=$dir
  echo "$pid $name" >>"$WORK/pids"
  if ! $PROC ready "$port" "${SRV_PATH[$name]:-/hello}" "${READY_SECONDS:-30}" "$pid" 2>>"$dir/stderr.log"; then
    note "skipped: $name did not answer GET ${SRV_PATH[$name]:-/hello} on 127.0.0.1:$port ($(tail -n 1 "$dir/stderr.log"))"
    stop_server "$name"
    return 1
  fi
}

# stop_server NAME: TERM by PID, up to 10 s for the whole tree and group to
# go, then KILL what is left; reaps the PID.
stop_server() {
  local name=$1 pid=${SRV_PID[$1]:-} i f p
  [ -n "$pid" ] || return 0
  unset "SRV_PID[$name]"
  local tree=()
  mapfile -t tree < <($PROC tree "$pid")
  kill -TERM "$pid" 2>/dev/null || true
  # After a fork+exec upgrade the master is another process of the group,
  # named by the server's pid file: it gets TERM too.
  for f in "${SRV_DIR[$name]}"/*.pid; do
    [ -f "$f" ] || continue
    p=$(tr -dc 0-9 2>/dev/null <"$f" | head -c 20 || true)
    if [ -n "$p" ] && [ "$p" != "$pid" ] && [ "$($PROC pgid "$p" 2>/dev/null)" = "$pid" ]; then
      kill -TERM "$p" 2>/dev/null || true
      mapfile -t -O "${#tree[@]}" tree < <($PROC tree "$p")
    fi
  done
  for ((i = 0; i < 100; i++)); do
    $PROC gone "$pid" "${tree[@]}" && break
    sleep 0.1
  done
  if ! $PROC gone "$pid" "${tree[@]}"; then
    echo "  $name: still running 10 s after TERM; KILL" >&2
    kill -KILL -- "-$pid" 2>/dev/null || true
    if [ ${#tree[@]} -gt 0 ]; then kill -KILL "${tree[@]}" 2>/dev/null || true; fi
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup_all() {
  local name
  for name in "${!SRV_PID[@]}"; do stop_server "$name"; done
}

# wrk_round NAME MODE ROUND [SECTION]: one bounded wrk run, recorded with the
# server's CPU ticks before and after. MODE keepalive: -t1 -c64; close: a new
# connection per request, -t1 -c16.
wrk_round() {
  local name=$1 mode=$2 round=$3 section=${4:-http}
  local port=${SRV_PORT[$name]} pid=${SRV_PID[$name]} before after out
  local args=(-t1 -c64)
  [ "$mode" = close ] && args=(-t1 -c16 -H "Connection: close")
  local TIMEFORMAT='%U %S' wrk_cpu
  before=$($PROC cpu "$pid")
  # wrk's own CPU time too: near 100% of a core, the client is the limit.
  { time out=$(timeout -k 5 $((DURATION + 30)) wrk "${args[@]}" -d"${DURATION}s" --timeout 2s \
        -s "$HTTP_DIR/wrk.lua" "http://127.0.0.1:$port${SRV_PATH[$name]:-/hello}" 2>&1); } 2>"$WORK/wrk/time" || true
  after=$($PROC cpu "$pid")
  wrk_cpu=$(awk '{ print $1 + $2 }' "$WORK/wrk/time" 2>/dev/null || echo 0)
  printf '%s\n' "$out" >"$WORK/wrk/$section-$name-$mode-$round.txt"
  printf '  %-22s %-9s round %s:' "$name" "$mode" "$round"
  printf '%s\n' "$out" | python3 "$HTTP_DIR/record.py" "$RESULTS/$section.jsonl" \
    section="$section" server="$name" mode="$mode" round="$round" \
    cpu_before="$before" cpu_after="$after" tick="$TICK" wrk_cpu_s="${wrk_cpu:-0}"
}

# syscall_round NAME MODE: the system calls the server makes per request,
# in a window of its own (SYSCALL_SECONDS, default 2) apart from the timed
# rounds, so the counting cannot slow those: perf stat counts
# raw_syscalls:sys_enter in every process (and thread) of the server while
# wrk runs MODE as wrk_round does. perf starts with the counter off and
# turns it on and off on command (--control), so its own start-up and the
# time it takes to attach are not counted. Recorded in syscalls.jsonl
# (record.py adds syscalls_per_req); a "skipped:" note without perf.
syscall_round() {
  local name=$1 mode=$2 port=${SRV_PORT[$1]} pid=${SRV_PID[$1]} pids perf_pid out line ctl ack
  command -v perf >/dev/null || { note "skipped: syscalls per request for $name (perf missing: apt-get install linux-perf)"; return 0; }
  pids=$({ echo "$pid"; $PROC tree "$pid"; } | sort -un | paste -sd,)
  local args=(-t1 -c64)
  [ "$mode" = close ] && args=(-t1 -c16 -H "Connection: close")
  rm -f "$WORK/perf.ctl" "$WORK/perf.ack" && mkfifo "$WORK/perf.ctl" "$WORK/perf.ack"
  perf stat -e raw_syscalls:sys_enter -x, -o "$WORK/perf-$name-$mode.txt" -D -1 \
    --control "fifo:$WORK/perf.ctl,$WORK/perf.ack" -p "$pids" 2>"$WORK/perf-$name-$mode.err" &
  perf_pid=$!
  # Read-write opens: neither blocks, whether perf opened its ends yet or not.
  exec {ctl}<>"$WORK/perf.ctl" {ack}<>"$WORK/perf.ack"
  echo enable >&"$ctl"
  if ! read -r -t 10 -u "$ack" line; then
    note "skipped: syscalls per request for $name $mode (perf stat did not start: $(tail -n 1 "$WORK/perf-$name-$mode.err"))"
    kill -KILL "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    exec {ctl}>&- {ack}>&-
    return 0
  fi
  out=$(timeout -k 5 $((SYSCALL_SECONDS + 30)) wrk "${args[@]}" -d"${SYSCALL_SECONDS}s" --timeout 2s \
        -s "$HTTP_DIR/wrk.lua" "http://127.0.0.1:$port${SRV_PATH[$name]:-/hello}" 2>&1) || true
  echo disable >&"$ctl"
  read -r -t 10 -u "$ack" line || true
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" 2>/dev/null || true
  exec {ctl}>&- {ack}>&-
  local calls
  calls=$(awk -F, '/raw_syscalls:sys_enter/ { print $1 }' "$WORK/perf-$name-$mode.txt" 2>/dev/null | head -n 1)
  case $calls in
    ''|*[!0-9]*) note "skipped: syscalls per request for $name $mode (perf counted nothing: ${calls:-no output})"; return 0 ;;
  esac
  printf '  %-22s %-9s syscalls:' "$name" "$mode"
  printf '%s\n' "$out" | python3 "$HTTP_DIR/record.py" "$RESULTS/syscalls.jsonl" \
    section=syscalls server="$name" mode="$mode" round=1 syscalls="$calls"
}

# profile_round NAME ROUND: a keep-alive round (wrk -t1 -c64, DURATION)
# under a system-wide `perf record -g`, the samples of the server's
# processes sorted by bench/http/profile.py into profile.jsonl with the
# server's CPU ticks and wrk's request count over the same window.
profile_round() {
  local name=$1 round=$2 port=${SRV_PORT[$1]} pid=${SRV_PID[$1]} pids before after out requests
  pids=$({ echo "$pid"; $PROC tree "$pid"; } | sort -un | paste -sd,)
  before=$($PROC cpu "$pid")
  # perf runs wrk as its workload: recording starts before and ends after it.
  out=$(timeout -k 5 $((DURATION + 60)) perf record -q -a -g -o "$WORK/profile.data" -- \
        wrk -t1 -c64 -d"${DURATION}s" --timeout 2s "http://127.0.0.1:$port${SRV_PATH[$name]:-/hello}" 2>&1) || true
  after=$($PROC cpu "$pid")
  requests=$(printf '%s\n' "$out" | awk '/requests in/ { print $1 }')
  case $requests in
    ''|*[!0-9]*) note "skipped: profile of $name round $round (wrk: $(printf '%s\n' "$out" | tail -n 1))"; return 0 ;;
  esac
  printf '  %-22s round %s:' "$name" "$round"
  python3 "$HTTP_DIR/profile.py" classify "$WORK/profile.data" "$RESULTS/profile.jsonl" "$pids" \
    server="$name" round="$round" requests="$requests" cpu_before="$before" cpu_after="$after" tick="$TICK" \
    || note "warning: perf script failed for $name round $round"
  rm -f "$WORK/profile.data"
}

warm_up() {
  timeout -k 5 30 wrk -t1 -c16 -d1s "http://127.0.0.1:${SRV_PORT[$1]}${SRV_PATH[$1]:-/hello}" >/dev/null 2>&1 || true
}

# --- the servers ----------------------------------------------------------
# server_start KIND NAME PORT WORKERS [EXTRA...]: writes KIND's config into
# $WORK/NAME/ and starts it with start_server.
server_start() {
  local kind=$1 name=$2 port=$3 workers=$4 dir="$WORK/$2"
  shift 4
  rm -rf "$dir" && mkdir -p "$dir"
  printf 'Hello, World!' >"$dir/hello.txt"
  case $kind in
    prefork-httpd)
      start_server "$name" "$port" "$dir" "$BIN/prefork-httpd" -l "127.0.0.1:$port" -w "$workers" "$@" ;;
    prefork-kv)
      # An application on prefork-httpd's seam (examples/kv): the same 13
      # bytes as /hello, stored beforehand with the store's own CLI.
      mkdir -p "$dir/data"
      printf 'Hello, World!' | "$BIN/atomic-store" "$dir/data" put hello >/dev/null || return 1
      SRV_PATH[$name]=/k/hello
      start_server "$name" "$port" "$dir" "$BIN/prefork-kv" -l "127.0.0.1:$port" -w "$workers" "$@" "$dir/data" ;;
    nginx)
      mkdir -p "$dir/tmp"
      cat >"$dir/nginx.conf" <<EOF
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_timeout 5s;
  keepalive_requests 1000000;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  server {
    listen 127.0.0.1:$port;
    location / {
      default_type text/plain;
      return 200 "Hello, World!";
    }
  }
}
EOF
      start_server "$name" "$port" "$dir" nginx -p "$dir" -c "$dir/nginx.conf" -g "daemon off;" ;;
    h2o)
      chmod 755 "$dir" && chmod 644 "$dir/hello.txt"
      # As root h2o insists on dropping to a user; as anyone else it cannot.
      local h2o_user=""
      [ "$(id -u)" -eq 0 ] && h2o_user="user: nobody"
      cat >"$dir/h2o.conf" <<EOF
listen:
  host: 127.0.0.1
  port: $port
$h2o_user
num-threads: $workers
error-log: $dir/error.log
http1-request-timeout: 5
hosts:
  default:
    paths:
      /hello:
        file.file: $dir/hello.txt
EOF
      start_server "$name" "$port" "$dir" h2o -c "$dir/h2o.conf" ;;
    unicorn)
      cat >"$dir/config.ru" <<'EOF'
run ->(env) { [200, { "content-type" => "text/plain", "content-length" => "13" }, ["Hello, World!"]] }
EOF
      cat >"$dir/unicorn.rb" <<EOF
worker_processes $workers
listen "127.0.0.1:$port", backlog: 1024
pid "$dir/unicorn.pid"
stderr_path "$dir/unicorn.log"
EOF
      start_server "$name" "$port" "$dir" unicorn -E none -c "$dir/unicorn.rb" "$dir/config.ru" ;;
    gunicorn)
      cat >"$dir/app.py" <<'EOF'
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [b"Hello, World!"]
EOF
      start_server "$name" "$port" "$dir" gunicorn --workers "$workers" --worker-class sync \
        --bind "127.0.0.1:$port" --chdir "$dir" --pid "$dir/gunicorn.pid" \
        --error-logfile "$dir/error.log" app:app ;;
    apache)
      mkdir -p "$dir/htdocs" && cp "$dir/hello.txt" "$dir/htdocs/hello"
      chmod -R a+rX "$dir"
      local mods=/usr/lib/apache2/modules
      cat >"$dir/httpd.conf" <<EOF
ServerRoot $dir
DefaultRuntimeDir $dir
PidFile $dir/httpd.pid
ErrorLog $dir/error.log
LogLevel warn
TypesConfig /dev/null
ServerName 127.0.0.1
LoadModule mpm_prefork_module $mods/mod_mpm_prefork.so
LoadModule authz_core_module $mods/mod_authz_core.so
LoadModule mime_module $mods/mod_mime.so
Listen 127.0.0.1:$port
$([ "$(id -u)" -eq 0 ] && printf 'User www-data\nGroup www-data')
StartServers $workers
MinSpareServers $workers
MaxSpareServers $((workers + 1))
ServerLimit $workers
MaxRequestWorkers $workers
MaxConnectionsPerChild 0
KeepAlive On
KeepAliveTimeout 5
MaxKeepAliveRequests 0
DocumentRoot $dir/htdocs
<Directory $dir/htdocs>
  Require all granted
</Directory>
<Location /hello>
  ForceType text/plain
</Location>
EOF
      start_server "$name" "$port" "$dir" apache2 -f "$dir/httpd.conf" -DFOREGROUND ;;
    *)
      echo "unknown server kind $kind" >&2
      return 1 ;;
  esac
}
