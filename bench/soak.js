// Soak (issue #20): many connections on history + presence topics, a steady publisher, clients
// reconnecting at random, for minutes; checks that server memory stays flat, that recovered
// subscriptions lose and repeat nothing, and reports delivery latency. Not part of `npm test`.
//
//   npm run soak                                  # 10 minutes, 10,000 connections, 1,000 topics, 5,000/s, Redis
//   node bench/soak.js [--minutes=10] [--conns=10000] [--topics=1000] [--rate=5000] [--broker=redis|memory]
//        [--subs=1] [--churn=10] [--long=0.02] [--history=100] [--warmup=20] [--sample=10] [--loadgens=2] [--profile=server|client|publisher] [--no-build]
//
// Processes (all on 127.0.0.1; IPC for control; each child's soft fd limit raised to the hard one):
//   soak-server.js × 2 (Redis broker, one key prefix per run) or × 1 (--broker=memory): fastify-drizzle
//     built from lib/ as bench/run.js builds it; topic `room/:id` with `history: { size: --history,
//     ttl: 300 s }` and `presence: true` ($join/$leave frames on: a churn of 10 reconnects/s in rooms of
//     10 costs ~200 frames/s against 50,000 publications/s delivered, so the events path is soaked too);
//     `identify` names each connection's user.
//   soak-publisher.js (Redis): an outside process publishing with `FCALL drizzle_publish` at --rate/s,
//     round robin over the topics, paced every 5 ms; with --broker=memory the same pacer runs inside the
//     server and calls app.drizzle.publish. Each publication carries its per-topic number and send time.
//   soak-client.js × 2 (--loadgens): half the connections each, as DrizzleClient (lib/client, built) over `ws`; each
//     connection subscribes to --subs topic(s) with onRecovery, and reconnects to a random server.
//     --churn sockets per second (in total) are terminated at random; --long of them stay away 1.5× the
//     time the history covers (so their recovery must say `recovered: false`).
//
// Measured, each --sample seconds: every server's RSS, heap and CPU (heap after a forced GC once a
// minute), the clients' counters and latency histograms, the publisher's progress. After the run the
// churn and the publisher stop, each server is asked for every topic's last offset, and every
// subscription must reach it (what is still missing then is lost too).
//
// Verdict (exit code 1 when any fails):
//   - lost = 0 and duplicated = 0 and mismatched = 0 over every subscription (recovered or not; a
//     `recovered: false` recovery is not a loss but is reported as unrecovered/skipped), and nothing
//     missing at the end;
//   - RSS flat after warm-up (the first --warmup percent of the run, 20 by default: 2 minutes of 10):
//     for each server, the least-squares slope of RSS over the remaining samples is at most
//     max(2 MB/min, 1 % of its mean RSS per minute). The heap-after-GC slope is reported beside it.
// p50/p99/p99.9/max delivery latency (live deliveries, after warm-up) is reported, not judged.
// Results: bench/results/soak-<stamp>.jsonl (config, samples, summary); the summary is printed.
import { appendFileSync, mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { buildBench, now, reaper, startChild } from './common.js'
import { addSparse, newHistogram, summarize } from './soak-common.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const argv = process.argv.slice(2)
const flag = (name) => argv.includes(`--${name}`)
const value = (name, fallback) => {
  const raw = argv.find(a => a.startsWith(`--${name}=`))?.split('=')[1]
  if (raw === undefined) return fallback
  const n = Number(raw)
  if (typeof fallback === 'number' && !Number.isFinite(n)) throw new Error(`--${name}: not a number: ${raw}`)
  return typeof fallback === 'number' ? n : raw
}

const C = {
  minutes: value('minutes', 10),
  conns: value('conns', 10000),
  topics: value('topics', 1000),
  rate: value('rate', 5000),
  broker: value('broker', 'redis'),
  subs: value('subs', 1),
  churn: value('churn', 10),
  longFrac: value('long', 0.02),
  historySize: value('history', 100),
  historyTtl: 300_000,
  warmupPct: value('warmup', 20),
  sampleSec: value('sample', 10),
  loadgens: value('loadgens', 2),
  // `--profile=server|client|publisher`: those processes write a V8 CPU profile to bench/profiles/
  // (read it with `node bench/profile.js`); the profiler's own cost makes the run's figures not count.
  profile: value('profile', ''),
  redisUrl: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
}
if (!['redis', 'memory'].includes(C.broker)) throw new Error(`--broker must be redis or memory, received ${C.broker}`)
// How long the history of one topic covers at this rate; a long drop stays away 1.5 times that.
C.historySeconds = C.historySize / (C.rate / C.topics)
C.longAwayMs = Math.round(Math.min(120, 1.5 * C.historySeconds) * 1000)
C.prefix = `drizzle-soak-${process.pid}-${Date.now()}:`

// ---- children (as bench/run.js starts them) -----------------------------------------------------

const children = new Set()
const killAll = reaper(children)
process.on('uncaughtException', (err) => { console.error(err); killAll(); process.exit(2) })
process.on('unhandledRejection', (err) => { console.error(err); killAll(); process.exit(2) })

/** `node <nodeArgs> bench/<script> <args[0]>`; args[1] only names it in messages. A child that dies mid-run ends the soak. */
function start (script, args, nodeArgs = []) {
  if (C.profile !== '' && script === `soak-${C.profile}.js`) nodeArgs = [...nodeArgs, '--cpu-prof', `--cpu-prof-dir=${join(root, 'bench', 'profiles')}`]
  const name = `${script} ${args.length > 1 ? args[1] : ''}`.trim()
  return startChild(script, args.slice(0, 1), {
    name,
    nodeArgs,
    children,
    readyMs: 30000,
    onExit (err) { if (!stopping) { console.error(`soak: ${err.message}`); killAll(); process.exit(2) } }
  })
}
let stopping = false

/** CPU use of a process between two samples `{ cpu: process.cpuUsage(), t: now() }`, in % of one core. */
const cpuPct = (a, b) => a === undefined ? NaN : +(((b.cpu.user + b.cpu.system) - (a.cpu.user + a.cpu.system)) / 1000 / (b.t - a.t) * 100).toFixed(0)
const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms))
const MB = 1024 * 1024

// ---- results ------------------------------------------------------------------------------------

const stamp = new Date().toISOString().replace(/[:.]/g, '-')
mkdirSync(join(root, 'bench', 'results'), { recursive: true })
const resultsFile = join(root, 'bench', 'results', `soak-${stamp}.jsonl`)
function write (rec) {
  appendFileSync(resultsFile, JSON.stringify({ ts: new Date().toISOString(), ...rec }) + '\n')
}

/** Least-squares slope of y over x. */
function slope (xs, ys) {
  const n = xs.length
  if (n < 2) return NaN
  const mx = xs.reduce((a, b) => a + b, 0) / n
  const my = ys.reduce((a, b) => a + b, 0) / n
  let num = 0
  let den = 0
  for (let i = 0; i < n; i++) { num += (xs[i] - mx) * (ys[i] - my); den += (xs[i] - mx) ** 2 }
  return den === 0 ? NaN : num / den
}

async function redisClient () {
  const { Redis } = await import('ioredis')
  const client = new Redis(C.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 2000 })
  client.on('error', () => {})
  await client.connect()
  return client
}

/** Deletes this run's keys (its own prefix only: never FLUSHALL, others share this Redis). */
async function cleanRedis () {
  const redis = await redisClient()
  let cursor = '0'
  let deleted = 0
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${C.prefix}*`, 'COUNT', 1000)
    cursor = next
    if (keys.length > 0) deleted += await redis.unlink(...keys)
  } while (cursor !== '0')
  redis.disconnect()
  return deleted
}

// ---- the run ------------------------------------------------------------------------------------

async function main () {
  buildBench({ skip: flag('no-build') })
  if (C.broker === 'redis') {
    const redis = await redisClient().catch((err) => { throw new Error(`soak: no Redis at ${C.redisUrl} (${err.message}); set REDIS_URL or use --broker=memory`) })
    redis.disconnect()
  }
  write({ type: 'config', ...C })
  console.error(`soak: ${C.minutes} min, ${C.conns} connections x ${C.subs} subscription(s), ${C.topics} topics (history ${C.historySize} = ${C.historySeconds.toFixed(1)} s, presence with events), ` +
    `${C.rate}/s, churn ${C.churn}/s (${C.longFrac * 100}% away ${C.longAwayMs / 1000} s), broker ${C.broker}; results in ${resultsFile}`)

  const serverOptions = JSON.stringify({ conns: C.conns, broker: C.broker, url: C.redisUrl, prefix: C.prefix, historySize: C.historySize, historyTtl: C.historyTtl, presenceEvents: true })
  const nServers = C.broker === 'redis' ? 2 : 1
  const servers = Array.from({ length: nServers }, (_, i) => start('soak-server.js', [JSON.stringify({ ...JSON.parse(serverOptions), log: resultsFile.replace(/\.jsonl$/, `-server${i}.log`) }), `#${i}`], ['--expose-gc']))
  const ports = (await Promise.all(servers.map(s => s.ready))).map(r => r.port)
  let publisher = servers[0]
  if (C.broker === 'redis') {
    publisher = start('soak-publisher.js', [serverOptions, ''])
    await publisher.ready
  }
  const share = Math.ceil(C.conns / C.loadgens)
  const lgs = Array.from({ length: C.loadgens }, (_, i) => {
    const conns = Math.max(0, Math.min(share, C.conns - i * share))
    return start('soak-client.js', [JSON.stringify({ ports, conns, first: i * share, topics: C.topics, subs: C.subs, longFrac: C.longFrac, longAwayMs: C.longAwayMs }), `#${i}`])
  })
  await Promise.all(lgs.map(lg => lg.ready))

  try {
    const t0c = now()
    const connected = await Promise.all(lgs.map(lg => lg.rpc('connect', {}, 600000)))
    const opened = connected.reduce((n, r) => n + r.opened, 0)
    console.error(`soak: ${opened}/${C.conns} connections open and subscribed in ${((now() - t0c) / 1000).toFixed(1)} s`)
    write({ type: 'connected', opened, failed: connected.reduce((n, r) => n + r.failed, 0), ms: now() - t0c })

    await publisher.rpc('publish-start', { rate: C.rate, topics: C.topics })
    await Promise.all(lgs.map(lg => lg.rpc('churn', { perSec: C.churn / C.loadgens })))
    const t0 = now()
    const durationMs = C.minutes * 60_000
    const warmupMs = durationMs * C.warmupPct / 100
    // Every publication reaches each of its topic's subscribers: conns x subs / topics of them.
    const expectedPerSec = Math.round(C.rate * C.conns * C.subs / C.topics)
    const liveAll = newHistogram()
    const liveSteady = newHistogram()
    const replay = newHistogram()
    const series = [] // { t, rss[], heap[] }
    const gcSeries = [] // { t, heap[] }
    let prev
    let cpuPrev = await Promise.all(servers.map(s => s.rpc('mem')))
    let clientPrev = []
    let pubPrev
    let sampleNo = 0
    while (now() - t0 < durationMs) {
      await sleep(Math.min(C.sampleSec * 1000, Math.max(0, durationMs - (now() - t0))))
      sampleNo++
      const [mems, samples, pub] = await Promise.all([
        Promise.all(servers.map(s => s.rpc('mem'))),
        Promise.all(lgs.map(lg => lg.rpc('sample'))),
        publisher.rpc('publish-stats')
      ])
      const t = (now() - t0) / 1000
      const steady = now() - t0 > warmupMs
      let gc
      if (sampleNo % Math.max(1, Math.round(60 / C.sampleSec)) === 0) {
        gc = await Promise.all(servers.map(s => s.rpc('gcmem')))
        gcSeries.push({ t, steady, heap: gc.map(m => m.heapUsed) })
      }
      const winLive = newHistogram()
      for (const s of samples) { addSparse(winLive, s.live); addSparse(liveAll, s.live); addSparse(replay, s.replay); if (steady) addSparse(liveSteady, s.live) }
      const sum = (key) => samples.reduce((n, s) => n + s[key], 0)
      const delivered = sum('delivered')
      const dt = prev === undefined ? t : t - prev.t
      const cpu = mems.map((m, i) => cpuPct(cpuPrev[i], m))
      const clientCpu = samples.map((s, i) => cpuPct(clientPrev[i], s.mem))
      const pubCpu = cpuPct(pubPrev, pub)
      cpuPrev = mems
      clientPrev = samples.map(s => s.mem)
      pubPrev = pub
      const lat = summarize(winLive)
      const rec = {
        type: 'sample',
        t: +t.toFixed(1),
        steady,
        servers: mems.map((m, i) => ({ rssMB: +(m.rss / MB).toFixed(1), heapMB: +(m.heapUsed / MB).toFixed(1), connections: m.connections, cpuPct: cpu[i] })),
        gcHeapMB: gc?.map(m => +(m.heapUsed / MB).toFixed(1)),
        clients: samples.map((s, i) => ({ open: s.open, rssMB: +(s.mem.rss / MB).toFixed(1), cpuPct: clientCpu[i] })),
        publisherCpuPct: pubCpu,
        published: pub.sent,
        publisherBehind: pub.behind,
        publishErrors: pub.errors,
        deliveredPerSec: Math.round((delivered - (prev?.delivered ?? 0)) / dt),
        expectedPerSec,
        live: lat,
        lost: sum('lost'),
        duplicated: sum('duplicated'),
        mismatched: sum('mismatched'),
        recovered: sum('recovered'),
        unrecovered: sum('unrecovered'),
        drops: sum('drops'),
        unplannedCloses: sum('unplannedCloses'),
        clientErrors: sum('errors')
      }
      prev = { t, delivered }
      series.push({ t, steady, rss: mems.map(m => m.rss) })
      write(rec)
      console.error(`soak: ${rec.t}s rss ${rec.servers.map(s => s.rssMB).join('/')} MB cpu ${rec.servers.map(s => s.cpuPct).join('/')}% (clients ${clientCpu.join('/')}%, pub ${pubCpu}%) ` +
        `${rec.deliveredPerSec}/${expectedPerSec}/s p99 ${lat.p99} ms behind ${pub.behind} lost ${rec.lost} dup ${rec.duplicated} rec ${rec.recovered}/${rec.unrecovered} drops ${rec.drops} open ${rec.clients.reduce((n, c) => n + c.open, 0)}`)
    }

    // ---- the end: stop churn and publisher, every subscription must reach its topic's last offset --
    await Promise.all(lgs.map(lg => lg.rpc('churn', { perSec: 0 })))
    const pub = await publisher.rpc('publish-stop', {}, 30000)
    // From the publisher's own connection (Redis) or the memory broker: no server-side command timeout.
    const finals = await publisher.rpc('positions', { topics: C.topics }, 60000)
    const settleMs = C.longAwayMs + 30000
    const settled = await Promise.all(lgs.map(lg => lg.rpc('settle', { finals, timeoutMs: settleMs }, settleMs + 30000)))
    const last = await Promise.all(lgs.map(lg => lg.rpc('sample')))
    for (const s of last) { addSparse(liveAll, s.live); addSparse(replay, s.replay) }
    const endMem = await Promise.all(servers.map(s => s.rpc('gcmem')))
    const sum = (key) => last.reduce((n, s) => n + s[key], 0)
    const publishedFinal = finals.reduce((a, b) => a + b, 0)

    // RSS flat after warm-up, per server.
    const steadySeries = series.filter(s => s.steady)
    const steadyGc = gcSeries.filter(s => s.steady)
    const rss = servers.map((_, i) => {
      const xs = steadySeries.map(s => s.t / 60)
      const ys = steadySeries.map(s => s.rss[i] / MB)
      const mean = ys.reduce((a, b) => a + b, 0) / Math.max(1, ys.length)
      const slopeMBmin = slope(xs, ys)
      const threshold = Math.max(2, mean * 0.01)
      const heapSlope = slope(steadyGc.map(s => s.t / 60), steadyGc.map(s => s.heap[i] / MB))
      return {
        server: i,
        samples: ys.length,
        meanMB: +mean.toFixed(1),
        minMB: +Math.min(...ys).toFixed(1),
        maxMB: +Math.max(...ys).toFixed(1),
        maxMinusMinMB: +(Math.max(...ys) - Math.min(...ys)).toFixed(1),
        slopeMBperMin: +slopeMBmin.toFixed(2),
        thresholdMBperMin: +threshold.toFixed(2),
        gcHeapSlopeMBperMin: Number.isFinite(heapSlope) ? +heapSlope.toFixed(2) : null,
        endGcHeapMB: +(endMem[i].heapUsed / MB).toFixed(1),
        flat: ys.length >= 2 && slopeMBmin <= threshold
      }
    })
    const tailLost = settled.reduce((n, s) => n + s.behindMsgs, 0)
    const summary = {
      type: 'summary',
      config: { minutes: C.minutes, conns: C.conns, topics: C.topics, subs: C.subs, rate: C.rate, broker: C.broker, churn: C.churn, longFrac: C.longFrac, historySize: C.historySize },
      published: pub.sent,
      publishedPerSec: +(pub.sent / pub.seconds).toFixed(0),
      publisherBehindAtEnd: pub.behind,
      publishErrors: pub.errors,
      offsetsAssigned: publishedFinal,
      delivered: sum('delivered'),
      lost: sum('lost'),
      duplicated: sum('duplicated'),
      mismatched: sum('mismatched'),
      noOffset: sum('noOffset'),
      tailLost,
      tailBehindSubscriptions: settled.reduce((n, s) => n + s.behindSubs, 0),
      notOpenAtEnd: settled.reduce((n, s) => n + s.notOpen, 0),
      recoveries: sum('recovered'),
      unrecovered: sum('unrecovered'),
      skippedByUnrecovered: sum('skipped'),
      replayedDeliveries: sum('replayed'),
      drops: sum('drops'),
      longDrops: sum('longDrops'),
      unplannedCloses: sum('unplannedCloses'),
      clientErrors: sum('errors'),
      lastClientError: last.find(s => s.lastError)?.lastError,
      clientErrorKinds: mergeCounts(last.map(s => s.errorKinds)),
      presenceFrames: { joins: sum('joins'), leaves: sum('leaves') },
      latencyLiveSteadyMs: summarize(liveSteady),
      latencyLiveAllMs: summarize(liveAll),
      latencyReplayedMs: summarize(replay),
      rss,
      examples: settled.flatMap(s => s.examples).slice(0, 20)
    }
    summary.noLoss = summary.lost === 0 && summary.duplicated === 0 && summary.mismatched === 0 && summary.noOffset === 0 && tailLost === 0
    summary.rssFlat = rss.every(r => r.flat)
    summary.pass = summary.noLoss && summary.rssFlat
    write(summary)
    printSummary(summary)
    return summary.pass ? 0 : 1
  } finally {
    stopping = true
    await Promise.all(lgs.map(lg => lg.stop()))
    await Promise.all(servers.map(s => s.stop()))
    if (publisher !== servers[0]) await publisher.stop()
    killAll()
    if (C.broker === 'redis') {
      const deleted = await cleanRedis().catch((err) => `failed: ${err.message}`)
      console.error(`soak: removed ${deleted} Redis keys of prefix ${C.prefix}`)
    }
  }
}

function mergeCounts (list) {
  const out = {}
  for (const counts of list) for (const [k, n] of Object.entries(counts)) out[k] = (out[k] ?? 0) + n
  return out
}

function printSummary (s) {
  const l = s.latencyLiveSteadyMs
  const lines = [
    '',
    `Soak ${s.config.minutes} min, ${s.config.conns} connections, ${s.config.topics} topics, broker ${s.config.broker}`,
    `  published        ${s.published} (${s.publishedPerSec}/s of ${s.config.rate}/s asked; behind at end ${s.publisherBehindAtEnd}; errors ${s.publishErrors})`,
    `  delivered        ${s.delivered} (replayed through recovery: ${s.replayedDeliveries})`,
    `  lost / dup       ${s.lost} / ${s.duplicated}   mismatched ${s.mismatched}   missing at end ${s.tailLost} (${s.tailBehindSubscriptions} subscriptions)`,
    `  recoveries       ${s.recoveries} recovered, ${s.unrecovered} recovered:false (skipping ${s.skippedByUnrecovered}); drops ${s.drops} (${s.longDrops} long), unplanned closes ${s.unplannedCloses}`,
    ...Object.entries(s.clientErrorKinds).map(([k, n]) => `  client errors    ${n} x ${k}`),
    `  latency (live)   p50 ${l.p50} ms  p99 ${l.p99} ms  p99.9 ${l.p999} ms  max ${l.max} ms  (${l.count} deliveries after warm-up)`,
    ...s.rss.map(r => `  server ${r.server} RSS   mean ${r.meanMB} MB, max-min ${r.maxMinusMinMB} MB, slope ${r.slopeMBperMin} MB/min (limit ${r.thresholdMBperMin}); heap after GC slope ${r.gcHeapSlopeMBperMin} MB/min, ${r.endGcHeapMB} MB at end`),
    `  verdict          ${s.noLoss ? 'PASS' : 'FAIL'} no loss/dup, ${s.rssFlat ? 'PASS' : 'FAIL'} RSS flat => ${s.pass ? 'PASS' : 'FAIL'}`,
    `  results          ${resultsFile}`
  ]
  console.log(lines.join('\n'))
}

process.exitCode = await main()
