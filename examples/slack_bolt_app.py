"""An ordinary Slack Bolt app, unmodified, answering WeChat through waas.

Two settings point it at waas instead of Slack:
  - its Web API base URL: SLACK_API_URL (waas's /slack/api/), passed to WebClient;
  - where events are sent: the `url` of the waas webhook with `format = "slack"`
    (this app listens on http://127.0.0.1:$PORT/slack/events).

    pip install slack_bolt
    SLACK_BOT_TOKEN=xoxb-… SLACK_SIGNING_SECRET=… python3 examples/slack_bolt_app.py

The token and secret are the ones in the waas webhook (`bot_token`, `secret`).
"""

import os
import re

from slack_bolt import App
from slack_sdk import WebClient

token = os.environ["SLACK_BOT_TOKEN"]
app = App(
    signing_secret=os.environ["SLACK_SIGNING_SECRET"],
    client=WebClient(
        token=token,
        base_url=os.environ.get("SLACK_API_URL", "http://127.0.0.1:3010/slack/api/"),
    ),
)


@app.message("hello")
def hello(message, say):
    say(f"Hi <@{message['user']}>!")


@app.message(re.compile(r"^weather (\w+)"))
def weather(context, say):
    say(f"Sunny in {context['matches'][0]}")


@app.message("whoami")
def whoami(client, say):
    me = client.auth_test()
    say(f"I am {me['user']} ({me['user_id']}) on {me['team']}")


@app.event("app_mention")
def mentioned(event, client, say):
    who = client.users_info(user=event["user"])["user"]["real_name"]
    where = client.conversations_info(channel=event["channel"])["channel"]["name"]
    say(f"<@{event['user']}> {who}, you called me in {where}")


if __name__ == "__main__":
    app.start(port=int(os.environ.get("PORT", "3000")))
