#!/usr/bin/env python3
"""Latency of a Slack Bolt app answering WeChat through waas: from the moment a
message is injected (POST /v1/mock/messages) to the moment the mock puppet sends the
app's answer (its `sent_at`), over N messages at a steady rate.

The same run first measures a baseline with the same shape and no Slack in it: a
standard webhook served by a plain Python HTTP server that answers with a reply in
the response (`{"reply": …}`), sent by waas the same way.

    cargo build --release
    python3 benches/slack_bolt_latency.py [--messages 500] [--rate 20]

Needs slack_bolt (pip install -r tests/interop/requirements.txt). Talks to 127.0.0.1
only; starts and stops everything it uses.
"""

import argparse
import datetime
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAAS = os.path.join(ROOT, "target", "release", "waas")
TOKEN = "bench-token-0123456789abcdef"
BOT_TOKEN = "xoxb-1234567890-bench-token"
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def call(base, method, path, body=None):
    req = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def start_waas(webhook):
    folder = tempfile.mkdtemp(prefix="waas-slack-bench-")
    port = free_port()
    config = os.path.join(folder, "waas.toml")
    with open(config, "w") as f:
        f.write(
            f'[server]\nlisten = "127.0.0.1:{port}"\n[storage]\nurl = "sqlite://{folder}/waas.db"\n'
            f'[auth]\ntokens = ["{TOKEN}"]\n[log]\nlevel = "warn"\n'
            '[send]\nmin_interval = "0s"\nburst = 1000\n'
            f"{webhook}\n"
        )
    proc = subprocess.Popen([WAAS, "--config", config], stderr=subprocess.DEVNULL)
    wait_port(port)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            urllib.request.urlopen(base + "/readyz", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    return proc, base


def millis(rfc3339):
    return datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000


def measure(base, n, rate):
    """Injects `weather c<i>` messages at `rate`/s; returns latencies in ms."""
    senders = ["alice", "bob", "carol"]
    injected = {}
    interval = 1.0 / rate
    start = time.time()
    for i in range(n):
        target = start + i * interval
        pause = target - time.time()
        if pause > 0:
            time.sleep(pause)
        injected[f"Sunny in c{i}"] = time.time() * 1000
        call(base, "POST", "/v1/mock/messages", {"from": senders[i % 3], "text": f"weather c{i}"})
    deadline = time.time() + 60
    latencies = {}
    while time.time() < deadline and len(latencies) < n:
        for m in call(base, "GET", "/v1/mock/sent")["messages"]:
            text = m.get("text")
            if text in injected and text not in latencies:
                latencies[text] = millis(m["sent_at"]) - injected[text]
        time.sleep(0.2)
    lost = n - len(latencies)
    return sorted(latencies.values()), lost


def pct(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def report(name, values, lost):
    print(
        f"{name:<34} p50 {pct(values, 50):7.1f} ms  p99 {pct(values, 99):7.1f} ms  "
        f"max {values[-1] if values else float('nan'):7.1f} ms  ({len(values)} answered, lost {lost})"
    )


class Replier(http.server.BaseHTTPRequestHandler):
    """The baseline bot: answers `weather X` with a reply in the response."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        text = body.get("data", {}).get("text", "")
        answer = {}
        if text.startswith("weather "):
            answer = {"reply": "Sunny in " + text.split(" ", 1)[1]}
        out = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--rate", type=float, default=20)
    args = parser.parse_args()
    if not os.path.exists(WAAS):
        sys.exit("build first: cargo build --release")
    print(f"{args.messages} messages at {args.rate:g}/s, inject → answer sent by the puppet")

    # Baseline: a plain webhook answering in its response.
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Replier)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    waas, base = start_waas(
        f'[[webhooks]]\nname = "plain"\nurl = "http://127.0.0.1:{port}/"\nsecret = "{SECRET}"\n'
        'events = ["message"]\nretry = ["100ms", "200ms", "500ms"]\n'
    )
    try:
        values, lost = measure(base, args.messages, args.rate)
        report("baseline (reply in the response)", values, lost)
    finally:
        waas.terminate()
        waas.wait()
        server.shutdown()

    # The Slack Bolt app.
    port = free_port()
    waas, base = start_waas(
        f'[[webhooks]]\nname = "bolt"\nurl = "http://127.0.0.1:{port}/slack/events"\nformat = "slack"\n'
        f'secret = "{SLACK_SECRET}"\nbot_token = "{BOT_TOKEN}"\nretry = ["100ms", "200ms", "500ms"]\n'
    )
    env = dict(os.environ, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_SIGNING_SECRET=SLACK_SECRET,
               SLACK_API_URL=base + "/slack/api/", PORT=str(port))
    bolt = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples", "slack_bolt_app.py")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        values, lost = measure(base, args.messages, args.rate)
        report("slack bolt (event → say())", values, lost)
    finally:
        bolt.terminate()
        bolt.wait()
        waas.terminate()
        waas.wait()


if __name__ == "__main__":
    main()
