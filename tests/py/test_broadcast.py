"""Broadcast between two Python clients (vsn 1.0.0)."""

from realtime.types import RealtimeAcknowledgementStatus

from conftest import SubscribeRecorder, unique_topic, wait_for


def config(self_: bool = False, ack: bool = False, key: str = "") -> dict:
    return {
        "config": {
            "broadcast": {"self": self_, "ack": ack},
            "presence": {"key": key, "enabled": False},
            "private": False,
        }
    }


async def joined(clients, topic: str, self_: bool = False, ack: bool = False):
    client = await clients()
    received: list[dict] = []
    ch = client.channel(topic, config(self_, ack))
    ch.on_broadcast("*", lambda p: received.append(p))
    rec = SubscribeRecorder()
    await ch.subscribe(rec)
    assert rec.statuses() == ["SUBSCRIBED"], rec.calls
    return ch, received


async def test_broadcast_self_false(clients):
    topic = unique_topic("py-bc")
    a, a_got = await joined(clients, topic, self_=False)
    b, b_got = await joined(clients, topic, self_=False)

    await a.send_broadcast("from-a", {"n": 1, "text": "héllo"})
    await wait_for(lambda: len(b_got) >= 1, "B receives A's broadcast")
    assert b_got[0]["event"] == "from-a"
    assert b_got[0]["payload"] == {"n": 1, "text": "héllo"}

    # B answers; A must see exactly B's message (its own would have come first).
    await b.send_broadcast("from-b", {"n": 2})
    await wait_for(lambda: len(a_got) >= 1, "A receives B's broadcast")
    assert [(m["event"], m["payload"]) for m in a_got] == [("from-b", {"n": 2})]
    assert [m["event"] for m in b_got] == ["from-a"]


async def test_broadcast_self_true_and_ack(clients):
    topic = unique_topic("py-bc-self")
    a, a_got = await joined(clients, topic, self_=True, ack=True)
    b, b_got = await joined(clients, topic)

    # send_broadcast is fire-and-forget; push() exposes the server's ack.
    acks: list[dict] = []
    push = await a.push(
        "broadcast", {"type": "broadcast", "event": "echo", "payload": {"list": [1, 2, 3]}}
    )
    push.receive(RealtimeAcknowledgementStatus.Ok, lambda resp: acks.append({"ok": resp}))
    push.receive(RealtimeAcknowledgementStatus.Error, lambda resp: acks.append({"error": resp}))
    push.receive(RealtimeAcknowledgementStatus.Timeout, lambda: acks.append({"timeout": True}))
    await wait_for(lambda: acks, "ack reply for the broadcast")
    assert "ok" in acks[0], acks

    await wait_for(lambda: len(a_got) >= 1, "A receives its own broadcast (self: true)")
    await wait_for(lambda: len(b_got) >= 1, "B receives A's broadcast")
    for got in (a_got[0], b_got[0]):
        assert got["event"] == "echo"
        assert got["payload"] == {"list": [1, 2, 3]}
    assert len(a_got) == 1


async def test_broadcast_event_filter(clients):
    topic = unique_topic("py-bc-filter")
    client_a = await clients()
    a = client_a.channel(topic, config())
    await a.subscribe()
    client_b = await clients()
    only_wanted: list[dict] = []
    b = client_b.channel(topic, config())
    b.on_broadcast("wanted", lambda p: only_wanted.append(p))
    await b.subscribe()

    await a.send_broadcast("unwanted", {"x": 0})
    await a.send_broadcast("wanted", {"x": 1})
    await wait_for(lambda: only_wanted, "B receives the 'wanted' broadcast")
    assert [m["payload"] for m in only_wanted] == [{"x": 1}]
