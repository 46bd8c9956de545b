# File: bench/lib.sh
# Helpers shared by the macro benchmark scripts (bench/submit, bench/deliver); sourced, never
# run. It owns: finding and building the binaries, the scratch directory, the record of every
# process a script starts (each one is stopped on exit, and only those are ever signalled),
# free loopback ports, bounded waits, and smtp_load runs.
#
# The sourcing script sets bench_name (log prefix and scratch names), build_dir and load_bin,
# and run_deadline_s before RunLoad. BenchInit sets work_dir, live_pids, crashed and the traps;
# the script reads crashed and work_dir. RunLoad sets crashed only when run in the script's own
# shell, not inside $(...).
# shellcheck shell=bash disable=SC2154,SC2034

log() { echo "[$bench_name] $*" >&2; }

FindFacteur() {
  if [ -n "${FACTEUR_BIN:-}" ]; then echo "$FACTEUR_BIN"; return; fi
  local candidate
  for candidate in "$build_dir/facteur" "$build_dir/engine/main/facteur"; do
    [ -x "$candidate" ] && { echo "$candidate"; return; }
  done
  echo "$build_dir/facteur"
}

# BuildIfMissing WANT_FACTEUR: builds smtp_load, and facteur when WANT_FACTEUR is 1, in
# $build_dir if either is missing; sets facteur_bin.
BuildIfMissing() {
  local want_facteur=$1
  facteur_bin=$(FindFacteur)
  if [ ! -x "$load_bin" ] || { [ "$want_facteur" = 1 ] && [ ! -x "$facteur_bin" ]; }; then
    log "building in $build_dir"
    if ! cmake -S . -B "$build_dir" >"/tmp/$bench_name-cmake.$$.log" 2>&1; then
      log "cmake configure failed (tail of the log follows)"
      tail -n 20 "/tmp/$bench_name-cmake.$$.log" >&2
    fi
    rm -f "/tmp/$bench_name-cmake.$$.log"
    # Two builds: facteur may not build yet, and what does not need it still has to run.
    cmake --build "$build_dir" -j"$(nproc)" --target smtp_load >&2 || log "smtp_load: build failed"
    if [ "$want_facteur" = 1 ] && [ -z "${FACTEUR_BIN:-}" ]; then
      cmake --build "$build_dir" -j"$(nproc)" --target facteur >&2 || log "facteur: build failed"
    fi
    facteur_bin=$(FindFacteur)
  fi
}

# --- processes: every one started is recorded and stopped on exit ----------------------------

# BenchInit: the scratch directory $work_dir (under $build_dir/bench-tmp) and the exit traps.
BenchInit() {
  tmp_root="$build_dir/bench-tmp"
  mkdir -p "$tmp_root"
  work_dir=$(mktemp -d "$tmp_root/$bench_name.XXXXXX") || exit 1
  live_pids=()  # started here and not yet reaped: the only processes this script may signal
  crashed=0
  trap Cleanup EXIT
  trap 'log "interrupted"; exit 130' INT TERM
}

Track() { live_pids+=("$1"); }
Untrack() {
  local pid kept=()
  for pid in "${live_pids[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
  live_pids=("${kept[@]}")
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
Cleanup() {
  local pid
  for pid in "${live_pids[@]}"; do
    kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null
  done
  for pid in "${live_pids[@]}"; do
    local i
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  rm -rf "$work_dir"
  rmdir "$tmp_root" 2>/dev/null
}

# A loopback port nobody listens on (bounded tries).
FreePort() {
  local i port
  for ((i = 0; i < 100; i++)); do
    port=$((20000 + RANDOM % 40000))
    if [ -z "$(ss -Htan "( sport = :$port )" 2>/dev/null)" ]; then echo "$port"; return 0; fi
  done
  return 1
}

# WaitListening PID PORT: up to 10 s for PORT to listen while PID lives. ss looks at the
# listening socket without opening a session.
WaitListening() {
  local pid=$1 port=$2 i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    [ -n "$(ss -Htln "( sport = :$port )" 2>/dev/null)" ] && return 0
    sleep 0.1
  done
  return 1
}

# Stop PID NAME: SIGTERM, up to 10 s, then SIGKILL. A death before the SIGTERM, or by a signal
# other than ours, is a crash.
Stop() {
  local pid=$1 name=$2 i status
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null
    status=$?
    Untrack "$pid"
    log "$name (pid $pid) died during the run, exit status $status"
    crashed=1
    return
  fi
  kill -TERM "$pid"
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
    kill -KILL "$pid"
  fi
  wait "$pid" 2>/dev/null
  status=$?
  Untrack "$pid"
  # 0: a clean shutdown; 143: killed by our SIGTERM; 137: our SIGKILL.
  if [ "$status" -ne 0 ] && [ "$status" -ne 143 ] && [ "$status" -ne 137 ] && [ "$status" -gt 128 ]; then
    log "$name (pid $pid) exited on signal $((status - 128))"
    crashed=1
  fi
}

JsonField() { sed -n "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$1"; }

# RunLoad PORT SESSIONS MESSAGES SIZE [SMTP_LOAD FLAGS...]: prints smtp_load's JSON line, or
# nothing.
RunLoad() {
  local port=$1 sessions=$2 messages=$3 size=$4 out rc
  shift 4
  out=$("$load_bin" --server="127.0.0.1:$port" --sessions="$sessions" --messages="$messages" \
        --size="$size" --json --deadline_s="$run_deadline_s" "$@" 2>"$work_dir/load.err")
  rc=$?
  if [ -s "$work_dir/load.err" ]; then sed 's/^/    /' "$work_dir/load.err" >&2; fi
  if [ "$rc" -gt 1 ]; then
    log "smtp_load exited with status $rc"
    crashed=1
  fi
  echo "$out"
}
