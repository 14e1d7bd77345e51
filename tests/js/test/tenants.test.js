'use strict'
// Multi-tenant mode end to end (TENANTS_FILE): supabase-js 2.119.1 clients against one realtide
// process serving the tenants `acme` and `globex` (each with its own database in one
// PostgreSQL cluster, its own JWT secret, publication and slot), `frozen` (suspended) and no
// tenant `nope`. Clients choose their tenant by the `/t/<tenant>` path prefix of the project
// URL (`http://127.0.0.1:<port>/t/acme`, so the socket is `/t/acme/realtime/v1/websocket`
// and httpSend() posts to `/t/acme/realtime/v1/api/broadcast/...`), or by the first label of
// the Host header. Nothing crosses from one tenant to another: topics of the same name,
// broadcasts (socket and HTTP), presence, tokens, postgres_changes and database broadcasts.
// The Rust version of these tests is tests/tests/tenants.rs.
//
// Absence is always checked against a barrier: a later message the same channel may receive.

const { describe, it, before, after, afterEach } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const WebSocket = require('ws')
const h = require('../lib/helpers')
const { startCluster } = require('../lib/pg')

const ACME_SECRET = 'acme-tenant-secret-0123456789-abcdefghij'
const GLOBEX_SECRET = 'globex-tenant-secret-0123456789-abcdefgh'
const PUBLICATION = 'realtide_js_tenants_pub'
const USER = '11111111-1111-4111-8111-111111111111'

// Each tenant's table, set up once its publication exists (the server creates it when the
// tenant starts on its first request).
const TABLE_SQL = String.raw`
create table items (id bigint primary key, owner text not null, note text);
alter table items replica identity full;
grant select on items to authenticated, anon;
alter publication ${PUBLICATION} add table items;
`

const tok = (secret, role = 'anon', extra = {}) =>
  h.signToken({ role, sub: USER, exp: h.nowSec() + 3600, iat: h.nowSec(), ...extra }, secret)

let db
let server
let dir
const tenantDb = {}
before(async () => {
  db = await startCluster()
  // One statement per call: CREATE DATABASE cannot run inside a transaction block.
  await db.sql('create database acme')
  await db.sql('create database globex')
  for (const name of ['acme', 'globex']) {
    // The same cluster (psql, port), another database.
    const t = Object.create(db)
    t.dbUrl = db.dbUrl.replace(/\/[^/]*$/, `/${name}`)
    tenantDb[name] = t
  }
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'realtide-tenants-js-'))
  const file = path.join(dir, 'tenants.toml')
  fs.writeFileSync(
    file,
    `
[[tenant]]
external_id = "acme"
name = "Acme"
jwt_secret = "${ACME_SECRET}"
db_url = "${tenantDb.acme.dbUrl}"
publication = "${PUBLICATION}"
max_concurrent_users = 100
max_events_per_second = 1000
max_joins_per_second = 100
max_channels_per_client = 50
private_only = false

[[tenant]]
external_id = "globex"
name = "Globex"
jwt_secret = "${GLOBEX_SECRET}"
db_url = "${tenantDb.globex.dbUrl}"
publication = "${PUBLICATION}"

[[tenant]]
external_id = "frozen"
name = "Frozen"
jwt_secret = "${ACME_SECRET}"
suspended = true
`
  )
  // No DB_URL: every tenant has its own database. (startServer sets a JWT_SECRET of its own;
  // in multi-tenant mode it is unused.)
  server = await h.startServer({ TENANTS_FILE: file, CHANGES_DIR: path.join(dir, 'changes') })
})
afterEach(async () => {
  await h.closeAllClients()
})
after(async () => {
  await h.closeAllClients()
  if (server) await server.stop()
  if (db) await db.stop()
  if (dir) fs.rmSync(dir, { recursive: true, force: true })
})

// ---------------------------------------------------------------- helpers

/** The `srv`-like endpoint of `tenant` for h.makeClient: the project URL has the prefix. */
const endpoint = (tenant) => ({
  httpUrl: `${server.httpUrl}/t/${tenant}`,
  wsBase: `${server.wsBase}/t/${tenant}`,
})

/** A supabase-js client of `tenant` whose anon key is `anonKey` (default: the tenant's own anon token). */
function client(tenant, name, opts = {}) {
  const secret = tenant === 'globex' ? GLOBEX_SECRET : ACME_SECRET
  return h.makeClient(endpoint(tenant), { name: `${name}@${tenant}`, anonKey: tok(secret), ...opts })
}

const wait = (cond, what, clients = [], timeout = 15000) => h.waitFor(cond, what, { clients, timeout })

/**
 * A channel `topic` of client `c` recording its broadcasts (any event), presence events and
 * statuses. Resolves to { ch, got, presence, rec } once subscribed (the first status is
 * returned as `rec.statuses[0]`, SUBSCRIBED or not, unless `expectOk`).
 */
async function channel(c, topic, { config = {}, expectOk = true } = {}) {
  const got = []
  const presence = []
  const ch = c.supabase.channel(topic, { config })
  ch.on('broadcast', { event: '*' }, (m) => got.push(m))
  ch.on('presence', { event: 'join' }, (p) => presence.push({ event: 'join', key: p.key, metas: p.newPresences }))
  ch.on('presence', { event: 'leave' }, (p) => presence.push({ event: 'leave', key: p.key, metas: p.leftPresences }))
  const rec = expectOk ? await h.subscribeOk(ch, [c]) : h.subscribe(ch)
  return { ch, got, presence, rec }
}

/**
 * A raw `ws` connect to `urlPath` (with `headers`): { status: 101 } when the upgrade
 * succeeded, else { status, body } of the HTTP refusal. Bounded: 10 s.
 */
function rawConnect(urlPath, headers = {}) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(`${server.wsBase}${urlPath}`, { headers })
    const timer = setTimeout(() => {
      socket.terminate()
      reject(new Error(`no answer to the upgrade of ${urlPath} within 10 s\n${server.output()}`))
    }, 10000)
    socket.on('open', () => {
      clearTimeout(timer)
      socket.close()
      resolve({ status: 101 })
    })
    socket.on('unexpected-response', (req, res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c) => (body += c))
      res.on('end', () => {
        clearTimeout(timer)
        req.destroy()
        resolve({ status: res.statusCode, body, contentType: res.headers['content-type'] })
      })
    })
    socket.on('error', (e) => {
      // `unexpected-response` handles refusals; other errors are failures.
      if (!/Unexpected server response/.test(String(e.message))) {
        clearTimeout(timer)
        reject(e)
      }
    })
  })
}

const wsPath = (prefix, anon) => `${prefix}/realtime/v1/websocket?apikey=${encodeURIComponent(anon)}&vsn=2.0.0`

/** Frames a client received on `topic` (text frames of vsn 2.0.0, and binary broadcasts). */
function framesOn(c, topic) {
  return h.receivedFrames(c).filter((f) => {
    if (f.binary) return f.bytes.includes(Buffer.from(topic))
    return Array.isArray(f.msg) ? f.msg[2] === topic : f.msg.topic === topic
  })
}

const keysOf = (state) => Object.keys(state).sort()

/** The transport errors a recording client saw (one per refused connect attempt). */
const refusals = (c) => c.log.frames.filter((f) => f.dir === 'ERROR').map((f) => f.text)

/** POST /t/<tenant>/realtime/v1/api/broadcast of one message to `room`: { status, body }. */
async function postBroadcast(tenant, bearer, event) {
  const res = await fetch(`${server.httpUrl}/t/${tenant}/realtime/v1/api/broadcast`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${bearer}`, apikey: bearer },
    body: JSON.stringify({ messages: [{ topic: 'room', event, payload: { n: 0 } }] }),
    signal: AbortSignal.timeout(10000),
  })
  return { status: res.status, body: await res.text() }
}

/** [event, payload without the message id] of database broadcasts (realtime.send adds `id`). */
const dbBroadcasts = (got) =>
  got.map((m) => {
    assert.equal(typeof m.payload.id, 'string', JSON.stringify(m))
    const { id, ...rest } = m.payload
    return [m.event, rest]
  })

/**
 * Sets up `tenant`'s table once its publication exists (the tenant must have been started by
 * a request), and waits until the tenant's slot streams. Done once per tenant.
 */
const prepared = {}
async function prepare(tenant) {
  if (prepared[tenant]) return
  const t = tenantDb[tenant]
  await wait(
    async () => (await t.sql(`select 1 from pg_publication where pubname = '${PUBLICATION}'`)).trim() === '1',
    `publication ${PUBLICATION} of ${tenant} created by the server\n${server.output()}`,
    [],
    30000
  )
  await t.sql(TABLE_SQL)
  await db.waitForSlot(`realtide_${tenant}`)
  prepared[tenant] = true
}

// ---------------------------------------------------------------- tests

describe('multi-tenant mode (TENANTS_FILE), supabase-js', () => {
  it('the same topic name in two tenants: broadcasts, httpSend and presence stay in their tenant', async () => {
    const a1 = client('acme', 'a1')
    const a2 = client('acme', 'a2')
    const g1 = client('globex', 'g1')
    const g2 = client('globex', 'g2')
    const config = (key) => ({ broadcast: { self: false, ack: true }, presence: { key } })
    const a1Room = await channel(a1, 'room', { config: config('acme-a1') })
    const a2Room = await channel(a2, 'room', { config: config('acme-a2') })
    const g1Room = await channel(g1, 'room', { config: config('globex-g1') })
    // The sockets went to the tenants' prefixed paths.
    assert.match(a1.log.urls[0], new RegExp(`^ws://127\\.0\\.0\\.1:${server.port}/t/acme/realtime/v1/websocket\\?`))
    assert.match(g1.log.urls[0], new RegExp(`^ws://127\\.0\\.0\\.1:${server.port}/t/globex/realtime/v1/websocket\\?`))

    // Presence: acme's a1 tracks; acme's a2 sees it.
    assert.equal(await a1Room.ch.track({ who: 'acme' }), 'ok', h.dumpFrames([a1]))
    await wait(() => keysOf(a2Room.ch.presenceState()).includes('acme-a1'), 'acme-a1 in a2 presence', [a2])

    // A socket broadcast on acme's `room` reaches a2 (acknowledged by the server).
    assert.equal(await a1Room.ch.send({ type: 'broadcast', event: 'hello', payload: { n: 1 } }), 'ok', h.dumpFrames([a1]))
    await wait(() => a2Room.got.some((m) => m.event === 'hello'), 'acme hello at a2', [a2])
    assert.deepEqual(a2Room.got[0].payload, { n: 1 })

    // httpSend() on globex's `room` (from an unsubscribed channel of another globex client):
    // it reaches g1, and g1's only broadcast is it (acme's hello came before and is not there).
    const g2Room = g2.supabase.channel('room')
    assert.deepEqual(await g2Room.httpSend('from-http', { n: 2 }), { success: true })
    await wait(() => g1Room.got.length >= 1, 'globex httpSend at g1', [g1])
    // Globex tracks its own presence: the barrier of globex's presence.
    assert.equal(await g1Room.ch.track({ who: 'globex' }), 'ok', h.dumpFrames([g1]))
    await wait(() => keysOf(g1Room.ch.presenceState()).includes('globex-g1'), 'globex-g1 in g1 presence', [g1])

    // Barrier on acme: one more acme broadcast after globex's httpSend.
    assert.equal(await a1Room.ch.send({ type: 'broadcast', event: 'after', payload: { n: 3 } }), 'ok')
    await wait(() => a2Room.got.some((m) => m.event === 'after'), 'acme "after" at a2', [a2])

    assert.deepEqual(
      g1Room.got.map((m) => [m.event, m.payload]),
      [['from-http', { n: 2 }]],
      `globex got only its own httpSend\n${h.dumpFrames([g1])}`
    )
    assert.deepEqual(
      a2Room.got.map((m) => [m.event, m.payload]),
      [
        ['hello', { n: 1 }],
        ['after', { n: 3 }],
      ],
      `acme got only acme's broadcasts\n${h.dumpFrames([a2])}`
    )
    assert.deepEqual(a1Room.got, [], 'self: false')
    // Presence: globex's state is globex's only, acme's is acme's only.
    assert.deepEqual(keysOf(g1Room.ch.presenceState()), ['globex-g1'], h.dumpFrames([g1]))
    assert.deepEqual(g1Room.ch.presenceState()['globex-g1'].map((p) => p.who), ['globex'])
    assert.ok(!g1Room.presence.some((p) => p.key.startsWith('acme')), JSON.stringify(g1Room.presence))
    assert.deepEqual(keysOf(a2Room.ch.presenceState()), ['acme-a1'], h.dumpFrames([a2]))
    assert.ok(!a2Room.presence.some((p) => p.key.startsWith('globex')), JSON.stringify(a2Room.presence))

    // A client joining globex's `room` now gets globex's presence state, without acme's.
    const g3 = client('globex', 'g3')
    const g3Room = await channel(g3, 'room', { config: config('globex-g3') })
    await wait(() => keysOf(g3Room.ch.presenceState()).includes('globex-g1'), 'globex-g1 in g3 presence', [g3])
    assert.deepEqual(keysOf(g3Room.ch.presenceState()), ['globex-g1'], h.dumpFrames([g3]))
    // Nothing of acme's in any frame globex's clients received.
    for (const c of [g1, g3]) {
      for (const f of h.receivedFrames(c)) {
        const text = f.binary ? f.bytes.toString('latin1') : JSON.stringify(f.msg)
        assert.ok(!/acme|hello/.test(text), `${c.name} received ${text}`)
      }
    }
  })

  it("a token signed with acme's secret is refused by globex and works on acme", async () => {
    const acmeToken = tok(ACME_SECRET, 'authenticated')
    const globexToken = tok(GLOBEX_SECRET, 'authenticated')

    // The upgrade itself is refused by globex (and accepted by acme).
    const refused = await rawConnect(wsPath('/t/globex', acmeToken))
    assert.equal(refused.status, 401, JSON.stringify(refused))
    assert.deepEqual(JSON.parse(refused.body), { error: 'Failed to validate JWT signature' })
    assert.deepEqual(await rawConnect(wsPath('/t/acme', acmeToken)), { status: 101 })

    // A legitimate globex subscriber of `room`, to see that messages do flow on globex.
    const g1 = client('globex', 'g1', { anonKey: globexToken })
    const g1Room = await channel(g1, 'room')

    // supabase-js on globex with acme's key as its apikey: the socket is refused, so the
    // channel never subscribes (it reports CHANNEL_ERROR and keeps retrying).
    const intruder = client('globex', 'intruder', { anonKey: acmeToken })
    const intruderRoom = await channel(intruder, 'room', { expectOk: false })
    const first = await Promise.race([intruderRoom.rec.first, h.sleep(15000).then(() => null)])
    assert.ok(first, `a status within 15 s\n${h.dumpFrames([intruder])}`)
    assert.deepEqual(first, { status: 'CHANNEL_ERROR', err: 'channel error: transport failure' }, h.dumpFrames([intruder]))
    // At least one more attempt, refused again (the client retries with a backoff).
    await wait(() => intruder.log.urls.length >= 2, 'a second connect attempt of the intruder', [intruder])
    await wait(() => refusals(intruder).length >= 2, 'two refusals of the intruder', [intruder])
    assert.deepEqual([...new Set(refusals(intruder))], ['Unexpected server response: 401'], h.dumpFrames([intruder]))

    // globex with its own apikey, but acme's token as the access token of the join: refused
    // at join with the reason.
    const joiner = client('globex', 'joiner', { anonKey: globexToken, accessToken: async () => acmeToken })
    await h.connectSettled(joiner, acmeToken)
    const joinerRoom = await channel(joiner, 'room', { expectOk: false })
    const jfirst = await Promise.race([joinerRoom.rec.first, h.sleep(15000).then(() => null)])
    assert.ok(jfirst, `a join status within 15 s\n${h.dumpFrames([joiner])}`)
    assert.deepEqual(
      jfirst,
      { status: 'CHANNEL_ERROR', err: 'JwtSignatureError: Failed to validate JWT signature' },
      h.dumpFrames([joiner])
    )

    // The HTTP API of globex refuses acme's token too.
    const viaAcme = client('globex', 'http-intruder', { anonKey: acmeToken })
    await assert.rejects(viaAcme.supabase.channel('room').httpSend('sneak', { n: 0 }), { message: 'Unauthorized' })
    const direct = await postBroadcast('globex', acmeToken, 'sneak')
    assert.equal(direct.status, 401, JSON.stringify(direct))
    assert.deepEqual(JSON.parse(direct.body), { message: 'Unauthorized' })

    // Barrier: a legitimate globex httpSend reaches g1; it is the only broadcast g1 got, and
    // the refused clients received no message on `room` at all.
    const gSend = client('globex', 'g-sender', { anonKey: globexToken })
    assert.deepEqual(await gSend.supabase.channel('room').httpSend('legit', { n: 1 }), { success: true })
    await wait(() => g1Room.got.length >= 1, 'globex broadcast at g1', [g1])
    assert.deepEqual(g1Room.got.map((m) => m.event), ['legit'], h.dumpFrames([g1]))
    assert.deepEqual(intruderRoom.got, [])
    assert.deepEqual(joinerRoom.got, [])
    assert.equal(h.receivedFrames(intruder).length, 0, h.dumpFrames([intruder]))
    assert.ok(!intruderRoom.rec.statuses.some((s) => s.status === 'SUBSCRIBED'), JSON.stringify(intruderRoom.rec.statuses))
    assert.ok(!joinerRoom.rec.statuses.some((s) => s.status === 'SUBSCRIBED'), JSON.stringify(joinerRoom.rec.statuses))
    assert.ok(
      framesOn(joiner, 'realtime:room').every((f) => !f.binary && f.msg[3] === 'phx_reply' && f.msg[4].status === 'error'),
      h.dumpFrames([joiner])
    )

    // The same token works on acme: socket, join and broadcast.
    const a1 = client('acme', 'a1', { anonKey: acmeToken })
    const a2 = client('acme', 'a2', { anonKey: acmeToken })
    const a1Room = await channel(a1, 'room', { config: { broadcast: { ack: true } } })
    const a2Room = await channel(a2, 'room')
    assert.equal(await a1Room.ch.send({ type: 'broadcast', event: 'ok-on-acme', payload: { n: 2 } }), 'ok')
    await wait(() => a2Room.got.length >= 1, 'acme broadcast at a2', [a2])
    assert.deepEqual(a2Room.got.map((m) => [m.event, m.payload]), [['ok-on-acme', { n: 2 }]])
    assert.deepEqual(await a2Room.ch.httpSend('http-on-acme', { n: 3 }), { success: true })
    await wait(() => a1Room.got.some((m) => m.event === 'http-on-acme'), 'acme httpSend at a1', [a1])
  })

  it('postgres_changes and database broadcasts stay in their tenant', async () => {
    const clients = {}
    const items = {}
    const feed = {}
    for (const tenant of ['acme', 'globex']) {
      const secret = tenant === 'acme' ? ACME_SECRET : GLOBEX_SECRET
      const userToken = tok(secret, 'authenticated')
      const c = client(tenant, 'db', { anonKey: tok(secret), accessToken: async () => userToken })
      clients[tenant] = c
      // The socket starts the tenant (and so creates its publication and slot).
      await h.connectSettled(c, userToken)
      await prepare(tenant)
      const got = []
      const system = []
      const ch = c.supabase
        .channel('items')
        .on('postgres_changes', { event: '*', schema: 'public', table: 'items' }, (p) => got.push(p))
        .on('system', {}, (p) => system.push(p))
      await h.subscribeOk(ch, [c])
      const s = await wait(() => system.find((p) => p.extension === 'postgres_changes'), `${tenant} postgres_changes system message`, [c])
      assert.deepEqual(s, { extension: 'postgres_changes', status: 'ok', message: 'Subscribed to PostgreSQL', channel: 'items' })
      items[tenant] = got
      feed[tenant] = await channel(c, 'feed')
    }
    // Ids are unique per run of this test (the tables live as long as the file's cluster).
    const id0 = Date.now()

    await tenantDb.acme.sql(`insert into items values (${id0 + 1}, 'acme', 'a')`)
    await tenantDb.globex.sql(`insert into items values (${id0 + 2}, 'globex', 'g')`)
    await wait(() => items.acme.length >= 1, 'acme INSERT at acme', [clients.acme])
    await wait(() => items.globex.length >= 1, 'globex INSERT at globex', [clients.globex])
    assert.equal(items.acme[0].eventType, 'INSERT')
    assert.equal(items.acme[0].table, 'items')
    assert.deepEqual(items.acme[0].new, { id: id0 + 1, owner: 'acme', note: 'a' })
    assert.deepEqual(items.globex[0].new, { id: id0 + 2, owner: 'globex', note: 'g' })

    // A database broadcast (realtime.send) in acme's database reaches acme's `feed` only.
    await tenantDb.acme.sql(`select realtime.send('{"n": 1}'::jsonb, 'tick', 'feed', false)`)
    await wait(() => feed.acme.got.length >= 1, "acme's database broadcast at acme", [clients.acme])
    assert.deepEqual(dbBroadcasts(feed.acme.got), [['tick', { n: 1 }]])

    // Barriers: one more row in each database, and one more database broadcast in globex's.
    await tenantDb.globex.sql(`insert into items values (${id0 + 3}, 'globex', 'barrier')`)
    await tenantDb.acme.sql(`insert into items values (${id0 + 4}, 'acme', 'barrier')`)
    await tenantDb.globex.sql(`select realtime.send('{"n": 2}'::jsonb, 'tock', 'feed', false)`)
    await wait(() => items.globex.length >= 2, 'globex barrier row at globex', [clients.globex])
    await wait(() => items.acme.length >= 2, 'acme barrier row at acme', [clients.acme])
    await wait(() => feed.globex.got.length >= 1, "globex's database broadcast at globex", [clients.globex])

    assert.deepEqual(
      items.acme.map((p) => [p.new.id, p.new.owner]),
      [
        [id0 + 1, 'acme'],
        [id0 + 4, 'acme'],
      ],
      h.dumpFrames([clients.acme])
    )
    assert.deepEqual(
      items.globex.map((p) => [p.new.id, p.new.owner]),
      [
        [id0 + 2, 'globex'],
        [id0 + 3, 'globex'],
      ],
      h.dumpFrames([clients.globex])
    )
    assert.deepEqual(dbBroadcasts(feed.globex.got), [['tock', { n: 2 }]], h.dumpFrames([clients.globex]))
    assert.deepEqual(dbBroadcasts(feed.acme.got), [['tick', { n: 1 }]], h.dumpFrames([clients.acme]))
  })

  it('an unknown tenant (404) and a suspended one (403) are refused; supabase-js never subscribes', async () => {
    const anon = tok(ACME_SECRET)
    // Raw upgrades: refused before the upgrade with the reference's bodies.
    const unknown = await rawConnect(wsPath('/t/nope', anon))
    assert.equal(unknown.status, 404, JSON.stringify(unknown))
    assert.deepEqual(JSON.parse(unknown.body), { error: 'Tenant not found' })
    const suspended = await rawConnect(wsPath('/t/frozen', anon))
    assert.equal(suspended.status, 403, JSON.stringify(suspended))
    assert.deepEqual(JSON.parse(suspended.body), { error: 'Realtime was disabled for this tenant' })
    // By the first label of Host: the same answers, and a known tenant is accepted.
    const byHost = (host) => rawConnect(wsPath('', anon), { Host: host })
    const unknownHost = await byHost(`nope.localhost:${server.port}`)
    assert.equal(unknownHost.status, 404, JSON.stringify(unknownHost))
    assert.deepEqual(JSON.parse(unknownHost.body), { error: 'Tenant not found' })
    const suspendedHost = await byHost(`frozen.localhost:${server.port}`)
    assert.equal(suspendedHost.status, 403, JSON.stringify(suspendedHost))
    assert.deepEqual(JSON.parse(suspendedHost.body), { error: 'Realtime was disabled for this tenant' })
    assert.deepEqual(await byHost(`acme.localhost:${server.port}`), { status: 101 })

    // supabase-js clients of both: CHANNEL_ERROR, never SUBSCRIBED, and no frame received.
    const cases = [
      { tenant: 'nope', status: 404, httpStatus: 401, httpMessage: 'Tenant not found in database' },
      { tenant: 'frozen', status: 403, httpStatus: 403, httpMessage: 'Tenant is suspended' },
    ]
    for (const { tenant, status, httpStatus, httpMessage } of cases) {
      const c = client(tenant, 'refused', { anonKey: anon })
      const s = await channel(c, 'room', { expectOk: false })
      const first = await Promise.race([s.rec.first, h.sleep(15000).then(() => null)])
      assert.ok(first, `a status within 15 s\n${h.dumpFrames([c])}`)
      assert.deepEqual(first, { status: 'CHANNEL_ERROR', err: 'channel error: transport failure' }, h.dumpFrames([c]))
      await wait(() => c.log.urls.length >= 2, `a second connect attempt to ${tenant}`, [c])
      await wait(() => refusals(c).length >= 2, `two refusals of the client of ${tenant}`, [c])
      assert.deepEqual([...new Set(refusals(c))], [`Unexpected server response: ${status}`], h.dumpFrames([c]))
      assert.ok(!s.rec.statuses.some((x) => x.status === 'SUBSCRIBED'), JSON.stringify(s.rec.statuses))
      assert.equal(h.receivedFrames(c).length, 0, h.dumpFrames([c]))
      assert.ok(c.log.urls.every((u) => u.includes(`/t/${tenant}/realtime/v1/websocket?`)), c.log.urls.join('\n'))
      // Its httpSend() is refused as well.
      await assert.rejects(c.supabase.channel('room').httpSend('x', { n: 0 }), { message: httpMessage })
      const direct = await postBroadcast(tenant, anon, 'x')
      assert.equal(direct.status, httpStatus, JSON.stringify(direct))
      assert.deepEqual(JSON.parse(direct.body), { message: httpMessage })
    }
  })
})
