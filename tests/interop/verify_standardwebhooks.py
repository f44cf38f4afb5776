"""Verifies webhook deliveries with the official `standardwebhooks` package.

Reads a JSON list of {"secret", "headers", "body"} on stdin and exits non-zero, naming
the failure, unless every one verifies. Used by tests/signatures.rs.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook

cases = json.load(sys.stdin)
for i, case in enumerate(cases):
    payload = Webhook(case["secret"]).verify(case["body"], case["headers"])
    if payload != json.loads(case["body"]):
        sys.exit(f"case {i}: verified payload differs from the body")
print(f"verified {len(cases)} deliveries with standardwebhooks")
