// Soak load generator child: `node bench/soak-client.js '<json options>'` (bench/soak.js starts two).
// Holds its share of the connections as the project's own client (DrizzleClient from the built
// lib/client, `ws` as the WebSocket), so reconnects, renewals and history recovery are the library's.
// Each connection g (global index) is user `u<g>` and subscribes to `subs` topics (the first is
// room/<g mod topics>), with an onRecovery callback and $join/$leave listeners.
//
// Per subscription it checks what the client library hands the app: every publication carries its
// offset, and each must be the last one + 1. A repeat is a duplicate; a jump is a loss, except right
// after a recovery that reported `recovered: false` (the library then starts again from the server's
// position: counted as `unrecovered` and `skipped`, not lost). The publication's `n` (its topic's
// count at the publisher) must equal its offset (a fresh history numbers from 1): else `mismatched`.
// Latency is now() - the publisher's stamp: `live` when published after the connection's latest open,
// `replayed` otherwise (it came through recovery).
//
// Churn: `perSec` times a second a random open connection has its socket terminated (no close
// handshake, like a lost network); the client reconnects by itself (random server, exponential
// backoff with full jitter). A fraction `longFrac` of them stay away `longAwayMs` first, longer than
// the history holds, so `recovered: false` is exercised too.
import WebSocket from 'ws'
import { BENCH_BUILD, ipcServer, now } from './common.js'
import { newHistogram, record, sparse, topicName } from './soak-common.js'

const options = JSON.parse(process.argv[2])
const { DrizzleClient } = await import(`${BENCH_BUILD}/client/index.js`)
const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms))

const conns = []
const subsAll = []
const COUNTERS = ['delivered', 'lost', 'duplicated', 'mismatched', 'noOffset', 'recovered', 'unrecovered', 'skipped', 'joins', 'leaves',
  'drops', 'longDrops', 'opens', 'closes', 'unplannedCloses', 'errors', 'replayed']
const totals = Object.fromEntries(COUNTERS.map(name => [name, 0]))
const examples = [] // the first few losses/duplicates, for the report
let lastError
/** Client `error` events by message (digits folded, at most 20 kinds): what went wrong, how often. */
const errorKinds = new Map()
const live = newHistogram()
const replayed = newHistogram()
let churnTimer

function example (kind, c, s, got) {
  if (examples.length < 20) examples.push({ kind, conn: c.g, topic: s.topic, last: s.last, got, at: new Date().toISOString() })
}

function onPublication (c, s, data, frame) {
  const t = now()
  totals.delivered++
  const offset = frame.offset
  if (typeof offset !== 'number') {
    totals.noOffset++
  } else {
    if (offset !== data.n) totals.mismatched++
    if (s.last >= 0) {
      if (offset <= s.last) { totals.duplicated++; example('duplicate', c, s, offset) } else if (offset > s.last + 1) { totals.lost += offset - s.last - 1; example('gap', c, s, offset) }
    }
    if (offset > s.last) s.last = offset
  }
  if (data.t >= c.openedAt) {
    record(live, t - data.t)
  } else {
    totals.replayed++
    record(replayed, t - data.t)
  }
}

function onRecovery (s, result) {
  if (result.recovered) {
    totals.recovered++
    return
  }
  totals.unrecovered++
  if (s.last >= 0 && result.offset > s.last) totals.skipped += result.offset - s.last
  s.last = result.offset
}

function createConnection (g) {
  const c = { g, client: undefined, ws: undefined, open: false, openedAt: Infinity, dropping: false, awayUntil: 0, subs: [] }
  const connect = async () => {
    const wait = c.awayUntil - now()
    if (wait > 0) await sleep(wait)
    const port = options.ports[Math.floor(Math.random() * options.ports.length)]
    c.ws = new WebSocket(`ws://127.0.0.1:${port}/ws?user=u${g}`, { perMessageDeflate: false })
    return c.ws
  }
  const client = new DrizzleClient(connect, { timeout: 30000 })
  c.client = client
  client.on('open', () => { c.open = true; c.openedAt = now(); totals.opens++ })
  client.on('close', () => {
    c.open = false
    totals.closes++
    if (!c.dropping) totals.unplannedCloses++
    c.dropping = false
  })
  client.on('error', (err) => {
    totals.errors++
    lastError = String(err && err.message)
    const kind = `${err && err.type}: ${lastError.replace(/[0-9]+/g, 'N').slice(0, 120)}`
    if (errorKinds.has(kind) || errorKinds.size < 20) errorKinds.set(kind, (errorKinds.get(kind) ?? 0) + 1)
  })
  const stride = Math.max(1, Math.floor(options.topics / options.subs))
  const ready = []
  for (let k = 0; k < options.subs; k++) {
    const topic = (g + k * stride) % options.topics
    const s = { topic, last: -1 }
    const handle = client.subscribe(topicName(topic), (data, frame) => onPublication(c, s, data, frame), { onRecovery: (r) => onRecovery(s, r) })
    handle.on('join', () => { totals.joins++ })
    handle.on('leave', () => { totals.leaves++ })
    c.subs.push(s)
    subsAll.push(s)
    ready.push(handle.ready)
  }
  conns.push(c)
  return Promise.all(ready)
}

function drop () {
  for (let tries = 0; tries < 20; tries++) {
    const c = conns[Math.floor(Math.random() * conns.length)]
    if (!c.open || c.ws === undefined) continue
    c.dropping = true
    totals.drops++
    if (Math.random() < options.longFrac) {
      c.awayUntil = now() + options.longAwayMs
      totals.longDrops++
    }
    c.ws.terminate()
    return
  }
}

function memory () {
  const m = process.memoryUsage()
  return { rss: m.rss, heapUsed: m.heapUsed, cpu: process.cpuUsage(), t: now() }
}

ipcServer({
  /** Opens this process's connections, `parallel` at a time, each waiting for its subscriptions. */
  async connect ({ parallel = 100 }) {
    const t0 = now()
    let next = 0
    let failed = 0
    async function worker () {
      while (next < options.conns) {
        const g = options.first + next++
        try { await createConnection(g) } catch { failed++ }
      }
    }
    await Promise.all(Array.from({ length: Math.min(parallel, options.conns) }, worker))
    return { opened: conns.filter(c => c.open).length, failed, ms: now() - t0 }
  },
  churn ({ perSec }) {
    clearInterval(churnTimer)
    if (!(perSec > 0)) return {}
    let owed = 0
    let last = now()
    churnTimer = setInterval(() => {
      const t = now()
      owed += perSec * (t - last) / 1000
      last = t
      while (owed >= 1) { owed--; drop() }
    }, 50)
    return {}
  },
  /** Cumulative counters, and the latency histograms of the window since the last sample (then reset). */
  sample () {
    const out = { ...totals, lastError, errorKinds: Object.fromEntries(errorKinds), open: conns.filter(c => c.open).length, live: sparse(live), replay: sparse(replayed), mem: memory() }
    live.fill(0)
    replayed.fill(0)
    return out
  },
  /**
   * After the publisher stopped: waits (at most `timeoutMs`) until every subscription has reached its
   * topic's final offset, then says how far short the rest are (publications lost at the tail).
   */
  async settle ({ finals, timeoutMs }) {
    const deadline = now() + timeoutMs
    const behind = () => subsAll.filter(s => s.last < finals[s.topic])
    while (behind().length > 0 && now() < deadline) await sleep(200)
    const rest = behind()
    for (const s of rest.slice(0, 5)) examples.push({ kind: 'tail', topic: s.topic, last: s.last, final: finals[s.topic] })
    return {
      behindSubs: rest.length,
      behindMsgs: rest.reduce((n, s) => n + finals[s.topic] - Math.max(s.last, 0), 0),
      neverDelivered: rest.filter(s => s.last < 0).length,
      notOpen: conns.filter(c => !c.open).length,
      examples
    }
  },
  exit () { setImmediate(() => process.exit(0)); return {} }
})

process.send({ ready: true })
