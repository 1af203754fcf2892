# MariaDB for the tests: one throwaway server on a free loopback port, with a
# database and a password user. Exports KEYFOB_TEST_MYSQL_URL.

start_mariadb() {
  ensure_pkg mariadbd mariadb-server
  local dir="$KEYFOB_RUN_DIR/mariadb"
  rm -rf "$dir"; mkdir -p "$dir"
  mariadb-install-db --no-defaults --datadir="$dir/data" --user="$(id -un)" \
    --auth-root-authentication-method=socket >"$dir/install.log" 2>&1
  MARIADB_PORT=$(free_port)
  MARIADB_SOCK="$dir/mariadb.sock"
  mariadbd --no-defaults --datadir="$dir/data" --user="$(id -un)" \
    --bind-address=127.0.0.1 --port="$MARIADB_PORT" --socket="$MARIADB_SOCK" \
    --pid-file="$dir/mariadb.pid" --skip-log-bin --innodb-flush-log-at-trx-commit=2 \
    --max-connections=500 >"$dir/server.log" 2>&1 &
  MARIADB_PID=$!
  wait_for 60 mariadb --no-defaults --socket="$MARIADB_SOCK" -uroot -e 'SELECT 1'
  mariadb --no-defaults --socket="$MARIADB_SOCK" -uroot -e "
    CREATE DATABASE keyfob;
    CREATE USER 'keyfob'@'127.0.0.1' IDENTIFIED BY 'keyfob';
    GRANT ALL ON *.* TO 'keyfob'@'127.0.0.1';"
  export KEYFOB_TEST_MYSQL_URL="mysql://keyfob:keyfob@127.0.0.1:$MARIADB_PORT/keyfob"
  echo "mariadb $(mariadbd --version | awk '{print $3}') on 127.0.0.1:$MARIADB_PORT"
}

stop_mariadb() {
  [ -n "${MARIADB_PID:-}" ] || return 0
  kill "$MARIADB_PID" 2>/dev/null || true
  wait "$MARIADB_PID" 2>/dev/null || true
}
