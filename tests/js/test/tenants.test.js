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
//
// Also: a tenant `broken` whose database is on a port nothing listens on (it must not slow
// or stop another tenant), and, with a second server, the management API over a control
// database (TENANTS_DB_URL): create, rotate the secret of and delete a tenant while
// supabase-js clients are connected to it (the Rust version is tests/tests/tenants_api.rs).

const { describe, it, before, after, afterEach } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const net = require('node:net')
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

/** A TCP port of 127.0.0.1 that was free a moment ago (nothing listens on it). */
function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer()
    probe.once('error', reject)
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address()
      probe.close(() => resolve(port))
    })
  })
}

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
  // `broken`'s database: a port nothing listens on.
  const deadPort = await freePort()
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

[[tenant]]
external_id = "broken"
name = "Broken"
jwt_secret = "${ACME_SECRET}"
db_url = "postgres://postgres@127.0.0.1:${deadPort}/broken"
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
 * statuses (and, with `recordSystem`, its `system` messages). Resolves to
 * { ch, got, presence, system, rec } once subscribed (the first status is
 * returned as `rec.statuses[0]`, SUBSCRIBED or not, unless `expectOk`).
 */
async function channel(c, topic, { config = {}, expectOk = true, recordSystem = false } = {}) {
  const got = []
  const presence = []
  const system = []
  const ch = c.supabase.channel(topic, { config })
  ch.on('broadcast', { event: '*' }, (m) => got.push(m))
  if (recordSystem) ch.on('system', {}, (p) => system.push(p))
  ch.on('presence', { event: 'join' }, (p) => presence.push({ event: 'join', key: p.key, metas: p.newPresences }))
  ch.on('presence', { event: 'leave' }, (p) => presence.push({ event: 'leave', key: p.key, metas: p.leftPresences }))
  const rec = expectOk ? await h.subscribeOk(ch, [c]) : h.subscribe(ch)
  return { ch, got, presence, system, rec }
}

/**
 * A raw `ws` connect to `urlPath` (with `headers`, to `srv`, by default the TENANTS_FILE
 * server): { status: 101 } when the upgrade
 * succeeded, else { status, body } of the HTTP refusal. Bounded: 10 s.
 */
function rawConnect(urlPath, headers = {}, srv = server) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(`${srv.wsBase}${urlPath}`, { headers })
    const timer = setTimeout(() => {
      socket.terminate()
      reject(new Error(`no answer to the upgrade of ${urlPath} within 10 s\n${srv.output()}`))
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

/** GET `urlPath` of `srv` (bounded: 10 s): { status, body, json } (json: null when not JSON). */
async function httpGet(urlPath, srv = server) {
  const res = await fetch(`${srv.httpUrl}${urlPath}`, { signal: AbortSignal.timeout(10000) })
  const body = await res.text()
  let json = null
  try {
    json = JSON.parse(body)
  } catch {}
  return { status: res.status, body, json }
}

/** The CLOSE frames (code, reason) a recording client's sockets ended with. */
const closes = (c) => c.log.frames.filter((f) => f.dir === 'CLOSE').map((f) => ({ code: f.code, reason: f.reason }))

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

  it('a tenant whose database is down does not affect another', async () => {
    // `broken`: a supabase-js client connects and joins a public broadcast channel. The join
    // needs no database, so it is accepted although the tenant's database cannot be reached.
    const b = client('broken', 'b1')
    const bRoom = await channel(b, 'room', { config: { broadcast: { self: true, ack: true } }, expectOk: false })
    const bFirst = await Promise.race([bRoom.rec.first, h.sleep(15000).then(() => null)])
    assert.ok(bFirst, `a join status of broken within 15 s\n${h.dumpFrames([b])}`)
    assert.deepEqual(bFirst, { status: 'SUBSCRIBED', err: undefined }, h.dumpFrames([b]))
    assert.match(b.log.urls[0], new RegExp(`^ws://127\\.0\\.0\\.1:${server.port}/t/broken/realtime/v1/websocket\\?`))
    const bReply = framesOn(b, 'realtime:room').find((f) => !f.binary && f.msg[3] === 'phx_reply')
    assert.equal(bReply?.msg[4].status, 'ok', h.dumpFrames([b]))
    // Its readiness says what is wrong: 503, degraded.
    const bHealth = await httpGet('/t/broken/api/health')
    assert.equal(bHealth.status, 503, JSON.stringify(bHealth))
    assert.equal(bHealth.json?.status, 'degraded', bHealth.body)
    assert.equal(bHealth.json?.tenant, 'broken', bHealth.body)
    assert.equal(typeof bHealth.json?.problem, 'string', bHealth.body)
    assert.equal(bHealth.json?.database_connected, false, bHealth.body)

    // Meanwhile globex: two clients join and exchange 50 broadcasts, each side's in order
    // (25 each way, sent back to back, every one acknowledged).
    const g1 = client('globex', 'g1')
    const g2 = client('globex', 'g2')
    const config = { broadcast: { self: false, ack: true } }
    const g1Ticks = await channel(g1, 'ticks', { config })
    const g2Ticks = await channel(g2, 'ticks', { config })
    const sends = []
    for (let i = 0; i < 25; i++) {
      sends.push(g1Ticks.ch.send({ type: 'broadcast', event: 'tick', payload: { from: 'g1', n: i } }))
      sends.push(g2Ticks.ch.send({ type: 'broadcast', event: 'tick', payload: { from: 'g2', n: i } }))
    }
    assert.deepEqual(await Promise.all(sends), Array(50).fill('ok'), h.dumpFrames([g1, g2]))
    await wait(() => g1Ticks.got.length >= 25 && g2Ticks.got.length >= 25, '25 broadcasts at each globex client', [g1, g2])
    const seq = (from) => Array.from({ length: 25 }, (_, n) => ['tick', { from, n }])
    assert.deepEqual(g2Ticks.got.map((m) => [m.event, m.payload]), seq('g1'), h.dumpFrames([g2]))
    assert.deepEqual(g1Ticks.got.map((m) => [m.event, m.payload]), seq('g2'), h.dumpFrames([g1]))

    // Globex's own replication comes up (its readiness turns 200) while broken's keeps failing.
    let last
    await wait(
      async () => {
        last = await httpGet('/t/globex/api/health')
        // Not yet: the last answer is in the timeout's message.
        if (last.status !== 200) throw new Error(`globex health ${last.status}: ${last.body}`)
        return true
      },
      'globex health 200',
      [],
      30000
    )
    assert.equal(last.json?.status, 'ok', last.body)
    assert.equal(last.json?.tenant, 'globex', last.body)
    const bAgain = await httpGet('/t/broken/api/health')
    assert.equal(bAgain.status, 503, JSON.stringify(bAgain))

    // broken's client is still connected and joined, and its own broadcasts work (ack + self).
    assert.equal(await bRoom.ch.send({ type: 'broadcast', event: 'still-here', payload: { n: 1 } }), 'ok', h.dumpFrames([b]))
    await wait(() => bRoom.got.some((m) => m.event === 'still-here'), "broken's own broadcast back", [b])
    assert.ok(b.realtime.isConnected(), h.dumpFrames([b]))
    assert.deepEqual(closes(b), [], h.dumpFrames([b]))
    assert.deepEqual(bRoom.rec.statuses, [{ status: 'SUBSCRIBED', err: undefined }], h.dumpFrames([b]))
    assert.equal(b.log.urls.length, 1, b.log.urls.join('\n'))
    // Nor did globex's clients reconnect or see broken's message.
    for (const c of [g1, g2]) {
      assert.equal(c.log.urls.length, 1, `${c.name}: ${c.log.urls.join('\n')}`)
      assert.deepEqual(closes(c), [], h.dumpFrames([c]))
    }
    assert.ok(!g1Ticks.got.concat(g2Ticks.got).some((m) => m.event === 'still-here'))
  })
})

// ---------------------------------------------------------------- management API

const API_SECRET = 'management-api-secret-0123456789-abcdef'
const ENC_KEY = 'control-database-sealing-key-0123456789ab'
const MGMT_SECRET = 'mgmt-tenant-secret-0123456789-abcdefghijk'
const MGMT_SECRET_2 = 'mgmt-tenant-secret-rotated-0123456789-abc'

describe('the management API over a control database (TENANTS_DB_URL), supabase-js', () => {
  let api
  let apiDir
  before(async () => {
    apiDir = fs.mkdtempSync(path.join(os.tmpdir(), 'realtide-tenants-api-js-'))
    // The control database is the test cluster's `postgres`; no TENANTS_FILE (an empty one is
    // refused by the server, so none may come from this process's environment either).
    assert.equal(process.env.TENANTS_FILE, undefined, 'TENANTS_FILE must not be set for this suite')
    api = await h.startServer({
      TENANTS_DB_URL: db.dbUrl,
      DB_ENC_KEY: ENC_KEY,
      API_JWT_SECRET: API_SECRET,
      CHANGES_DIR: path.join(apiDir, 'changes'),
    })
  })
  after(async () => {
    await h.closeAllClients()
    if (api) await api.stop()
    if (apiDir) fs.rmSync(apiDir, { recursive: true, force: true })
  })

  const admin = () => h.signToken({ role: 'service_role', exp: h.nowSec() + 3600 }, API_SECRET)

  /** `method` `urlPath` of the management server (bounded: 20 s): { status, body, json, location }. */
  async function call(method, urlPath, { token, body } = {}) {
    const headers = { 'content-type': 'application/json' }
    if (token) headers.authorization = `Bearer ${token}`
    const res = await fetch(`${api.httpUrl}${urlPath}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(20000),
    })
    const text = await res.text()
    let json = null
    try {
      json = JSON.parse(text)
    } catch {}
    return { status: res.status, body: text, json, location: res.headers.get('location') }
  }

  /** A supabase-js client of the managed tenant `mgmt` whose anon key is signed with `secret`. */
  const mgmtClient = (name, secret) =>
    h.makeClient(
      { httpUrl: `${api.httpUrl}/t/mgmt`, wsBase: `${api.wsBase}/t/mgmt` },
      { name: `${name}@mgmt`, anonKey: h.signToken({ role: 'anon', exp: h.nowSec() + 3600 }, secret) }
    )

  it('create, rotate the secret of and delete a tenant while supabase-js clients use it', async () => {
    // Authorization: no token (and a tenant's token) get 403 with an empty body.
    const noToken = await call('GET', '/api/tenants')
    assert.equal(noToken.status, 403, JSON.stringify(noToken))
    assert.equal(noToken.body, '')
    const tenantToken = await call('GET', '/api/tenants', { token: h.signToken({ role: 'anon', exp: h.nowSec() + 3600 }, MGMT_SECRET) })
    assert.equal(tenantToken.status, 403, JSON.stringify(tenantToken))
    assert.equal(tenantToken.body, '')
    // Validation: an external id that cannot be a tenant's is refused, naming the field.
    const bad = await call('POST', '/api/tenants', { token: admin(), body: { tenant: { external_id: 'Bad.Id', jwt_secret: MGMT_SECRET } } })
    assert.equal(bad.status, 422, JSON.stringify(bad))
    assert.ok(Array.isArray(bad.json?.errors?.external_id), bad.body)
    const none = await call('GET', '/api/tenants', { token: admin() })
    assert.equal(none.status, 200, JSON.stringify(none))
    assert.deepEqual(none.json, { data: [] })

    // Create: a database of its own, then the tenant.
    await db.sql('create database mgmt')
    const mgmtUrl = db.dbUrl.replace(/\/[^/]*$/, '/mgmt')
    const created = await call('POST', '/api/tenants', {
      token: admin(),
      body: { tenant: { external_id: 'mgmt', jwt_secret: MGMT_SECRET, db_url: mgmtUrl } },
    })
    assert.equal(created.status, 201, `${JSON.stringify(created)}\n${api.output()}`)
    assert.equal(created.location, '/api/tenants/mgmt')
    assert.equal(created.json?.data?.external_id, 'mgmt', created.body)
    assert.ok(!created.body.includes(MGMT_SECRET), `the secret in the response: ${created.body}`)

    // Two supabase-js clients of it subscribe to `room`; a broadcast flows.
    const m1 = mgmtClient('m1', MGMT_SECRET)
    const m2 = mgmtClient('m2', MGMT_SECRET)
    const config = { broadcast: { self: false, ack: true } }
    const m1Room = await channel(m1, 'room', { config, recordSystem: true })
    const m2Room = await channel(m2, 'room', { config, recordSystem: true })
    assert.match(m1.log.urls[0], new RegExp(`^ws://127\\.0\\.0\\.1:${api.port}/t/mgmt/realtime/v1/websocket\\?`))
    assert.equal(await m1Room.ch.send({ type: 'broadcast', event: 'hello', payload: { n: 1 } }), 'ok', h.dumpFrames([m1]))
    await wait(() => m2Room.got.length >= 1, 'hello at m2', [m2])
    assert.deepEqual(m2Room.got.map((m) => [m.event, m.payload]), [['hello', { n: 1 }]])

    // Rotate its secret: 200, and the server disconnects both clients (a system message
    // "Server requested disconnect" on the channel, then close 1012).
    const rotated = await call('PUT', '/api/tenants/mgmt', { token: admin(), body: { tenant: { jwt_secret: MGMT_SECRET_2 } } })
    assert.equal(rotated.status, 200, `${JSON.stringify(rotated)}\n${api.output()}`)
    assert.ok(!rotated.body.includes(MGMT_SECRET_2), `the secret in the response: ${rotated.body}`)
    for (const [c, room] of [
      [m1, m1Room],
      [m2, m2Room],
    ]) {
      await wait(() => closes(c).length >= 1, `${c.name}'s socket closed by the server`, [c], 20000)
      assert.deepEqual(closes(c)[0], { code: 1012, reason: 'server restart' }, h.dumpFrames([c]))
      await wait(() => room.system.length >= 1, `${c.name}'s system message`, [c])
      assert.equal(room.system[0].message, 'Server requested disconnect', JSON.stringify(room.system))
      assert.equal(room.system[0].status, 'ok', JSON.stringify(room.system))
      // supabase-js: the channel leaves SUBSCRIBED; its subscribe callback reports the close.
      await wait(() => room.ch.state !== 'joined', `${c.name}'s channel no longer joined`, [c])
      await wait(() => room.rec.statuses.length >= 2, `${c.name}'s subscribe callback after the close`, [c])
      assert.deepEqual(
        room.rec.statuses.slice(0, 2),
        [
          { status: 'SUBSCRIBED', err: undefined },
          { status: 'CHANNEL_ERROR', err: 'socket closed: 1012 (server restart)' },
        ],
        h.dumpFrames([c])
      )
      // Its reconnects with the old key are refused at the upgrade: 401.
      await wait(() => refusals(c).length >= 1, `${c.name}'s reconnect refused`, [c], 20000)
      assert.deepEqual([...new Set(refusals(c))], ['Unexpected server response: 401'], h.dumpFrames([c]))
      assert.ok(!room.rec.statuses.slice(1).some((s) => s.status === 'SUBSCRIBED'), JSON.stringify(room.rec.statuses))
    }
    const old = await rawConnect(`/t/mgmt/realtime/v1/websocket?apikey=${encodeURIComponent(m1.anonKey)}&vsn=2.0.0`, {}, api)
    assert.equal(old.status, 401, JSON.stringify(old))
    await h.closeClient(m1)
    await h.closeClient(m2)

    // A client with a key signed by the new secret subscribes, and broadcasts.
    const m3 = mgmtClient('m3', MGMT_SECRET_2)
    const m3Room = await channel(m3, 'room', { config: { broadcast: { self: true, ack: true } }, recordSystem: true })
    assert.equal(await m3Room.ch.send({ type: 'broadcast', event: 'rotated', payload: { n: 2 } }), 'ok', h.dumpFrames([m3]))
    await wait(() => m3Room.got.some((m) => m.event === 'rotated'), 'rotated at m3', [m3])
    // Its replication runs (the slot the delete must drop).
    await db.waitForSlot('realtide_mgmt')

    // Delete: 204; m3 is disconnected the same way, the tenant is gone, its slot dropped.
    const deleted = await call('DELETE', '/api/tenants/mgmt', { token: admin() })
    assert.equal(deleted.status, 204, `${JSON.stringify(deleted)}\n${api.output()}`)
    await wait(() => closes(m3).length >= 1, "m3's socket closed by the server", [m3], 20000)
    assert.deepEqual(closes(m3)[0], { code: 1012, reason: 'server restart' }, h.dumpFrames([m3]))
    await wait(() => m3Room.system.length >= 1, "m3's system message", [m3])
    assert.equal(m3Room.system[0].message, 'Server requested disconnect', JSON.stringify(m3Room.system))
    await wait(() => m3Room.ch.state !== 'joined', "m3's channel no longer joined", [m3])
    await wait(() => m3Room.rec.statuses.length >= 2, "m3's subscribe callback after the close", [m3])
    assert.deepEqual(m3Room.rec.statuses[1], { status: 'CHANNEL_ERROR', err: 'socket closed: 1012 (server restart)' })
    const gone = await rawConnect(`/t/mgmt/realtime/v1/websocket?apikey=${encodeURIComponent(m3.anonKey)}&vsn=2.0.0`, {}, api)
    assert.equal(gone.status, 404, JSON.stringify(gone))
    assert.deepEqual(JSON.parse(gone.body), { error: 'Tenant not found' })
    const slots = (await db.sql("select count(*) from pg_replication_slots where slot_name = 'realtide_mgmt'")).trim()
    assert.equal(slots, '0', `realtide_mgmt is still there\n${api.output()}`)
    // m3's reconnects are refused as the tenant's are: 404.
    await wait(() => refusals(m3).length >= 1, "m3's reconnect refused", [m3], 20000)
    assert.deepEqual([...new Set(refusals(m3))], ['Unexpected server response: 404'], h.dumpFrames([m3]))
    const shown = await call('GET', '/api/tenants/mgmt', { token: admin() })
    assert.equal(shown.status, 404, JSON.stringify(shown))
  })
})
