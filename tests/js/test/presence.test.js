'use strict'
// Presence between two real supabase-js clients, for both serializers.

const { describe, it, before, after, afterEach } = require('node:test')
const assert = require('node:assert/strict')
const h = require('../lib/helpers')

let server
before(async () => {
  server = await h.startServer()
})
afterEach(async () => {
  await h.closeAllClients()
})
after(async () => {
  await h.closeAllClients()
  if (server) await server.stop()
})

async function presenceClient(vsn, topic, key) {
  const c = h.makeClient(server, { vsn, name: `${key}(${vsn})` })
  const ev = { syncs: 0, joins: [], leaves: [] }
  const ch = c.supabase
    .channel(topic, { config: { presence: { key } } })
    .on('presence', { event: 'sync' }, () => ev.syncs++)
    .on('presence', { event: 'join' }, (p) => ev.joins.push(p))
    .on('presence', { event: 'leave' }, (p) => ev.leaves.push(p))
  await h.subscribeOk(ch, [c])
  return { c, ch, ev, key }
}

const keysOf = (ch) => Object.keys(ch.presenceState()).sort()

for (const vsn of ['2.0.0', '1.0.0']) {
  describe(`presence, vsn ${vsn}`, () => {
    it('track, sync, join, untrack → leave, disconnect → leave', async () => {
      const topic = h.uniqueTopic('presence')
      const alice = await presenceClient(vsn, topic, 'alice')
      const bob = await presenceClient(vsn, topic, 'bob')
      const clients = [alice.c, bob.c]

      // presence_state arrives after every join: sync fires even while empty.
      await h.waitFor(() => alice.ev.syncs > 0 && bob.ev.syncs > 0, 'initial sync (presence_state) on both', { clients })
      assert.deepEqual(keysOf(alice.ch), [])

      assert.equal(await alice.ch.track({ name: 'Alice', online_at: '2026-01-01T00:00:00Z' }), 'ok')
      assert.equal(await bob.ch.track({ name: 'Bob' }), 'ok')

      for (const who of [alice, bob]) {
        await h.waitFor(
          () => keysOf(who.ch).join() === 'alice,bob',
          `${who.key} sees both keys in presenceState()`,
          { clients }
        )
      }
      const syncsAfterTrack = { alice: alice.ev.syncs, bob: bob.ev.syncs }
      assert.ok(syncsAfterTrack.alice >= 2 && syncsAfterTrack.bob >= 2, 'sync fired after the tracks')

      // presenceState() contents: one meta per key, presence_ref instead of phx_ref.
      const st = alice.ch.presenceState()
      assert.equal(st.alice.length, 1)
      assert.equal(st.bob.length, 1)
      assert.equal(st.alice[0].name, 'Alice')
      assert.equal(st.alice[0].online_at, '2026-01-01T00:00:00Z')
      assert.equal(st.bob[0].name, 'Bob')
      for (const meta of [st.alice[0], st.bob[0]]) {
        assert.equal(typeof meta.presence_ref, 'string')
        assert.ok(meta.presence_ref.length > 0)
        assert.equal('phx_ref' in meta, false)
      }
      assert.notEqual(st.alice[0].presence_ref, st.bob[0].presence_ref)
      const bobRef = st.bob[0].presence_ref
      // Both clients agree on the refs.
      assert.equal(bob.ch.presenceState().bob[0].presence_ref, bobRef)
      assert.equal(bob.ch.presenceState().alice[0].presence_ref, st.alice[0].presence_ref)

      // join events: each client sees the other's join and its own.
      for (const [who, other, otherName] of [
        [alice, 'bob', 'Bob'],
        [bob, 'alice', 'Alice'],
      ]) {
        const j = who.ev.joins.find((e) => e.key === other)
        assert.ok(j, `${who.key} got a join event for ${other}\n${h.dumpFrames(clients)}`)
        assert.equal(j.event, 'join')
        assert.equal(j.newPresences.length, 1)
        assert.equal(j.newPresences[0].name, otherName)
        assert.equal(typeof j.newPresences[0].presence_ref, 'string')
        assert.ok(who.ev.joins.find((e) => e.key === who.key), `${who.key} got its own join`)
      }

      // untrack → leave on the other side.
      assert.equal(await bob.ch.untrack(), 'ok')
      await h.waitFor(() => alice.ev.leaves.some((e) => e.key === 'bob'), 'alice sees bob leave after untrack', { clients })
      const leave = alice.ev.leaves.find((e) => e.key === 'bob')
      assert.equal(leave.event, 'leave')
      assert.equal(leave.leftPresences.length, 1)
      assert.equal(leave.leftPresences[0].presence_ref, bobRef)
      await h.waitFor(() => keysOf(alice.ch).join() === 'alice', 'alice state is only alice', { clients })
      await h.waitFor(() => keysOf(bob.ch).join() === 'alice', 'bob state is only alice', { clients })

      // track again, then drop bob's whole socket → leave seen by alice.
      assert.equal(await bob.ch.track({ name: 'Bob again' }), 'ok')
      await h.waitFor(
        () => alice.ch.presenceState().bob?.[0]?.name === 'Bob again',
        'alice sees bob re-tracked',
        { clients }
      )
      const leavesBefore = alice.ev.leaves.length
      await bob.c.realtime.disconnect()
      await h.waitFor(
        () => alice.ev.leaves.slice(leavesBefore).some((e) => e.key === 'bob'),
        'alice sees bob leave after bob disconnects',
        { clients }
      )
      const dropLeave = alice.ev.leaves.slice(leavesBefore).find((e) => e.key === 'bob')
      assert.equal(dropLeave.leftPresences[0].name, 'Bob again')
      assert.deepEqual(keysOf(alice.ch), ['alice'])
    })

    it('an empty presence key is replaced by a server-generated key', async () => {
      const topic = h.uniqueTopic('presence-nokey')
      const c = h.makeClient(server, { vsn, name: `nokey(${vsn})` })
      let syncs = 0
      const ch = c.supabase.channel(topic).on('presence', { event: 'sync' }, () => syncs++)
      await h.subscribeOk(ch, [c])
      assert.ok(c.log.frames.some((f) => f.dir === 'C→S' && f.text?.includes('"presence":{"key":"","enabled":true}')))
      assert.equal(await ch.track({ anon: true }), 'ok')
      await h.waitFor(() => Object.keys(ch.presenceState()).length === 1, 'own presence under a generated key', {
        clients: [c],
      })
      const [key] = Object.keys(ch.presenceState())
      assert.ok(key.length > 0, 'generated key is not empty')
      assert.equal(ch.presenceState()[key][0].anon, true)
      assert.ok(syncs >= 2)
    })

    it('a client joining later receives the current state in presence_state', async () => {
      const topic = h.uniqueTopic('presence-late')
      const alice = await presenceClient(vsn, topic, 'alice')
      assert.equal(await alice.ch.track({ status: 'here' }), 'ok')
      await h.waitFor(() => keysOf(alice.ch).join() === 'alice', 'alice sees herself', { clients: [alice.c] })

      const carol = await presenceClient(vsn, topic, 'carol')
      const clients = [alice.c, carol.c]
      await h.waitFor(() => keysOf(carol.ch).join() === 'alice', 'carol gets alice from presence_state', { clients })
      assert.equal(carol.ch.presenceState().alice[0].status, 'here')
      assert.ok(carol.ev.joins.some((e) => e.key === 'alice'), 'carol got a join event for alice')

      // The presence_state push is the first presence message after the join reply.
      const msgs = h
        .receivedFrames(carol.c)
        .filter((f) => !f.binary)
        .map((f) => (Array.isArray(f.msg) ? { topic: f.msg[2], event: f.msg[3], payload: f.msg[4] } : f.msg))
        .filter((m) => m.topic === `realtime:${topic}`)
      const idx = msgs.findIndex((m) => m.event === 'presence_state')
      assert.ok(idx > 0, `presence_state pushed\n${h.dumpFrames(clients)}`)
      assert.equal(msgs[0].event, 'phx_reply')
      assert.deepEqual(Object.keys(msgs[idx].payload), ['alice'])
      assert.equal(typeof msgs[idx].payload.alice.metas[0].phx_ref, 'string')
      assert.equal(msgs[idx].payload.alice.metas[0].status, 'here')
    })
  })
}
