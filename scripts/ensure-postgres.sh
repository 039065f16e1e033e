# shellcheck shell=bash
# Makes sure a PostgreSQL server is available for the tests of keyward-store's PostgreSQL backend
# (crates/keyward-store/tests/postgres_conformance.rs) and exports KEYWARD_TEST_POSTGRES_URL for
# it: a URL whose role may CREATE DATABASE (each test creates its own kw_test_<hex> database).
#
# Sourced by scripts/test (from the repository root, under `set -euo pipefail`); it can also be
# sourced by hand before `cargo test`. In order:
#   1. KEYWARD_TEST_POSTGRES_URL, if it is set and answers;
#   2. a server on 127.0.0.1:5432 (the machine's own): postgres://postgres@127.0.0.1:5432/test;
#   3. a stopped Debian cluster configured for that port: pg_ctlcluster … start;
#   4. a private cluster under target/test-postgres (installing Debian's postgresql package first
#      if initdb is missing): initdb as a non-root user, trust authentication, listening on
#      127.0.0.1 only, on a free port; reused by later runs, stopped when scripts/test exits if
#      this run started it.
# It fails (returns non-zero, which ends scripts/test) if none of that works: the tests never
# skip. Every wait is bounded (30 s for a server to accept connections).
#
# KEYWARD_TEST_POSTGRES_PORT_PROBE (default 5432) overrides the port of steps 2 and 3, e.g. an
# unused port to exercise step 4 while the machine's server keeps running.

_kw_pg_log() { printf 'ensure-postgres: %s\n' "$*" >&2; }

# Succeeds if `url` accepts a connection and a query within 5 s.
_kw_pg_answers() {
  command -v psql >/dev/null 2>&1 || return 1
  PGCONNECT_TIMEOUT=5 psql "$1" -Atqc 'SELECT 1' >/dev/null 2>&1
}

# Waits (at most 30 s) until host:port accepts connections.
_kw_pg_wait_ready() {
  local host=$1 port=$2 i
  for ((i = 0; i < 30; i++)); do
    if pg_isready -q -h "$host" -p "$port" -t 1 >/dev/null 2>&1; then
      return 0
    fi
    sleep 1
  done
  return 1
}

# The directory of the newest installed PostgreSQL server binaries (Debian keeps initdb and
# pg_ctl out of PATH), or of the ones on PATH.
_kw_pg_bindir() {
  local dir
  dir=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
    printf '%s\n' "$dir"
  elif command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
  else
    return 1
  fi
}

# A TCP port on 127.0.0.1 nobody listens on (tries at most 100).
_kw_pg_free_port() {
  local port
  for ((port = 55432; port < 55532; port++)); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      printf '%s\n' "$port"
      return 0
    fi
  done
  return 1
}

_kw_pg_use() {
  export KEYWARD_TEST_POSTGRES_URL="$1"
  echo "KEYWARD_TEST_POSTGRES_URL=$1 ($2)"
}

# Steps 2 and 3: the machine's server on 127.0.0.1:$port.
_kw_pg_try_local() {
  local port=$1 db
  pg_isready -q -h 127.0.0.1 -p "$port" -t 3 >/dev/null 2>&1 || return 1
  for db in test postgres; do
    if _kw_pg_answers "postgres://postgres@127.0.0.1:$port/$db"; then
      _kw_pg_use "postgres://postgres@127.0.0.1:$port/$db" "the server on 127.0.0.1:$port"
      return 0
    fi
  done
  _kw_pg_log "127.0.0.1:$port accepts connections but not postgres@…/test or …/postgres"
  return 1
}

_kw_pg_start_cluster() {
  local port=$1 version cluster cport status _
  command -v pg_lsclusters >/dev/null 2>&1 && command -v pg_ctlcluster >/dev/null 2>&1 || return 1
  [ -d /etc/postgresql ] || return 1
  while read -r version cluster cport status _; do
    if [ "$cport" != "$port" ] || [ "$status" != down ]; then
      continue
    fi
    _kw_pg_log "starting the stopped cluster $version/$cluster (port $port)"
    if pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start >&2 \
      && _kw_pg_wait_ready 127.0.0.1 "$port"; then
      return 0
    fi
  done < <(pg_lsclusters --no-header 2>/dev/null)
  return 1
}

_kw_pg_install() {
  _kw_pg_log "initdb not found: installing Debian's postgresql package"
  local sudo=
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { _kw_pg_log "not root and no sudo: cannot install"; return 1; }
    sudo="sudo -n"
  fi
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; then
    $sudo apt-get update -q >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
  fi
}

# Step 4: a private cluster. Sets KEYWARD_TEST_POSTGRES_URL.
_kw_pg_private_cluster() {
  local bindir base data run log port owner as_owner=()
  bindir=$(_kw_pg_bindir) || { _kw_pg_install && bindir=$(_kw_pg_bindir); } || {
    _kw_pg_log "no PostgreSQL server binaries (initdb) after installing"
    return 1
  }

  # initdb and postgres refuse to run as root: run them as the postgres user (created by the
  # package), or a dedicated system user.
  if [ "$(id -u)" = 0 ]; then
    owner=postgres
    if ! id "$owner" >/dev/null 2>&1; then
      owner=keyward-pg
      id "$owner" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$owner"
    fi
    as_owner=(runuser -u "$owner" --)
  fi

  base="$PWD/target/test-postgres"
  mkdir -p "$base"
  [ ${#as_owner[@]} -eq 0 ] || chown "$owner" "$base"
  if ! "${as_owner[@]}" test -w "$base" 2>/dev/null; then
    # The owner cannot reach the work tree (e.g. a private home directory): use /tmp instead.
    base="${TMPDIR:-/tmp}/keyward-test-postgres-$(printf '%s' "$PWD" | cksum | cut -d' ' -f1)"
    mkdir -p "$base"
    [ ${#as_owner[@]} -eq 0 ] || chown "$owner" "$base"
  fi
  data="$base/data" run="$base/run" log="$base/postgres.log"
  "${as_owner[@]}" mkdir -p "$run"

  if [ -f "$data/postmaster.pid" ] && [ -f "$base/port" ] \
    && _kw_pg_answers "postgres://postgres@127.0.0.1:$(cat "$base/port")/test"; then
    _kw_pg_use "postgres://postgres@127.0.0.1:$(cat "$base/port")/test" "private cluster in $base, already running"
    return 0
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    rm -rf "$data"
    _kw_pg_log "initdb $data"
    (cd "$base" && "${as_owner[@]}" "$bindir/initdb" -D "$data" -U postgres --auth=trust \
      --encoding=UTF8 --no-locale) >"$base/initdb.log" 2>&1 || { cat "$base/initdb.log" >&2; return 1; }
  fi
  port=$(_kw_pg_free_port) || { _kw_pg_log "no free port in 55432-55531"; return 1; }
  printf '%s\n' "$port" >"$base/port"
  _kw_pg_log "starting a private PostgreSQL on 127.0.0.1:$port (log: $log)"
  # (From $base: the owner may not be allowed into the current directory.)
  (cd "$base" && "${as_owner[@]}" "$bindir/pg_ctl" -D "$data" -l "$log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $run" start) >&2 \
    || { tail -n 20 "$log" >&2; return 1; }
  _kw_pg_wait_ready 127.0.0.1 "$port" || { _kw_pg_log "not ready after 30 s"; return 1; }
  if ! _kw_pg_answers "postgres://postgres@127.0.0.1:$port/test"; then
    PGCONNECT_TIMEOUT=5 psql "postgres://postgres@127.0.0.1:$port/postgres" -qc 'CREATE DATABASE test' >&2
  fi
  _kw_pg_use "postgres://postgres@127.0.0.1:$port/test" "private cluster in $base"

  # Stop it when the sourcing script exits (after any EXIT trap it already had).
  KEYWARD_TEST_POSTGRES_STOP=(env -C "$base" "${as_owner[@]}" "$bindir/pg_ctl" -D "$data" -m fast -w -t 30 stop)
  local previous
  previous=$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT\$/\\1/")
  # shellcheck disable=SC2064 # expand now: the previous trap's text
  trap "${previous:+$previous; }\"\${KEYWARD_TEST_POSTGRES_STOP[@]}\" >/dev/null 2>&1 || true" EXIT
}

_kw_pg_ensure() {
  local probe_port=${KEYWARD_TEST_POSTGRES_PORT_PROBE:-5432}
  if [ -n "${KEYWARD_TEST_POSTGRES_URL:-}" ]; then
    if _kw_pg_answers "$KEYWARD_TEST_POSTGRES_URL"; then
      _kw_pg_use "$KEYWARD_TEST_POSTGRES_URL" "given"
      return 0
    fi
    _kw_pg_log "KEYWARD_TEST_POSTGRES_URL is set but does not answer; looking for another server"
    unset KEYWARD_TEST_POSTGRES_URL
  fi
  _kw_pg_try_local "$probe_port" && return 0
  if _kw_pg_start_cluster "$probe_port" && _kw_pg_try_local "$probe_port"; then
    return 0
  fi
  _kw_pg_private_cluster
}

_kw_pg_ensure
