'use strict'
// supabase-js 2.119.1 on Node 22 and newer, as a user writes it there: no `transport` option,
// so the client uses Node's own WebSocket. Broadcast with self and ack, and presence, work
// unchanged. On Node 20 (no global WebSocket; the other suites pass `ws` as transport) the test
// is skipped; tests/run-all.sh runs this file again on the newest Node it claims.

const { test } = require('node:test')
const assert = require('node:assert/strict')
const { createClient } = require('@supabase/supabase-js')
const h = require('../lib/helpers')

const native = typeof globalThis.WebSocket === 'function'

test(`broadcast and presence over Node's own WebSocket (node ${process.version})`, { skip: !native && 'Node < 22 has no global WebSocket' }, async () => {
  const server = await h.startServer()
  const clients = []
  try {
    const make = () => {
      const c = createClient(server.httpUrl, h.token({ role: 'anon' }))
      clients.push(c)
      return c
    }
    const a = make()
    const b = make()
    const topic = h.uniqueTopic('native')
    const got = []
    const syncs = []
    const chA = a.channel(topic, { config: { broadcast: { self: true, ack: true }, presence: { key: 'a' } } })
      .on('broadcast', { event: '*' }, (m) => got.push(['a', m.payload]))
      .on('presence', { event: 'sync' }, () => syncs.push(Object.keys(chA.presenceState()).sort()))
    const chB = b.channel(topic).on('broadcast', { event: '*' }, (m) => got.push(['b', m.payload]))
    const joined = (ch) => new Promise((resolve, reject) => ch.subscribe((status, err) => {
      if (status === 'SUBSCRIBED') resolve()
      else if (status !== 'CLOSED') reject(err || new Error(status))
    }))
    await joined(chA)
    await joined(chB)
    assert.equal(await chA.track({ online: true }), 'ok')
    assert.equal(await chA.send({ type: 'broadcast', event: 'hello', payload: { n: 1 } }), 'ok')
    await h.waitFor(() => got.length === 2, 'both sides to get the broadcast')
    assert.deepEqual(got.sort(), [['a', { n: 1 }], ['b', { n: 1 }]])
    await h.waitFor(() => syncs.some((keys) => keys.includes('a')), 'presence sync with a')
  } finally {
    for (const c of clients) await c.removeAllChannels().catch(() => {})
    await server.stop()
  }
})
