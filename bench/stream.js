// Streamed items vs plain replies of the same size over one socket (issue #17):
//   node --import tsx bench/stream.js [--items=20000] [--size=100] [--reps=3] [--window=256] [--lib=lib/index.ts] [--modes=plain,stream]
//
// The server is a child process (its own core); this process is the client. Each repetition runs
// both modes, alternating which goes first:
//   plain   N requests of an action returning a payload of --size bytes of JSON, --window in flight
//   stream  one request of an async generator yielding that payload N times
// and reports frames/s of each and their ratio (issue #17 asks stream >= 0.8x plain). `--lib` points
// at another build of the plugin (e.g. a checkout of the previous commit) to compare plain round trips
// before and after a change. Not part of `npm run bench`: run it alone, on a quiet machine.
import { fork } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { resolve } from 'node:path'
import WebSocket from 'ws'
import { median, now } from './common.js'

const argv = process.argv.slice(2)
const value = (name, fallback) => argv.find(a => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback
const ITEMS = Number(value('items', 20000))
const SIZE = Number(value('size', 100))
const REPS = Number(value('reps', 3))
const WINDOW = Number(value('window', 256))
const LIB = resolve(value('lib', 'lib/index.ts'))
// A build from before streams existed answers `many` with one reply: run it with --modes=plain.
const MODES = value('modes', 'plain,stream').split(',')

/** A JSON object of about `size` bytes. */
function payload (size) {
  return { seq: 1, pad: 'x'.repeat(Math.max(0, size - 20)) }
}

async function server () {
  const { default: Fastify } = await import('fastify')
  const { default: drizzle } = await import(pathToFileURL(process.argv[3]).href)
  const app = Fastify({ logger: false })
  await app.register(drizzle, { rateLimit: false, maxInFlight: 100_000, heartbeatInterval: 0 })
  const data = payload(Number(process.argv[4]))
  app.drizzle.resource('bench', {
    async one () { return data },
    async * many (message) {
      for (let i = 0; i < message.data.n; i++) yield data
    }
  })
  await app.listen({ host: '127.0.0.1', port: 0 })
  process.send({ port: app.server.address().port })
  process.on('disconnect', () => process.exit(0))
}

/** Frames/s of N plain round trips, WINDOW in flight. */
function plain (ws) {
  return new Promise(resolve => {
    let sent = 0
    let received = 0
    const start = now()
    const send = () => ws.send(`{"resource":"bench","action":"one","request_id":${++sent}}`)
    ws.on('message', function onMessage () {
      if (++received === ITEMS) {
        ws.off('message', onMessage)
        resolve(ITEMS / ((now() - start) / 1000))
      } else if (sent < ITEMS) send()
    })
    for (let i = 0; i < Math.min(WINDOW, ITEMS); i++) send()
  })
}

/** Frames/s of one stream of N items (the final reply not counted). */
function stream (ws) {
  return new Promise(resolve => {
    let received = 0
    const start = now()
    ws.on('message', function onMessage () {
      if (++received === ITEMS + 1) {
        ws.off('message', onMessage)
        resolve(ITEMS / ((now() - start) / 1000))
      }
    })
    ws.send(JSON.stringify({ resource: 'bench', action: 'many', data: { n: ITEMS }, request_id: 's' }))
  })
}

async function client () {
  const child = fork(fileURLToPath(import.meta.url), ['server', LIB, String(SIZE)], { execArgv: ['--import', 'tsx'] })
  const [{ port }] = await once(child, 'message')
  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`)
  await once(ws, 'open')
  // Warm-up: both paths compiled by V8 before measuring.
  const run = (mode) => mode === 'plain' ? plain(ws) : stream(ws)
  for (const mode of MODES) await run(mode)
  const results = { plain: [], stream: [] }
  for (let rep = 0; rep < REPS; rep++) {
    const order = rep % 2 === 0 ? MODES : [...MODES].reverse()
    for (const mode of order) results[mode].push(await run(mode))
  }
  ws.terminate()
  child.disconnect()
  const p = median(results.plain)
  const s = median(results.stream)
  console.log(JSON.stringify({ items: ITEMS, size: SIZE, window: WINDOW, lib: LIB, plainPerSec: Math.round(p), streamPerSec: Math.round(s), ratio: Number((s / p).toFixed(2)), runs: results }))
}

if (process.argv[2] === 'server') await server()
else await client()
