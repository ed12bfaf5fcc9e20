#!/usr/bin/env bash
# Makes sure a Debian package a test needs is installed, and prints the path of the program
# it provides. Tests call this (never a person): a test that needs `faketime` runs
# `scripts/test-deps.sh faketime`.
#
#   scripts/test-deps.sh PROGRAM    PROGRAM: faketime | chromium
#
# Installed with apt-get when the program is missing and we are root (CI and fresh
# machines); otherwise it fails with the command to run, so no test silently skips.
# Concurrent callers (test binaries run in parallel) wait on one lock, so apt runs once.
set -euo pipefail

program=${1:?usage: test-deps.sh PROGRAM}
case "$program" in
  faketime) package=faketime ;;
  chromium) package=chromium ;;
  *) echo "test-deps.sh: unknown program $program" >&2; exit 2 ;;
esac

if path=$(command -v "$program"); then
  echo "$path"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "test-deps.sh: $program is missing; install it with: sudo apt-get install -y $package" >&2
  exit 1
fi
exec 9>/tmp/tally-test-deps.lock
flock 9
if ! command -v "$program" >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "$package" >/tmp/tally-test-deps.log 2>&1; then
    apt-get update -q >>/tmp/tally-test-deps.log 2>&1
    apt-get install -y -q --no-install-recommends "$package" >>/tmp/tally-test-deps.log 2>&1 || {
      echo "test-deps.sh: apt-get install $package failed; see /tmp/tally-test-deps.log" >&2
      exit 1
    }
  fi
fi
command -v "$program"
