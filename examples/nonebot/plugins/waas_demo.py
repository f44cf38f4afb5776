"""What a typical NoneBot plugin does, on WeChat: commands in private and group
chats, replies that @-mention, and the OneBot actions bots call most."""

from nonebot import on_command, on_message, on_request, on_notice
from nonebot.adapters.onebot.v11 import (
    Bot,
    FriendRequestEvent,
    GroupIncreaseNoticeEvent,
    GroupMessageEvent,
    MessageEvent,
    MessageSegment,
    PrivateMessageEvent,
)
from nonebot.params import CommandArg
from nonebot.adapters.onebot.v11 import Message
from nonebot.rule import to_me

ping = on_command("ping")


@ping.handle()
async def _(args: Message = CommandArg()):
    # "ping 3" answers "pong 3": the reply says which message it answers.
    rest = args.extract_plain_text().strip()
    await ping.finish(f"pong {rest}".strip())


friends = on_command("friends")


@friends.handle()
async def _(bot: Bot):
    names = sorted(f["nickname"] for f in await bot.get_friend_list())
    await friends.finish("friends: " + ", ".join(names))


whoami = on_command("whoami")


@whoami.handle()
async def _(bot: Bot, event: GroupMessageEvent):
    info = await bot.get_group_member_info(group_id=event.group_id, user_id=event.user_id)
    await whoami.finish(MessageSegment.at(event.user_id) + f" you are {info['nickname']}")


dm = on_command("dm")


@dm.handle()
async def _(bot: Bot, event: MessageEvent):
    await bot.send_private_msg(user_id=event.user_id, message="a private hello")


announce = on_command("announce")


@announce.handle()
async def _(bot: Bot, event: GroupMessageEvent, args: Message = CommandArg()):
    await bot.send_group_msg(group_id=event.group_id, message=f"announcement: {args.extract_plain_text().strip()}")


# A group message that @-mentions the bot (and matched no command above).
mentioned = on_message(rule=to_me(), priority=20, block=True)


@mentioned.handle()
async def _(event: MessageEvent):
    if isinstance(event, PrivateMessageEvent):
        return
    await mentioned.finish(
        MessageSegment.at(event.user_id) + f" you said: {event.get_plaintext().strip()}"
    )


friendship = on_request()


@friendship.handle()
async def _(bot: Bot, event: FriendRequestEvent):
    await event.approve(bot)


welcome = on_notice()


@welcome.handle()
async def _(bot: Bot, event: GroupIncreaseNoticeEvent):
    if event.user_id != event.self_id:
        await bot.send_group_msg(group_id=event.group_id, message=MessageSegment.at(event.user_id) + " welcome!")
