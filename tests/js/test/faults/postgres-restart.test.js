'use strict'
// Fault suite: PostgreSQL goes away under a running realtide. An owner-only RLS table gets
// 500 rows/s (one per transaction, every third row of another owner) from an inserter inside
// PostgreSQL; 4 s in, the cluster is restarted with `pg_ctl restart -m fast`, or its
// postmaster gets SIGKILL and is started again 1 s later (crash recovery; the slot may hand
// out again transactions realtide already has). The inserter reconnects once the database
// is back; rows whose transaction did not commit are simply not in the table and not
// expected. realtide keeps running and the supabase-js 2.119.1 subscriber (authenticated,
// with a `sub`) stays joined. Checked: every committed row of its owner exactly once in
// commit order, none of the other owner's rows.

const { describe, it, after } = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('node:crypto')
const h = require('../../lib/helpers')
const f = require('../../lib/faults')
const { startCluster } = require('../../lib/pg')

const RATE = 500
const SECONDS = 14
const FAULT_AFTER_MS = 4000

const CASES = [
  { name: 'pg_ctl restart -m fast', table: 'pg_fast_items', fault: (db) => f.pgRestart(db) },
  {
    name: 'postmaster SIGKILL, started again after 1 s',
    table: 'pg_kill_items',
    fault: async (db) => {
      await f.pgKill(db)
      await h.sleep(1000)
      await f.pgStartAgain(db)
    },
  },
]

// One cluster per case: a case whose fault leaves the cluster unusable does not take the
// other one down with it.
const clusters = []
const deployments = []
after(async () => {
  await h.closeAllClients()
  for (const rt of deployments) {
    await rt.stop()
    rt.removeJournal()
  }
  for (const db of clusters) await db.stop()
})

describe(`PostgreSQL restarted under a ${RATE} rows/s stream (owner-only RLS)`, () => {
  for (const { name, table, fault } of CASES) {
    it(`${name}: every committed row of the owner exactly once, in order`, { timeout: 180000 }, async (t) => {
      const db = await startCluster()
      clusters.push(db)
      await f.installInserter(db)
      await f.createItemsTable(db, table, { rls: true })
      const rt = await f.startRealtide(db)
      deployments.push(rt)
      const owner = crypto.randomUUID()
      const other = crypto.randomUUID()
      const c = f.userClient(rt.endpoint, `subscriber(${table})`, owner)
      const sub = await f.subscribeRows(c, table, { owner })
      const ins = f.startInserter(db, { table, rate: RATE, seconds: SECONDS, owner, other, otherEvery: 3, reconnect: true })
      let insRes
      let faultAt
      let backAt
      const ctx = () =>
        [
          f.connectionSummary(c),
          `system: ${JSON.stringify(sub.system.map(({ at, ...p }) => p))}`,
          `inserter: ${JSON.stringify(insRes)}`,
          rt.output(),
          `--- postgres server.log tail ---\n${f.pgLogTail(db)}`,
          h.dumpFrames([c]),
        ].join('\n')
      try {
        await h.sleep(FAULT_AFTER_MS)
        assert.ok(sub.tracker.count > 0, `rows arrived before the fault\n${ctx()}`)
        faultAt = Date.now()
        rt.note(`database fault: ${name}`)
        await fault(db).catch((e) => assert.fail(`${e.message}\n${ctx()}`))
        backAt = Date.now()
        rt.note('database back')
        insRes = await ins.done
      } finally {
        await ins.stop()
      }
      await db.sql(`insert into public.${table} (owner) values ('${owner}')`)
      const expected = await f.committedSeqs(db, table, owner)
      const after = Number(
        (await db.sql(`select count(*) from public.${table} where at > to_timestamp(${backAt / 1000})`)).trim()
      )
      t.diagnostic(
        `database down for ${((backAt - faultAt) / 1000).toFixed(1)} s; inserter sessions ${insRes.calls}, cut ${insRes.failures.length} time(s); ` +
          `${expected.length} rows of the owner, ${after} rows committed after the database came back`
      )
      assert.ok(insRes.failures.length >= 1, `the fault cut the inserter's session\n${ctx()}`)
      assert.ok(after > RATE, `the inserter went on after the database came back (${after} rows)`)

      const complete = await f.settle(sub.tracker, expected.length, { timeoutMs: 120000, idleMs: 40000 })
      t.diagnostic(`${complete ? 'complete' : 'INCOMPLETE'}: ${f.connectionSummary(c)}, joins ${f.subscribedCount(sub)}`)
      f.assertExact(sub.tracker, expected, ctx)
      assert.deepEqual(sub.foreign, [], `rows of another owner were delivered: ${f.ranges(sub.foreign)}`)
      assert.equal(sub.ch.state, 'joined')
      await h.closeClient(c)
      await rt.stop()
    })
  }
})
