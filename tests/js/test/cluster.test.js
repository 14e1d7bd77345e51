'use strict'
// Cluster mode end to end: supabase-js 2.119.1 clients spread across three realtide nodes
// that share one PostgreSQL and one NATS with JetStream (lib/cluster.js). A broadcast from
// any node (a channel's send(), httpSend(), POST /api/broadcast, realtime.send in the
// database) reaches the subscribers of every node exactly once, with self/ack as usual;
// presence sync, join and leave cross nodes; private channels are authorized on every node;
// postgres_changes reach each node's own subscribers under their own RLS claims.
//
// Exactly-once and absence are checked against barriers: a later message every receiver
// must get, after which the counts are compared exactly.

const { describe, it, before, after, afterEach } = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('node:crypto')
const h = require('../lib/helpers')
const { startCluster } = require('../lib/pg')
const { startClusterNodes } = require('../lib/cluster')

const ALICE = 'aaaaaaaa-0000-4000-8000-000000000001'
const BOB = 'bbbbbbbb-0000-4000-8000-000000000002'
const CAROL = 'cccccccc-0000-4000-8000-000000000003'

const SCHEMA = String.raw`
create table public.notes (id int8 primary key, owner uuid not null, body text);
alter table public.notes enable row level security;
create policy own on public.notes for select to authenticated using (owner = auth.uid());
grant select on public.notes to authenticated;
create publication supabase_realtime for table public.notes;
`

// Run after realtide installed the realtime schema: room:1 readable by Alice and Bob,
// writable by Alice.
const POLICIES = String.raw`
create table public.members (user_id uuid not null, room text not null, can_write boolean not null default false);
grant select on public.members to authenticated;
insert into public.members values
  ('${ALICE}', 'room:1', true),
  ('${BOB}', 'room:1', false);
create policy member_read on realtime.messages for select to authenticated using (
  exists (select 1 from public.members m where m.user_id = auth.uid() and m.room = realtime.topic()));
create policy writer_write on realtime.messages for insert to authenticated with check (
  exists (select 1 from public.members m
          where m.user_id = auth.uid() and m.room = realtime.topic() and m.can_write));
`

let db
let cluster
let nodes
before(async () => {
  db = await startCluster()
  await db.sql(SCHEMA)
  cluster = await startClusterNodes(db, { n: 3 })
  nodes = cluster.nodes
  await db.sql(POLICIES)
})
afterEach(async () => {
  await h.closeAllClients()
})
after(async () => {
  await h.closeAllClients()
  if (cluster) await cluster.stop()
  if (db) await db.stop()
})

const wait = (cond, what, clients = []) =>
  h.waitFor(cond, what, { clients, timeout: 15000 }).catch((e) => {
    throw new Error(`${e.message}\n${cluster.output(25)}`)
  })

/** A client of node `i` (0-based). */
function client(i, name, opts = {}) {
  return h.makeClient(nodes[i].endpoint, { name: `${name}@${nodes[i].name}`, ...opts })
}

function userClient(i, name, sub) {
  const userToken = h.token({ role: 'authenticated', sub })
  const c = client(i, name, { accessToken: async () => userToken })
  c.userToken = userToken
  return c
}

/** Subscribes to `topic` with `config`; every broadcast goes to `got`. */
async function listen(c, topic, config = {}) {
  const got = []
  const ch = c.supabase.channel(topic, { config })
  ch.on('broadcast', { event: '*' }, (m) => got.push(m))
  if (c.userToken) await h.connectSettled(c, c.userToken)
  await h.subscribeOk(ch, [c])
  return { c, ch, got, events: () => got.map((m) => m.event) }
}

describe('cluster of three nodes', () => {
  it('every node reports the cluster in /api/health: all nodes, one slot holder', async () => {
    const bodies = await Promise.all(nodes.map((n) => n.health()))
    const names = nodes.map((n) => n.name).sort()
    const holders = new Set()
    for (const [i, body] of bodies.entries()) {
      assert.ok(body.cluster, `no cluster in ${JSON.stringify(body)}`)
      assert.equal(body.cluster.node, nodes[i].name)
      assert.equal(body.cluster.nats, 'connected')
      assert.deepEqual(body.cluster.nodes, names)
      holders.add(body.cluster.slot_holder)
    }
    assert.equal(holders.size, 1, JSON.stringify(bodies.map((b) => b.cluster)))
    assert.ok(names.includes([...holders][0]))
  })

  it('send() on each node reaches every node once, with self and ack', async () => {
    const topic = h.uniqueTopic('xbroadcast')
    const subs = []
    // node-2's subscriber speaks vsn 1.0.0, the others 2.0.0.
    for (let i = 0; i < 3; i++) {
      const vsn = i === 1 ? '1.0.0' : '2.0.0'
      subs.push(await listen(client(i, `echo${i}(${vsn})`, { vsn }), topic, { broadcast: { self: true, ack: true } }))
    }
    const quiet = await listen(client(1, 'quiet'), topic, { broadcast: { self: false } })
    const all = subs.map((s) => s.c).concat(quiet.c)
    for (let k = 0; k < 3; k++) {
      assert.equal(await subs[k].ch.send({ type: 'broadcast', event: `from-${k}`, payload: { k } }), 'ok', h.dumpFrames(all))
    }
    assert.equal(await quiet.ch.send({ type: 'broadcast', event: 'from-quiet', payload: {} }), 'ok')
    // Barrier: node-3's subscriber sends last; everyone (self: true included) waits for it.
    assert.equal(await subs[2].ch.send({ type: 'broadcast', event: 'end', payload: {} }), 'ok')
    for (const s of subs) await wait(() => s.events().includes('end'), `end at ${s.c.name}`, [s.c])
    await wait(() => quiet.events().includes('end'), 'end at quiet', [quiet.c])
    await h.sleep(500)
    for (const s of subs) {
      assert.deepEqual(
        s.events().sort(),
        ['end', 'from-0', 'from-1', 'from-2', 'from-quiet'],
        `${s.c.name}\n${h.dumpFrames([s.c])}`
      )
      assert.deepEqual(
        s.got.filter((m) => m.event.startsWith('from-') && m.event !== 'from-quiet').map((m) => m.payload.k).sort(),
        [0, 1, 2]
      )
    }
    // self: false: the quiet subscriber never hears itself.
    assert.deepEqual(quiet.events().sort(), ['end', 'from-0', 'from-1', 'from-2'], h.dumpFrames([quiet.c]))
  })

  it('one publisher: 200 messages arrive once each, in order, on the other nodes', async () => {
    const topic = h.uniqueTopic('xorder')
    const pub = await listen(client(0, 'publisher'), topic, {})
    const subs = [await listen(client(1, 'order-1'), topic), await listen(client(2, 'order-2'), topic)]
    for (let i = 0; i < 200; i++) pub.ch.send({ type: 'broadcast', event: 'seq', payload: { i } })
    await pub.ch.send({ type: 'broadcast', event: 'end', payload: {} })
    for (const s of subs) await wait(() => s.events().includes('end'), `end at ${s.c.name}`, [s.c])
    await h.sleep(300)
    const want = Array.from({ length: 200 }, (_, i) => i)
    for (const s of subs) {
      assert.deepEqual(
        s.got.filter((m) => m.event === 'seq').map((m) => m.payload.i),
        want,
        s.c.name
      )
      assert.equal(s.got.length, 201, s.c.name)
    }
  })

  it('httpSend(), POST /api/broadcast and realtime.send reach every node once', async () => {
    const topic = h.uniqueTopic('xhttp')
    const subs = []
    for (let i = 0; i < 3; i++) subs.push(await listen(client(i, `http${i}`), topic))
    const sender = client(1, 'http-sender', { anonKey: h.token({ role: 'service_role' }) })
    const unjoined = sender.supabase.channel(topic)
    assert.deepEqual(await unjoined.httpSend('via-httpSend', { n: 1 }), { success: true })
    const res = await fetch(`${nodes[2].httpUrl}/api/broadcast`, {
      method: 'POST',
      headers: { apikey: h.token({ role: 'service_role' }), 'content-type': 'application/json' },
      body: JSON.stringify({ messages: [{ topic, event: 'via-batch', payload: { n: 2 } }] }),
    })
    assert.equal(res.status, 202)
    await db.sql(`select realtime.send('{"n": 3}'::jsonb, 'via-db', '${topic}', false)`)
    // Barrier from node-1's HTTP API.
    const last = await fetch(`${nodes[0].httpUrl}/api/broadcast/${encodeURIComponent(topic)}/events/end`, {
      method: 'POST',
      headers: { apikey: h.token({ role: 'service_role' }), 'content-type': 'application/json' },
      body: '{}',
    })
    assert.equal(last.status, 202)
    for (const s of subs) await wait(() => s.events().includes('end'), `end at ${s.c.name}`, [s.c])
    await h.sleep(500)
    for (const s of subs) {
      assert.deepEqual(s.events().sort(), ['end', 'via-batch', 'via-db', 'via-httpSend'], `${s.c.name}\n${h.dumpFrames([s.c])}`)
      assert.equal(s.got.find((m) => m.event === 'via-db').payload.n, 3)
    }
  })

  it('presence: sync, join and leave across nodes', async () => {
    const topic = h.uniqueTopic('xpresence')
    const members = []
    for (let i = 0; i < 3; i++) {
      const c = client(i, `member${i}`)
      const ev = { joins: [], leaves: [], syncs: 0 }
      const ch = c.supabase
        .channel(topic, { config: { presence: { key: `key-${i}` } } })
        .on('presence', { event: 'sync' }, () => ev.syncs++)
        .on('presence', { event: 'join' }, (p) => ev.joins.push(p))
        .on('presence', { event: 'leave' }, (p) => ev.leaves.push(p))
      await h.subscribeOk(ch, [c])
      assert.equal(await ch.track({ node: nodes[i].name }), 'ok')
      members.push({ c, ch, ev })
    }
    const keys = ['key-0', 'key-1', 'key-2']
    const clients = members.map((m) => m.c)
    for (const m of members) {
      await wait(() => JSON.stringify(Object.keys(m.ch.presenceState()).sort()) === JSON.stringify(keys), `${m.c.name} sees all three`, clients)
      const st = m.ch.presenceState()
      for (let i = 0; i < 3; i++) assert.equal(st[`key-${i}`][0].node, nodes[i].name)
    }
    // The same presence_ref for a member everywhere.
    const ref2 = members[2].ch.presenceState()['key-2'][0].presence_ref
    for (const m of members) assert.equal(m.ch.presenceState()['key-2'][0].presence_ref, ref2)
    // A late joiner on node-2 gets the state of all three in its presence_state.
    const late = client(1, 'late')
    // A presence listener makes realtime-js join with presence enabled.
    const lateCh = late.supabase.channel(topic, { config: { presence: { key: 'late' } } }).on('presence', { event: 'sync' }, () => {})
    await h.subscribeOk(lateCh, [late])
    await wait(() => Object.keys(lateCh.presenceState()).length === 3, 'late sees three', [late])

    // node-3's member leaves (its socket closes): it leaves on node-1 and node-2.
    await h.closeClient(members[2].c)
    for (const m of members.slice(0, 2)) {
      await wait(() => m.ev.leaves.some((p) => p.key === 'key-2'), `${m.c.name} sees key-2 leave`, clients)
      assert.equal(m.ev.leaves.find((p) => p.key === 'key-2').leftPresences[0].presence_ref, ref2)
      await wait(() => !m.ch.presenceState()['key-2'], `${m.c.name} state without key-2`, clients)
    }
    // untrack() on node-1: leaves on node-2.
    assert.equal(await members[0].ch.untrack(), 'ok')
    await wait(() => members[1].ev.leaves.some((p) => p.key === 'key-0'), 'key-0 leaves on node-2', clients)
    await wait(() => JSON.stringify(Object.keys(lateCh.presenceState())) === '["key-1"]', 'late sees only key-1', [late])
  })

  it('private channels: members join on any node, writes cross nodes, others are refused', async () => {
    const alice = userClient(0, 'alice', ALICE)
    const bob = userClient(2, 'bob', BOB)
    const carol = userClient(1, 'carol', CAROL)
    const a = await listen(alice, 'room:1', { private: true, broadcast: { ack: true } })
    const b = await listen(bob, 'room:1', { private: true, broadcast: { ack: true } })
    await h.connectSettled(carol, carol.userToken)
    const refused = h.subscribe(carol.supabase.channel('room:1', { config: { private: true } }))
    const first = await refused.first
    assert.equal(first.status, 'CHANNEL_ERROR', JSON.stringify(first))
    assert.match(first.err, /Unauthorized/)

    assert.equal(await a.ch.send({ type: 'broadcast', event: 'msg', payload: { from: 'alice' } }), 'ok')
    // Bob may read but not write: no ack, nothing delivered.
    assert.equal(await b.ch.send({ type: 'broadcast', event: 'denied', payload: { from: 'bob' } }, { timeout: 1500 }), 'timed out')
    // Barrier from the database, private.
    await db.sql(`select realtime.send('{"n": 1}'::jsonb, 'end', 'room:1', true)`)
    await wait(() => b.events().includes('end') && a.events().includes('end'), 'end at alice and bob', [alice, bob])
    await h.sleep(300)
    assert.deepEqual(b.events(), ['msg', 'end'], h.dumpFrames([bob]))
    assert.deepEqual(a.events(), ['end'], h.dumpFrames([alice]))
  })

  it('postgres_changes with RLS: each user on its own node gets only its own rows', async () => {
    const users = [
      { i: 0, sub: ALICE, name: 'alice' },
      { i: 2, sub: BOB, name: 'bob' },
    ]
    for (const u of users) {
      u.c = userClient(u.i, `pg-${u.name}`, u.sub)
      u.rows = []
      u.system = []
      const ch = u.c.supabase.channel(h.uniqueTopic(`pg-${u.name}`))
      ch.on('postgres_changes', { event: '*', schema: 'public', table: 'notes' }, (p) => u.rows.push(p))
      ch.on('system', {}, (p) => u.system.push(p))
      await h.connectSettled(u.c, u.c.userToken)
      await h.subscribeOk(ch, [u.c])
      await wait(() => u.system.some((p) => p.extension === 'postgres_changes' && p.status === 'ok'), `Subscribed to PostgreSQL at ${u.name}`, [u.c])
    }
    const base = 1000 + crypto.randomInt(1e6)
    const plan = [ALICE, BOB, ALICE, BOB, ALICE, BOB]
    for (const [k, owner] of plan.entries()) {
      await db.sql(`insert into public.notes values (${base + k}, '${owner}', 'n${k}')`)
    }
    await db.sql(`update public.notes set body = 'edited' where id = ${base + 2}`)
    for (const u of users) {
      const want = plan.flatMap((o, k) => (o === u.sub ? [['INSERT', base + k]] : []))
      if (u.sub === ALICE) want.push(['UPDATE', base + 2])
      await wait(() => u.rows.length >= want.length, `${want.length} changes at ${u.name}`, [u.c])
      // The last change of both is after every other row: nothing foreign can come later.
      await h.sleep(300)
      assert.deepEqual(
        u.rows.map((p) => [p.eventType, Number(p.new.id)]),
        want,
        `${u.name}\n${h.dumpFrames([u.c])}`
      )
      assert.ok(u.rows.every((p) => p.new.owner === u.sub))
    }
  })
})
