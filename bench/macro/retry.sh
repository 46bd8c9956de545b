# File: bench/macro/retry.sh
# The retry-path rows of bench/macro/run (issue #7 point 2); sourced, never run. It owns: the
# smart sink of a row (bench/macro/smart_sink.cc: per-recipient accept, greylist, rate limit,
# reject), the retry shaping given to each relay for those rows, one row per system and its
# table.
# The caller (run) owns the relays (StartFacteur, StartPostfix, StartHaraka read the hooks
# facteur_delivery_extra, facteur_shaping_extra, postfix_main_extra and haraka_outbound_extra,
# set here only while a retry row starts its relay), the DNS and the process bookkeeping.
#
# A row: 2 KB messages (300 with --quick, else 1000, --messages=N if given, at most 1000), DKIM
# off, message I to bench@dI.sink.test, I < 1000: each recipient a distinct address. When the
# run has a domains value > 1, each dI has its own MX through the private DNS (StartDns serves
# at least these 1000; the row's domains column says 1000); with only --domains=1, the static
# next hop (domains column 1). The smart sink answers each recipient by a hash of its address:
# accept 70 %, greylist 20 % (450 4.2.0 in Postgrey's words until 5 s after the first attempt of
# the triplet client IP, sender, recipient), rate limit 5 % (451 4.7.1 "Rate limit exceeded, try
# again later", until 5 s after the triplet's first attempt too), reject 5 % (550 5.1.1).
# The relays retry after about 6 s instead of minutes (RetryShaping); facteur's reaction to a
# rate limit (by default a 10-minute pause of the site, then half its rate: deploy/shaping.toml
# [actions.rate_limit]) becomes a 6 s pause, which a one-minute row can show. The row is
# settled when the sink has every message either delivered or rejected and as many DSNs (null
# sender messages, to load@bench.test: the sink again) as rejects; bounded by retry_deadline_s.
#
# Figures, from the sink's counters at the end (one message = one recipient here):
#   greylisted recipients   greylist_passed: greylist-class recipients let through after the
#                           delay. The first attempt of a triplet always gets the 450 and each
#                           address is used once: the distinct greylisted recipients delivered.
#   attempts per greylisted recipient   (greylisted + greylist_passed) / greylist_passed: RCPT
#                           attempts of those recipients, 2.0 at best (one 450, one pass).
#   rate-limited recipients ratelimit_passed: the same for the rate-limit class.
#   attempts per rate-limited recipient   (ratelimited + ratelimit_passed) / ratelimit_passed,
#                           2.0 at best (one 451, one pass).
#   rejected                rejected: RCPT 550 replies (a relay never retries them).
#   DSNs                    null_sender: messages from <> the sink received.
#   settled after           from the first connection of smtp_load until the condition above.
#   relay CPU-ms/msg        as the main table's, over the whole row, divided by the messages.
# shellcheck shell=bash disable=SC2154,SC2034

smart_sink_bin="$build_dir/bench/macro/smart_sink"
retry_rule=""  # RunRetryRows: "*.sink.test:accept=70,greylist=20,ratelimit=5,reject=5"
retry_greylist_delay_s=5
retry_rows=()
retry_rcpt_domains=1000  # recipients bench@d0..d999.sink.test, each a distinct address
# The MX records StartDns must serve for the retry rows (0 with --no-retry).
retry_dns_domains=$([ "$retry_mode" = off ] && echo 0 || echo "$retry_rcpt_domains")
rcpt_domains_used=0
retry_deadline_s=300
# The hooks read by StartFacteur, StartPostfix and StartHaraka: empty outside retry rows.
facteur_delivery_extra=""
facteur_shaping_extra=""
postfix_main_extra=""
haraka_outbound_extra=""

# RetrySystems: the systems of the retry rows, one per line (postfix-opendkim has none: DKIM
# is off in these rows, which would make it Postfix again).
RetrySystems() {
  Wants postfix && echo postfix
  Wants facteur && echo facteur
  Wants haraka && echo haraka
}

# RetryRowCount: how many retry rows this run has (0 with --no-retry).
RetryRowCount() {
  if [ "$retry_mode" = off ]; then echo 0; else RetrySystems | wc -l; fi
}

# StartSmartSink STATS_FILE: a fresh smart_sink on $sink_ip, port from its first stdout line;
# sets sink_pid, sink_port, smart_sink_out.
StartSmartSink() {
  local stats=$1 i
  smart_sink_out="$work_dir/smart-sink-$row_number.out"
  "$smart_sink_bin" --listen="$sink_ip:0" --rule="$retry_rule" --default=accept=100 \
    --greylist_delay="$retry_greylist_delay_s" --ratelimit_delay="$retry_greylist_delay_s" \
    --ratelimit_reply=451 --stats="$stats" \
    >"$smart_sink_out" 2>"$work_dir/smart-sink-$row_number.err" &
  sink_pid=$!
  Track "$sink_pid"
  sink_port=""
  for ((i = 0; i < 100; i++)); do
    sink_port=$(head -n 1 "$smart_sink_out" 2>/dev/null)
    [[ "$sink_port" =~ ^[0-9]+$ ]] && break
    sink_port=""
    kill -0 "$sink_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$sink_port" ] || ! WaitListening "$sink_pid" "$sink_port"; then
    log "smart_sink did not come up on $sink_ip:"
    sed 's/^/    /' "$work_dir/smart-sink-$row_number.err" >&2
    Stop "$sink_pid" smart_sink
    return 1
  fi
}

# SinkCounter LINE NAME: the counter NAME of a smart_sink counters line, 0 if absent.
SinkCounter() {
  local value
  value=$(sed -n "s/.*\\b$2=\\([0-9]*\\).*/\\1/p" <<<"$1")
  echo "${value:-0}"
}

# RetryShaping SYSTEM: sets the hooks of SYSTEM's retry settings, about 6 s between attempts
# (the greylist and the rate limit let a triplet through 5 s after its first attempt).
RetryShaping() {
  case "$1" in
    facteur)
      # [delivery]: every transient failure; [greylist] (the shaping file): greylisted
      # recipients (the smart sink's 450 announces no delay); [actions.rate_limit]: a site that
      # says "rate limit" (each dI is a site of its own here) is paused 6 s, as the others
      # retry, and neither slowed nor capped to one connection after (facteur's default halves
      # the rate it saw: a site that took one message in the last minute waits 2 minutes for
      # its next). No jitter: one figure per row.
      facteur_delivery_extra=$'first_retry = "6s"\nretry_backoff = 1.0\nmax_retry_interval = "6s"\nretry_jitter = 0'
      facteur_shaping_extra=$'\n[greylist]\nfirst_delay = "6s"\nbackoff = 1\nmax_delay = "6s"\n\n[actions.rate_limit]\nsuspend = "6s"\nrate_factor = 1.0\nmax_connections = 0' ;;
    postfix)
      # The deferred queue is scanned every second; a deferred message waits 6 s at least and
      # at most 6 s, as facteur (queue_run_delay must not exceed minimal_backoff_time).
      postfix_main_extra=$'queue_run_delay = 1s\nminimal_backoff_time = 6s\nmaximal_backoff_time = 6s' ;;
    haraka)
      # outbound.ini temp_fail_intervals: the delay before each retry of a temporary failure
      # (Haraka 3: "6s*20" = twenty retries 6 s apart; its default is 2^(n+5) s: 64 s, 128 s...).
      haraka_outbound_extra='temp_fail_intervals=6s*20' ;;
  esac
}
RetryShapingOff() {
  facteur_delivery_extra=""
  facteur_shaping_extra=""
  postfix_main_extra=""
  haraka_outbound_extra=""
}

# RetryRowFailed WHY
RetryRowFailed() {
  retry_rows+=("| $relay_name | $domains | $1 | not measured: $2 | | | | | | | |")
  crashed=1
}

# RunRetryRow SYSTEM MESSAGES RCPT_DOMAINS: appends one row to retry_rows.
RunRetryRow() {
  local system=$1 messages=$2 rcpt_domains=$3 stats load_json ok t0 t_end cpu0 cpu1 counters
  local deadline note="" settled=0 delivered=0 null_sender=0 rejected=0 pid alive
  row_number=$((row_number + 1))
  relay_name=$system
  stats="$work_dir/smart-sink-$row_number.stats"
  log "row $row_number/$row_count: retry path, $system, 2 KB, $rcpt_domains recipient domains" \
      "($domains by DNS), $messages messages"
  StartSmartSink "$stats" || { RetryRowFailed "$messages" "the smart sink did not start"; return; }
  RetryShaping "$system"
  case "$system" in
    facteur) StartFacteur off ;;
    haraka) StartHaraka off "$sink_port" "$work_dir" "$([ "$domains" -gt 1 ] && echo "$dns_port")" ;;
    *) StartPostfix off ;;
  esac
  local started=$?
  RetryShapingOff
  if [ "$started" != 0 ]; then
    Stop "$sink_pid" smart_sink
    RetryRowFailed "$messages" "did not start"
    return
  fi
  cpu0=$(TreeCpuMs "${relay_roots[@]}")
  t0=$EPOCHREALTIME
  RunLoad "$relay_port" "$sessions" "$messages" 2048 --mail_from="load@$sender_domain" \
    --rcpt_to="bench@$rcpt_domain" --rcpt_domains="$rcpt_domains" >"$work_dir/load.json"
  load_json=$(cat "$work_dir/load.json")
  log "  injection: ${load_json:-no result}"
  ok=$(JsonField "$load_json" ok)
  ok=${ok:-0}
  [ "$ok" != "$messages" ] && note+="; $((messages - ok)) not accepted"
  # Until every accepted message is delivered or rejected and every reject has its DSN (100 ms
  # polls of the stats file, which the sink rewrites within 200 ms of a change), bounded.
  deadline=$(( ${EPOCHREALTIME%.*} + retry_deadline_s ))
  while :; do
    counters=$(cat "$stats" 2>/dev/null)
    delivered=$(SinkCounter "$counters" delivered)
    null_sender=$(SinkCounter "$counters" null_sender)
    rejected=$(SinkCounter "$counters" rejected)
    if [ $((delivered - null_sender + rejected)) -ge "$ok" ] && [ "$null_sender" -ge "$rejected" ]; then
      settled=1
      break
    fi
    if [ "${EPOCHREALTIME%.*}" -ge "$deadline" ]; then
      note+="; after ${retry_deadline_s} s: $((delivered - null_sender)) delivered, $rejected"
      note+=" rejected, $null_sender DSNs of $ok messages"
      break
    fi
    alive=1
    for pid in "${relay_roots[@]}"; do kill -0 "$pid" 2>/dev/null || alive=0; done
    [ "$alive" = 1 ] || { note+="; the relay died"; break; }
    sleep 0.1
  done
  t_end=$EPOCHREALTIME
  cpu1=$(TreeCpuMs "${relay_roots[@]}")
  StopRelay
  Stop "$sink_pid" smart_sink
  # The sink's last word: its counters line at exit.
  counters=$(grep 'sessions=' "$smart_sink_out" | tail -n 1)
  log "  smart_sink: $counters"
  [ "$ok" = 0 ] || [ "$settled" = 0 ] && { crashed=1; log "  $system: not settled (${note#; })"; }
  retry_rows+=("$(awk -v sys="$system" -v d="$domains" -v n="$ok" -v t0="$t0" -v t1="$t_end" \
    -v c0="$cpu0" -v c1="$cpu1" -v settled="$settled" -v note="${note#; }" \
    -v grey="$(SinkCounter "$counters" greylisted)" \
    -v passed="$(SinkCounter "$counters" greylist_passed)" \
    -v limited="$(SinkCounter "$counters" ratelimited)" \
    -v limited_passed="$(SinkCounter "$counters" ratelimit_passed)" \
    -v rejected="$(SinkCounter "$counters" rejected)" \
    -v dsns="$(SinkCounter "$counters" null_sender)" \
    'function per(tries, passes) { return passes > 0 ? sprintf("%.2f", tries / passes) : "-" }
     BEGIN { printf "| %s | %s | %d | %d | %s | %d | %s | %d | %d | %s | %.2f |%s",
                    sys, d, n, passed, per(grey + passed, passed),
                    limited_passed, per(limited + limited_passed, limited_passed),
                    rejected, dsns, (settled ? sprintf("%.1f", t1 - t0) : "not settled"),
                    (n > 0 ? (c1 - c0) / n : 0), (note == "" ? "" : " " note " |") }')")
  rm -rf "$work_dir/facteur-$row_number" "$work_dir/postfix-$row_number" \
    "$work_dir/haraka-$row_number"
}

# RunRetryRows: the retry rows, after the happy-path ones (their domains value: the run's
# largest; the DNS, if any, is still up).
RunRetryRows() {
  local system messages rcpt_domains
  [ "$retry_mode" = off ] && return
  if [ ! -x "$smart_sink_bin" ]; then
    log "building smart_sink in $build_dir"
    cmake --build "$build_dir" -j"$(nproc)" --target smart_sink >&2 || log "smart_sink: build failed"
  fi
  retry_rule="*.$rcpt_domain:accept=70,greylist=20,ratelimit=5,reject=5"
  # By DNS when the run has a domains value > 1 (StartDns serves retry_dns_domains MX), else
  # through the static next hop.
  SetDomains "$([ "$max_domains" -gt 1 ] && echo "$retry_dns_domains" || echo 1)"
  rcpt_domains=$retry_rcpt_domains
  rcpt_domains_used=$rcpt_domains
  messages=$([ "$quick" = 1 ] && echo 300 || echo 1000)
  [ -n "$messages_arg" ] && messages=$messages_arg
  # Each address once: the greylist counters then count distinct recipients.
  [ "$messages" -gt "$rcpt_domains" ] && messages=$rcpt_domains
  retry_deadline_s=$([ "$quick" = 1 ] && echo 120 || echo 300)
  for system in $(RetrySystems); do
    if [ ! -x "$smart_sink_bin" ]; then
      relay_name=$system
      RetryRowFailed "$messages" "no $smart_sink_bin"
      continue
    fi
    RunRetryRow "$system" "$messages" "$rcpt_domains"
  done
}

# PrintRetryTable: the second table of the report.
PrintRetryTable() {
  local row
  [ "${#retry_rows[@]}" -gt 0 ] || return
  echo "### Retry path (smart_sink: $retry_rule, greylist delay ${retry_greylist_delay_s} s)"
  echo
  echo "- 2 KB messages, DKIM off, one recipient each, bench@dI.$rcpt_domain over $rcpt_domains_used domains (domains"
  echo "  $rcpt_domains_used: each dI its own MX through the DNS; domains 1: the static next hop); the smart sink answers each"
  echo "  recipient by a hash of its address: 70 % accepted, 20 % greylisted (450 until ${retry_greylist_delay_s} s after the"
  echo "  first attempt from that IP, sender, recipient), 5 % rate-limited (451 4.7.1 \"Rate limit exceeded, try again"
  echo "  later\", until ${retry_greylist_delay_s} s after the first attempt too), 5 % rejected (550 5.1.1); DSNs go to the sink too"
  echo "- retries about 6 s apart: facteur [delivery] first_retry = max_retry_interval = 6s, no jitter, [greylist]"
  echo "  first_delay = max_delay = 6s, [actions.rate_limit] suspend = 6s, rate_factor = 1.0, max_connections = 0 (by"
  echo "  default a site that says \"rate limit\" is paused 10 minutes, then sent to at half the rate it had, over one"
  echo "  connection); Postfix queue_run_delay = 1s, minimal/maximal_backoff_time = 6s"
  Wants haraka && echo "- Haraka: outbound temp_fail_intervals = 6s*20"
  echo "- greylisted recipients: let through after their 450s (greylist_passed); attempts per greylisted"
  echo "  recipient: (450s + passes) / passes, 2.00 at best; the same for the rate-limited ones (451s); rejected:"
  echo "  550s; DSNs: messages from <> back at the sink"
  echo "- settled after: from the first connection until every message is delivered or rejected and every"
  echo "  reject has its DSN (deadline ${retry_deadline_s} s); CPU: as above, over the whole row"
  echo
  echo "| system | domains | messages | greylisted recipients | attempts per greylisted recipient | rate-limited recipients | attempts per rate-limited recipient | rejected | DSNs | settled after s | relay CPU-ms/msg |"
  echo "| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  for row in "${retry_rows[@]}"; do echo "$row"; done
  echo
}
