#!/usr/bin/env bash
# Quick start, command 1: installs the Debian packages, builds facteur, and starts the relay on
# its embedded default configuration (SMTP relay on 127.0.0.1:2525 trusting loopback, a Unix
# socket and the spool under ./var, metrics on http://127.0.0.1:9464/metrics).
# Extra arguments go to `facteur serve` (e.g. --config deploy/facteur.example.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build --target facteur -j"$(nproc)"
exec build/facteur serve "$@"
