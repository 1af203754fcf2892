# PostgreSQL for the tests: one throwaway cluster on a free loopback port.
# Exports KEYFOB_TEST_POSTGRES_URL.

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

start_postgres() {
  if [ -z "$(pg_bin)" ]; then ensure_pkg /nonexistent/postgres postgresql; fi
  local bin; bin=$(pg_bin)
  local dir="$KEYFOB_RUN_DIR/postgres"
  rm -rf "$dir"; mkdir -p "$dir"
  # PostgreSQL refuses to run as root: run it as the `postgres` user the package creates.
  local as=()
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; as=(runuser -u postgres --); fi
  "${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync >"$dir/initdb.log" 2>&1
  PG_PORT=$(free_port)
  "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$dir -c fsync=off -c max_connections=300" \
    start >/dev/null
  export KEYFOB_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  PG_DIR=$dir
  echo "postgres on 127.0.0.1:$PG_PORT"
}

stop_postgres() {
  [ -n "${PG_DIR:-}" ] || return 0
  local as=()
  [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
  "${as[@]}" "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
}
