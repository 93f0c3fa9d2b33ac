// Helpers shared by the orchestrator and its children (plain ESM, no dependencies).
import { execFileSync } from 'node:child_process'
import { existsSync, readdirSync, rmSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** A monotonic clock in ms that every process on this machine shares (CLOCK_MONOTONIC via hrtime). */
export function now () {
  return Number(process.hrtime.bigint()) / 1e6
}

/** The ~100-byte request data every implementation echoes. */
export const REQUEST_DATA = { id: 12345, name: 'bench-user', tags: ['alpha', 'beta'], active: true }

/** Publication payload: a sequence number and padding to about 100 bytes of JSON. */
export function publication (seq) {
  return { seq, pad: 'x'.repeat(80) }
}

export const TOPIC = 'bench'

/**
 * Request/reply over IPC with a child or the parent. Each side answers `{ id, cmd, ... }` messages
 * with `{ re: id, result }` or `{ re: id, error }`.
 */
export function ipcServer (handlers) {
  process.on('message', async (msg) => {
    if (msg === null || typeof msg !== 'object' || msg.cmd === undefined) return
    const handler = handlers[msg.cmd]
    try {
      if (handler === undefined) throw new Error(`unknown command ${msg.cmd}`)
      const result = await handler(msg)
      process.send({ re: msg.id, result })
    } catch (err) {
      process.send({ re: msg.id, error: String(err && err.stack ? err.stack : err) })
    }
  })
  // The orchestrator going away must never leave a child behind.
  process.on('disconnect', () => process.exit(0))
}

export function quantile (sorted, q) {
  if (sorted.length === 0) return NaN
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[i]
}

export function median (values) {
  const v = values.filter(x => Number.isFinite(x)).sort((a, b) => a - b)
  if (v.length === 0) return NaN
  const m = v.length >> 1
  return v.length % 2 === 1 ? v[m] : (v[m - 1] + v[m]) / 2
}

// ---- the built plugin (bench/run.js's build, shared with bench/soak.js) -------------------------

const ROOT = fileURLToPath(new URL('..', import.meta.url))
/** Where lib/ is compiled for benchmarks: out of git's and eslint's way, and of `npm run build`'s. */
export const BENCH_BUILD = join(ROOT, 'node_modules', '.cache', 'fastify-drizzle-bench')

function newestMtime (dir) {
  let newest = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(path) : statSync(path).mtimeMs)
  }
  return newest
}

/**
 * Compiles lib/ into BENCH_BUILD with the project's tsconfig, as bench/run.js's build() does (same
 * compiler and options as dist/esm), unless the copy is newer than every file in lib/ (or `skip`).
 */
export function buildBench ({ skip = false } = {}) {
  const built = join(BENCH_BUILD, 'index.js')
  if (existsSync(built) && (skip || statSync(built).mtimeMs > newestMtime(join(ROOT, 'lib')))) return
  const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
  rmSync(BENCH_BUILD, { recursive: true, force: true })
  try {
    execFileSync(process.execPath, [tsc, '-p', 'tsconfig.json', '--outDir', BENCH_BUILD, '--declaration', 'false', '--declarationMap', 'false', '--sourceMap', 'false', '--inlineSources', 'false', '--incremental', 'false'], { cwd: ROOT, stdio: 'inherit' })
  } catch (err) {
    if (!existsSync(built)) throw err
    console.error('bench: tsc reported errors; running what it emitted')
  }
}
