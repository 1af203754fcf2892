# Redis for the tests: one standalone server and a three-master Redis Cluster,
# loopback only, no persistence, data under $KEYFOB_RUN_DIR/redis. Sourced.
# Exports KEYFOB_TEST_REDIS_URL and KEYFOB_TEST_REDIS_CLUSTER_URL (a seed node).

_redis_dir() { echo "$KEYFOB_RUN_DIR/redis"; }

# _redis_start NAME PORT [EXTRA ARGS...]: one redis-server, daemonized.
_redis_start() {
  local name=$1 port=$2; shift 2
  local dir
  dir="$(_redis_dir)/$name"
  rm -rf "$dir" && mkdir -p "$dir"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" \
    --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
    --save '' --appendonly no --protected-mode yes "$@"
  echo "$port" >>"$(_redis_dir)/ports"
  wait_for 10 redis-cli -p "$port" ping
}

# _redis_cluster_port: a free port whose cluster bus port (port + 10000) is free too.
_redis_cluster_port() {
  python3 -c '
import socket
for _ in range(200):
    a = socket.socket(); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    if p <= 55535:
        b = socket.socket()
        try:
            b.bind(("127.0.0.1", p + 10000)); b.close(); a.close(); print(p); break
        except OSError:
            b.close()
    a.close()
else:
    raise SystemExit("no free port pair for a Redis Cluster node")
'
}

start_redis() {
  ensure_pkg redis-server redis-server
  ensure_pkg redis-cli redis-tools
  stop_redis
  mkdir -p "$(_redis_dir)"

  local port
  port=$(free_port)
  _redis_start standalone "$port"
  export KEYFOB_TEST_REDIS_URL="redis://127.0.0.1:$port"

  local nodes=() i
  for i in 1 2 3; do
    port=$(_redis_cluster_port)
    _redis_start "cluster-$i" "$port" --cluster-enabled yes \
      --cluster-config-file "$(_redis_dir)/cluster-$i/nodes.conf" \
      --cluster-node-timeout 5000
    nodes+=("127.0.0.1:$port")
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$(_redis_dir)/cluster-create.log" 2>&1
  # Every slot must be served before the tests start.
  wait_for 20 sh -c "redis-cli -p ${nodes[0]##*:} cluster info | grep -q 'cluster_state:ok'"
  export KEYFOB_TEST_REDIS_CLUSTER_URL="redis+cluster://${nodes[0]}"
  echo "redis: $KEYFOB_TEST_REDIS_URL, cluster: $KEYFOB_TEST_REDIS_CLUSTER_URL"
}

stop_redis() {
  local ports port
  ports="$(_redis_dir)/ports"
  [ -f "$ports" ] || return 0
  while read -r port; do
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done <"$ports"
  rm -f "$ports"
}
