"""Presence sync/join/leave between two Python clients."""

from conftest import SubscribeRecorder, unique_topic, wait_for


async def presence_channel(clients, topic: str, key: str):
    client = await clients()
    ev: dict = {"syncs": 0, "joins": [], "leaves": []}

    def on_sync() -> None:
        ev["syncs"] += 1

    ch = client.channel(
        topic,
        {
            "config": {
                "broadcast": {"ack": False, "self": False},
                "presence": {"key": key, "enabled": True},
                "private": False,
            }
        },
    )
    ch.on_presence_sync(on_sync)
    ch.on_presence_join(lambda k, cur, new: ev["joins"].append((k, new)))
    ch.on_presence_leave(lambda k, cur, left: ev["leaves"].append((k, left)))
    rec = SubscribeRecorder()
    await ch.subscribe(rec)
    assert rec.statuses() == ["SUBSCRIBED"], rec.calls
    return client, ch, ev


async def test_presence_sync_join_leave(clients):
    topic = unique_topic("py-presence")
    ca, alice, a_ev = await presence_channel(clients, topic, "alice")
    cb, bob, b_ev = await presence_channel(clients, topic, "bob")

    await wait_for(lambda: a_ev["syncs"] > 0 and b_ev["syncs"] > 0, "initial presence_state sync")

    await alice.track({"name": "Alice"})
    await bob.track({"name": "Bob"})
    for ch, who in ((alice, "alice"), (bob, "bob")):
        await wait_for(
            lambda ch=ch: sorted(ch.presence_state().keys()) == ["alice", "bob"],
            f"{who} sees both keys",
        )

    state = alice.presence_state()
    assert len(state["alice"]) == 1 and len(state["bob"]) == 1
    assert state["alice"][0]["name"] == "Alice"
    assert state["bob"][0]["name"] == "Bob"
    for meta in (state["alice"][0], state["bob"][0]):
        assert isinstance(meta["presence_ref"], str) and meta["presence_ref"]
        assert "phx_ref" not in meta
    bob_ref = state["bob"][0]["presence_ref"]

    joins_seen_by_alice = {k: new for k, new in a_ev["joins"]}
    assert "bob" in joins_seen_by_alice, a_ev["joins"]
    assert joins_seen_by_alice["bob"][0]["name"] == "Bob"
    assert "alice" in {k for k, _ in b_ev["joins"]}

    await bob.untrack()
    await wait_for(lambda: any(k == "bob" for k, _ in a_ev["leaves"]), "alice sees bob leave (untrack)")
    left = next(left for k, left in a_ev["leaves"] if k == "bob")
    assert left[0]["presence_ref"] == bob_ref
    await wait_for(lambda: list(alice.presence_state().keys()) == ["alice"], "alice state has only alice")

    # Track again, then close bob's socket: alice sees the leave.
    await bob.track({"name": "Bob again"})
    await wait_for(
        lambda: alice.presence_state().get("bob", [{}])[0].get("name") == "Bob again",
        "alice sees bob re-tracked",
    )
    n_leaves = len(a_ev["leaves"])
    await cb.close()
    await wait_for(
        lambda: any(k == "bob" for k, _ in a_ev["leaves"][n_leaves:]), "alice sees bob leave (disconnect)"
    )
    assert list(alice.presence_state().keys()) == ["alice"]
