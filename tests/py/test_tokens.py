"""Channel token expiry with the Python client."""

import json
import re

from conftest import SubscribeRecorder, make_token, unique_topic, wait_for

EXPIRED = re.compile(r"^Token has expired \d+ seconds ago$")


async def test_token_expiry_system_error_then_closed(clients):
    topic = unique_topic("py-expiry")
    # The Python client uses its token both as apikey and as access_token.
    client = await clients(make_token(ttl_s=3))
    ch = client.channel(topic)
    rec = SubscribeRecorder()
    await ch.subscribe(rec)
    assert rec.statuses() == ["SUBSCRIBED"], rec.calls

    # Python reports a `system` error as CHANNEL_ERROR with the JSON payload,
    # and the following phx_close as CLOSED.
    await wait_for(lambda: "CLOSED" in rec.statuses(), "channel CLOSED after token expiry", timeout=20)
    errors = [err for status, err in rec.calls if status == "CHANNEL_ERROR"]
    assert len(errors) == 1, rec.calls
    payload = json.loads(errors[0])
    assert payload["status"] == "error"
    assert payload["extension"] == "system"
    assert payload["channel"] == topic
    assert EXPIRED.match(payload["message"]), payload
    assert rec.statuses() == ["SUBSCRIBED", "CHANNEL_ERROR", "CLOSED"]
    assert client.is_connected


async def test_join_with_expired_token_is_refused(clients):
    topic = unique_topic("py-join-expired")
    client = await clients()
    await client.set_auth(make_token(ttl_s=-60))
    ch = client.channel(topic)
    rec = SubscribeRecorder()
    await ch.subscribe(rec)
    assert rec.calls and rec.calls[0][0] == "CHANNEL_ERROR", rec.calls
    reason = json.loads(rec.calls[0][1])["reason"]
    assert re.match(r"^InvalidJWTToken: Token has expired \d+ seconds ago$", reason), reason
    await client.remove_channel(ch)
