'use strict'
// postgres_changes bindings without a database: the join reply echoes the
// bindings with ids (so the client's positional matching succeeds) and a
// `system` error for the postgres_changes extension follows.

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

for (const vsn of ['2.0.0', '1.0.0']) {
  describe(`postgres_changes, vsn ${vsn}`, () => {
    it('bindings are echoed with ids: SUBSCRIBED, then a postgres_changes system error', async () => {
      const topic = h.uniqueTopic('pg')
      const a = h.makeClient(server, { vsn, name: `A(${vsn})` })
      const system = []
      const ch = a.supabase
        .channel(topic)
        .on('postgres_changes', { event: '*', schema: 'public', table: 'messages' }, () => {})
        .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'users', filter: 'id=eq.1' }, () => {})
        .on('postgres_changes', { event: 'UPDATE', schema: 'private' }, () => {})
        .on('system', {}, (p) => system.push(p))
      const rec = await h.subscribeOk(ch, [a])

      // The client matched every binding and stored the server's ids.
      const ids = ch.bindings.postgres_changes.map((b) => b.id)
      assert.equal(ids.length, 3)
      for (const id of ids) assert.ok(Number.isInteger(id) && id !== 0, `non-zero integer id, got ${id}`)

      // Join reply: verbatim echo in order, plus id.
      const reply = h
        .receivedFrames(a)
        .filter((f) => !f.binary)
        .map((f) => f.msg)
        .map((m) => (Array.isArray(m) ? { topic: m[2], event: m[3], payload: m[4] } : m))
        .find((m) => m.topic === `realtime:${topic}` && m.event === 'phx_reply')
      assert.equal(reply.payload.status, 'ok')
      assert.deepEqual(reply.payload.response.postgres_changes, [
        { event: '*', schema: 'public', table: 'messages', id: ids[0] },
        { event: 'INSERT', schema: 'public', table: 'users', filter: 'id=eq.1', id: ids[1] },
        { event: 'UPDATE', schema: 'private', id: ids[2] },
      ])

      await h.waitFor(() => system.some((p) => p.extension === 'postgres_changes'), 'postgres_changes system message', {
        clients: [a],
      })
      const pg = system.find((p) => p.extension === 'postgres_changes')
      assert.equal(pg.status, 'error')
      assert.equal(pg.channel, topic)
      assert.equal(typeof pg.message, 'string')
      assert.ok(pg.message.length > 0)
      // A postgres_changes error does not close the channel.
      await h.sleep(200)
      assert.equal(ch.state, 'joined')
      assert.deepEqual(rec.statuses.map((s) => s.status), ['SUBSCRIBED'])
    })

    it('a channel without bindings gets an exact join reply with postgres_changes: []', async () => {
      const topic = h.uniqueTopic('pg-none')
      const a = h.makeClient(server, { vsn, name: `A(${vsn})` })
      const ch = a.supabase.channel(topic).on('broadcast', { event: 'x' }, () => {})
      await h.subscribeOk(ch, [a])
      const reply = h
        .receivedFrames(a)
        .filter((f) => !f.binary)
        .map((f) => f.msg)
        .map((m) => (Array.isArray(m) ? { topic: m[2], event: m[3], payload: m[4] } : m))
        .find((m) => m.topic === `realtime:${topic}` && m.event === 'phx_reply')
      assert.deepEqual(reply.payload, { status: 'ok', response: { postgres_changes: [] } })
    })
  })
}
