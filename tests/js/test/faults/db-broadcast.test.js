'use strict'
// Fault suite: broadcast from the database (`realtime.send`) under faults. A procedure inside
// PostgreSQL commits transaction i = 1..N, each sending {"n": i} as event `tick` to the test's
// topics; supabase-js 2.119.1 clients listen on a public channel and (second case) a private
// one (authorized by a read policy on realtime.messages).
//
// (a) realtide SIGTERM mid-stream and a new realtide ~1 s later on the same port, CHANGES_DIR
//     and SLOT_NAME; the client rejoins by itself. Database broadcasts sent while the channel
//     is not joined may be lost (they are not resumed; replay is the tool for that), so only
//     this is checked: nothing is delivered twice, everything in order, and the messages sent
//     once the channel is joined again all arrive.
// (b) 3,000 transactions while the walsender is terminated 5 times
//     (`pg_terminate_backend` of pg_stat_replication's pids); realtide and the channels stay
//     up, so every message must arrive exactly once, in order, on both channels.

const { describe, it, before, after } = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('node:crypto')
const h = require('../../lib/helpers')
const f = require('../../lib/faults')
const { startCluster } = require('../../lib/pg')

let db
const deployments = []
before(async () => {
  db = await startCluster()
  await f.installInserter(db)
})
after(async () => {
  await h.closeAllClients()
  for (const rt of deployments) {
    await rt.stop()
    rt.removeJournal()
  }
  if (db) await db.stop()
})

/** Subscribes `c` to broadcasts `tick` on `topic`; the payload's n goes to a SeqTracker. */
async function tickChannel(c, topic, { isPrivate = false } = {}) {
  const tracker = new f.SeqTracker(`${c.name} on ${topic}`)
  const statuses = []
  const system = []
  const ch = c.supabase.channel(topic, { config: { private: isPrivate } })
  ch.on('broadcast', { event: 'tick' }, (m) => tracker.add(m.payload.n))
  ch.on('system', {}, (p) => system.push(p))
  if (c.userToken) await h.connectSettled(c, c.userToken)
  ch.subscribe((status, err) => statuses.push({ status, err: err ? String(err.message ?? err) : undefined }))
  await h.waitFor(() => statuses.length > 0, `subscribe ${topic}`, { clients: [c], timeout: 20000 })
  assert.equal(statuses[0].status, 'SUBSCRIBED', `${JSON.stringify(statuses[0])}\n${h.dumpFrames([c])}`)
  return { c, ch, topic, tracker, statuses, system }
}

const joins = (s) => s.statuses.filter((x) => x.status === 'SUBSCRIBED').length
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i)

describe('database broadcast (realtime.send) under faults', () => {
  it('(a) realtide SIGTERM restart: no duplicates, in order, and everything sent after the rejoin arrives', { timeout: 120000 }, async (t) => {
    const rt = await f.startRealtide(db)
    deployments.push(rt)
    const c = f.anonClient(rt.endpoint, 'listener')
    const topic = h.uniqueTopic('faults-dbb')
    const s = await tickChannel(c, topic)
    const ctx = () => [f.connectionSummary(c), `statuses: ${JSON.stringify(s.statuses)}`, rt.output(), h.dumpFrames([c])].join('\n')
    const N = 2000
    const sender = f.startSender(db, { topics: [{ topic, private: false }], first: 1, last: N, rate: 200 })
    try {
      await h.sleep(3000)
      assert.ok(s.tracker.count > 0, `messages arrived before the restart\n${ctx()}`)
      const res = await rt.restart('SIGTERM', 1000)
      assert.equal(res.code, 0)
      await h.waitFor(() => joins(s) >= 2, 'the channel rejoined the new realtide', { clients: [c], timeout: 30000 })
      await sender.done
    } finally {
      await sender.stop()
    }
    // Sent while the channel is joined again: all of these must arrive.
    const M = 100
    const final = f.startSender(db, { topics: [{ topic, private: false }], first: N + 1, last: N + M, rate: 1000 })
    await final.done
    await h.waitFor(() => range(N + 1, N + M).every((n) => s.tracker.has(n)), 'the messages sent after the rejoin', {
      clients: [c],
      timeout: 30000,
    }).catch((e) => assert.fail(`${e.message}\n${s.tracker.check(range(N + 1, N + M)).text}\n${ctx()}`))
    await h.sleep(500)
    const all = s.tracker.check(range(1, N + M))
    t.diagnostic(`received ${s.tracker.count} of ${N + M}; missing (allowed while the channel was not joined): ${f.ranges(all.missing)}`)
    assert.equal(all.duplicated.length, 0, `no message twice\n${all.text}\n${ctx()}`)
    assert.equal(all.inversions, 0, `in order\n${all.text}\n${ctx()}`)
    assert.equal(all.unexpected.length, 0, all.text)
    assert.equal(s.ch.state, 'joined')
    await h.closeClient(c)
    await rt.stop()
  })

  it('(b) 5 walsender terminations during 3,000 transactions: every message exactly once, in order, public and private', { timeout: 150000 }, async (t) => {
    const rt = await f.startRealtide(db)
    deployments.push(rt)
    await db.sql(`
      drop policy if exists faults_read on realtime.messages;
      create policy faults_read on realtime.messages for select to authenticated using (true);
    `)
    const pub = f.anonClient(rt.endpoint, 'public-listener')
    const priv = f.userClient(rt.endpoint, 'private-listener', crypto.randomUUID())
    const pubTopic = h.uniqueTopic('faults-dbb-pub')
    const privTopic = h.uniqueTopic('faults-dbb-priv')
    const sp = await tickChannel(pub, pubTopic)
    const sv = await tickChannel(priv, privTopic, { isPrivate: true })
    const ctx = () =>
      [f.connectionSummary(pub), f.connectionSummary(priv), rt.output(), `--- postgres log ---\n${f.pgLogTail(db, 20)}`, h.dumpFrames([pub, priv])].join('\n')
    const N = 3000
    const sender = f.startSender(db, {
      topics: [
        { topic: pubTopic, private: false },
        { topic: privTopic, private: true },
      ],
      first: 1,
      last: N,
      rate: 250,
    })
    const kills = []
    try {
      for (let k = 0; k < 5; k++) {
        await h.sleep(1500)
        await db.waitForSlot(rt.slot)
        const out = await db.sql(`select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_replication`)
        kills.push(Number(out.trim()))
      }
      await sender.done
    } finally {
      await sender.stop()
    }
    t.diagnostic(`walsenders terminated per round: ${JSON.stringify(kills)}`)
    assert.ok(kills.every((n) => n >= 1), `each round terminated a walsender: ${JSON.stringify(kills)}`)
    const expected = range(1, N)
    await f.settle(sp.tracker, N, { timeoutMs: 60000, idleMs: 20000 })
    await f.settle(sv.tracker, N, { timeoutMs: 20000, idleMs: 20000 })
    f.assertExact(sp.tracker, expected, ctx)
    f.assertExact(sv.tracker, expected, ctx)
    assert.equal(pub.log.urls.length, 1, `the public listener stayed connected\n${ctx()}`)
    assert.equal(priv.log.urls.length, 1, `the private listener stayed connected\n${ctx()}`)
  })
})
