'use strict'
// Fault suite: realtide SIGTERM and SIGKILL in the middle of a ~2,000 rows/s stream.
//
// An inserter inside PostgreSQL commits one row per transaction at FAULTS_RATE (default 2,000)
// rows/s for 9 s; 3 s in, realtide gets SIGTERM or SIGKILL, and ~1 s after it is gone a new
// realtide starts on the same port, with the same CHANGES_DIR and SLOT_NAME. The supabase-js
// 2.119.1 subscriber reconnects and rejoins by itself (default backoff). Checked: every
// committed row its binding selects and its role may read arrives exactly once (after a SIGKILL:
// at least once, the duplicates being one replay of the last moments before the kill), in
// commit (= seq) order; with RLS (owner-only policy, `authenticated` token with a `sub`) the rows of
// another owner, interleaved in the same stream, never arrive.

const { describe, it, before, after } = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('node:crypto')
const h = require('../../lib/helpers')
const f = require('../../lib/faults')
const { startCluster } = require('../../lib/pg')

const RATE = Number(process.env.FAULTS_RATE || 2000)
const SECONDS = 9
const FAULT_AFTER_MS = 3000
const DOWN_MS = 1000

const CASES = []
for (const sig of ['SIGTERM', 'SIGKILL']) {
  for (const rls of [false, true]) CASES.push({ sig, rls, table: `items_${sig.toLowerCase()}_${rls ? 'rls' : 'plain'}` })
}

let db
const deployments = []
before(async () => {
  db = await startCluster()
  await f.installInserter(db)
  for (const c of CASES) await f.createItemsTable(db, c.table, { rls: c.rls })
})
after(async () => {
  await h.closeAllClients()
  for (const rt of deployments) {
    await rt.stop()
    rt.removeJournal()
  }
  if (db) await db.stop()
})

describe(`realtide killed mid-stream at ${RATE} rows/s`, () => {
  for (const { sig, rls, table } of CASES) {
    it(`${sig}, ${rls ? 'owner-only RLS' : 'no RLS'}: every row ${sig === 'SIGKILL' ? 'at least once (a bounded replay of the last moments)' : 'exactly once'}, in order, after the client rejoins by itself`, { timeout: 180000 }, async (t) => {
      const rt = await f.startRealtide(db)
      deployments.push(rt)
      const owner = crypto.randomUUID()
      const other = crypto.randomUUID()
      const c = rls ? f.userClient(rt.endpoint, `subscriber(${sig},rls)`, owner) : f.anonClient(rt.endpoint, `subscriber(${sig})`)
      const sub = await f.subscribeRows(c, table, { owner: rls ? owner : undefined })

      const ins = f.startInserter(db, {
        table,
        rate: RATE,
        seconds: SECONDS,
        owner: rls ? owner : null,
        other: rls ? other : null,
        otherEvery: rls ? 3 : 0,
      })
      let insRes
      const ctx = () =>
        [
          f.connectionSummary(c),
          `system messages: ${JSON.stringify(sub.system.map(({ at, ...p }) => p))}`,
          `inserter: ${JSON.stringify(insRes)}`,
          rt.output(),
          h.dumpFrames([c]),
        ].join('\n')
      try {
        await h.sleep(FAULT_AFTER_MS)
        // Mid-stream: rows are flowing to the subscriber when the fault comes.
        assert.ok(sub.tracker.count > 0, `rows arrived before the ${sig}\n${ctx()}`)
        const res = await rt.restart(sig, DOWN_MS)
        if (sig === 'SIGTERM') assert.equal(res.code, 0, `graceful stop exits 0\n${ctx()}`)
        insRes = await ins.done
      } finally {
        await ins.stop()
      }
      // Barrier: a last row of the subscriber's; delivery is in commit order, so once it is
      // there everything before it is too (or never will be).
      await db.sql(`insert into public.${table} (owner) values (${rls ? `'${owner}'` : 'null'})`)
      const expected = await f.committedSeqs(db, table, rls ? owner : undefined)
      const all = Number((await db.sql(`select count(*) from public.${table}`)).trim())
      const rate = all / insRes.seconds
      t.diagnostic(`inserted ${all} rows in ${insRes.seconds.toFixed(1)} s (${rate.toFixed(0)}/s); expected at the subscriber: ${expected.length}`)
      assert.ok(rate >= RATE * 0.5, `inserter too slow: ${rate.toFixed(0)} rows/s for a target of ${RATE}`)

      const complete = await f.settle(sub.tracker, expected.length, { timeoutMs: 120000, idleMs: 30000 })
      t.diagnostic(`${complete ? 'complete' : 'INCOMPLETE'}: ${f.connectionSummary(c)}, joins ${f.subscribedCount(sub)}`)
      if (sig === 'SIGKILL') {
        // Positions are saved every 100 ms: what was written (and acknowledged by the client)
        // since the last save before the kill is sent again once, in order. The bound checked
        // here is half a second of the stream, five times the save interval.
        const dups = f.assertBoundedReplay(sub.tracker, expected, Math.ceil(RATE * 0.5), ctx)
        t.diagnostic(`duplicates after the kill: ${dups} (${((dups / rate) * 1000).toFixed(0)} ms of the stream)`)
      } else {
        f.assertExact(sub.tracker, expected, ctx)
      }
      assert.deepEqual(sub.foreign, [], `rows of another owner were delivered: ${f.ranges(sub.foreign)}`)
      // The stream was really cut and resumed: the client got a new join.
      assert.ok(f.subscribedCount(sub) >= 2, `the client rejoined (Subscribed to PostgreSQL twice)\n${ctx()}`)
      if (sig === 'SIGTERM') {
        assert.ok(
          sub.system.some((p) => p.message === 'Server requested disconnect'),
          `SIGTERM tells every channel 'Server requested disconnect'\n${ctx()}`
        )
      }
      assert.equal(sub.ch.state, 'joined', ctx())
      await h.closeClient(c)
      await rt.stop()
    })
  }
})
