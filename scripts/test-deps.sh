#!/usr/bin/env bash
# Makes sure a Debian package a test needs is installed, and prints the path of what the
# test uses from it. Tests call this (never a person): a test that needs Chromium runs
# `scripts/test-deps.sh chromium`.
#
#   scripts/test-deps.sh WHAT    WHAT: chromium | libfaketime (the LD_PRELOAD library) |
#                                      systemd-analyze | promtool | musl (musl-gcc and
#                                      Rust's x86_64-unknown-linux-musl target)
#
# Installed with apt-get when missing and we are root (CI and fresh machines); otherwise
# it fails with the command to run, so no test silently skips. Concurrent callers (test
# binaries run in parallel) wait on one lock, so apt runs once.
set -euo pipefail

what=${1:?usage: test-deps.sh WHAT}
case "$what" in
  chromium) package=chromium; find_it() { command -v chromium; } ;;
  libfaketime)
    package=faketime
    find_it() { dpkg -L libfaketime 2>/dev/null | grep '/libfaketime\.so\.1$' | head -n 1 | grep . ; }
    ;;
  systemd-analyze) package=systemd; find_it() { command -v systemd-analyze; } ;;
  musl)
    # The static build the container image ships: the C compiler for musl (ring and the
    # bundled SQLite have C code) and Rust's standard library for the musl target.
    if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
      exec 8>/tmp/tally-test-deps-rustup.lock
      flock 8
      rustup target list --installed | grep -qx x86_64-unknown-linux-musl \
        || rustup target add x86_64-unknown-linux-musl >/tmp/tally-test-deps-rustup.log 2>&1 \
        || { echo "test-deps.sh: rustup target add x86_64-unknown-linux-musl failed; see /tmp/tally-test-deps-rustup.log" >&2; exit 1; }
    fi
    package=musl-tools; find_it() { command -v musl-gcc; } ;;
  promtool)
    # Only the `promtool` binary of Debian's `prometheus` package: unpacked into a cache
    # directory, never installed (installing would add a Prometheus server and its service).
    cache=${TALLY_TEST_DEPS_CACHE:-/tmp/tally-test-deps}
    find_it() { command -v promtool || { test -x "$cache/promtool/usr/bin/promtool" && echo "$cache/promtool/usr/bin/promtool"; }; }
    if ! find_it >/dev/null; then
      mkdir -p "$cache"
      exec 9>"$cache/promtool.lock"
      flock 9
      if ! find_it >/dev/null; then
        work=$(mktemp -d "$cache/dl.XXXXXX")
        ( cd "$work" && apt-get download prometheus >"$work/log" 2>&1 ) || {
          [ "$(id -u)" -eq 0 ] && apt-get update -q >>"$work/log" 2>&1
          ( cd "$work" && apt-get download prometheus >>"$work/log" 2>&1 ) || {
            echo "test-deps.sh: apt-get download prometheus failed; see $work/log" >&2; exit 1; }
        }
        dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
        mkdir -p "$cache/promtool/usr/bin"
        install -m 0755 "$work/x/usr/bin/promtool" "$cache/promtool/usr/bin/promtool"
        rm -rf "$work"
      fi
    fi
    find_it || { echo "test-deps.sh: promtool not found after unpacking" >&2; exit 1; }
    exit 0
    ;;
  *) echo "test-deps.sh: unknown dependency $what" >&2; exit 2 ;;
esac

if path=$(find_it); then
  echo "$path"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "test-deps.sh: $what is missing; install it with: sudo apt-get install -y $package" >&2
  exit 1
fi
exec 9>/tmp/tally-test-deps.lock
flock 9
if ! find_it >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "$package" >/tmp/tally-test-deps.log 2>&1; then
    apt-get update -q >>/tmp/tally-test-deps.log 2>&1
    apt-get install -y -q --no-install-recommends "$package" >>/tmp/tally-test-deps.log 2>&1 || {
      echo "test-deps.sh: apt-get install $package failed; see /tmp/tally-test-deps.log" >&2
      exit 1
    }
  fi
fi
find_it || { echo "test-deps.sh: $package is installed but $what was not found" >&2; exit 1; }
