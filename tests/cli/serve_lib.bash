# Shared helpers for the serve_*.sh CLI tests (sourced; named .bash so that CTest, which runs
# every tests/cli/*.sh, does not run it as a test).
# Sourcing it (after setting $bin and $src) creates the scratch directory $tmp and an EXIT trap
# that kills a still-running server ($pid) and removes $tmp.
tmp=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
# start_server ARGS...: starts `deltamoe serve` on a free loopback port, sets $pid and $port;
# the model is ${model_args[@]} (default --random-model).
model_args=(--random-model)
# http METHOD PATH [BODY]: raw HTTP/1.1 over bash's /dev/tcp; prints the full response.
start_server() {
  rm -f "$tmp/port"
  "$bin" serve ${model_args[@]+"${model_args[@]}"} --port 0 --port-file "$tmp/port" "$@" 2>"$tmp/server.log" &
  pid=$!
  for _ in $(seq 300); do [ -s "$tmp/port" ] && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  [ -s "$tmp/port" ] || { echo "server did not start: $(cat "$tmp/server.log")"; exit 1; }
  port=$(cat "$tmp/port")
}
http() {
  local method=$1 path=$2 body=${3:-}
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "$method" "$path" "${#body}" "$body" >&3
  timeout 60 cat <&3
  exec 3<&-
}
status_of() { head -n1 | awk '{print $2}'; }
stop_server() {  # SIGTERM, then wait (bounded) and return the server's exit status
  kill -TERM "$pid"
  for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; echo "server did not exit after SIGTERM"; exit 1; fi
  wait "$pid"
}
