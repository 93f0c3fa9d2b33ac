// Helpers shared by the orchestrator and its children (plain ESM, no dependencies).
import { execFileSync, spawn } from 'node:child_process'
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

// ---- children of an orchestrator (bench/run.js, bench/soak.js) ----------------------------------

/** Kills every child still in `children` when this process exits or is interrupted; returns that killer. */
export function reaper (children) {
  const killAll = () => {
    for (const child of children) {
      try { child.kill('SIGKILL') } catch { /* already gone */ }
    }
    children.clear()
  }
  process.on('exit', killAll)
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, () => { killAll(); process.exit(130) })
  return killAll
}

export function withTimeout (promise, ms, what) {
  let timer
  return Promise.race([promise, new Promise((resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what} (after ${ms} ms)`)), ms) })])
    .finally(() => clearTimeout(timer))
}

/**
 * Starts `node <nodeArgs> bench/<script> <args>` through bash so that the soft file-descriptor limit
 * is raised to the hard one (10,000 sockets need the headroom); IPC survives the exec. The child is
 * kept in `children` until it exits; `onExit(err)` hears of every exit. Returns a handle: `ready`
 * (its `{ ready: true }` message), `rpc(cmd, payload)` (answered by ipcServer) and `stop()`.
 */
export function startChild (script, args, { name = script, nodeArgs = [], children, readyMs = 20000, onExit } = {}) {
  const child = spawn('bash', ['-c', 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"', 'bash', process.execPath, ...nodeArgs, join(ROOT, 'bench', script), ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc']
  })
  children?.add(child)
  let nextId = 0
  const waiting = new Map()
  let readyResolve, readyReject
  const ready = new Promise((resolve, reject) => { readyResolve = resolve; readyReject = reject })
  child.on('message', (msg) => {
    if (msg.ready) { readyResolve(msg); return }
    const w = waiting.get(msg.re)
    if (w === undefined) return
    waiting.delete(msg.re)
    clearTimeout(w.timer)
    if (msg.error !== undefined) w.reject(new Error(`${name}: ${msg.error}`))
    else w.resolve(msg.result)
  })
  child.on('exit', (code, signal) => {
    children?.delete(child)
    const err = new Error(`${name} exited (${code ?? signal})`)
    readyReject(err)
    for (const w of waiting.values()) { clearTimeout(w.timer); w.reject(err) }
    waiting.clear()
    onExit?.(err)
  })
  const handle = {
    child,
    name,
    ready: withTimeout(ready, readyMs, `${name} did not start`),
    rpc (cmd, payload = {}, timeoutMs = 60000) {
      const id = ++nextId
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => { waiting.delete(id); reject(new Error(`${name}: ${cmd} timed out`)) }, timeoutMs)
        waiting.set(id, { resolve, reject, timer })
        child.send({ id, cmd, ...payload })
      })
    },
    async stop () {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = new Promise(resolve => child.once('exit', resolve))
      handle.rpc('exit', {}, 5000).catch(() => {})
      await withTimeout(exited, 6000, 'exit').catch(() => child.kill('SIGKILL'))
    }
  }
  return handle
}
