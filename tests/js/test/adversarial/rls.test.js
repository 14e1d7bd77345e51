'use strict'
// Adversarial: attempts to read rows, columns, messages or presence a token may not read, over
// postgres_changes, private channels, the HTTP API and database broadcast, plus the identity
// races (a token switched or expiring while the subscription is being set up) and filter
// amplification. A subscriber receiving anything its token could not read is a failure; every
// absence is asserted against a barrier (a later change the same subscriber must receive, in
// commit order). A canary on the same server must keep receiving throughout.

const { describe, it, before, after } = require('node:test')
const assert = require('node:assert/strict')
const h = require('../../lib/helpers')
const { startCluster, slotName } = require('../../lib/pg')
const { Raw, canary } = require('../../lib/adversarial')
const { isReleaseBinary } = require('../../lib/faults')

const A = 'aaaaaaaa-0000-4000-8000-00000000000a'
const B = 'bbbbbbbb-0000-4000-8000-00000000000b'
const C = 'cccccccc-0000-4000-8000-00000000000c'

const SCHEMA = `
create table public.notes (id int8 primary key, owner uuid not null, body text, secret text);
alter table public.notes enable row level security;
alter table public.notes replica identity full;
create policy own on public.notes for select to authenticated using (owner = auth.uid());
grant select (id, owner, body) on public.notes to authenticated;

create schema hidden;
create table hidden.secrets (id int8 primary key, body text);
grant select on hidden.secrets to authenticated;
revoke usage on schema hidden from authenticated, public;

create table public.board (id int8 primary key, body text);
grant select on public.board to anon, authenticated;

create table public.unpublished (id int8 primary key, body text);
grant select on public.unpublished to anon, authenticated;

create publication supabase_realtime for table public.notes, hidden.secrets, public.board;
`

// Policies on realtime.messages: the schema is installed by realtide at start.
const POLICIES = `
create policy adv_broadcast_read on realtime.messages for select to authenticated
  using (realtime.topic() like 'adv-%' and extension = 'broadcast');
create policy adv_presence_read_a on realtime.messages for select to authenticated
  using (realtime.topic() like 'adv-%' and extension = 'presence' and auth.uid() = '${A}');
create policy adv_write on realtime.messages for insert to authenticated
  with check (realtime.topic() like 'adv-%' and extension in ('presence', 'broadcast'));
`

let db
let server
let bird
let nextId = 1000
before(async () => {
  db = await startCluster()
  await db.sql(SCHEMA)
  const slot = slotName()
  server = await h.startServer({ DB_URL: db.dbUrl, SLOT_NAME: slot })
  await db.waitForSlot(slot)
  await db.sql(POLICIES)
  bird = await canary(server)
})
after(async () => {
  bird?.stop()
  await h.closeAllClients()
  if (server) await server.stop()
  if (db) await db.stop()
})

const userToken = (sub, ttlSec = 3600) => h.token({ role: 'authenticated', sub, ttlSec })

/** A raw client joined to `topic` with postgres_changes `bindings`; waits for the system status. */
async function subscriber(token, bindings, { topic = `realtime:${h.uniqueTopic('adv')}`, afterJoin } = {}) {
  const raw = await Raw.open(server, { token })
  const ref = raw.next()
  raw.send([ref, ref, topic, 'phx_join', { config: { postgres_changes: bindings }, access_token: token }])
  if (afterJoin) afterJoin(raw, ref, topic)
  await raw.waitFor((m) => Array.isArray(m) && m[1] === ref && m[3] === 'phx_reply', 'join reply')
  const system = await raw.waitFor(
    (m) => Array.isArray(m) && m[2] === topic && m[3] === 'system' && m[4].extension === 'postgres_changes',
    'postgres_changes system message'
  )
  return { raw, topic, joinRef: ref, system: system[4] }
}

/** postgres_changes data objects a raw client received on `topic`. */
const changes = (sub) =>
  sub.raw.messages.filter((m) => Array.isArray(m) && m[2] === sub.topic && m[3] === 'postgres_changes').map((m) => m[4].data)

const ids = (sub, type) =>
  changes(sub)
    .filter((d) => !type || d.type === type)
    .map((d) => Number((d.type === 'DELETE' ? d.old_record : d.record).id))

async function barrier(sub, id, type = 'INSERT') {
  await h.waitFor(() => ids(sub, type).includes(id), `barrier ${type} ${id} delivered`, { timeout: 15000 })
}

const notesBinding = (extra = {}) => [{ event: '*', schema: 'public', table: 'notes', ...extra }]

describe('adversarial: rows a token may not read', () => {
  it('a role without USAGE on the schema gets no row data from a table in it', async () => {
    const sub = await subscriber(userToken(A), [
      { event: '*', schema: 'hidden', table: 'secrets' },
      { event: '*', schema: 'public', table: 'board' },
    ])
    const id = nextId++
    await db.sql(`insert into hidden.secrets values (${id}, 'top-secret-${id}'); insert into public.board values (${id}, 'barrier')`)
    await barrier(sub, id)
    const leaked = JSON.stringify(sub.raw.messages).includes(`top-secret-${id}`)
    assert.ok(!leaked, `secret row data delivered: ${JSON.stringify(changes(sub))}`)
    sub.raw.close()
  })

  it('columns without SELECT never appear; other owners rows never arrive', async () => {
    const sub = await subscriber(userToken(A), notesBinding())
    const [theirs, mine] = [nextId++, nextId++]
    await db.sql(`insert into notes values (${theirs}, '${B}', 'b', 's-b'); insert into notes values (${mine}, '${A}', 'a', 's-a')`)
    await barrier(sub, mine)
    assert.deepEqual(ids(sub), [mine])
    const record = changes(sub)[0].record
    assert.ok(!('secret' in record), `a column without SELECT was sent: ${JSON.stringify(record)}`)
    sub.raw.close()
  })

  it('DELETE filters are no oracle: a deleted row of another owner never reaches a filter matching its values', async () => {
    const sub = await subscriber(userToken(B), notesBinding({ event: 'DELETE', filter: 'body=eq.guess' }))
    const [theirs, mine] = [nextId++, nextId++]
    await db.sql(`insert into notes values (${theirs}, '${A}', 'guess', 'x'), (${mine}, '${B}', 'guess', 'y');
                  delete from notes where id = ${theirs}; delete from notes where id = ${mine}`)
    await barrier(sub, mine, 'DELETE')
    assert.deepEqual(ids(sub, 'DELETE'), [mine])
    sub.raw.close()
  })

  it('an owner change UPDATE reaches the new owner only', async () => {
    const a = await subscriber(userToken(A), notesBinding({ event: 'UPDATE' }))
    const c = await subscriber(userToken(C), notesBinding({ event: 'UPDATE' }))
    const [moved, barrierId] = [nextId++, nextId++]
    await db.sql(`insert into notes values (${moved}, '${A}', 'mine', 'x'), (${barrierId}, '${A}', 'b', 'x');
                  update notes set owner = '${C}' where id = ${moved};
                  update notes set body = 'barrier' where id = ${barrierId}`)
    await barrier(a, barrierId, 'UPDATE')
    await barrier(c, moved, 'UPDATE')
    assert.deepEqual(ids(a, 'UPDATE'), [barrierId], 'the old owner may no longer read the row')
    a.raw.close()
    c.raw.close()
  })

  it('unpublished tables, bad filters and injection attempts are refused with a system error', async () => {
    for (const binding of [
      { event: '*', schema: 'public', table: 'unpublished' },
      { event: '*', schema: 'public', table: 'notes', filter: "id=eq.1);drop table public.board;--" },
      { event: '*', schema: 'public', table: 'notes', filter: 'secret=eq.x' },
      { event: '*', schema: 'public', table: 'notes', filter: 'id=like.' + '%a'.repeat(200) },
    ]) {
      const sub = await subscriber(userToken(A), [binding])
      assert.equal(sub.system.status, 'error', `${JSON.stringify(binding)}: ${JSON.stringify(sub.system)}`)
      sub.raw.close()
    }
    assert.equal((await db.sql("select count(*) from pg_tables where tablename = 'board'")).trim(), '1')
  })

  it('a wildcard schema subscription still gets only rows the token may read', async () => {
    const sub = await subscriber(userToken(B), [{ event: 'INSERT', schema: '*' }])
    const [theirs, mine, hiddenId] = [nextId++, nextId++, nextId++]
    await db.sql(`insert into hidden.secrets values (${hiddenId}, 'wild-secret'); insert into notes values (${theirs}, '${A}', 'a', 'x'), (${mine}, '${B}', 'b', 'y')`)
    await barrier(sub, mine)
    assert.ok(!ids(sub).includes(theirs), 'another owner row delivered')
    assert.ok(!JSON.stringify(sub.raw.messages).includes('wild-secret'), 'a row of a schema without USAGE delivered')
    sub.raw.close()
  })
})

describe('adversarial: identity races', () => {
  it('access_token sent right after the join replaces the identity before any row (5 runs)', async () => {
    for (let run = 0; run < 5; run++) {
      const tokenC = userToken(C)
      const sub = await subscriber(userToken(A), notesBinding({ event: 'INSERT' }), {
        afterJoin: (raw, ref, topic) => raw.send([ref, raw.next(), topic, 'access_token', { access_token: tokenC }]),
      })
      const [ofA, ofC] = [nextId++, nextId++]
      await db.sql(`insert into notes values (${ofA}, '${A}', 'a', 'x'); insert into notes values (${ofC}, '${C}', 'c', 'x')`)
      await barrier(sub, ofC)
      assert.deepEqual(ids(sub), [ofC], `run ${run}: rows of the replaced identity delivered`)
      sub.raw.close()
    }
  })

  it('a token that expires while subscribed gets no row committed after its expiry', async () => {
    const sub = await subscriber(h.token({ role: 'authenticated', sub: A, ttlSec: 3 }), notesBinding({ event: 'INSERT' }))
    await new Promise((r) => setTimeout(r, 4500))
    const late = nextId++
    await db.sql(`insert into notes values (${late}, '${A}', 'late', 'x')`)
    // The channel is shut down at expiry; give a delivery time to arrive if it were to.
    await sub.raw.waitFor((m) => Array.isArray(m) && m[2] === sub.topic && m[3] === 'phx_close', 'channel closed at expiry')
    await new Promise((r) => setTimeout(r, 1500))
    assert.ok(!ids(sub).includes(late), 'a row committed after expiry was delivered')
    sub.raw.close()
  })
})

describe('adversarial: private channels', () => {
  it('public and private channels of one name stay apart over WebSocket, HTTP and the database', async () => {
    const name = `adv-${h.uniqueTopic('iso')}`
    const pub = await Raw.open(server, { token: userToken(B) })
    await pub.join(`realtime:${name}`, { broadcast: { self: false } })
    const priv = await Raw.open(server, { token: userToken(B) })
    const joined = await priv.join(`realtime:${name}`, { private: true }, { access_token: userToken(B) })
    assert.equal(joined.payload.status, 'ok', JSON.stringify(joined.payload))
    const service = h.token({ role: 'service_role' })
    const post = (isPrivate, event) =>
      fetch(`${server.httpUrl}/api/broadcast`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${service}`, apikey: service },
        body: JSON.stringify({ messages: [{ topic: name, event, payload: { x: 1 }, private: isPrivate }] }),
      })
    assert.equal((await post(true, 'http-private')).status, 202)
    assert.equal((await post(false, 'http-public')).status, 202)
    await db.sql(`select realtime.send('{"x":1}'::jsonb, 'db-private', '${name}', true); select realtime.send('{"x":1}'::jsonb, 'db-public', '${name}', false)`)
    // Text broadcasts, and V2 kind-4 binary ones: [4, topic len, event len, meta len, encoding, topic, event, ...].
    const eventOf = (m) => {
      if (Array.isArray(m) && m[3] === 'broadcast') return m[4].event
      const b = m.binary
      if (b && b[0] === 4) return b.subarray(5 + b[1], 5 + b[1] + b[2]).toString('utf8')
      return null
    }
    const events = (raw) => raw.messages.map(eventOf).filter((e) => e !== null)
    await h.waitFor(() => events(pub).includes('db-public') && events(priv).includes('db-private'), 'both database broadcasts', {
      timeout: 15000,
    }).catch((e) => {
      throw new Error(`${e.message}\npublic got ${JSON.stringify(pub.messages)}\nprivate got ${JSON.stringify(priv.messages)}`)
    })
    assert.deepEqual(events(pub).sort(), ['db-public', 'http-public'])
    assert.deepEqual(events(priv).sort(), ['db-private', 'http-private'])
    pub.close()
    priv.close()
  })

  it('a private member without presence read receives neither presence_state nor presence_diff', async () => {
    const topic = `realtime:adv-${h.uniqueTopic('presence')}`
    const reader = await Raw.open(server, { token: userToken(A) })
    const r = await reader.join(topic, { private: true, presence: { key: 'a', enabled: true } }, { access_token: userToken(A) })
    assert.equal(r.payload.status, 'ok')
    const blind = await Raw.open(server, { token: userToken(B) })
    const b = await blind.join(topic, { private: true, presence: { key: 'b', enabled: true } }, { access_token: userToken(B) })
    assert.equal(b.payload.status, 'ok')
    const disabled = await Raw.open(server, { token: userToken(C) })
    const d = await disabled.join(topic, { private: true }, { access_token: userToken(C) })
    assert.equal(d.payload.status, 'ok')
    // A tracks; A sees its own diff (it may read presence); B and C must see nothing.
    const ref = reader.next()
    reader.send([r.joinRef, ref, topic, 'presence', { type: 'presence', event: 'track', payload: { secret_meta: 'where-a-is' } }])
    await reader.waitFor((m) => Array.isArray(m) && m[3] === 'presence_diff', 'own diff')
    // Barrier: a broadcast after the diff, which B and C may read.
    reader.send([r.joinRef, reader.next(), topic, 'broadcast', { type: 'broadcast', event: 'after', payload: {} }])
    for (const raw of [blind, disabled]) {
      await raw.waitFor((m) => Array.isArray(m) && m[3] === 'broadcast' && m[4].event === 'after', 'barrier broadcast')
      const presence = raw.messages.filter((m) => Array.isArray(m) && (m[3] === 'presence_diff' || m[3] === 'presence_state'))
      assert.deepEqual(presence, [], 'presence delivered without presence read')
    }
    for (const raw of [reader, blind, disabled]) raw.close()
  })
})

describe('adversarial: filter amplification', () => {
  it('bindings and pattern length are bounded; many long like filters do not stall another subscriber', async () => {
    const tooMany = Array.from({ length: 101 }, (_, i) => ({ event: 'INSERT', schema: 'public', table: 'board', filter: `body=like.%${i}%` }))
    const refused = await subscriber(userToken(A), tooMany)
    assert.equal(refused.system.status, 'error')
    assert.match(refused.system.message, /Maximum 100/)
    const long = await subscriber(userToken(A), [{ event: 'INSERT', schema: 'public', table: 'board', filter: `body=like.${'%a'.repeat(129)}` }])
    assert.equal(long.system.status, 'error')
    assert.match(long.system.message, /Maximum 256/)
    refused.raw.close()
    long.raw.close()
    // 10 channels x 100 bindings of 256-character adversarial patterns.
    const pattern = `${'%a'.repeat(127)}%b`
    const heavy = []
    for (let i = 0; i < 10; i++) {
      heavy.push(
        await subscriber(
          userToken(A),
          Array.from({ length: 100 }, (_, n) => ({ event: 'INSERT', schema: 'public', table: 'board', filter: `body=like.${pattern.slice(0, 250)}${n}` }))
        )
      )
    }
    for (const sub of heavy) assert.equal(sub.system.status, 'ok', JSON.stringify(sub.system))
    const watcher = await subscriber(userToken(B), [{ event: 'INSERT', schema: 'public', table: 'board' }])
    const bigId = nextId++
    const started = Date.now()
    await db.sql(`insert into board values (${bigId}, repeat('a', 20000))`)
    await barrier(watcher, bigId)
    const latency = Date.now() - started
    console.log(`# figure: filter-amplification bindings=1000 pattern_chars=255 value_bytes=20000 other_subscriber_latency_ms=${latency}`)
    // The bound scales with bindings x value length x pattern/64; a debug binary is ~50 times
    // slower than the release one this bound is stated for (a backtracking matcher took
    // minutes here).
    const bound = isReleaseBinary() ? 5000 : 60000
    assert.ok(latency < bound, `another subscriber waited ${latency} ms`)
    for (const sub of [...heavy, watcher]) sub.raw.close()
    await bird.check('after the filter amplification')
  })
})
