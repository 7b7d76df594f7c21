"""Helpers shared by the queue benchmarks (queue_study.py, queue_targets.py, http_cpu.py): one
in-process `deltamoe loadgen` run, the stall probe, and a `deltamoe serve` on a free port."""
import json
import os
import subprocess
import sys
import tempfile
import time

IMAGES = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"


def loadgen(binary, extra, model, workers, images_idx=IMAGES, timeout=300):
    """One `deltamoe loadgen --json` run (add --in-process or --url to `extra`); its JSON. A
    failed run is logged and retried once (the study saw one unexplained failure)."""
    cmd = [binary, "loadgen", "--json", "--threads", str(workers), "--max-inflight", "4096", "--model", model] + extra
    if images_idx and os.path.exists(images_idx):
        cmd += ["--images-idx", images_idx]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        print(f"RETRY after rc {out.returncode}: {' '.join(cmd)}: {out.stderr.strip()}", file=sys.stderr)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {out.returncode}): {out.stderr.strip()}")
    return json.loads(out.stdout)


def stall_probe(binary, seconds=3):
    """The machine's stall floor: `deltamoe loadgen --stall-probe` on 2 threads; its JSON."""
    out = subprocess.run([binary, "loadgen", "--stall-probe", "--threads", "2", "--duration", str(seconds), "--json"],
                         capture_output=True, text=True, timeout=60 + seconds, check=True)
    return json.loads(out.stdout)


def start_server(binary, serve_args):
    """Starts `deltamoe serve --port 0 ... serve_args` and waits until it listens. Returns
    (process, url, log path). Exits with a message if the server dies or never listens."""
    tmp = tempfile.mkdtemp()
    port_file, log = os.path.join(tmp, "port"), os.path.join(tmp, "server.log")
    proc = subprocess.Popen([binary, "serve", "--port", "0", "--port-file", port_file] + serve_args,
                            stderr=open(log, "w"))
    for _ in range(300):
        if os.path.exists(port_file) and open(port_file).read().strip():
            return proc, f"http://127.0.0.1:{open(port_file).read().strip()}", log
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
    sys.exit(f"the server did not start (exit {proc.returncode}); see {log}")
