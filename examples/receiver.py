#!/usr/bin/env python3
"""A tiny webhook receiver for trying waas by hand (standard library only).

    python3 examples/receiver.py                 # answers 200, prints each event
    python3 examples/receiver.py --status 500    # answers 500: watch waas retry
    python3 examples/receiver.py --reply pong    # answers {"reply": "pong"} to messages
"""
import argparse
import json
from http.server import BaseHTTPRequestHandler, HTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8000)
parser.add_argument("--status", type=int, default=200)
parser.add_argument("--reply", default=None)
args = parser.parse_args()


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        event = json.loads(body)
        print(f"{self.headers['webhook-id']} {event['type']}: {json.dumps(event['data'], ensure_ascii=False)}", flush=True)
        answer = b""
        if args.reply and event["type"] == "message" and 200 <= args.status < 300:
            answer = json.dumps({"reply": args.reply}).encode()
        self.send_response(args.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_):
        pass


HTTPServer((args.host, args.port), Hook).serve_forever()
