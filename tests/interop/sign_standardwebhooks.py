"""Signs a request body with the official `standardwebhooks` package.

Reads {"secret", "id", "body"} on stdin; prints the webhook-timestamp and
webhook-signature headers as JSON. Used by tests/messages.rs.
"""
import json
import sys
from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook

req = json.load(sys.stdin)
now = datetime.now(tz=timezone.utc)
signature = Webhook(req["secret"]).sign(req["id"], now, req["body"])
print(json.dumps({"webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature}))
