'use strict'
// A throwaway PostgreSQL for the postgres_changes suites: tests/pg/cluster.sh
// starts it (logical WAL, free port, Supabase-like roles), psql runs SQL
// against it. One cluster per test file; `stop()` removes it.

const { execFile } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')
const { promisify } = require('node:util')
const h = require('./helpers')

const run = promisify(execFile)
const CLUSTER_SH = path.join(h.REPO_ROOT, 'tests', 'pg', 'cluster.sh')

/** The psql to use: next to pg_ctl (as cluster.sh finds it), else the newest /usr/lib/postgresql/N/bin, else PATH. */
function psqlBin() {
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    const ctl = path.join(dir, 'pg_ctl')
    if (dir && fs.existsSync(ctl)) {
      const real = path.join(path.dirname(fs.realpathSync(ctl)), 'psql')
      if (fs.existsSync(real)) return real
    }
  }
  try {
    const versions = fs
      .readdirSync('/usr/lib/postgresql')
      .filter((v) => fs.existsSync(`/usr/lib/postgresql/${v}/bin/psql`))
      .sort((a, b) => Number(b) - Number(a))
    if (versions.length) return `/usr/lib/postgresql/${versions[0]}/bin/psql`
  } catch {}
  return 'psql'
}

class Cluster {
  constructor(dbUrl, dir) {
    this.dbUrl = dbUrl
    this.dir = dir
    this.psql = psqlBin()
  }

  /**
   * Runs `text` through psql (statement by statement, autocommit: every
   * statement outside an explicit BEGIN is its own transaction). Returns
   * stdout, unaligned and tuples-only.
   */
  async sql(text) {
    return new Promise((resolve, reject) => {
      const child = execFile(
        this.psql,
        [this.dbUrl, '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-f', '-'],
        { maxBuffer: 16 << 20 },
        (err, stdout, stderr) => {
          if (err) reject(new Error(`psql failed: ${stderr || err.message}\nSQL:\n${text}`))
          else resolve(stdout)
        }
      )
      child.stdin.end(text)
    })
  }

  /** The single value of a query returning one json column. */
  async json(query) {
    const out = (await this.sql(query)).trim()
    return out === '' ? null : JSON.parse(out)
  }

  /** Wait until a walsender streams slot `slot` (the server's replication is running). */
  async waitForSlot(slot) {
    await h.waitFor(
      async () =>
        (await this.sql(`select active from pg_replication_slots where slot_name = '${slot}'`)).trim() === 't',
      `replication slot ${slot} active`,
      { timeout: 20000 }
    )
  }

  async stop() {
    await run(CLUSTER_SH, ['stop', this.dir])
  }
}

/** Starts a cluster with tests/pg/cluster.sh. */
async function startCluster() {
  let stdout
  try {
    ;({ stdout } = await run(CLUSTER_SH, ['start'], { timeout: 60000 }))
  } catch (e) {
    throw new Error(`tests/pg/cluster.sh start failed (PostgreSQL with wal_level=logical is required): ${e.stderr || e.message}`)
  }
  const dbUrl = stdout.match(/^DB_URL=(.+)$/m)?.[1]
  const dir = stdout.match(/^PG_DIR=(.+)$/m)?.[1]
  if (!dbUrl || !dir) throw new Error(`unexpected cluster.sh output:\n${stdout}`)
  return new Cluster(dbUrl, dir)
}

/** A slot name of its own for each server. */
function slotName(prefix = 'realtide_js') {
  return `${prefix}_${process.pid}_${Math.floor(Math.random() * 1e9)}`
}

module.exports = { startCluster, slotName, psqlBin }
