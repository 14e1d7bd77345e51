"""Private channels end to end with the Python realtime client (2.34.1, vsn
1.0.0) on the Busymate example (examples/busymate/schema.sql + seed.sql):
RLS read authorization at join, write authorization on send, the database
firehose fed by realtime.broadcast_changes, http_send, and replay.

Absence is always checked against a barrier: a later message the same channel
may receive (one channel's frames arrive in order)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from realtime import AsyncRealtimeClient
from realtime.exceptions import RealtimeHTTPError

from conftest import REPO_ROOT, Server, SubscribeRecorder, make_token, open_clients, wait_for
from pgcluster import Cluster, slot_name

EXAMPLE = REPO_ROOT / "examples" / "busymate"
ACME = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
BETA = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
ADA = "11111111-1111-4111-8111-111111111111"
BERT = "22222222-2222-4222-8222-222222222222"
CLEO = "33333333-3333-4333-8333-333333333333"
KIOSK = "dddddddd-0000-4000-8000-00000000000a"


@pytest.fixture(scope="module")
def busymate():
    """One cluster with the Busymate example and one realtide for the module."""
    cluster = Cluster()
    server = None
    try:
        slot = slot_name()
        server = Server({"DB_URL": cluster.db_url, "SLOT_NAME": slot})
        cluster.wait_for_slot(slot)
        # realtide installed the realtime schema at start; the example goes in afterwards.
        cluster.sql((EXAMPLE / "schema.sql").read_text())
        cluster.sql((EXAMPLE / "seed.sql").read_text())
        yield cluster, server
    finally:
        if server is not None:
            server.stop()
        cluster.stop()


@pytest.fixture
async def users(busymate):
    """Factory: a connected client whose token is the user's (used for joins and HTTP)."""
    async with open_clients(busymate[1]) as make:
        yield lambda sub: make(make_token(role="authenticated", sub=sub))


async def private_channel(client: AsyncRealtimeClient, topic: str, **config: Any):
    """Subscribes to a private channel; returns (channel, received broadcasts, first status)."""
    got: list[dict[str, Any]] = []
    ch = client.channel(topic, {"config": {"private": True, **config}})
    ch.on_broadcast("*", lambda p: got.append(p))
    rec = SubscribeRecorder()
    await ch.subscribe(rec)
    await wait_for(lambda: rec.calls, f"subscribe status of {topic}")
    return ch, got, rec.calls[0]


def unauthorized(topic: str) -> str:
    return f"Unauthorized: You do not have permissions to read from this Channel topic: {topic}"


async def test_firehose_reaches_members_only(busymate, users):
    db = busymate[0]
    ada = await users(ADA)
    bert = await users(BERT)
    _, ada_got, status = await private_channel(ada, f"ws:{ACME}")
    assert status[0] == "SUBSCRIBED", status
    _, _, status = await private_channel(bert, f"ws:{ACME}")
    assert status[0] == "CHANNEL_ERROR", status
    assert unauthorized(f"ws:{ACME}") in (status[1] or ""), status
    _, bert_got, status = await private_channel(bert, f"ws:{BETA}")
    assert status[0] == "SUBSCRIBED", status

    db.sql(f"insert into public.entries (workspace_id, device_id, body) values ('{ACME}', '{KIOSK}', '{{\"py\": 1}}')")
    db.sql(f"insert into public.entries (workspace_id, body) values ('{BETA}', '{{\"py\": 2}}')")
    await wait_for(lambda: ada_got, "Acme entry at Ada")
    change = ada_got[0]["payload"]
    assert ada_got[0]["event"] == "INSERT"
    assert (change["operation"], change["table"], change["schema"]) == ("INSERT", "entries", "public")
    assert change["record"]["body"] == {"py": 1} and change["old_record"] is None
    assert ada_got[0]["meta"]["id"] == change["id"]
    # Bert's barrier is his own workspace's entry.
    await wait_for(lambda: bert_got, "Beta entry at Bert")
    assert [m["payload"]["record"]["workspace_id"] for m in bert_got] == [BETA]


async def test_device_channel_owner_only(users):
    ada = await users(ADA)
    bert = await users(BERT)
    _, _, status = await private_channel(ada, f"device:{KIOSK}")
    assert status[0] == "SUBSCRIBED", status
    _, _, status = await private_channel(bert, f"device:{KIOSK}")
    assert status[0] == "CHANNEL_ERROR" and unauthorized(f"device:{KIOSK}") in (status[1] or ""), status


async def test_writes_need_the_write_policy(users):
    bert = await users(BERT)
    _, listen, status = await private_channel(bert, "settings:global")
    assert status[0] == "SUBSCRIBED", status
    ada = await users(ADA)
    cleo = await users(CLEO)
    ada_ch, _, _ = await private_channel(ada, "settings:global")
    cleo_ch, _, _ = await private_channel(cleo, "settings:global")
    await ada_ch.send_broadcast("theme", {"from": "ada"})
    await cleo_ch.send_broadcast("theme", {"from": "cleo"})
    await wait_for(lambda: listen, "cleo's message at Bert")
    assert [m["payload"]["from"] for m in listen] == ["cleo"]

    # http_send: allowed for the admin, 403 for Ada.
    await cleo_ch.http_send("http", {"from": "cleo-http"})
    with pytest.raises(RealtimeHTTPError) as denied:
        await ada_ch.http_send("http", {"from": "ada-http"})
    assert denied.value.status == 403 and "Unauthorized" in str(denied.value)
    await wait_for(lambda: len(listen) >= 2, "cleo's http_send at Bert")
    assert [m["payload"]["from"] for m in listen] == ["cleo", "cleo-http"]


async def test_replay(busymate, users):
    db = busymate[0]
    since = int(time.time() * 1000) - 1000
    watcher = await users(BERT)
    _, live, status = await private_channel(watcher, f"ws:{BETA}")
    assert status[0] == "SUBSCRIBED", status
    for n in (1, 2, 3):
        db.sql(f"insert into public.entries (workspace_id, body) values ('{BETA}', '{{\"replay\": {n}}}')")
    # Once the live subscriber has n=3, none of them can still arrive live at the next channel.
    await wait_for(lambda: any(m["payload"]["record"]["body"].get("replay") == 3 for m in live), "n=3 streamed")
    bert = await users(BERT)
    _, got, status = await private_channel(bert, f"ws:{BETA}", broadcast={"replay": {"since": since, "limit": 2}})
    assert status[0] == "SUBSCRIBED", status
    await wait_for(lambda: len(got) >= 2, "two replayed messages")
    assert [m["payload"]["record"]["body"]["replay"] for m in got] == [2, 3]
    assert all(m["meta"]["replayed"] is True and m["meta"]["id"] == m["payload"]["id"] for m in got)
