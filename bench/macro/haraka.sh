# File: bench/macro/haraka.sh
# Haraka (the Node.js MTA, from npm) as one more relay for bench/macro/run; sourced, never run.
# It owns: installing a pinned Haraka into a cache directory outside the repository
# (InstallHaraka), and starting a private Haraka instance that relays everything to the sink
# through its outbound queue (StartHaraka). The caller owns the sink, the accounting and
# stopping the relay (run's StopRelay stops relay_roots).
#
# What is measured (Haraka 3.3.4, haraka-plugin-dkim 1.3.x, Node 20+):
# - store-and-forward: the client is allowed to relay (haraka-plugin-relay, an ACL of
#   127.0.0.0/8), so a message goes to Haraka's outbound queue, a file per destination domain in
#   $dir/queue, and is delivered later by the outbound module; the 250 comes after that file is
#   written. No queue plugin forwards in-session (queue/smtp_forward is not loaded).
# - durability: the queue file is written by haraka-utils' FsyncWriteStream, which fsyncs the
#   file before closing it, then renamed into place (outbound/index.js process_delivery), then
#   the 250 is sent (checked with strace: writev, fsync, rename, "250 Message Queued"). The
#   queue directory is not fsynced after the rename.
# - next hop: a local get_mx plugin (bench_sink, written below) answers every domain with
#   127.0.0.1:SINK_PORT. Haraka's outbound opens one connection per queued message and never
#   reuses it (outbound/client_pool.js: release_client destroys the socket), up to
#   concurrency_max = 20 deliveries at once, as Postfix's destination concurrency limit.
# - DKIM: haraka-plugin-dkim signs in the queue_outbound hook, before the queue write, with
#   relaxed/relaxed canonicalization, d=bench.test s=bench. It signs rsa-sha256 only
#   (lib/dkim-sign-stream.js: createSign('RSA-SHA256'), a=rsa-sha256); ed25519-sha256 is
#   verified, never signed, so StartHaraka ed25519 fails. Its verifier (on by default, a
#   data_post hook) is turned off: OpenDKIM runs in sign-only mode too.
# - processes: smtp.ini nodes=cpus (Haraka's Performance-Tuning advice: one cluster worker per
#   core; its default, nodes unset, is one worker), HARAKA_NODES=N to change it, 0 for a single
#   process without cluster. Each worker has its own outbound queue; concurrency_max is
#   20 / workers, so 20 deliveries at once in all. The workers are children of relay_roots[0]
#   and exit when it does (SIGTERM kills the master: Haraka handles only SIGINT, unless pid 1).
# - logging: level HARAKA_LOG_LEVEL (default info, Haraka's default: about 8 lines a message) to
#   stdout, into relay_log.
#
# Environment: HARAKA_CACHE (default /var/cache/facteur-bench/haraka), NODE_BIN (default
# /usr/bin/node), NPM_BIN (default npm), HARAKA_NODES, HARAKA_LOG_LEVEL.
# Uses run's row_number and sender_domain (default bench.test), and log, Track, WaitListening,
# FreePort and StopRelay (bench/lib.sh, bench/macro/run).
# shellcheck shell=bash disable=SC2154,SC2034

haraka_version=3.3.4
haraka_cache=${HARAKA_CACHE:-/var/cache/facteur-bench/haraka}
haraka_node=${NODE_BIN:-/usr/bin/node}
haraka_npm=${NPM_BIN:-npm}
haraka_bin="$haraka_cache/node_modules/Haraka/bin/haraka"

# HarakaInstalledVersion: the version in the cache that Node can load, or nothing.
HarakaInstalledVersion() {
  [ -f "$haraka_bin" ] || return 0
  (cd "$haraka_cache" && "$haraka_node" -e '
    const v = require("Haraka/package.json").version
    require("haraka-plugin-dkim"); require("haraka-plugin-relay")
    console.log(v)' 2>/dev/null)
}

# InstallHaraka: Haraka $haraka_version and its plugins (npm's optional dependencies, relay and
# dkim among them) in $haraka_cache, once; no install scripts run (the only one builds
# modern-syslog, which the syslog plugin alone needs). Sets haraka_version_used. Returns 1,
# with the reason logged, when Node or npm is missing or too old, or npm fails.
InstallHaraka() {
  local node_major installed
  if [ ! -x "$haraka_node" ]; then
    log "haraka: no $haraka_node (Haraka $haraka_version needs Node >= 20)"
    return 1
  fi
  node_major=$("$haraka_node" -p 'process.versions.node.split(".")[0]' 2>/dev/null)
  if [ -z "$node_major" ] || [ "$node_major" -lt 20 ]; then
    log "haraka: $haraka_node is Node ${node_major:-?}; Haraka $haraka_version needs Node >= 20"
    return 1
  fi
  installed=$(HarakaInstalledVersion)
  if [ "$installed" != "$haraka_version" ]; then
    if ! command -v "$haraka_npm" >/dev/null; then
      log "haraka: no npm to install Haraka $haraka_version with"
      return 1
    fi
    log "haraka: npm install Haraka@$haraka_version into $haraka_cache (under a minute)"
    mkdir -p "$haraka_cache" || { log "haraka: cannot create $haraka_cache"; return 1; }
    if ! "$haraka_npm" install --prefix "$haraka_cache" --no-audit --no-fund --omit=dev \
         --ignore-scripts "Haraka@$haraka_version" >"$haraka_cache/npm-install.log" 2>&1; then
      log "haraka: npm install Haraka@$haraka_version failed (tail of $haraka_cache/npm-install.log):"
      tail -n 15 "$haraka_cache/npm-install.log" | sed 's/^/    /' >&2
      return 1
    fi
    installed=$(HarakaInstalledVersion)
    if [ "$installed" != "$haraka_version" ]; then
      log "haraka: installed, but Node cannot load Haraka $haraka_version with its relay and dkim plugins"
      return 1
    fi
  fi
  # Unused (no tls plugin loaded, outbound enable_tls=false), but Haraka's core loads a key and
  # a certificate at start-up (two ERROR lines without them) and, with them, runs
  # `openssl dhparam 2048` as a child when dhparams.pem is missing: seconds of CPU in the
  # measured tree. Made once here, copied into each instance.
  if [ ! -s "$haraka_cache/bench-tls/dhparams.pem" ]; then
    if ! { mkdir -p "$haraka_cache/bench-tls" &&
           openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
             -subj /CN=relay.bench.test -keyout "$haraka_cache/bench-tls/tls_key.pem" \
             -out "$haraka_cache/bench-tls/tls_cert.pem" >/dev/null 2>&1 &&
           openssl dhparam -dsaparam -out "$haraka_cache/bench-tls/dhparams.tmp" 2048 >/dev/null 2>&1 &&
           mv "$haraka_cache/bench-tls/dhparams.tmp" "$haraka_cache/bench-tls/dhparams.pem"; }; then
      log "haraka: openssl could not make the placeholder TLS key, certificate and dhparams"
      return 1
    fi
  fi
  haraka_version_used=$installed
}

# StartHaraka DKIM SINK_PORT WORK_DIR [DNS_PORT]: a private Haraka ($WORK_DIR/haraka-$row_number:
# its config, plugins and queue) on 127.0.0.1, relaying every message through its outbound queue
# to the sink, DKIM off or rsa ($WORK_DIR/rsa.pem; ed25519 is refused, see above). Without
# DNS_PORT every domain goes to 127.0.0.1:SINK_PORT; with it (run's --domains > 1), each
# domain's MX hosts are looked up in the DNS on 127.0.0.1:DNS_PORT, as Haraka's outbound does
# in the system's DNS, and contacted on SINK_PORT. Sets relay_port, relay_roots, relay_log.
StartHaraka() {
  local dkim=$1 sink=$2 dir="$3/haraka-${row_number:-0}" domain=${sender_domain:-bench.test}
  local dns=${4:-}
  local plugins="relay"
  relay_roots=()
  case "$dkim" in
    off) ;;
    rsa) plugins+=$'\n'"dkim" ;;
    ed25519)
      log "haraka: haraka-plugin-dkim signs rsa-sha256 only (it verifies, never signs, ed25519-sha256)"
      return 1 ;;
    *) log "haraka: unknown DKIM mode '$dkim'"; return 1 ;;
  esac
  plugins+=$'\n'"bench_sink"
  [ -x "$haraka_bin" ] || { log "haraka: not installed (InstallHaraka)"; return 1; }
  rm -rf "$dir"
  mkdir -p "$dir/plugins" "$dir/queue" || return 1
  # Haraka reads $HARAKA/config only, no built-in defaults (connection.ini's greeting...):
  # its distribution's config directory first, then the files below over it.
  cp -R "$haraka_cache/node_modules/Haraka/config" "$dir/config" || return 1
  relay_port=$(FreePort) || return 1
  relay_log="$dir.log"
  echo "relay.bench.test" >"$dir/config/me"
  cp "$haraka_cache/bench-tls/"*.pem "$dir/config/" || return 1
  echo "$plugins" >"$dir/config/plugins"
  # nodes: Haraka's performance tuning (cluster workers, one per core); each worker has its own
  # outbound queue and concurrency_max, shared out so that the total stays 20.
  local nodes=${HARAKA_NODES:-cpus} workers
  workers=$([ "$nodes" = cpus ] && nproc || echo "$nodes")
  [ "$workers" -ge 1 ] 2>/dev/null || workers=1
  cat >"$dir/config/smtp.ini" <<EOF
listen=127.0.0.1:$relay_port
nodes=$nodes
EOF
  cat >"$dir/config/log.ini" <<EOF
[main]
level=${HARAKA_LOG_LEVEL:-info}
timestamps=false
EOF
  printf '[relay]\nacl=true\n' >"$dir/config/relay.ini"
  echo "127.0.0.0/8" >"$dir/config/relay_acl_allow"
  # The sink is on loopback (local_mx_ok) and speaks no TLS.
  cat >"$dir/config/outbound.ini" <<EOF
concurrency_max=$(( (20 + workers - 1) / workers ))
enable_tls=false
local_mx_ok=true
inet_prefer=v4
${haraka_outbound_extra:-}
EOF
  echo "$sink" >"$dir/config/bench_sink_port"
  [ -n "$dns" ] && echo "127.0.0.1:$dns" >"$dir/config/bench_dns_server"
  cat >"$dir/plugins/bench_sink.js" <<'EOF'
'use strict'
// The benchmark's next hops (bench/macro/haraka.sh). Without bench_dns_server: every domain to
// 127.0.0.1 on the sink's port. With it: the resolver of haraka-net-utils, which outbound uses
// for MX and for the MX hosts' addresses, asks that server; each MX found is contacted on the
// sink's port.
const net_utils = require('haraka-net-utils')
exports.register = function () {
  this.port = parseInt(this.config.get('bench_sink_port', 'value'), 10)
  this.dns_server = this.config.get('bench_dns_server', 'value')
  if (this.dns_server) {
    require('haraka-net-utils/lib/dns_config').getDnsResolver().setServers([this.dns_server])
  }
  this.register_hook('get_mx', 'sink_mx')
}
exports.sink_mx = function (next, hmail, domain) {
  if (!this.dns_server) return next(OK, { priority: 0, exchange: '127.0.0.1', port: this.port })
  net_utils.get_mx(domain).then(
    (mxs) => {
      if (!mxs.length) return next(DENYSOFT, `no MX for ${domain}`)
      next(OK, mxs.map((mx) => ({ priority: mx.priority, exchange: mx.exchange, port: this.port })))
    },
    (err) => next(DENYSOFT, `MX lookup for ${domain}: ${err.message}`),
  )
}
EOF
  if [ "$dkim" = rsa ]; then
    cat >"$dir/config/dkim.ini" <<EOF
[sign]
enabled=true
selector=bench
domain=$domain
headers=From, Sender, Reply-To, Subject, Date, Message-ID, To, Cc, MIME-Version, Content-Type, Content-Transfer-Encoding

[canon]
body=relaxed

[verify]
enabled=false
EOF
    cp "$3/rsa.pem" "$dir/config/dkim.private.key" || return 1
    chmod 600 "$dir/config/dkim.private.key"
  fi
  # Its own process group (setsid, as run starts Postfix's master): with nodes=N the cluster
  # master and its workers are one tree under relay_roots[0].
  (cd "$dir" && exec setsid "$haraka_node" "$haraka_bin" -c "$dir") >"$relay_log" 2>&1 &
  relay_roots=("$!")
  Track "$!"
  if ! WaitListening "${relay_roots[0]}" "$relay_port"; then
    log "Haraka did not listen on 127.0.0.1:$relay_port within 10 s; its log:"
    tail -n 15 "$relay_log" | sed 's/^/    /' >&2
    StopRelay
    return 1
  fi
}
