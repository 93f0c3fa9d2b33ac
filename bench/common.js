// Helpers shared by the orchestrator and its children (plain ESM, no dependencies).

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
