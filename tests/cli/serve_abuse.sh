#!/usr/bin/env bash
# deltamoe serve against abusive clients, classifier and language-model server alike: 300 idle
# and 300 slow connections (half a request each; /healthz still answers), a
# 300 MB chunked body against a 1 MB limit (413 early, and the server's resident memory does
# not grow with it), a 1 MB request line (414), a 64 KB header (431), GET on a POST route (405
# with Allow). Prints the figures; the only bounds are generous (10 s, +100 MB).
set -euo pipefail
bin="$1"
src="$2"
source "$src/tests/cli/serve_lib.bash"  # sets $tmp (removed at exit) and $pid

"$bin" make-model --arch mixtral --preset tiny --vocab 400 --seed 3 --out "$tmp/lm" --quiet
for kind in classifier lm; do
if [ "$kind" = lm ]; then model_args=(--model "$tmp/lm"); route=/v1/completions; else route=/v1/classify; fi
start_server --max-body-bytes 1000000
python3 - "$port" "$pid" "$route" <<'EOF'
import re, socket, sys, time

port, pid, route = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()

def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)

def rss_mb():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    fail("no VmRSS")

def conn(timeout=30):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)

def send(s, data):  # the server may close before it has read everything: that is allowed
    try:
        s.sendall(data)
        return True
    except OSError:
        return False

def response(s):
    """(status, headers, body) of one response; status None if none arrived."""
    data = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
            head, sep, body = data.partition(b"\r\n\r\n")
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if sep and m and len(body) >= int(m.group(1)):
                break
    except OSError:
        pass
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    headers = dict((k.lower(), v.strip()) for k, _, v in
                   (line.decode().partition(":") for line in head.split(b"\r\n")[1:]))
    return (int(m.group(1)) if m else None), headers, body

def get(path, extra=b""):
    s = conn()
    send(s, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"Connection: close\r\n\r\n")
    r = response(s)
    s.close()
    return r

# 300 idle and 300 slow connections (a request cut in the middle of its body) hold no
# thread: /healthz answers.
idle = [conn() for _ in range(300)]
for _ in range(300):
    c = conn()
    send(c, b"POST " + route + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{\"pro")
    idle.append(c)
time.sleep(0.2)  # let the server take them all in
t0 = time.monotonic()
s = conn(10)
send(s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
status, _, body = response(s)
dt = time.monotonic() - t0
s.close()
print(f"{route.decode()} server, healthz with 300 idle + 300 slow connections open: "
      f"{status} in {dt * 1e3:.1f} ms")
if status != 200 or b'"status":"ok"' not in body:
    fail(f"healthz: {status} {body!r}")
status, _, body = get(b"/metrics")
m = re.search(rb"\ndeltamoe_http_connections_open (\d+)", body)
if status != 200 or not m or int(m.group(1)) < 600:
    fail(f"metrics do not show the 600 open connections: {m and m.group(0)!r}")
for c in idle:
    c.close()

# 300 MB chunked against --max-body-bytes 1000000: 413 as soon as the excess arrives; the
# server stops reading, so most of it is never sent, and its memory does not follow.
before = rss_mb()
total, piece = 300 << 20, 1 << 16
chunk = b"%x\r\n" % piece + b" " * piece + b"\r\n"
s = conn()
send(s, b"POST " + route + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")
sent = 0
while sent < total and send(s, chunk):
    sent += piece
status, headers, body = response(s)
s.close()
after = rss_mb()
print(f"chunked flood: {sent / 1e6:.1f} of {total / 1e6:.1f} MB sent, {status}; "
      f"server VmRSS {before:.1f} MB before, {after:.1f} MB after")
if status != 413 or b"body larger than 1000000 bytes" not in body:
    fail(f"chunked flood: {status} {body!r}")
if sent >= total:
    fail("the server read the whole flood")
if after - before > 100:
    fail(f"server memory grew by {after - before:.1f} MB")

# A 1 MB request line: 414 (libmicrohttpd's own, its buffer overflows first).
s = conn()
send(s, b"GET /healthz?x=" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
status, _, _ = response(s)
s.close()
print(f"1 MB request line: {status}")
if status != 414:
    fail(f"1 MB request line: {status}")

# A 64 KB header: 431 with a JSON reason (over the 32 KiB limit).
status, _, body = get(b"/healthz", b"X-Big: " + b"b" * (64 << 10) + b"\r\n")
print(f"64 KB header: {status}")
if status != 431 or not body.startswith(b'{"error":'):
    fail(f"64 KB header: {status} {body!r}")

# GET on the POST route: 405 with Allow.
status, headers, body = get(route)
if status != 405 or headers.get("allow") != "POST" or not body.startswith(b'{"error":'):
    fail(f"GET {route!r}: {status} {headers} {body!r}")

# Still serving.
status, _, _ = get(b"/healthz")
if status != 200:
    fail(f"healthz afterwards: {status}")
EOF
rc=0; stop_server || rc=$?
pid=""
[ "$rc" = 0 ] || { echo "server exit $rc: $(cat "$tmp/server.log")"; exit 1; }
done
echo "serve abuse: ok"
