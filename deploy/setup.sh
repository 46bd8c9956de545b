#!/usr/bin/env bash
# Installs every Debian 12 package facteur needs to build, test and benchmark.
# Idempotent and non-interactive; run as root (or through sudo). Safe to re-run.
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake pkg-config git
  # libraries (see ../shared/research/deps.md for what was probed)
  liburing-dev libssl-dev openssl librocksdb-dev prometheus-cpp-dev libcivetweb-dev
  libabsl-dev libtomlplusplus-dev libsodium-dev nlohmann-json3-dev libc-ares-dev
  libopendkim-dev libre2-dev libjemalloc-dev libidn2-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # test clients and tools: Debian's python3 (smtplib, email), swaks with TLS, curl, openssl CLI,
  # systemd-analyze (verifies deploy/systemd/facteur.service)
  python3 swaks libnet-ssleay-perl curl procps systemd
  # test peers started by the tests on loopback: a DNS server serving test zones, Postfix as a
  # receiving MX (and its smtp-sink / smtp-source for the benchmarks), dkimpy as DKIM verifier,
  # postgrey as a real greylisting policy service for that Postfix, Prometheus (and promtool) to
  # check the shipped alert rules against a running facteur
  dnsmasq-base postfix python3-dkim postgrey prometheus
  # the OpenDKIM milter signing for that Postfix in bench/macro/run (issue #7)
  opendkim opendkim-tools
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "setup: all ${#packages[@]} packages already installed"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
echo "setup: installing ${missing[*]}"
# Postfix must not ask which kind of mail system to configure; tests start their own instances.
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
