# Helpers shared by scripts/services/*.sh. Sourced, not run.
# Every service listens on loopback only, keeps its data under $KEYFOB_RUN_DIR,
# and is stopped by scripts/test when it exits.

KEYFOB_RUN_DIR=${KEYFOB_RUN_DIR:-$(pwd)/target/services}
mkdir -p "$KEYFOB_RUN_DIR"

apt_updated=0
# ensure_pkg COMMAND PACKAGE...: installs the Debian packages when COMMAND is
# missing: as root directly, otherwise through sudo when it needs no password
# prompt. When neither works it says what is missing and how to install it,
# and fails: a test is never skipped for want of its server.
ensure_pkg() {
  local cmd=$1; shift
  if command -v "$cmd" >/dev/null 2>&1 || [ -x "$cmd" ]; then return 0; fi
  local as=()
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      as=(sudo -n)
    else
      echo "missing: $cmd (Debian package: $*). Install it once with" >&2
      echo "  sudo apt-get install --no-install-recommends $*" >&2
      echo "and run scripts/test again (it installs only what is missing, as root or with password-less sudo)." >&2
      return 1
    fi
  fi
  echo "installing $* (for $cmd)"
  if [ "$apt_updated" = 0 ]; then
    "${as[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  "${as[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# wait_for SECONDS COMMAND...: retries COMMAND until it succeeds or time runs out.
wait_for() {
  local secs=$1; shift
  local i
  for ((i = 0; i < secs * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "timed out after ${secs}s waiting for: $*" >&2
  return 1
}

# free_port: a TCP port nobody listens on now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
