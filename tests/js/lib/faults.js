'use strict'
// Harness of the fault suites (test/faults/): a realtide "deployment" served by successive
// processes on one port with one journal (CHANGES_DIR) and one slot, paced inserters that run
// inside PostgreSQL (so they keep going while realtide is down), and exact delivery accounting
// of a `seq` column: missing, duplicated, unexpected and out-of-order values, printed as
// ranges together with the tail of every realtide process's log.

const assert = require('node:assert/strict')
const { spawn, execFile } = require('node:child_process')
const crypto = require('node:crypto')
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const { promisify } = require('node:util')
const h = require('./helpers')

const CLUSTER_SH = path.join(h.REPO_ROOT, 'tests', 'pg', 'cluster.sh')
const run = promisify(execFile)

// ---------------------------------------------------------------- ports, directories

/** A free TCP port on 127.0.0.1 (a restarted server must come back on the same one). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

/** A new empty directory under the OS temp dir. */
function tempDir(prefix = 'realtide-faults-') {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix))
}

// ---------------------------------------------------------------- realtide

/**
 * One realtide deployment: a fixed port, slot, CHANGES_DIR and environment, served by
 * successive processes (each `start()` is a new process; `signal()` stops the current one).
 */
class Realtide {
  constructor({ dbUrl, slot, port, changesDir, env }) {
    this.dbUrl = dbUrl
    this.slot = slot
    this.port = port
    this.changesDir = changesDir
    this.env = env
    this.servers = []
    this.srv = null
    this.events = []
  }

  /** `srv`-like object for h.makeClient (its URL stays valid across restarts). */
  get endpoint() {
    return { httpUrl: `http://127.0.0.1:${this.port}`, wsBase: `ws://127.0.0.1:${this.port}` }
  }

  get pid() {
    return this.srv && this.srv.child.pid
  }

  note(what) {
    this.events.push(`${new Date().toISOString()} ${what}`)
  }

  async start() {
    let lastErr
    // The port of a process that just died may take a moment to be free again.
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        const srv = await h.startServer({
          PORT: String(this.port),
          DB_URL: this.dbUrl,
          SLOT_NAME: this.slot,
          CHANGES_DIR: this.changesDir,
          ...this.env,
        })
        this.servers.push(srv)
        this.srv = srv
        this.note(`started realtide pid ${srv.child.pid} (generation ${this.servers.length})`)
        return srv
      } catch (e) {
        lastErr = e
        if (!/in use|AddrInUse|os error 98/i.test(String(e.message))) throw e
        await h.sleep(500)
      }
    }
    throw lastErr
  }

  /** Sends `sig` to the running process and waits (bounded) for it to exit: {code, signal}. */
  async signal(sig, timeoutMs = 30000) {
    const srv = this.srv
    if (!srv) throw new Error('no realtide running')
    const child = srv.child
    const exited =
      child.exitCode !== null || child.signalCode !== null
        ? Promise.resolve({ code: child.exitCode, signal: child.signalCode })
        : new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
    this.note(`${sig} to realtide pid ${child.pid}`)
    child.kill(sig)
    let timer
    const res = await Promise.race([
      exited,
      new Promise((resolve) => (timer = setTimeout(() => resolve(null), timeoutMs))),
    ])
    clearTimeout(timer)
    if (!res) {
      child.kill('SIGKILL')
      await exited
      throw new Error(`realtide did not exit within ${timeoutMs} ms of ${sig}\n${this.output()}`)
    }
    this.note(`realtide pid ${child.pid} exited (code ${res.code}, signal ${res.signal})`)
    this.srv = null
    return res
  }

  /** `signal(sig)`, wait `downMs`, start a new process on the same port and journal. */
  async restart(sig, downMs = 1000) {
    const res = await this.signal(sig)
    await h.sleep(downMs)
    await this.start()
    return res
  }

  /** Tails of every process's log (generation by generation), plus the fault timeline. */
  output(lines = 60) {
    const parts = this.servers.map((s, i) => {
      const text = s.output().split('\n')
      return `=== realtide generation ${i + 1} (pid ${s.child.pid}) ===\n${text.slice(-lines).join('\n')}`
    })
    return `=== fault timeline ===\n${this.events.join('\n')}\n${parts.join('\n')}`
  }

  async stop() {
    for (const s of this.servers) await s.stop()
    this.srv = null
  }

  removeJournal() {
    fs.rmSync(this.changesDir, { recursive: true, force: true })
  }
}

/**
 * A realtide deployment on `db` (a Cluster from lib/pg.js): new port, slot and CHANGES_DIR
 * unless given; started, with its slot streaming.
 */
async function startRealtide(db, { env = {}, slot, port, changesDir, prefix = 'faults' } = {}) {
  const rt = new Realtide({
    dbUrl: db.dbUrl,
    slot: slot || `${prefix}_${process.pid}_${crypto.randomBytes(3).toString('hex')}`,
    port: port || (await freePort()),
    changesDir: changesDir || tempDir(),
    env,
  })
  await rt.start()
  try {
    await db.waitForSlot(rt.slot)
  } catch (e) {
    await rt.stop()
    rt.removeJournal()
    throw new Error(`${e.message}\n${rt.output()}`)
  }
  return rt
}

// ---------------------------------------------------------------- cluster faults

async function clusterCmd(db, cmd, env = {}) {
  try {
    await run(CLUSTER_SH, [cmd, db.dir], { timeout: 120000, env: { ...process.env, ...env } })
  } catch (e) {
    // What the cluster's processes are doing (e.g. a walsender holding up a shutdown).
    let ps = ''
    try {
      const pid = fs.readFileSync(path.join(db.dir, 'data', 'postmaster.pid'), 'utf8').split('\n')[0].trim()
      ps = (await run('ps', ['-o', 'pid,stat,etime,args', '-p', pid, '--ppid', pid])).stdout
    } catch (err) {
      ps = `(ps: ${err.message})`
    }
    throw new Error(`cluster.sh ${cmd} failed: ${e.stderr || e.message}\n--- postgres processes ---\n${ps}\n--- server.log tail ---\n${pgLogTail(db, 15)}`)
  }
}

/** `pg_ctl restart -m fast`, failing when the restart takes more than `timeoutSecs`. */
const pgRestart = (db, timeoutSecs = 30) => clusterCmd(db, 'restart', { PG_CTL_TIMEOUT: String(timeoutSecs) })
/** SIGKILL of the postmaster (waits until it is gone). */
const pgKill = (db) => clusterCmd(db, 'kill')
/** Starts the cluster again after pgKill (same port and options). */
const pgStartAgain = (db) => clusterCmd(db, 'startagain')

/** Tail of the cluster's server log. */
function pgLogTail(db, lines = 30) {
  try {
    return fs.readFileSync(path.join(db.dir, 'server.log'), 'utf8').split('\n').slice(-lines).join('\n')
  } catch (e) {
    return `(no server.log: ${e.message})`
  }
}

// ---------------------------------------------------------------- schema and inserters

/**
 * The paced inserter: inserts one row per transaction into `p_table (owner, pad)` at
 * `p_rate` rows/s for `p_seconds`; every `p_other_every`-th row belongs to `p_other`, the
 * others to `p_owner`. It sleeps every 10 rows to keep the average rate.
 */
const INSERTER_SQL = String.raw`
do $$ begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
end $$;

create or replace procedure public.faults_insert(
  p_table regclass, p_rate float8, p_seconds float8,
  p_owner uuid default null, p_other uuid default null, p_other_every int default 0, p_pad int default 0)
language plpgsql as $$
declare
  t0 timestamptz := clock_timestamp();
  n bigint := 0;
  ahead float8;
  q text := format('insert into %s (owner, pad) values ($1, $2)', p_table);
  v_pad text := repeat('x', p_pad);
begin
  loop
    exit when extract(epoch from clock_timestamp() - t0) >= p_seconds;
    execute q using
      (case when p_other_every > 0 and n % p_other_every = p_other_every - 1 then p_other else p_owner end),
      v_pad;
    commit;
    n := n + 1;
    if n % 10 = 0 then
      ahead := n / p_rate - extract(epoch from clock_timestamp() - t0);
      if ahead > 0 then perform pg_sleep(ahead); end if;
    end if;
  end loop;
end $$;

-- Database broadcast: transaction i (p_first..p_last) sends {"n": i} as event 'tick' to every
-- topic of p_topics (public or private per p_private), at p_rate transactions/s.
create or replace procedure public.faults_send(
  p_topics text[], p_private boolean[], p_first int, p_last int, p_rate float8)
language plpgsql as $$
declare
  t0 timestamptz := clock_timestamp();
  k int;
  ahead float8;
begin
  for i in p_first .. p_last loop
    for k in 1 .. array_length(p_topics, 1) loop
      perform realtime.send(jsonb_build_object('n', i), 'tick', p_topics[k], p_private[k]);
    end loop;
    commit;
    if (i - p_first + 1) % 10 = 0 then
      ahead := (i - p_first + 1) / p_rate - extract(epoch from clock_timestamp() - t0);
      if ahead > 0 then perform pg_sleep(ahead); end if;
    end if;
  end loop;
end $$;
`

async function installInserter(db) {
  await db.sql(INSERTER_SQL)
}

/**
 * Creates `public.<name> (seq bigserial primary key, owner uuid, pad text)` in the
 * supabase_realtime publication. rls: owner-only policy for `authenticated`
 * (`owner = auth.uid()`); otherwise readable by anon and authenticated.
 */
async function createItemsTable(db, name, { rls = false } = {}) {
  const access = rls
    ? `alter table public.${name} enable row level security;
       create policy owner_only on public.${name} for select to authenticated using (owner = auth.uid());
       grant select on public.${name} to authenticated;`
    : `grant select on public.${name} to anon, authenticated;`
  await db.sql(`
    create table public.${name} (
      seq bigserial primary key,
      owner uuid,
      pad text,
      at timestamptz not null default clock_timestamp()
    );
    ${access}
    alter publication supabase_realtime add table public.${name};
  `)
}

/** seq values in `table` (optionally of one owner), ascending. */
async function committedSeqs(db, table, owner) {
  const where = owner ? `where owner = '${owner}'` : ''
  const out = await db.sql(`select seq from public.${table} ${where} order by seq`)
  return out
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map(Number)
}

/** Runs `sql` in a psql of its own (not through db.sql), with PGAPPNAME `app`. */
function psqlChild(db, sql, { app, env = {} } = {}) {
  const child = spawn(db.psql, [db.dbUrl, '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-c', sql], {
    env: { ...process.env, PGAPPNAME: app || 'faults', PGCONNECT_TIMEOUT: '3', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  let err = ''
  child.stdout.on('data', (c) => (out += c))
  child.stderr.on('data', (c) => (err += c))
  const done = new Promise((resolve) => child.on('close', (code) => resolve({ code, out, err })))
  return { child, done }
}

/**
 * Starts `call faults_insert(...)` in its own psql session: `rate` rows/s into `table` for
 * `seconds`. With `reconnect`, a session cut (database restart) is retried every 250 ms until
 * the time is up (rows that failed to commit are simply absent from the table). Returns
 * { done: Promise<{calls, failures, seconds}>, stop() }.
 */
function startInserter(db, { table, rate, seconds, owner = null, other = null, otherEvery = 0, pad = 0, reconnect = false }) {
  const app = `faults_ins_${crypto.randomBytes(4).toString('hex')}`
  const started = Date.now()
  const until = started + seconds * 1000
  const st = { calls: 0, failures: [], stopped: false, current: null }
  const lit = (u) => (u ? `'${u}'::uuid` : 'null')
  const done = (async () => {
    for (;;) {
      const remaining = (until - Date.now()) / 1000
      if (remaining <= 0.05 || st.stopped) break
      st.calls++
      st.current = psqlChild(
        db,
        `call public.faults_insert('public.${table}', ${rate}, ${remaining.toFixed(3)}, ${lit(owner)}, ${lit(other)}, ${otherEvery}, ${pad})`,
        { app }
      )
      const res = await st.current.done
      if (res.code === 0) continue
      st.failures.push(`${new Date().toISOString()} ${res.err.trim().split('\n')[0]}`)
      if (!reconnect || st.stopped) {
        if (st.stopped) break
        throw new Error(`inserter into ${table} failed: ${res.err}`)
      }
      await h.sleep(250)
    }
    return { calls: st.calls, failures: st.failures, seconds: (Date.now() - started) / 1000 }
  })()
  return {
    app,
    done,
    async stop() {
      st.stopped = true
      try {
        await db.sql(`select pg_terminate_backend(pid) from pg_stat_activity where application_name = '${app}'`)
      } catch {}
      if (st.current) st.current.child.kill('SIGKILL')
      try {
        await done
      } catch {}
    },
  }
}

/**
 * Starts `call faults_send(...)`: transactions first..last, each sending {"n": i} to every
 * topic (`topics`: [{topic, private}]), at `rate` transactions/s. Returns {done, stop()}.
 */
function startSender(db, { topics, first, last, rate }) {
  const app = `faults_send_${crypto.randomBytes(4).toString('hex')}`
  const arr = `array[${topics.map((t) => `'${t.topic}'`).join(',')}]::text[]`
  const priv = `array[${topics.map((t) => (t.private ? 'true' : 'false')).join(',')}]::boolean[]`
  const p = psqlChild(db, `call public.faults_send(${arr}, ${priv}, ${first}, ${last}, ${rate})`, { app })
  const done = p.done.then((res) => {
    if (res.code !== 0) throw new Error(`sender failed: ${res.err}`)
    return res
  })
  return {
    done,
    async stop() {
      try {
        await db.sql(`select pg_terminate_backend(pid) from pg_stat_activity where application_name = '${app}'`)
      } catch {}
      p.child.kill('SIGKILL')
      await p.done
    },
  }
}

// ---------------------------------------------------------------- accounting

/** "1-5, 9, 12-20" (at most `max` ranges) of an ascending list of integers. */
function ranges(sorted, max = 25) {
  const out = []
  let i = 0
  while (i < sorted.length && out.length < max) {
    let j = i
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1) j++
    out.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]} (${j - i + 1})`)
    i = j + 1
  }
  if (i < sorted.length) out.push(`… (${sorted.length - i} more values)`)
  return out.join(', ')
}

/**
 * Like ranges(), but runs are consecutive entries of `expected` (ascending), so the rows of
 * one owner among interleaved owners still read as one run: "4541-4595 (37)".
 */
function rangesIn(values, expected, max = 25) {
  const index = new Map(expected.map((v, i) => [v, i]))
  const idx = values.map((v) => index.get(v)).filter((i) => i !== undefined).sort((a, b) => a - b)
  const out = []
  let i = 0
  while (i < idx.length && out.length < max) {
    let j = i
    while (j + 1 < idx.length && idx[j + 1] === idx[j] + 1) j++
    out.push(i === j ? `${expected[idx[i]]}` : `${expected[idx[i]]}-${expected[idx[j]]} (${j - i + 1})`)
    i = j + 1
  }
  if (i < idx.length) out.push(`… (${idx.length - i} more values)`)
  return out.join(', ')
}

/**
 * Every `seq` a subscriber received, in arrival order. `check(expected)` compares with the
 * committed values the subscriber must get exactly once, ascending.
 */
class SeqTracker {
  constructor(name) {
    this.name = name
    this.seqs = []
    this.seen = new Set()
    this.last = -Infinity
    this.inversions = 0
    this.firstInversions = []
    this.lastAt = Date.now()
  }

  add(seq) {
    seq = Number(seq)
    if (seq <= this.last) {
      this.inversions++
      if (this.firstInversions.length < 10) {
        this.firstInversions.push(`#${this.seqs.length}: ${seq} after ${this.last}`)
      }
    }
    this.last = Math.max(this.last, seq)
    this.seqs.push(seq)
    this.seen.add(seq)
    this.lastAt = Date.now()
  }

  get count() {
    return this.seqs.length
  }

  get unique() {
    return this.seen.size
  }

  has(seq) {
    return this.seen.has(seq)
  }

  /** {ok, missing, duplicated, unexpected, inversions, text} against `expected` (ascending). */
  check(expected) {
    const exp = new Set(expected)
    const missing = expected.filter((s) => !this.seen.has(s))
    const unexpected = [...this.seen].filter((s) => !exp.has(s)).sort((a, b) => a - b)
    const sorted = Float64Array.from(this.seqs).sort()
    const dup = []
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i] === sorted[i - 1] && dup[dup.length - 1] !== sorted[i]) dup.push(sorted[i])
    }
    const dupCount = this.seqs.length - this.seen.size
    const ok = missing.length === 0 && dup.length === 0 && unexpected.length === 0 && this.inversions === 0
    const text = [
      `${this.name}: expected ${expected.length} (${expected.length ? `${expected[0]}..${expected[expected.length - 1]}` : 'none'}), ` +
        `received ${this.seqs.length} (${this.seen.size} distinct)`,
      `  missing ${missing.length}: ${rangesIn(missing, expected)}`,
      `  duplicated values ${dup.length} (extra deliveries ${dupCount}): ${rangesIn(dup.filter((v) => exp.has(v)), expected)}` +
        (dup.some((v) => !exp.has(v)) ? ` (+ unexpected: ${ranges(dup.filter((v) => !exp.has(v)))})` : ''),
      `  unexpected ${unexpected.length}: ${ranges(unexpected)}`,
      `  out of order ${this.inversions}: ${this.firstInversions.join('; ')}`,
    ].join('\n')
    return { ok, missing, duplicated: dup, unexpected, inversions: this.inversions, text }
  }
}

/**
 * Waits until `tracker` holds at least `n` distinct values, or it received nothing new for
 * `idleMs`, or `timeoutMs` passed; then `graceMs` more (late duplicates). Returns whether `n`
 * was reached. Never throws: the exact comparison that follows says what is wrong.
 */
async function settle(tracker, n, { timeoutMs = 60000, idleMs = 25000, graceMs = 500 } = {}) {
  const deadline = Date.now() + timeoutMs
  const idleFrom = Date.now()
  for (;;) {
    if (tracker.unique >= n) break
    const now = Date.now()
    if (now > deadline) return false
    if (now - Math.max(tracker.lastAt, idleFrom) > idleMs) return false
    await h.sleep(50)
  }
  await h.sleep(graceMs)
  return true
}

/** Asserts the exact delivery (0 missing, 0 duplicated, 0 unexpected, in order). */
function assertExact(tracker, expected, context = () => '') {
  const r = tracker.check(expected)
  if (!r.ok) assert.fail(`delivery of ${tracker.name} is not exact:\n${r.text}\n${context()}`)
  return r
}

/**
 * Follows what client `c` acknowledged: returns { acked, opens } where `acked()` is the number
 * of rows `tracker` held when the client last answered a ping, and `opens` the row counts at
 * which each socket opened from now on. A socket drop can only make the server send again the rows read
 * after the last answered ping: it cannot know they were read.
 */
function watchAcknowledged(c, tracker) {
  let acked = 0
  // The ping before the last: the pong to the last one may not have reached the server when
  // the socket drops right after it arrived, and then the server's resume point is this one.
  let ackedBefore = 0
  const opens = []
  c.log.onPing = () => {
    ackedBefore = acked
    acked = tracker.count
  }
  c.log.onOpen = () => opens.push(tracker.count)
  return { acked: () => acked, ackedBefore: () => ackedBefore, opens }
}

/**
 * After socket drops: every row exactly once and in order, except that after each drop the
 * rows read after the client's last answered ping (`drops[k].acked` .. the next socket's
 * opening, `drops[k].reopened`) come again, exactly those, right as the new socket starts.
 * Returns the number of rows sent again.
 */
function assertExactAfterDrops(tracker, expected, drops, context = () => '') {
  const seqs = tracker.seqs
  const kept = new SeqTracker(tracker.name)
  const problems = []
  let i = 0
  let again = 0
  for (const [k, d] of drops.entries()) {
    while (i < d.reopened && i < seqs.length) kept.add(seqs[i++])
    // The rows after the last answered ping come again; or, when the pong to that ping had not
    // reached the server before the drop, the rows after the ping before it.
    const starts = [d.acked, ...(d.ackedBefore === undefined ? [] : [d.ackedBefore])]
    const match = starts
      .map((start) => seqs.slice(start, d.reopened))
      .find((unread) => {
        const next = seqs.slice(i, i + unread.length)
        return next.length === unread.length && next.every((v, j) => v === unread[j])
      })
    const unread = seqs.slice(d.acked, d.reopened)
    const next = seqs.slice(i, i + unread.length)
    if (match) {
      i += match.length
      again += match.length
    } else {
      problems.push(
        `drop ${k + 1}: the ${unread.length} row(s) read after the last answered ping (${ranges(unread)}) ` +
          `should have come again first, got ${ranges(next)}`
      )
    }
  }
  while (i < seqs.length) kept.add(seqs[i++])
  const r = kept.check(expected)
  if (!r.ok || problems.length) {
    assert.fail(
      `delivery of ${tracker.name} is not exact apart from rows read after the last answered ping:\n` +
        `${problems.join('\n')}\n${r.text}\n${context()}\n(${problems.join('; ')}; ${r.text.split('\n').join(' ')})`
    )
  }
  return again
}

/**
 * After a SIGKILL of realtide: 0 missing, 0 unexpected, and extra deliveries only as one
 * replay (the stream jumps back once, to re-send a contiguous run of the last values received
 * before the kill, then goes on in order), at most `maxDuplicates` of them. Returns the number
 * of duplicates.
 */
function assertBoundedReplay(tracker, expected, maxDuplicates, context = () => '') {
  const r = tracker.check(expected)
  const seqs = tracker.seqs
  const jumps = []
  for (let i = 1; i < seqs.length; i++) if (seqs[i] <= seqs[i - 1]) jumps.push(i)
  const duplicates = seqs.length - tracker.unique
  const fail = (why) => assert.fail(`delivery of ${tracker.name} after a kill: ${why}:\n${r.text}\n${context()}`)
  if (r.missing.length || r.unexpected.length) fail('changes were lost or unexpected')
  if (jumps.length > 1) fail(`the stream went back ${jumps.length} times (a replay goes back once)`)
  if (jumps.length === 1) {
    const at = jumps[0]
    const before = seqs[at - 1]
    // The replayed run is exactly the values from the jump's target up to `before`.
    const replayed = seqs.slice(at).filter((s) => s <= before)
    const tail = expected.filter((s) => s >= seqs[at] && s <= before)
    if (replayed.length !== tail.length || replayed.some((s, i) => s !== tail[i])) {
      fail('the duplicates are not one contiguous replay of the last values before the kill')
    }
  }
  if (duplicates > maxDuplicates) fail(`${duplicates} duplicates, more than the bound of ${maxDuplicates}`)
  return duplicates
}

// ---------------------------------------------------------------- clients

/** Frames of a change stream are counted but not kept in the client's frame log. */
function skipChangeFrames(head) {
  return head.includes('"postgres_changes",{"ids"') || head.includes('"event":"postgres_changes"')
}

/** The `ws` WebSocket under a supabase-js client (realtime-js 2.119 keeps it in phoenix's Socket). */
function wsOf(c) {
  const rt = c.realtime
  const conn = rt.conn || (rt.socketAdapter && rt.socketAdapter.getSocket && rt.socketAdapter.getSocket().conn)
  if (!conn) throw new Error(`${c.name} has no open WebSocket`)
  return conn
}

/**
 * Subscribes client `c` to a new channel with one postgres_changes INSERT binding on
 * `public.<table>`; every row's seq goes to a SeqTracker, rows of another owner than
 * `owner` (when given) are also listed in `foreign`. Resolves once SUBSCRIBED and
 * `Subscribed to PostgreSQL` arrived.
 */
async function subscribeRows(c, table, { owner, topic = h.uniqueTopic(`faults-${table}`), filter, tracker } = {}) {
  const foreign = []
  const system = []
  const statuses = []
  const ch = c.supabase.channel(topic)
  // `rec.tracker` may be replaced by a test (a fresh count per step).
  const rec = { c, ch, topic, tracker: tracker || new SeqTracker(`${c.name} on ${topic}`), foreign, system, statuses }
  const binding = { event: 'INSERT', schema: 'public', table, ...(filter ? { filter } : {}) }
  ch.on('postgres_changes', binding, (p) => {
    rec.tracker.add(p.new.seq)
    if (owner && p.new.owner !== owner) foreign.push(p.new.seq)
  })
  ch.on('system', {}, (p) => system.push({ ...p, at: Date.now(), afterSeqs: rec.tracker.count }))
  if (c.userToken) await h.connectSettled(c, c.userToken)
  ch.subscribe((status, err) => statuses.push({ status, err: err ? String(err.message ?? err) : undefined, at: Date.now() }))
  await h.waitFor(() => statuses.length > 0, `subscribe status of ${topic}`, { clients: [c], timeout: 20000 })
  if (statuses[0].status !== 'SUBSCRIBED') {
    throw new Error(`expected SUBSCRIBED for ${topic}, got ${JSON.stringify(statuses[0])}\n${h.dumpFrames([c])}`)
  }
  await h.waitFor(() => subscribedCount({ system }) >= 1, `Subscribed to PostgreSQL on ${topic}`, {
    clients: [c],
    timeout: 20000,
  })
  return rec
}

/** How many `Subscribed to PostgreSQL` system messages a subscription got (one per join). */
function subscribedCount(sub) {
  return sub.system.filter((p) => p.extension === 'postgres_changes' && p.status === 'ok').length
}

/** A client whose joins carry an `authenticated` token of user `sub` (fixed across rejoins). */
function userClient(endpoint, name, sub = crypto.randomUUID(), opts = {}) {
  const userToken = h.token({ role: 'authenticated', sub, ttlSec: 6 * 3600 })
  const c = h.makeClient(endpoint, { name, accessToken: async () => userToken, skipFrame: skipChangeFrames, ...opts })
  c.sub = sub
  c.userToken = userToken
  return c
}

/** An anon client (no `sub`; its identity for resume is its role). */
function anonClient(endpoint, name, opts = {}) {
  return h.makeClient(endpoint, { name, skipFrame: skipChangeFrames, ...opts })
}

/** Socket-level events of a client: closes (code/reason) and connection URLs opened. */
function connectionSummary(c) {
  const closes = c.log.frames.filter((f) => f.dir === 'CLOSE').map((f) => `${f.code}${f.reason ? ` ${f.reason}` : ''}`)
  return `${c.name}: ${c.log.urls.length} connection(s), closes [${closes.join(', ')}], change frames ${c.log.skipped || 0}`
}

// ---------------------------------------------------------------- process memory

/** Samples VmRSS of `pid` every `everyMs`; stop() returns {peakKb, samples}. */
function sampleRss(pid, everyMs = 200) {
  let peakKb = 0
  let samples = 0
  const read = () => {
    try {
      const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+)\s+kB/m)
      if (m) {
        samples++
        peakKb = Math.max(peakKb, Number(m[1]))
      }
    } catch {}
  }
  read()
  const timer = setInterval(read, everyMs)
  return {
    get peakKb() {
      return peakKb
    },
    stop() {
      clearInterval(timer)
      read()
      return { peakKb, samples }
    },
  }
}

/** Whether the binary under test is a release build (by its path: target/release/…). */
function isReleaseBinary() {
  return /[\\/]release[\\/]/.test(h.realtideBin()) || process.env.FAULTS_ASSERT_RSS === '1'
}

module.exports = {
  assertBoundedReplay,
  freePort,
  tempDir,
  Realtide,
  startRealtide,
  pgRestart,
  pgKill,
  pgStartAgain,
  pgLogTail,
  installInserter,
  createItemsTable,
  committedSeqs,
  psqlChild,
  startInserter,
  startSender,
  ranges,
  rangesIn,
  SeqTracker,
  settle,
  assertExact,
  assertExactAfterDrops,
  watchAcknowledged,
  skipChangeFrames,
  wsOf,
  subscribeRows,
  subscribedCount,
  userClient,
  anonClient,
  connectionSummary,
  sampleRss,
  isReleaseBinary,
}
