#!/usr/bin/env python3
"""Send a WeChat message through waas from Python, signed with Standard Webhooks.

    pip install requests standardwebhooks
    WAAS_SIGNING_SECRET=whsec_... python3 examples/send.py --to-name Bob "hello from Python"

The secret is one of waas's `auth.signing_secrets`. The webhook-id doubles as the
idempotency key: sending the same request again (a retry after a timeout) answers the
first result and sends nothing twice.
"""
import argparse
import json
import os
import uuid
from datetime import datetime, timezone

import requests
from standardwebhooks.webhooks import Webhook

parser = argparse.ArgumentParser()
parser.add_argument("text")
parser.add_argument("--url", default="http://127.0.0.1:3010")
group = parser.add_mutually_exclusive_group(required=True)
group.add_argument("--to-name", help="a contact's name")
group.add_argument("--to-topic", help="a room's topic")
args = parser.parse_args()

to = {"contact_name": args.to_name} if args.to_name else {"room_topic": args.to_topic}
body = json.dumps({"to": to, "text": args.text})
msg_id = f"msg_{uuid.uuid4().hex}"
now = datetime.now(tz=timezone.utc)
secret = os.environ.get("WAAS_SIGNING_SECRET")
if not secret:
    parser.exit(
        2,
        "WAAS_SIGNING_SECRET is not set: export it as one of waas's auth.signing_secrets "
        "(a whsec_… value; `waas secret` makes one, and waas must have it in [auth])\n",
    )
signature = Webhook(secret).sign(msg_id, now, body)

response = requests.post(
    f"{args.url}/v1/messages?wait=10s",
    data=body,
    headers={
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    },
    timeout=30,
)
print(response.status_code, response.text)
response.raise_for_status()
