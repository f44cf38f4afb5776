"""Writes every message the bot receives to BOT_JOURNAL (one JSON line each), when
that variable is set: how waas's tests see what reached the bot, and in what order."""

import json
import os

from nonebot.message import event_preprocessor
from nonebot.adapters.onebot.v11 import MessageEvent

JOURNAL = os.environ.get("BOT_JOURNAL")


@event_preprocessor
async def journal(event: MessageEvent):
    if not JOURNAL:
        return
    line = {
        "message_id": event.message_id,
        "user_id": event.user_id,
        "group_id": getattr(event, "group_id", None),
        "text": event.get_plaintext(),
        "to_me": event.to_me,
    }
    with open(JOURNAL, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, ensure_ascii=False) + "\n")
