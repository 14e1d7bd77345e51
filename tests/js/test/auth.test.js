'use strict'
// Tokens: refresh through setAuth, expiry of a channel token, join errors,
// private joins, for both serializers.

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

const EXPIRED_RE = /^Token has expired \d+ seconds ago$/

/** Joined channel with broadcast + system listeners on a settled client. */
async function joinedWithSystem(c, topic, config = {}) {
  await h.connectSettled(c, c.expectedToken ?? c.anonKey)
  const ev = { system: [], broadcasts: [] }
  const ch = c.supabase
    .channel(topic, { config })
    .on('system', {}, (p) => ev.system.push(p))
    .on('broadcast', { event: '*' }, (m) => ev.broadcasts.push(m))
  const rec = await h.subscribeOk(ch, [c])
  return { ch, ev, rec }
}

for (const vsn of ['2.0.0', '1.0.0']) {
  describe(`tokens, vsn ${vsn}`, () => {
    it('setAuth(validToken) on a joined channel keeps it joined and receiving', async () => {
      const topic = h.uniqueTopic('auth-refresh')
      const a = h.makeClient(server, { vsn, name: `A(${vsn})` })
      const b = h.makeClient(server, { vsn, name: `B(${vsn})` })
      const clients = [a, b]
      const ja = await joinedWithSystem(a, topic, { broadcast: { self: true, ack: true } })
      const jb = await joinedWithSystem(b, topic)

      const fresh = h.token({ ttlSec: 7200, sub: 'user-1', role: 'authenticated' })
      await a.realtime.setAuth(fresh)
      // The client pushed the access_token event to the joined channel.
      await h.waitFor(
        () => a.log.frames.some((f) => f.dir === 'C→S' && f.text && f.text.includes('"access_token"') && f.text.includes(fresh)),
        'access_token push sent',
        { clients }
      )
      // Round trip on the same socket after the access_token push: the acked
      // send proves the server handled the token before it.
      assert.equal(await ja.ch.send({ type: 'broadcast', event: 'after-refresh', payload: { k: 1 } }), 'ok')
      await h.waitFor(() => ja.ev.broadcasts.length >= 1, 'A gets its own broadcast after the refresh', { clients })
      await h.waitFor(() => jb.ev.broadcasts.length >= 1, 'B gets A\'s broadcast after the refresh', { clients })
      // and the other direction.
      assert.equal(await jb.ch.send({ type: 'broadcast', event: 'to-a', payload: { k: 2 } }), 'ok')
      await h.waitFor(() => ja.ev.broadcasts.some((m) => m.event === 'to-a'), 'A still receives from B', { clients })

      assert.equal(ja.ch.state, 'joined')
      assert.deepEqual(ja.ev.system, [], 'no system message after a valid refresh')
      assert.deepEqual(ja.rec.statuses.map((s) => s.status), ['SUBSCRIBED'])
      // Success gets no reply (the real server sends none), and no phx_close.
      const closes = h
        .receivedFrames(a)
        .filter((f) => !f.binary)
        .map((f) => (Array.isArray(f.msg) ? f.msg[3] : f.msg.event))
        .filter((e) => e === 'phx_close' || e === 'phx_error')
      assert.deepEqual(closes, [])
    })

    for (const [label, badToken, messageRe] of [
      ['expired', () => h.token({ ttlSec: -120 }), EXPIRED_RE],
      ['malformed', () => 'not-a-jwt', /^The token provided is not a valid JWT$/],
    ]) {
      it(`setAuth(${label} token) on a joined channel → system error, then CLOSED`, async () => {
        const topic = h.uniqueTopic(`auth-bad-${label}`)
        const a = h.makeClient(server, { vsn, name: `A(${vsn})` })
        const ja = await joinedWithSystem(a, topic)
        await a.realtime.setAuth(badToken())
        await h.waitFor(() => ja.rec.statuses.some((s) => s.status === 'CLOSED'), 'channel CLOSED', { clients: [a] })
        const errors = ja.ev.system.filter((p) => p.status === 'error')
        assert.equal(errors.length, 1, `one system error\n${h.dumpFrames([a])}`)
        assert.match(errors[0].message, messageRe)
        assert.equal(errors[0].channel, topic)
        assert.equal(errors[0].extension, 'system')
        assert.equal(ja.ch.state, 'closed')
        assert.equal(a.realtime.isConnected(), true, 'only the channel is closed, not the socket')
      })
    }

    it('a channel joined with a token expiring in ~3 s gets a system error and goes CLOSED', async () => {
      const topic = h.uniqueTopic('auth-expiry')
      const short = h.token({ ttlSec: 3 })
      // accessToken option: the token callback always returns the short token,
      // so supabase-js does not replace it with the anon key after the join.
      const a = h.makeClient(server, { vsn, name: `A(${vsn})`, accessToken: async () => short })
      a.expectedToken = short
      const ja = await joinedWithSystem(a, topic)
      const join = a.log.frames.find((f) => f.dir === 'C→S' && f.text && f.text.includes('phx_join'))
      assert.ok(join.text.includes(short), 'the join carried the short-lived token')

      await h.waitFor(() => ja.rec.statuses.some((s) => s.status === 'CLOSED'), 'channel CLOSED after expiry', {
        timeout: 20000,
        clients: [a],
      })
      const errors = ja.ev.system.filter((p) => p.status === 'error')
      assert.equal(errors.length, 1, `one system error\n${h.dumpFrames([a])}`)
      assert.match(errors[0].message, EXPIRED_RE)
      assert.equal(errors[0].channel, topic)
      assert.equal(ja.ch.state, 'closed')
      // system error first, then phx_close with ref = join_ref.
      const msgs = h
        .receivedFrames(a)
        .filter((f) => !f.binary)
        .map((f) => f.msg)
        .map((m) => (Array.isArray(m) ? { join_ref: m[0], ref: m[1], topic: m[2], event: m[3], payload: m[4] } : m))
        .filter((m) => m.topic === `realtime:${topic}`)
      const iErr = msgs.findIndex((m) => m.event === 'system' && m.payload.status === 'error')
      const iClose = msgs.findIndex((m) => m.event === 'phx_close')
      assert.ok(iErr >= 0 && iClose > iErr, `system error precedes phx_close\n${h.dumpFrames([a])}`)
      const joinRef = msgs[0].ref // the join reply's ref is the join_ref
      assert.equal(msgs[iClose].ref, joinRef, 'phx_close carries ref = join_ref')
      assert.equal(a.realtime.isConnected(), true, 'the socket stays open')
    })

    it('join with an expired access_token (setAuth before subscribe) → CHANNEL_ERROR InvalidJWTToken', async () => {
      const topic = h.uniqueTopic('auth-join-expired')
      const a = h.makeClient(server, { vsn, name: `A(${vsn})` })
      await h.connectSettled(a)
      const expired = h.token({ ttlSec: -60 })
      await a.realtime.setAuth(expired)
      const ch = a.supabase.channel(topic)
      const rec = h.subscribe(ch)
      const first = await rec.first
      assert.equal(first.status, 'CHANNEL_ERROR', `first status\n${h.dumpFrames([a])}`)
      assert.match(first.err, /^InvalidJWTToken: Token has expired \d+ seconds ago$/)
      const join = a.log.frames.find((f) => f.dir === 'C→S' && f.text && f.text.includes('phx_join'))
      assert.ok(join.text.includes(expired), 'the join carried the expired token')
      await a.supabase.removeChannel(ch)
    })

    it('join of a configured channel with a malformed access_token → CHANNEL_ERROR MalformedJWT', async () => {
      const topic = h.uniqueTopic('auth-join-malformed')
      const a = h.makeClient(server, { vsn, name: `A(${vsn})` })
      await h.connectSettled(a)
      await a.realtime.setAuth('this.is-not-a-jwt')
      const ch = a.supabase
        .channel(topic, { config: { broadcast: { self: true, ack: true }, presence: { key: 'user-1' } } })
        .on('broadcast', { event: 'x' }, () => {})
        .on('presence', { event: 'sync' }, () => {})
      const rec = h.subscribe(ch)
      const first = await rec.first
      assert.equal(first.status, 'CHANNEL_ERROR', `first status\n${h.dumpFrames([a])}`)
      assert.equal(first.err, 'MalformedJWT: The token provided is not a valid JWT')
      const join = a.log.frames.find((f) => f.dir === 'C→S' && f.text && f.text.includes('phx_join'))
      assert.ok(join.text.includes('this.is-not-a-jwt'), 'the join carried the malformed token')
      assert.ok(join.text.includes('"key":"user-1"'), 'the join carried the channel config')
      await a.supabase.removeChannel(ch)
    })

    it('private join is refused with Unauthorized', async () => {
      const topic = h.uniqueTopic('auth-private')
      const a = h.makeClient(server, { vsn, name: `A(${vsn})` })
      await h.connectSettled(a)
      const ch = a.supabase.channel(topic, { config: { private: true } })
      const rec = h.subscribe(ch)
      const first = await rec.first
      assert.equal(first.status, 'CHANNEL_ERROR', `first status\n${h.dumpFrames([a])}`)
      assert.equal(first.err, `Unauthorized: You do not have permissions to read from this Channel topic: ${topic}`)
      await a.supabase.removeChannel(ch)
    })
  })
}
