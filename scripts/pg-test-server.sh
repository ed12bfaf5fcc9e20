#!/usr/bin/env bash
# Start and stop a throwaway PostgreSQL 15 server for tests and benchmarks.
#
# The server uses the PostgreSQL binaries already installed on this machine
# (found with `pg_config --bindir`). Everything belonging to one server lives
# in a single directory DIR:
#
#   DIR/data         the database cluster (created by initdb on the first start)
#   DIR/port         the TCP port the server listens on (kept across restarts)
#   DIR/server.log   the server's log
#   DIR/initdb.log   the output of initdb
#   DIR/.s.PGSQL.*   the server's Unix socket
#   DIR/.lock        serialises calls to this script for the same DIR
#
# Usage:
#   pg-test-server.sh start DIR          start (creating DIR and the cluster if needed);
#                                        prints the connection URL as the only stdout line
#   pg-test-server.sh stop DIR [MODE]    stop; MODE is fast (default), smart, immediate
#                                        (a crash: no checkpoint) or kill (SIGKILL to the
#                                        server and every process of it, as when its host
#                                        is lost); quiet if not running
#   pg-test-server.sh url DIR            print the connection URL again
#   pg-test-server.sh destroy DIR        stop (immediate) if running, then delete DIR
#   pg-test-server.sh standby PRIMARY DIR
#                                        make DIR a synchronous streaming standby of the
#                                        running server in PRIMARY (a base backup, then
#                                        streaming; the primary waits for it on every
#                                        commit) and start it; prints its URL
#   pg-test-server.sh promote DIR        promote the standby in DIR to a primary (after
#                                        the primary died); waits until it takes writes
#
# The URL has the form postgres://tally@127.0.0.1:PORT/postgres. Authentication is
# "trust": anyone on this machine can connect, so only use this for tests.
#
# The server keeps PostgreSQL's default durability (fsync=on, synchronous_commit=on);
# benchmarks run against it rely on that.
#
# PostgreSQL refuses to run as root. When this script runs as root it runs the
# PostgreSQL programs as an unprivileged user instead: "postgres" if that user
# exists, otherwise a system user "tally-pg" that it creates. DIR is handed to
# that user, and every directory above DIR must be enterable by it (a directory
# made with `mktemp -d` under /tmp is fine).
#
# Calls for different DIRs can run at the same time; calls for the same DIR wait
# for each other.
set -euo pipefail

# Anything printed for humans goes to stderr: stdout carries only the URL.
say() { echo "$*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

usage() {
  cat >&2 <<'EOF'
usage: pg-test-server.sh start DIR
       pg-test-server.sh stop DIR [fast|smart|immediate|kill]
       pg-test-server.sh url DIR
       pg-test-server.sh destroy DIR
       pg-test-server.sh standby PRIMARY DIR
       pg-test-server.sh promote DIR
EOF
  exit 2
}

# How many random ports to try before giving up, and the range they come from.
PORT_TRIES=20
PORT_MIN=20000
PORT_MAX=60000

# Variables like these would otherwise change which server the PostgreSQL
# programs act on; this script always says explicitly what it means.
unset PGDATA PGPORT PGHOST PGHOSTADDR PGUSER PGDATABASE PGOPTIONS

# ---------------------------------------------------------------------------
# Locating PostgreSQL
# ---------------------------------------------------------------------------

find_binaries() {
  local bindir=""
  if command -v pg_config >/dev/null 2>&1; then
    bindir=$(pg_config --bindir 2>/dev/null || true)
  fi
  if [[ -z "$bindir" || ! -x "$bindir/initdb" || ! -x "$bindir/pg_ctl" ]]; then
    echo "error: PostgreSQL server binaries not found (install postgresql-15)" >&2
    exit 1
  fi
  INITDB="$bindir/initdb"
  PG_CTL="$bindir/pg_ctl"
  PG_BASEBACKUP="$bindir/pg_basebackup"
  PSQL="$bindir/psql"
}

# ---------------------------------------------------------------------------
# Which user runs PostgreSQL
# ---------------------------------------------------------------------------

# Sets RUN_USER: empty when we are not root (run programs directly), otherwise
# the unprivileged user to run them as, creating "tally-pg" if needed.
choose_run_user() {
  RUN_USER=""
  if [[ $(id -u) -ne 0 ]]; then
    return
  fi
  if id -u postgres >/dev/null 2>&1; then
    RUN_USER=postgres
    return
  fi
  RUN_USER=tally-pg
  id -u "$RUN_USER" >/dev/null 2>&1 && return
  # Several copies of this script may want to create the user at the same time,
  # and concurrent useradd calls are not safe: they can each "succeed" and
  # overwrite one another's entry, leaving files owned by a user id that no
  # longer exists. So hold a lock while checking and creating. The lock is taken
  # on the /etc directory itself, so no lock file has to be created anywhere.
  {
    flock 8
    if ! id -u "$RUN_USER" >/dev/null 2>&1; then
      useradd --system --no-create-home --shell /usr/sbin/nologin "$RUN_USER" >&2 \
        || die "could not create the system user $RUN_USER (useradd failed)"
    fi
  } 8</etc
}

# Runs a command as RUN_USER (or directly when not root), from inside DIR so
# the programs never trip over a working directory they may not enter.
# File descriptor 9 holds this script's lock on DIR; it is closed so the
# server process, which lives on after this script exits, does not inherit it.
as_pg() {
  if [[ -n "$RUN_USER" ]]; then
    (cd "$DIR" && exec runuser -u "$RUN_USER" -- "$@") 9>&-
  else
    (cd "$DIR" && exec "$@") 9>&-
  fi
}

# ---------------------------------------------------------------------------
# The server directory
# ---------------------------------------------------------------------------

# Turns the DIR argument into an absolute path (DIR itself may not exist yet).
set_dir() {
  [[ -n "${1:-}" ]] || usage
  DIR=$(realpath -m -- "$1")
  [[ "$DIR" != "/" ]] || die "refusing to use / as the server directory"
  # The path is written into postgresql.conf inside single quotes and is used
  # as a list element there, so keep it free of characters that would need
  # escaping.
  case "$DIR" in
    *[\'\"\\,]* | *$'\n'*) die "the server directory path must not contain quotes, backslashes, commas or newlines: $DIR" ;;
  esac
  # The Unix socket path (DIR/.s.PGSQL.PORT) must fit in 107 bytes.
  local sock="$DIR/.s.PGSQL.65535"
  if (( ${#sock} > 107 )); then
    die "the server directory path is too long for a Unix socket (keep it under 90 characters): $DIR"
  fi
  DATA="$DIR/data"
  PORT_FILE="$DIR/port"
}

# Takes an exclusive lock on DIR (held until this script exits), so that two
# calls for the same DIR do not both initialise or start the server.
lock_dir() {
  exec 9>>"$DIR/.lock"
  flock 9
}

# As root: give DIR to RUN_USER and check that RUN_USER can reach it.
prepare_dir_for_run_user() {
  [[ -n "$RUN_USER" ]] || return 0
  chown "$RUN_USER:" "$DIR"
  # A cluster made earlier by another user must belong to RUN_USER too, or
  # the server refuses to start.
  if [[ -d "$DATA" && $(stat -c %U "$DATA") != "$RUN_USER" ]]; then
    chown -R "$RUN_USER:" "$DATA"
  fi
  if ! runuser -u "$RUN_USER" -- sh -c 'cd "$1"' sh "$DIR" 2>/dev/null; then
    # Find the first directory on the way down that RUN_USER cannot enter.
    local p="" part
    local IFS=/
    for part in $DIR; do
      [[ -n "$part" ]] || continue
      p="$p/$part"
      if ! runuser -u "$RUN_USER" -- test -x "$p" 2>/dev/null; then
        die "user $RUN_USER cannot enter $p, so PostgreSQL cannot use $DIR (use a directory such as one made by mktemp -d under /tmp)"
      fi
    done
    die "user $RUN_USER cannot enter $DIR"
  fi
}

# The user who should run pg_ctl for an existing cluster: its owner when we are
# root (so stop works even if the cluster was made by someone else).
run_user_for_existing_data() {
  RUN_USER=""
  if [[ $(id -u) -eq 0 ]]; then
    RUN_USER=$(stat -c %U "$DATA")
    if [[ "$RUN_USER" == "root" ]]; then
      choose_run_user
    fi
  fi
}

# Prints the connection URL for a port.
print_url() {
  echo "postgres://tally@127.0.0.1:$1/postgres"
}

# True if the server for DIR is running.
server_running() {
  [[ -f "$DATA/postmaster.pid" ]] || return 1
  # A server process that was killed outright (not stopped with this script)
  # leaves its postmaster.pid behind. If nothing collects the dead process (on
  # machines whose init does not do so), it lingers as a "zombie" that still
  # looks alive to pg_ctl. Count it as not running; PostgreSQL itself will then
  # refuse to start and the log says why.
  local pid state
  pid=$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null || true)
  if [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/stat" ]]; then
    state=$(sed -e 's/^.*) //' "/proc/$pid/stat" | cut -d ' ' -f 1)
    if [[ "$state" == Z ]]; then
      say "warning: the server process $pid for $DIR was killed and is a zombie; $DATA/postmaster.pid is stale"
      return 1
    fi
  fi
  as_pg "$PG_CTL" -D "$DATA" status >/dev/null 2>&1
}

# Shows the end of a log file on stderr, to explain a failure.
show_log_tail() {
  local file=$1 from=${2:-0}
  [[ -f "$file" ]] || return 0
  say "---- last lines of $file ----"
  tail -c +"$((from + 1))" "$file" | tail -n 20 >&2 || true
  say "----"
}

# ---------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------

# Creates the cluster in DIR/data. initdb works in a scratch directory that is
# renamed into place only when everything succeeded, so an interrupted start
# never leaves a half-made cluster behind for the next start to trip over.
init_cluster() {
  local tmp="$DIR/data.init"
  rm -rf "$tmp"
  # initdb runs as RUN_USER but the log is opened by this script.
  if ! as_pg "$INITDB" -D "$tmp" -U tally --auth=trust --encoding=UTF8 --locale=C \
      >"$DIR/initdb.log" 2>&1; then
    show_log_tail "$DIR/initdb.log"
    rm -rf "$tmp"
    die "initdb failed (see $DIR/initdb.log)"
  fi
  # Settings for this server. Port is not here: it is given on the command line
  # at each start.
  cat >>"$tmp/postgresql.conf" <<EOF

# ---- added by pg-test-server.sh ----
# Only reachable from this machine; the Unix socket lives in the server directory.
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
# Room for several connection pools at once.
max_connections = 300
# PostgreSQL's default durability, stated explicitly: benchmarks rely on it.
fsync = on
synchronous_commit = on
# Keep the log short: no debug, info or notice messages. (Server events such as
# startup, checkpoints and crash recovery are logged at level LOG and still appear.)
log_min_messages = warning
EOF
  mv "$tmp" "$DATA"
}

# Tries to start the server on one port. Returns 0 on success, 1 on failure,
# and 2 when the failure was because the port is already taken.
try_start() {
  local port=$1 log="$DIR/server.log" before=0
  [[ -f "$log" ]] && before=$(stat -c %s "$log")
  # pg_ctl's own messages are kept back and shown only for a real failure, not
  # for a taken port that we simply retry. (The server itself writes to the log,
  # not to this capture, so the capture ends when pg_ctl does.)
  local out
  if out=$(as_pg "$PG_CTL" -D "$DATA" -l "$log" -w -t 60 -s start -o "-p $port" 2>&1); then
    return 0
  fi
  # pg_ctl appends to the log; look only at what this attempt wrote.
  if [[ -f "$log" ]] && tail -c +"$((before + 1))" "$log" \
      | grep -qE 'could not bind|Address already in use|could not create any TCP/IP sockets'; then
    return 2
  fi
  [[ -z "$out" ]] || say "$out"
  show_log_tail "$log" "$before"
  return 1
}

# True if something already accepts connections on 127.0.0.1:PORT.
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

cmd_start() {
  find_binaries
  choose_run_user
  (umask 022 && mkdir -p -- "$DIR") || die "cannot create $DIR"
  [[ -w "$DIR" ]] || die "cannot write to $DIR"
  lock_dir
  prepare_dir_for_run_user

  # Already running (for example started by another test process sharing DIR):
  # just report where it is.
  if [[ -d "$DATA" ]] && server_running; then
    [[ -s "$PORT_FILE" ]] || die "a server is running in $DATA but $PORT_FILE is missing"
    print_url "$(<"$PORT_FILE")"
    return 0
  fi

  if [[ ! -d "$DATA" ]]; then
    init_cluster
  fi

  local port rc
  if [[ -s "$PORT_FILE" ]]; then
    # Restart: keep the same port so the URL stays the same.
    port=$(<"$PORT_FILE")
    [[ "$port" =~ ^[0-9]+$ ]] || die "$PORT_FILE does not hold a port number"
    if port_in_use "$port"; then
      die "port $port (from $PORT_FILE) is already in use by another program"
    fi
    rc=0
    try_start "$port" || rc=$?
    if (( rc == 2 )); then
      die "port $port (from $PORT_FILE) is already in use by another program"
    elif (( rc != 0 )); then
      die "the server did not start (see $DIR/server.log)"
    fi
  else
    # First start: pick random ports until one works. Another server started at
    # the same moment may grab the same port; then we simply try another.
    local attempt started=""
    for ((attempt = 1; attempt <= PORT_TRIES; attempt++)); do
      port=$(shuf -i "$PORT_MIN-$PORT_MAX" -n 1)
      port_in_use "$port" && continue
      rc=0
      try_start "$port" || rc=$?
      if (( rc == 0 )); then
        started=yes
        break
      elif (( rc != 2 )); then
        die "the server did not start (see $DIR/server.log)"
      fi
      say "port $port is taken, trying another"
    done
    [[ -n "$started" ]] || die "no free port found after $PORT_TRIES tries"
    # Write the port file atomically so `url` never sees it half-written.
    echo "$port" >"$PORT_FILE.tmp"
    mv "$PORT_FILE.tmp" "$PORT_FILE"
  fi
  print_url "$port"
}

cmd_stop() {
  local mode=${1:-fast}
  case "$mode" in
    fast | smart | immediate | kill) ;;
    *) die "unknown stop mode '$mode' (use fast, smart, immediate or kill)" ;;
  esac
  # Nothing to stop if there is no cluster.
  [[ -d "$DATA" ]] || return 0
  find_binaries
  lock_dir
  run_user_for_existing_data
  server_running || return 0
  if [[ "$mode" == kill ]]; then
    kill_server
    return 0
  fi
  as_pg "$PG_CTL" -D "$DATA" stop -w -s -m "$mode" >&2 \
    || die "the server did not stop (see $DIR/server.log)"
}

# SIGKILLs the postmaster and all its processes at once (a lost host: nothing gets to
# shut down, no backend outlives it), then waits until they are all gone.
kill_server() {
  local pid procs attempt
  pid=$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null || true)
  [[ "$pid" =~ ^[0-9]+$ ]] || die "no postmaster.pid in $DATA"
  procs="$pid $(pgrep -P "$pid" | tr '\n' ' ')"
  # shellcheck disable=SC2086 # a list of pids
  kill -KILL $procs 2>/dev/null || true
  local p alive
  for ((attempt = 1; attempt <= 100; attempt++)); do
    alive=""
    for p in $procs; do
      # Gone, or a zombie nobody collects (dead all the same).
      [[ -r "/proc/$p/stat" ]] || continue
      [[ "$(sed -e 's/^.*) //' "/proc/$p/stat" | cut -d ' ' -f 1)" == Z ]] && continue
      alive=yes
    done
    [[ -z "$alive" ]] && return 0
    sleep 0.1
  done
  die "the server's processes did not die after SIGKILL: $procs"
}

# The standby's name in the primary's synchronous_standby_names.
STANDBY_NAME=tally_standby

# Makes DIR a synchronous standby of the server in PRIMARY_DIR and starts it.
cmd_standby() {
  local primary_dir=$1 primary_port
  primary_dir=$(realpath -m -- "$primary_dir")
  [[ -s "$primary_dir/port" ]] || die "no server has been started in $primary_dir"
  primary_port=$(<"$primary_dir/port")
  find_binaries
  choose_run_user
  (umask 022 && mkdir -p -- "$DIR") || die "cannot create $DIR"
  lock_dir
  prepare_dir_for_run_user
  if [[ -d "$DATA" ]] && server_running; then
    print_url "$(<"$PORT_FILE")"
    return 0
  fi
  if [[ ! -d "$DATA" ]]; then
    local tmp="$DIR/data.init"
    rm -rf "$tmp"
    # -R writes standby.signal and primary_conninfo (with our application_name, the
    # name the primary waits for); -X stream copies the WAL made during the backup.
    if ! as_pg "$PG_BASEBACKUP" -h 127.0.0.1 -p "$primary_port" -U tally -D "$tmp" \
        -R -X stream -c fast -d "application_name=$STANDBY_NAME" >"$DIR/initdb.log" 2>&1; then
      show_log_tail "$DIR/initdb.log"
      rm -rf "$tmp"
      die "pg_basebackup from $primary_dir failed (see $DIR/initdb.log)"
    fi
    # Its own socket directory (the copied settings name the primary's).
    cat >>"$tmp/postgresql.conf" <<EOF2

# ---- added by pg-test-server.sh standby ----
unix_socket_directories = '$DIR'
hot_standby = on
EOF2
    mv "$tmp" "$DATA"
  fi
  local port rc attempt started=""
  for ((attempt = 1; attempt <= PORT_TRIES; attempt++)); do
    port=$(shuf -i "$PORT_MIN-$PORT_MAX" -n 1)
    port_in_use "$port" && continue
    rc=0
    try_start "$port" || rc=$?
    if (( rc == 0 )); then started=yes; break; fi
    (( rc == 2 )) || die "the standby did not start (see $DIR/server.log)"
  done
  [[ -n "$started" ]] || die "no free port found after $PORT_TRIES tries"
  echo "$port" >"$PORT_FILE.tmp"
  mv "$PORT_FILE.tmp" "$PORT_FILE"
  # From now on every commit on the primary waits until this standby has it.
  as_pg "$PSQL" -h 127.0.0.1 -p "$primary_port" -U tally -d postgres -v ON_ERROR_STOP=1 -q \
    -c "ALTER SYSTEM SET synchronous_standby_names = '$STANDBY_NAME'" \
    -c "SELECT pg_reload_conf()" >/dev/null \
    || die "could not make the primary wait for the standby"
  # Wait until the primary sees it streaming synchronously.
  local state=""
  for ((attempt = 1; attempt <= 120; attempt++)); do
    state=$(as_pg "$PSQL" -h 127.0.0.1 -p "$primary_port" -U tally -d postgres -Atq \
      -c "SELECT sync_state FROM pg_stat_replication WHERE application_name = '$STANDBY_NAME'" 2>/dev/null || true)
    [[ "$state" == sync ]] && break
    sleep 0.5
  done
  [[ "$state" == sync ]] || die "the standby is not streaming synchronously (state: '${state:-none}')"
  print_url "$port"
}

# Promotes the standby in DIR and waits until it accepts writes.
cmd_promote() {
  [[ -d "$DATA" ]] || die "no standby in $DIR"
  find_binaries
  lock_dir
  run_user_for_existing_data
  as_pg "$PG_CTL" -D "$DATA" promote -w -t 60 -s >&2 || die "promotion failed (see $DIR/server.log)"
  # A promoted server no longer waits for a standby it does not have.
  as_pg "$PSQL" -h 127.0.0.1 -p "$(<"$PORT_FILE")" -U tally -d postgres -v ON_ERROR_STOP=1 -q \
    -c "ALTER SYSTEM SET synchronous_standby_names = ''" -c "SELECT pg_reload_conf()" >/dev/null \
    || die "could not clear synchronous_standby_names on the promoted server"
}

cmd_url() {
  [[ -s "$PORT_FILE" ]] || die "no server has been started in $DIR ($PORT_FILE is missing)"
  print_url "$(<"$PORT_FILE")"
}

cmd_destroy() {
  [[ -e "$DIR" ]] || return 0
  [[ -d "$DIR" ]] || die "$DIR is not a directory"
  # Guard against deleting the wrong directory by mistake: a non-empty DIR must
  # contain something this script creates.
  if [[ -n "$(ls -A -- "$DIR")" && ! -e "$DATA" && ! -e "$PORT_FILE" \
        && ! -e "$DIR/initdb.log" && ! -e "$DIR/server.log" && ! -e "$DIR/data.init" \
        && ! -e "$DIR/.lock" ]]; then
    die "$DIR does not look like a test server directory; not deleting it"
  fi
  cmd_stop immediate
  rm -rf -- "$DIR"
}

# ---------------------------------------------------------------------------

[[ $# -ge 2 ]] || usage
command=$1
if [[ "$command" == standby ]]; then
  [[ $# -eq 3 ]] || usage
  primary=$2
  set_dir "$3"
  cmd_standby "$primary"
  exit 0
fi
set_dir "$2"
case "$command" in
  promote) [[ $# -eq 2 ]] || usage; cmd_promote ;;
  start) [[ $# -eq 2 ]] || usage; cmd_start ;;
  stop) [[ $# -le 3 ]] || usage; cmd_stop "${3:-fast}" ;;
  url) [[ $# -eq 2 ]] || usage; cmd_url ;;
  destroy) [[ $# -eq 2 ]] || usage; cmd_destroy ;;
  *) usage ;;
esac
