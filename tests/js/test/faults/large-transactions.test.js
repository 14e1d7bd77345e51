'use strict'
// Fault suite: single large transactions. One transaction each of 10,500, 200,000 and
// 1,000,000 small rows (`insert ... select generate_series`), one supabase-js 2.119.1
// subscriber (anon, no RLS). Checked: every row arrives exactly once in order, the socket is
// never closed (no slow-consumer cut, no reconnect, no error on the channel), and realtide's
// resident memory stays bounded: VmRSS is sampled every 200 ms and its peak printed; for the
// 1,000,000-row transaction it must stay under FAULTS_MAX_RSS_MB (default 200) MB.
//
// The memory bound is asserted only for a release binary (REALTIDE_BIN under
// target/release/, or FAULTS_ASSERT_RSS=1): the bound is about the shipped build; a debug
// build's unoptimized code and debug allocations do not say what the release build does, so
// there the peak is only printed.

const { describe, it, before, after } = require('node:test')
const assert = require('node:assert/strict')
const h = require('../../lib/helpers')
const f = require('../../lib/faults')
const { startCluster } = require('../../lib/pg')

const MAX_RSS_MB = Number(process.env.FAULTS_MAX_RSS_MB || 200)
const SIZES = (process.env.FAULTS_BIG_SIZES || '10500,200000,1000000').split(',').map(Number)

let db
let rt
let c
let sub
let next = 1
before(async () => {
  db = await startCluster()
  await db.sql(`
    create publication supabase_realtime;
    create table public.big (seq bigint primary key, v int not null);
    grant select on public.big to anon, authenticated;
    alter publication supabase_realtime add table public.big;
  `)
  rt = await f.startRealtide(db)
  c = f.anonClient(rt.endpoint, 'big-subscriber')
  sub = await f.subscribeRows(c, 'big')
})
after(async () => {
  await h.closeAllClients()
  if (rt) {
    await rt.stop()
    rt.removeJournal()
  }
  if (db) await db.stop()
})

describe('single large transactions to one subscriber', () => {
  for (const n of SIZES) {
    it(`one transaction of ${n} rows: all arrive exactly once, in order, without a disconnect`, { timeout: 240000 + n * 0.5 }, async (t) => {
      const first = next
      const last = first + n - 1
      next = last + 2
      sub.tracker = new f.SeqTracker(`big-subscriber, transaction of ${n}`)
      const rss = f.sampleRss(rt.pid)
      const t0 = Date.now()
      await db.sql(`insert into public.big (seq, v) select g, 0 from generate_series(${first}, ${last}) g`)
      const committedMs = Date.now() - t0
      // Barrier: a one-row transaction after the big one.
      await db.sql(`insert into public.big (seq, v) values (${last + 1}, 1)`)
      const expected = []
      for (let s = first; s <= last + 1; s++) expected.push(s)
      const complete = await f.settle(sub.tracker, expected.length, { timeoutMs: 120000 + n * 0.4, idleMs: 60000 })
      const { peakKb, samples } = rss.stop()
      const secs = (Date.now() - t0) / 1000
      t.diagnostic(
        `${n} rows: committed in ${(committedMs / 1000).toFixed(1)} s, ${complete ? 'all delivered' : 'INCOMPLETE'} after ${secs.toFixed(1)} s ` +
          `(${(n / secs).toFixed(0)} rows/s); realtide peak VmRSS ${(peakKb / 1024).toFixed(1)} MB (${samples} samples, ` +
          `${f.isReleaseBinary() ? 'release' : 'debug'} binary ${h.realtideBin()})`
      )
      const ctx = () => [f.connectionSummary(c), `system: ${JSON.stringify(sub.system)}`, rt.output(), h.dumpFrames([c])].join('\n')
      f.assertExact(sub.tracker, expected, ctx)
      assert.equal(c.log.urls.length, 1, `the socket was never replaced\n${ctx()}`)
      assert.ok(!c.log.frames.some((fr) => fr.dir === 'CLOSE'), `the socket was never closed\n${ctx()}`)
      assert.ok(!sub.system.some((p) => p.status === 'error'), `no error on the channel\n${ctx()}`)
      assert.equal(sub.ch.state, 'joined')
      if (n >= 1000000 && f.isReleaseBinary()) {
        assert.ok(peakKb / 1024 < MAX_RSS_MB, `realtide peak RSS ${(peakKb / 1024).toFixed(1)} MB >= ${MAX_RSS_MB} MB`)
      }
    })
  }
})
