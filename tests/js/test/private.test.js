'use strict'
// Private channels end to end with supabase-js 2.119.1 (vsn 2.0.0 and 1.0.0) on the Busymate
// example (examples/busymate: schema.sql + seed.sql, loaded as its README says): RLS read
// authorization at join, write authorization on send, the database firehose fed by
// realtime.broadcast_changes, device control channels, the REST fallback of send(),
// httpSend(), and replay. Reference: supabase/realtime broadcast
// (`lib/realtime_web/channels/realtime_channel/broadcast_handler.ex`,
// `lib/realtime_web/controllers/broadcast_controller.ex`, `realtime.send`, replay) and
// private-channel authorization (`lib/realtime/tenants/authorization.ex`;
// https://supabase.com/docs/guides/realtime/authorization).
//
// Absence is checked against a barrier: a later message the same channel may receive.

const { describe, it, before, after, afterEach } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')
const { spawn } = require('node:child_process')
const h = require('../lib/helpers')
const { startCluster, slotName } = require('../lib/pg')

const EXAMPLE = path.join(h.REPO_ROOT, 'examples', 'busymate')
const ACME = 'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa'
const BETA = 'bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb'
const ADA = '11111111-1111-4111-8111-111111111111'
const BERT = '22222222-2222-4222-8222-222222222222'
const CLEO = '33333333-3333-4333-8333-333333333333'
const KIOSK = 'dddddddd-0000-4000-8000-00000000000a'
const TABLET = 'dddddddd-0000-4000-8000-00000000000b'

let db
let server
before(async () => {
  db = await startCluster()
  const slot = slotName()
  // realtide installs the realtime schema at start; the example's SQL goes in afterwards.
  server = await h.startServer({ DB_URL: db.dbUrl, SLOT_NAME: slot })
  await db.waitForSlot(slot)
  await db.sql(fs.readFileSync(path.join(EXAMPLE, 'schema.sql'), 'utf8'))
  await db.sql(fs.readFileSync(path.join(EXAMPLE, 'seed.sql'), 'utf8'))
})
afterEach(async () => {
  await h.closeAllClients()
})
after(async () => {
  await h.closeAllClients()
  if (server) await server.stop()
  if (db) await db.stop()
})

/** A client signed in as `sub` (its token authorizes its private channels). */
async function user(vsn, name, sub) {
  const userToken = h.token({ role: 'authenticated', sub })
  const c = h.makeClient(server, { vsn, name, accessToken: async () => userToken })
  c.userToken = userToken
  await h.connectSettled(c, userToken)
  return c
}

/** Subscribes to a private channel; records broadcasts. Resolves to {ch, got, first}. */
async function privateChannel(c, topic, config = {}) {
  const got = []
  const ch = c.supabase.channel(topic, { config: { private: true, ...config } })
  ch.on('broadcast', { event: '*' }, (m) => got.push(m))
  const rec = h.subscribe(ch)
  const first = await rec.first
  return { ch, got, first }
}

async function waitGot(c, s, cond, what) {
  await h.waitFor(() => cond(s.got), what, { clients: [c] })
}

const unauthorized = (topic) => `Unauthorized: You do not have permissions to read from this Channel topic: ${topic}`

for (const vsn of ['2.0.0', '1.0.0']) {
  describe(`private channels (Busymate), vsn ${vsn}`, () => {
    it('the ws:<workspace> firehose reaches members only, fed by the entries trigger', async () => {
      const ada = await user(vsn, `ada(${vsn})`, ADA)
      const bert = await user(vsn, `bert(${vsn})`, BERT)
      const adaAcme = await privateChannel(ada, `ws:${ACME}`)
      assert.equal(adaAcme.first.status, 'SUBSCRIBED', h.dumpFrames([ada]))
      // Bert is not in Acme: refused with the reference's reason.
      const bertAcme = await privateChannel(bert, `ws:${ACME}`)
      assert.equal(bertAcme.first.status, 'CHANNEL_ERROR', h.dumpFrames([bert]))
      assert.equal(bertAcme.first.err, unauthorized(`ws:${ACME}`))
      await bert.supabase.removeChannel(bertAcme.ch)
      const bertBeta = await privateChannel(bert, `ws:${BETA}`)
      assert.equal(bertBeta.first.status, 'SUBSCRIBED', h.dumpFrames([bert]))

      await db.sql(`insert into public.entries (workspace_id, device_id, body) values ('${ACME}', '${KIOSK}', '{"temp": 21.5}')`)
      await db.sql(`insert into public.entries (workspace_id, body) values ('${BETA}', '{"temp": 19}')`)
      await waitGot(ada, adaAcme, (g) => g.length >= 1, 'Acme entry at Ada')
      const m = adaAcme.got[0]
      assert.equal(m.event, 'INSERT')
      assert.equal(m.payload.operation, 'INSERT')
      assert.equal(m.payload.table, 'entries')
      assert.equal(m.payload.schema, 'public')
      assert.equal(m.payload.old_record, null)
      assert.deepEqual(m.payload.record.body, { temp: 21.5 })
      assert.equal(m.payload.record.workspace_id, ACME)
      assert.equal(typeof m.payload.id, 'string')
      // Bert's barrier: his workspace's entry; Acme's came first and must not be there.
      await waitGot(bert, bertBeta, (g) => g.length >= 1, 'Beta entry at Bert')
      assert.deepEqual(bertBeta.got.map((x) => x.payload.record.workspace_id), [BETA])

      // Updates and deletes carry old_record.
      await db.sql(
        `update public.entries set body = '{"temp": 22}' where id = (select max(id) from public.entries where workspace_id = '${ACME}')`
      )
      await waitGot(ada, adaAcme, (g) => g.length >= 2, 'Acme update at Ada')
      assert.equal(adaAcme.got[1].payload.operation, 'UPDATE')
      assert.deepEqual(adaAcme.got[1].payload.old_record.body, { temp: 21.5 })
      assert.deepEqual(adaAcme.got[1].payload.record.body, { temp: 22 })
    })

    it('device:<uuid> is joinable by its owner and admins only', async () => {
      const ada = await user(vsn, `ada(${vsn})`, ADA)
      const bert = await user(vsn, `bert(${vsn})`, BERT)
      const cleo = await user(vsn, `cleo(${vsn})`, CLEO)
      assert.equal((await privateChannel(ada, `device:${KIOSK}`)).first.status, 'SUBSCRIBED', h.dumpFrames([ada]))
      const denied = await privateChannel(bert, `device:${KIOSK}`)
      assert.equal(denied.first.status, 'CHANNEL_ERROR')
      assert.equal(denied.first.err, unauthorized(`device:${KIOSK}`))
      const admin = await privateChannel(cleo, `device:${TABLET}`)
      assert.equal(admin.first.status, 'SUBSCRIBED', h.dumpFrames([cleo]))
      // A device change reaches its control channel.
      await db.sql(`update public.devices set name = 'Beta tablet 2' where id = '${TABLET}'`)
      await waitGot(cleo, admin, (g) => g.length >= 1, 'device change at Cleo')
      assert.equal(admin.got[0].payload.record.name, 'Beta tablet 2')
    })

    it('sends without write permission vanish; the admin writes settings:global', async () => {
      const ada = await user(vsn, `ada(${vsn})`, ADA)
      const bert = await user(vsn, `bert(${vsn})`, BERT)
      const cleo = await user(vsn, `cleo(${vsn})`, CLEO)
      const listen = await privateChannel(bert, 'settings:global')
      assert.equal(listen.first.status, 'SUBSCRIBED', h.dumpFrames([bert]))
      const adaCh = await privateChannel(ada, 'settings:global', { broadcast: { ack: true } })
      const cleoCh = await privateChannel(cleo, 'settings:global', { broadcast: { ack: true } })
      // Ada may read but not write: no ack ever comes (the client times out).
      const denied = await adaCh.ch.send({ type: 'broadcast', event: 'theme', payload: { from: 'ada' } }, { timeout: 1500 })
      assert.equal(denied, 'timed out')
      const ok = await cleoCh.ch.send({ type: 'broadcast', event: 'theme', payload: { from: 'cleo' } })
      assert.equal(ok, 'ok', h.dumpFrames([cleo]))
      await waitGot(bert, listen, (g) => g.length >= 1, 'settings at Bert')
      assert.deepEqual(listen.got.map((m) => m.payload.from), ['cleo'])
    })

    it('send() falls back to REST and httpSend() posts, both authorized by the same policies', async () => {
      const bert = await user(vsn, `bert(${vsn})`, BERT)
      const listen = await privateChannel(bert, 'settings:global')
      assert.equal(listen.first.status, 'SUBSCRIBED')
      const cleo = await user(vsn, `cleo(${vsn})`, CLEO)
      const ada = await user(vsn, `ada(${vsn})`, ADA)
      // Not subscribed: send() goes over POST /api/broadcast with Cleo's token.
      const unjoined = cleo.supabase.channel('settings:global', { config: { private: true } })
      assert.equal(await unjoined.send({ type: 'broadcast', event: 'rest', payload: { via: 'rest' } }), 'ok')
      assert.deepEqual(await unjoined.httpSend('http', { via: 'httpSend' }), { success: true })
      // Ada may not write: the batch endpoint skips her message (still 2xx); httpSend is refused.
      const adaCh = ada.supabase.channel('settings:global', { config: { private: true } })
      assert.equal(await adaCh.send({ type: 'broadcast', event: 'rest', payload: { via: 'ada' } }), 'ok')
      await assert.rejects(adaCh.httpSend('http', { via: 'ada' }), /Unauthorized/)
      // Barrier: one more from Cleo.
      assert.deepEqual(await unjoined.httpSend('last', { via: 'last' }), { success: true })
      await waitGot(bert, listen, (g) => g.length >= 3, 'three messages at Bert')
      assert.deepEqual(
        listen.got.map((m) => [m.event, m.payload.via]),
        [['rest', 'rest'], ['http', 'httpSend'], ['last', 'last']]
      )
    })

    it('replay delivers the newest stored firehose messages, oldest first, marked replayed', async () => {
      const since = Date.now() - 1000
      // A live subscriber first: once it has n=3, the stream has passed all three, so none of
      // them can arrive live at the replaying channel afterwards.
      const watcher = await user(vsn, `watcher(${vsn})`, BERT)
      const live = await privateChannel(watcher, `ws:${BETA}`)
      assert.equal(live.first.status, 'SUBSCRIBED')
      for (const n of [1, 2, 3]) {
        await db.sql(`insert into public.entries (workspace_id, body) values ('${BETA}', '{"n": ${n}, "vsn": "${vsn}"}')`)
      }
      await waitGot(watcher, live, (g) => g.some((m) => m.payload.record?.body?.n === 3), 'n=3 streamed')
      const bert = await user(vsn, `bert(${vsn})`, BERT)
      const s = await privateChannel(bert, `ws:${BETA}`, { broadcast: { replay: { since, limit: 2 } } })
      assert.equal(s.first.status, 'SUBSCRIBED', h.dumpFrames([bert]))
      await waitGot(bert, s, (g) => g.length >= 2, 'two replayed messages')
      assert.deepEqual(s.got.map((m) => m.payload.record.body.n), [2, 3])
      for (const m of s.got) {
        assert.equal(m.meta.replayed, true)
        assert.equal(m.meta.id, m.payload.id)
      }
      // Live messages after the replay are not marked.
      await db.sql(`insert into public.entries (workspace_id, body) values ('${BETA}', '{"n": 4}')`)
      await waitGot(bert, s, (g) => g.length >= 3, 'live message after replay')
      assert.equal(s.got[2].payload.record.body.n, 4)
      assert.notEqual(s.got[2].meta?.replayed, true)
    })
  })
}

describe('the Busymate README walk-through (examples/busymate/firehose.js)', () => {
  it('prints the subscription and each entry of the member workspace', async () => {
    const env = {
      ...process.env,
      NODE_PATH: path.join(h.REPO_ROOT, 'tests', 'js', 'node_modules'),
      REALTIDE_URL: server.httpUrl,
      ANON_KEY: h.token({ role: 'anon' }),
      USER_TOKEN: h.token({ role: 'authenticated', sub: ADA }),
      WORKSPACE_ID: ACME,
    }
    const child = spawn(process.execPath, [path.join(EXAMPLE, 'firehose.js')], { env, stdio: ['ignore', 'pipe', 'pipe'] })
    const lines = []
    let buffered = ''
    child.stdout.on('data', (chunk) => {
      buffered += chunk
      const parts = buffered.split('\n')
      buffered = parts.pop()
      for (const line of parts) if (line.trim()) lines.push(JSON.parse(line))
    })
    let stderr = ''
    child.stderr.on('data', (chunk) => (stderr += chunk))
    try {
      await h.waitFor(() => lines.some((l) => l.status === 'SUBSCRIBED'), `firehose.js subscribed (stderr: ${stderr})`)
      await db.sql(`insert into public.entries (workspace_id, body) values ('${ACME}', '{"readme": true}')`)
      await h.waitFor(() => lines.some((l) => l.record?.body?.readme === true), `firehose.js printed the entry; got ${JSON.stringify(lines)}`)
      const entry = lines.find((l) => l.record?.body?.readme === true)
      assert.equal(entry.event, 'INSERT')
      assert.equal(entry.operation, 'INSERT')
      assert.equal(entry.table, 'entries')
    } finally {
      child.kill('SIGTERM')
    }
  })
})
