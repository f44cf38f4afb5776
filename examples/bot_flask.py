#!/usr/bin/env python3
"""A complete WeChat bot as a Flask app: waas POSTs each event here, signed; the bot
verifies the signature and answers in the response, and waas sends the answer into
the same chat.

    pip install flask standardwebhooks
    WAAS_WEBHOOK_SECRET=whsec_... python3 examples/bot_flask.py --port 8000

Point a webhook at it (`url = "http://127.0.0.1:8000/hook"`, the same `secret`).
"""
import argparse
import os
import sys

from flask import Flask, jsonify, request
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

secret = os.environ.get("WAAS_WEBHOOK_SECRET")
if not secret:
    sys.exit("set WAAS_WEBHOOK_SECRET to the webhook's `secret` (a whsec_… value)")
hook = Webhook(secret)
app = Flask(__name__)


@app.post("/hook")
def handle():
    try:
        # The exact bytes waas signed: request.get_data(), not the parsed JSON.
        event = hook.verify(request.get_data(), dict(request.headers))
    except WebhookVerificationError:
        return jsonify(error="bad signature"), 401
    if event["type"] != "message":
        return "", 204
    text = event["data"]["text"].strip()
    if text == "ping":
        return jsonify(reply="pong")
    if text.startswith("echo "):
        return jsonify(reply=text[len("echo "):])
    return "", 204


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    app.run(host=args.host, port=args.port)
