// Benchmark orchestrator: `node bench/run.js [--quick] [--only=rt,fanout,memory,redis,stream,presence]
// [--reps=N] [--impls=drizzle,bare,socketio,nes] [--variants=drizzle-history,drizzle+metrics,...]
// [--rt=1x100,100x1] [--profile=<impl>] [--series] [--no-build] [--no-write]`.
// `--impls` also takes `floor` (round trips only: frames by hand on Node's socket, bare's JSON work)
// and `--variants` `drizzle+exp` (another build: DRIZZLE_EXP_LIB, DRIZZLE_EXP_OPTIONS; see server.js).
// `--series` adds every paced Redis publication's latency, in order; BENCH_SERVER_ARGS adds node flags
// to every server (e.g. --trace-gc).
//
// Servers, load generators and the Redis publisher are child processes (IPC for control, 127.0.0.1
// for traffic). Every scenario runs its implementations interleaved (A B C D, B C D A, ...) `reps`
// times, so a noisy machine slows all of them alike; ratios are paired per repetition.
import { spawn } from 'node:child_process'
import { appendFileSync, mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { BENCH_BUILD, buildBench, now, reaper, startChild } from './common.js'
import { report } from './report.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
export const BUILD = BENCH_BUILD
const argv = process.argv.slice(2)
const flag = (name) => argv.includes(`--${name}`)
const value = (name, fallback) => argv.find(a => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback

const QUICK = flag('quick')
const ALL = ['rt', 'fanout', 'memory', 'redis', 'stream', 'presence']
const ONLY = value('only', ALL.join(',')).split(',')
const REPS = Number(value('reps', 3))
const PROFILE = value('profile', '')
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
const IMPLS = value('impls', 'drizzle,bare,socketio,nes').split(',')
// The second wave's features, each run beside plain drizzle in the same rotation (bench/server.js):
// history (fan-out and Redis only: it changes nothing in a round trip), metrics, an OpenTelemetry SDK
// sampling nothing, and `tracing: false`.
const VARIANTS = value('variants', 'drizzle-history,drizzle+metrics,drizzle+otel-off,drizzle+notrace').split(',').filter(Boolean)
const withVariants = (impls, scenario) => impls.includes('drizzle')
  ? [...impls, ...VARIANTS.filter(v => scenario === 'redis' ? v === 'drizzle-history' || v === 'drizzle+exp' : scenario !== 'rt' || v !== 'drizzle-history')]
  : impls
const RT_MODES = value('rt', '1x100,100x1').split(',')

// Sizes: a full run takes about 15 minutes on 2 cores, --quick about one. Windows are long enough
// that repeated full runs agree on server CPU per operation (the primary figure) within a few percent;
// throughput on 2 cores is bounded by the load generators as much as by the server.
const P = QUICK
  ? { warmMs: 200, measureMs: 500, fanSizes: [500], fanPaced: { 500: 5 }, fanBurst: { 500: 10 }, memConns: 500, redisConns: 100, redisPaced: 20, redisBurst: 20, streamItems: 5000, stormConns: 200 }
  : { warmMs: 1000, measureMs: 3000, fanSizes: [1000, 10000], fanPaced: { 1000: 40, 10000: 12 }, fanBurst: { 1000: 50, 10000: 20 }, memConns: 5000, redisConns: 1000, redisPaced: 120, redisBurst: 100, streamItems: 20000, stormConns: 1000 }

// ---- children -----------------------------------------------------------------------------------

const children = new Set()
const killAll = reaper(children)
process.on('uncaughtException', (err) => { console.error(err); killAll(); process.exit(1) })
process.on('unhandledRejection', (err) => { console.error(err); killAll(); process.exit(1) })

function start (script, args, nodeArgs = []) {
  return startChild(script, args, { name: `${script} ${args[0] ?? ''}`, nodeArgs, children })
}

async function startServer (impl, options = {}) {
  // BENCH_SERVER_ARGS: extra node flags for every server (diagnostics, e.g. --trace-gc).
  const nodeArgs = ['--expose-gc', ...(process.env.BENCH_SERVER_ARGS ?? '').split(' ').filter(Boolean)]
  if (PROFILE === impl) nodeArgs.push('--cpu-prof', `--cpu-prof-dir=${join(root, 'bench', 'profiles')}`)
  const server = start('server.js', [impl, JSON.stringify(options)], nodeArgs)
  const info = await server.ready
  server.port = info.port
  return server
}

async function startServers (impls) {
  const started = await Promise.all(impls.map(impl => startServer(impl)))
  return Object.fromEntries(impls.map((impl, i) => [impl, started[i]]))
}

const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms))
const rotate = (list, n) => list.map((_, i) => list[(i + n) % list.length])
const cpuUs = (a, b) => (b.user - a.user) + (b.system - a.system)

// ---- results ------------------------------------------------------------------------------------

const stamp = new Date().toISOString().replace(/[:.]/g, '-')
mkdirSync(join(root, 'bench', 'results'), { recursive: true })
const resultsFile = join(root, 'bench', 'results', `${stamp}${QUICK ? '-quick' : ''}.jsonl`)
const records = []

function record (rec) {
  const line = { ts: new Date().toISOString(), ...rec }
  records.push(line)
  const text = JSON.stringify(line)
  console.log(text)
  appendFileSync(resultsFile, text + '\n')
}

// ---- scenarios ----------------------------------------------------------------------------------

/** (a) Round trips of a ~100-byte JSON request. */
async function roundTrips (lg) {
  const impls = withVariants(IMPLS, 'rt')
  const servers = await startServers(impls)
  const modes = [{ name: 'rt-1x100', conns: 1, inflight: 100 }, { name: 'rt-100x1', conns: 100, inflight: 1 }]
  for (const mode of modes.filter(m => RT_MODES.includes(m.name.slice(3)))) {
    for (let rep = 0; rep < REPS; rep++) {
      for (const impl of rotate(impls, rep)) {
        const server = servers[impl]
        const opened = await lg.rpc('connect', { impl, port: server.port, count: mode.conns })
        if (opened.opened !== mode.conns) throw new Error(`${impl}: opened ${opened.opened}/${mode.conns}`)
        await lg.rpc('start', { inflight: mode.inflight })
        await sleep(P.warmMs)
        const [cpu0] = await Promise.all([server.rpc('cpu'), lg.rpc('mark')])
        await sleep(P.measureMs)
        const [res, cpu1] = await Promise.all([lg.rpc('stop'), server.rpc('cpu')])
        await lg.rpc('close')
        record({
          scenario: mode.name,
          impl,
          rep,
          reqPerSec: res.perSec,
          p50Ms: res.p50,
          p99Ms: res.p99,
          cpuUsPerReq: cpuUs(cpu0, cpu1) / res.count,
          // The kernel's share (system time: reads, writes, loopback delivery) apart from JavaScript's.
          sysUsPerReq: (cpu1.system - cpu0.system) / res.count,
          // Linux: the main thread's share, and V8's and libuv's other threads' (10 ms ticks: coarse).
          ...(cpu0.mainThread !== undefined ? { mainUsPerReq: (cpu1.mainThread - cpu0.mainThread) / res.count, otherThreadsUsPerReq: (cpu1.otherThreads - cpu0.otherThreads) / res.count } : {}),
          ...(cpu0.minflt !== undefined ? { minfltPerKReq: (cpu1.minflt - cpu0.minflt) * 1000 / res.count, vcswPerKReq: (cpu1.vcsw - cpu0.vcsw) * 1000 / res.count, ivcswPerKReq: (cpu1.ivcsw - cpu0.ivcsw) * 1000 / res.count } : {}),
          requests: res.count,
          errors: res.errors,
          ...(res.errors > 0 ? { lastError: res.lastError } : {})
        })
      }
    }
  }
  await Promise.all(Object.values(servers).map(s => s.stop()))
}

/** Counts what the load generators received; deliveries per publication, loss, when each was complete. */
function tally (collected, times) {
  const count = times.length
  let total = 0
  let expected = 0
  const allReceived = []
  let last = 0
  let lost = 0
  const sockets = collected.reduce((n, c) => n + c.sockets, 0)
  for (const c of collected) { total += c.total; expected += c.expected }
  for (let seq = 0; seq < count; seq++) {
    let got = 0
    let at = 0
    for (const c of collected) { got += c.perSeq[seq]; at = Math.max(at, c.last[seq]) }
    if (got < sockets) lost += sockets - got
    allReceived.push(at - times[seq])
    last = Math.max(last, at)
  }
  return { total, expected, lost, series: [...allReceived], allReceived: allReceived.sort((a, b) => a - b), last }
}

/** Connects `count` sockets split over the load generators (to one server or one each) and subscribes them. */
async function connectAll (lgs, impl, ports, count) {
  const share = Math.ceil(count / lgs.length)
  const res = await Promise.all(lgs.map((lg, i) => lg.rpc('connect', { impl, port: ports[i % ports.length], count: Math.min(share, count - i * share) }, 120000)))
  const opened = res.reduce((n, r) => n + r.opened, 0)
  if (opened !== count) throw new Error(`${impl}: opened ${opened}/${count} sockets`)
  return res
}

async function subscribeAll (lgs, impl) {
  const res = await Promise.all(lgs.map(lg => lg.rpc('subscribe', {}, 120000)))
  for (const r of res) if (r.errors > 0) throw new Error(`${impl}: ${r.errors} subscriptions refused: ${r.lastError}`)
}

/** Publishes `count` publications from `publisher` and waits for the load generators to get them all. */
async function publishAndCollect (lgs, publisher, count, intervalMs, servers) {
  await Promise.all(lgs.map(lg => lg.rpc('expect', { count })))
  const cpu0 = await Promise.all(servers.map(s => s.rpc('cpu')))
  const pub = await publisher.rpc('publish', { count, intervalMs }, 120000)
  const collected = await Promise.all(lgs.map(lg => lg.rpc('collect', { timeoutMs: 20000 }, 60000)))
  const cpu1 = await Promise.all(servers.map(s => s.rpc('cpu')))
  const t = tally(collected, pub.times)
  // CPU over [first publish, all received] (the cpu probe answers only once the server is idle again).
  t.cpuUs = servers.reduce((n, _, i) => n + cpuUs(cpu0[i], cpu1[i]), 0)
  t.first = pub.times[0]
  return t
}

/**
 * (b) Fan-out: one process publishes to `size` subscribed sockets, in two shapes. One publication at a
 * time (each spaced until the previous one has long reached every socket: nothing coalesces across
 * publications) gives the latency until all sockets have it and server CPU per delivery; a burst (one
 * publication per event-loop turn) gives deliveries/s and CPU per delivery when writes coalesce.
 */
async function fanOut (lgs) {
  const impls = withVariants(IMPLS, 'fanout')
  const servers = await startServers(impls)
  for (const size of P.fanSizes) {
    for (let rep = 0; rep < REPS; rep++) {
      for (const impl of rotate(impls, rep)) {
        const server = servers[impl]
        const conn = await connectAll(lgs, impl, [server.port], size)
        await subscribeAll(lgs, impl)
        await publishAndCollect(lgs, server, P.fanPaced[size], 0, [server]) // warm-up, not recorded
        const paced = await publishAndCollect(lgs, server, P.fanPaced[size], size >= 10000 ? 150 : size >= 1000 ? 40 : 20, [server])
        const burst = await publishAndCollect(lgs, server, P.fanBurst[size], 0, [server])
        await Promise.all(lgs.map(lg => lg.rpc('close')))
        const deliveries = size * P.fanBurst[size]
        record({
          scenario: `fanout-${size}`,
          impl,
          rep,
          cpuUsPerDeliveryOne: paced.cpuUs / (size * P.fanPaced[size]),
          cpuUsPerDelivery: burst.cpuUs / deliveries,
          deliveriesPerSec: burst.lost === 0 ? deliveries / (burst.last - burst.first) * 1000 : NaN,
          allReceivedMs: paced.allReceived[paced.allReceived.length >> 1],
          allReceivedMaxMs: paced.allReceived[paced.allReceived.length - 1],
          lost: paced.lost + burst.lost,
          deliveries: burst.total + paced.total,
          connectMs: Math.max(...conn.map(c => c.ms))
        })
      }
    }
  }
  await Promise.all(Object.values(servers).map(s => s.stop()))
}

/** (c) Memory per idle connection: heap after GC and RSS, fresh server per run. */
async function memory (lgs) {
  const size = P.memConns
  for (let rep = 0; rep < REPS; rep++) {
    for (const impl of rotate(IMPLS, rep)) {
      const server = await startServer(impl)
      try {
        // A first connection warms up the code paths so their one-time cost is not counted per socket.
        await connectAll(lgs.slice(0, 1), impl, [server.port], 1)
        await lgs[0].rpc('close')
        await sleep(QUICK ? 100 : 200)
        const m0 = await server.rpc('mem')
        await connectAll(lgs, impl, [server.port], size)
        await sleep(QUICK ? 200 : 500)
        const m1 = await server.rpc('mem')
        if (m1.connections !== size) throw new Error(`${impl}: server holds ${m1.connections}/${size} connections`)
        record({
          scenario: `memory-${size}`,
          impl,
          rep,
          heapPerConn: (m1.heapUsed - m0.heapUsed) / size,
          rssPerConn: (m1.rss - m0.rss) / size,
          externalPerConn: (m1.external - m0.external) / size,
          heapBase: m0.heapUsed,
          rssBase: m0.rss
        })
      } finally {
        await Promise.all(lgs.map(lg => lg.rpc('close')))
        await server.stop()
      }
    }
  }
}

/** Whether Redis answers PING at REDIS_URL within a second. */
async function redisUp () {
  const { Redis } = await import('ioredis')
  const client = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 1000 })
  client.on('error', () => {})
  try {
    await client.connect()
    return (await client.ping()) === 'PONG'
  } catch {
    return false
  } finally {
    client.disconnect()
  }
}

/** (d) Cross-process: a publisher -> Redis -> two server processes -> sockets split between them. */
async function redis (lgs) {
  if (!await redisUp()) {
    console.error(`bench: no Redis at ${REDIS_URL} (set REDIS_URL); skipping the cross-process scenario`)
    return
  }
  const impls = withVariants(IMPLS.filter(i => i !== 'nes'), 'redis') // @hapi/nes has no cross-process adapter
  const size = P.redisConns
  for (let rep = 0; rep < REPS; rep++) {
    for (const impl of rotate(impls, rep)) {
      const options = { redis: { url: REDIS_URL, prefix: `drizzle-bench-${process.pid}-${impl}-${rep}:` } }
      const servers = await Promise.all([startServer(impl, options), startServer(impl, options)])
      const publisher = start('publisher.js', [impl, JSON.stringify(options)])
      try {
        await publisher.ready
        await connectAll(lgs, impl, servers.map(s => s.port), size)
        await subscribeAll(lgs, impl)
        await sleep(300) // SUBSCRIBE reaches Redis
        await publishAndCollect(lgs, publisher, P.redisPaced, 0, servers) // warm-up (fresh processes), not recorded
        // One publication at a time, every 25 ms, the same rate for every implementation: latency
        // percentiles at equal throughput; then a burst for deliveries/s.
        const paced = await publishAndCollect(lgs, publisher, P.redisPaced, 25, servers)
        const burst = await publishAndCollect(lgs, publisher, P.redisBurst, 0, servers)
        const deliveries = size * P.redisBurst
        record({
          scenario: `redis-2x${size / 2}`,
          impl,
          rep,
          cpuUsPerDeliveryOne: paced.cpuUs / (size * P.redisPaced),
          deliveriesPerSec: burst.lost === 0 ? deliveries / (burst.last - burst.first) * 1000 : NaN,
          allReceivedMs: paced.allReceived[paced.allReceived.length >> 1],
          allReceivedP99Ms: paced.allReceived[Math.ceil(paced.allReceived.length * 0.99) - 1],
          cpuUsPerDelivery: burst.cpuUs / deliveries,
          lost: paced.lost + burst.lost,
          deliveries: paced.total + burst.total,
          // `--series`: every paced publication's publish -> all received, in publication order (ms).
          ...(flag('series') ? { series: paced.series.map(ms => +ms.toFixed(2)) } : {})
        })
      } finally {
        await Promise.all(lgs.map(lg => lg.rpc('close')))
        await Promise.all([...servers.map(s => s.stop()), publisher.stop()])
      }
    }
  }
}

/** Runs `node --import tsx bench/<script> <args>` to its end; resolves to the last JSON line it printed. */
function runScript (script, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'bench', script), ...args], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] })
    children.add(child)
    let out = ''
    child.stdout.on('data', (chunk) => { out += chunk })
    const timer = setTimeout(() => child.kill('SIGKILL'), 300000)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      children.delete(child)
      const last = out.trim().split('\n').reverse().find(line => line.startsWith('{'))
      if (code !== 0 || last === undefined) reject(new Error(`${script} exited (${code ?? signal}) without a result`))
      else resolve(JSON.parse(last))
    })
  })
}

/** (e) Streamed items vs plain replies of the same size over one socket (bench/stream.js, built JS). */
async function streams () {
  const out = await runScript('stream.js', [`--items=${P.streamItems}`, `--reps=${REPS}`, `--lib=${join(BUILD, 'index.js')}`])
  for (let rep = 0; rep < REPS; rep++) {
    const plain = out.runs.plain[rep]
    const streamed = out.runs.stream[rep]
    record({ scenario: `stream-${out.size}B`, impl: 'drizzle', rep, plainPerSec: plain, streamPerSec: streamed, streamOverPlain: streamed / plain })
  }
}

/** (f) Presence join storm on two instances through Redis (bench/presence.js): plain, events off, events on. */
async function presenceStorm () {
  if (!await redisUp()) {
    console.error(`bench: no Redis at ${REDIS_URL}; skipping the presence join storm`)
    return
  }
  const out = await runScript('presence.js', [`--conns=${P.stormConns}`, `--reps=${REPS}`])
  out.results.forEach((r, i) => record({
    scenario: `presence-${r.conns}`,
    impl: `presence-${r.mode}`,
    rep: Math.floor(i / 3),
    cpuMs: r.cpuMs,
    subscribeP50Ms: r.p50,
    subscribeP99Ms: r.p99,
    convergedMs: r.converged,
    framesPerSubscriber: r.framesPerSubscriber,
    leftoverKeys: r.leftoverKeys
  }))
}

// ---- main ---------------------------------------------------------------------------------------

async function main () {
  const t0 = now()
  buildBench({ skip: flag('no-build') })
  const lgs = [start('loadgen.js', ['a']), start('loadgen.js', ['b'])]
  await Promise.all(lgs.map(lg => lg.ready))
  console.error(`bench: ${QUICK ? 'quick' : 'full'} run, ${REPS} repetitions, implementations ${IMPLS.join(', ')}, variants ${VARIANTS.join(', ') || 'none'}; results in ${resultsFile}`)
  try {
    if (ONLY.includes('rt')) await roundTrips(lgs[0])
    if (ONLY.includes('fanout')) await fanOut(lgs)
    if (ONLY.includes('memory')) await memory(lgs)
    if (ONLY.includes('redis')) await redis(lgs)
    if (ONLY.includes('stream')) await streams()
    if (ONLY.includes('presence')) await presenceStorm()
  } finally {
    await Promise.all(lgs.map(lg => lg.stop()))
    killAll()
  }
  const seconds = (now() - t0) / 1000
  report(records, { quick: QUICK, seconds, resultsFile, write: !QUICK && !flag('no-write') && ALL.every(s => ONLY.includes(s)) })
}

await main()
