// Load generator child: opens WebSocket clients to 127.0.0.1 and drives them on the orchestrator's
// commands (IPC). One process per generator; the orchestrator runs two for the fan-out scenarios.
import WebSocket from 'ws'
import { ipcServer, now, quantile } from './common.js'
import { protocols, seqOf } from './protocols.js'

let sockets = [] // { ws, proto }
let run // the round-trip run in progress
let fan // the fan-out counters in progress
let subErrors = 0
let lastSubError

function open (proto, port, timeoutMs) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${proto.path}`, { perMessageDeflate: false })
    const timer = setTimeout(() => { ws.terminate(); reject(new Error('connect timeout')) }, timeoutMs)
    ws.once('error', (err) => { clearTimeout(timer); reject(err) })
    ws.once('open', () => {
      proto.handshake(ws).then(() => { clearTimeout(timer); resolve(ws) }, (err) => { clearTimeout(timer); reject(err) })
    })
  })
}

/** Opens `count` sockets, at most `parallel` handshakes at a time. */
async function connect ({ impl, port, count, parallel = 200 }) {
  const proto = protocols[impl]
  const opened = []
  let next = 0
  let failed = 0
  async function worker () {
    while (next < count) {
      next++
      try {
        const ws = await open(proto, port, 15000)
        ws.on('error', () => {})
        opened.push({ ws, proto, pending: new Map(), seq: 0 })
      } catch {
        failed++
      }
    }
  }
  const t0 = now()
  await Promise.all(Array.from({ length: Math.min(parallel, count) }, worker))
  sockets = opened
  for (const s of sockets) s.ws.on('message', (buf) => onMessage(s, buf))
  return { opened: opened.length, failed, ms: now() - t0 }
}

function onMessage (s, buf) {
  const proto = s.proto
  if (fan !== undefined && proto.isPublication(buf)) {
    const seq = seqOf(buf)
    const t = now()
    fan.total++
    if (seq >= 0 && seq < fan.count) {
      fan.perSeq[seq]++
      fan.last[seq] = t
    }
    if (fan.total === fan.expected) fan.done()
    return
  }
  const str = buf.toString()
  if (proto.control(s.ws, str)) return
  const id = proto.replyId(str)
  if (id < 0) return
  const sentAt = s.pending.get(id)
  if (sentAt === undefined) return
  s.pending.delete(id)
  if (proto.isError(str)) {
    if (run !== undefined) { run.errors++; run.lastError = str.slice(0, 300) } else { subErrors++; lastSubError = str.slice(0, 300) }
  }
  if (s.waiter !== undefined && s.pending.size === 0) { const w = s.waiter; s.waiter = undefined; w() }
  if (run === undefined) return
  const t = now()
  if (run.measuring) {
    run.count++
    if (run.nLat < run.lat.length) run.lat[run.nLat++] = t - sentAt
  }
  if (run.sending) send(s)
}

function send (s) {
  const id = ++s.seq
  s.pending.set(id, now())
  s.ws.send(s.proto.request(id))
}

/** Every socket sends a subscribe request and waits for its reply. */
async function subscribe () {
  const t0 = now()
  subErrors = 0
  await Promise.all(sockets.map(s => new Promise((resolve) => {
    const id = ++s.seq
    s.pending.set(id, now())
    s.waiter = resolve
    s.ws.send(s.proto.subscribe(id))
  })))
  return { ms: now() - t0, errors: subErrors, lastError: lastSubError }
}

const handlers = {
  connect,
  subscribe,
  /** Round trips: every socket keeps `inflight` requests outstanding until stop. */
  start ({ inflight }) {
    run = { sending: true, measuring: false, count: 0, errors: 0, lat: new Float64Array(2_000_000), nLat: 0, t0: 0 }
    for (const s of sockets) for (let i = 0; i < inflight; i++) send(s)
    return { started: sockets.length * inflight }
  },
  mark () {
    run.measuring = true
    run.count = 0
    run.nLat = 0
    run.t0 = now()
    return { t: run.t0 }
  },
  async stop () {
    const elapsed = now() - run.t0
    run.sending = false
    run.measuring = false
    const lat = run.lat.subarray(0, run.nLat).sort()
    const result = {
      count: run.count,
      ms: elapsed,
      perSec: run.count / elapsed * 1000,
      p50: quantile(lat, 0.5),
      p99: quantile(lat, 0.99),
      errors: run.errors,
      lastError: run.lastError
    }
    // Let the requests still in flight come back before the sockets go.
    const deadline = now() + 2000
    while (sockets.some(s => s.pending.size > 0) && now() < deadline) await new Promise(resolve => setTimeout(resolve, 10))
    run = undefined
    return result
  },
  /** Fan-out: count publications `0..count-1`, each expected once per socket. */
  expect ({ count }) {
    let resolveDone
    const done = new Promise(resolve => { resolveDone = resolve })
    fan = { count, expected: count * sockets.length, total: 0, perSeq: new Int32Array(count), last: new Float64Array(count), done: resolveDone, finished: done }
    if (fan.expected === 0) resolveDone()
    return { expected: fan.expected }
  },
  async collect ({ timeoutMs }) {
    const f = fan
    let timer
    await Promise.race([f.finished, new Promise(resolve => { timer = setTimeout(resolve, timeoutMs) })])
    clearTimeout(timer)
    fan = undefined
    return { total: f.total, expected: f.expected, sockets: sockets.length, perSeq: Array.from(f.perSeq), last: Array.from(f.last) }
  },
  async close () {
    const closing = sockets
    sockets = []
    for (const s of closing) s.ws.terminate()
    await new Promise(resolve => setTimeout(resolve, 50))
    return { closed: closing.length }
  },
  exit () { setImmediate(() => process.exit(0)); return {} }
}

ipcServer(handlers)
process.send({ ready: true })
