#!/usr/bin/env bash
# Installs what the test suite needs and a fresh machine lacks: busybox (the demo image's
# rootfs), file (the shim's static-binary check), promtool (alert and recording rules),
# python3 (scripts/promql-exprs.py), curl (tests/operations.rs), clippy and rustfmt. Safe to run again: it installs only
# what is missing. Needs root (apt-get) on a fresh Debian machine.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=""
command -v busybox >/dev/null 2>&1 || need="$need busybox-static"
command -v file >/dev/null 2>&1 || need="$need file"
command -v promtool >/dev/null 2>&1 || need="$need prometheus"
command -v python3 >/dev/null 2>&1 || need="$need python3"
command -v curl >/dev/null 2>&1 || need="$need curl"
if [ -n "$need" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps.sh: missing:$need; run as root or install them (apt-get install$need)" >&2
    exit 1
  fi
  apt-get update -qq
  # No recommends: prometheus recommends node-exporter, one more service and nothing we use.
  apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
# Where services may start (systemd, no policy-rc.d denying them), Debian's prometheus
# package starts a system Prometheus on :9090. The tests never use it (tests/prometheus.rs
# runs its own on a free loopback port with its own storage), so stop the one we installed.
case "$need" in
  *prometheus*)
    if [ -d /run/systemd/system ]; then
      systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    else
      invoke-rc.d prometheus stop >/dev/null 2>&1 || true
    fi
    ;;
esac
if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  rustup component add clippy rustfmt >/dev/null
fi
