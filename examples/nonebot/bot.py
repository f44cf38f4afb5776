"""A NoneBot2 bot, unmodified OneBot v11 code, driving WeChat through waas.

Run it (waas connects to it over a reverse WebSocket; see README.md here):

    pip install -r requirements.txt
    ONEBOT_ACCESS_TOKEN=... python3 bot.py

Every setting is NoneBot's own and comes from `.env` or the environment: HOST, PORT,
ONEBOT_ACCESS_TOKEN, ONEBOT_SECRET (HTTP mode), ONEBOT_WS_URLS (forward WebSocket),
ONEBOT_API_ROOTS (HTTP mode), COMMAND_START.
"""

from pathlib import Path

import nonebot
from nonebot.adapters.onebot.v11 import Adapter as OneBotV11Adapter

nonebot.init()
nonebot.get_driver().register_adapter(OneBotV11Adapter)
nonebot.load_plugins(str(Path(__file__).parent / "plugins"))

if __name__ == "__main__":
    nonebot.run()
