"""postgres_changes bindings with the Python client: the join reply must echo
the bindings in order with integer ids (Python validates the reply strictly),
and without a database a `system` error for the extension follows."""

import json

from conftest import SubscribeRecorder, unique_topic, wait_for


async def test_postgres_changes_binding_ids_and_system_error(clients):
    client = await clients()
    ch = client.channel(unique_topic("py-pg"))
    ch.on_postgres_changes("*", lambda p: None, table="messages", schema="public")
    ch.on_postgres_changes("INSERT", lambda p: None, table="users", filter="id=eq.1")
    rec = SubscribeRecorder()
    await ch.subscribe(rec)
    assert rec.calls and rec.calls[0][0] == "SUBSCRIBED", rec.calls

    ids = [cb.id for cb in ch.postgres_changes_callbacks]
    assert len(ids) == 2
    assert all(isinstance(i, int) and i != 0 for i in ids), ids

    # Python reports a `system` error as CHANNEL_ERROR carrying the payload.
    await wait_for(lambda: len(rec.calls) >= 2, "postgres_changes system error")
    status, err = rec.calls[1]
    assert status == "CHANNEL_ERROR"
    payload = json.loads(err)
    assert payload["extension"] == "postgres_changes"
    assert payload["status"] == "error"
    assert payload["channel"] == ch.topic.removeprefix("realtime:")
