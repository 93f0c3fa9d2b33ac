// In-process cost of fastify-drizzle's per-message path against the bare equivalent, with a fake
// socket (no network, no ws framing): ns per message and GC runs. Run `node bench/run.js --only=rt`
// once first (it builds lib/ into node_modules/.cache/fastify-drizzle-bench).
//   node bench/micro.js            MICRO_OPTIONS='{"actionTimeout":0}' node bench/micro.js
//   MICRO_OPTIONS='{"metrics":true}'   MICRO_SDK=sampling-off (an OpenTelemetry SDK whose sampler records nothing)
import { EventEmitter } from 'node:events'
import { PerformanceObserver } from 'node:perf_hooks'
import Fastify from 'fastify'

// MICRO_LIB: another build's directory (e.g. of an earlier commit, for before/after).
const lib = process.env.MICRO_LIB ?? '../node_modules/.cache/fastify-drizzle-bench/'
const { default: drizzle } = await import(lib + 'index.js')
const { Connection } = await import(lib + 'connection.js')

const N = 200_000
let gcRuns = 0
new PerformanceObserver(list => { gcRuns += list.getEntries().length }).observe({ entryTypes: ['gc'] })

if (process.env.MICRO_SDK === 'sampling-off') {
  // Before the app is ready: the plugin looks for an SDK once, then.
  const { trace } = await import('@opentelemetry/api')
  const { AlwaysOffSampler, BasicTracerProvider } = await import('@opentelemetry/sdk-trace-base')
  trace.setGlobalTracerProvider(new BasicTracerProvider({ sampler: new AlwaysOffSampler() }))
}

const app = Fastify({ logger: false })
await app.register(drizzle, { rateLimit: false, maxInFlight: 1e6, maxConnections: 1e6, ...JSON.parse(process.env.MICRO_OPTIONS ?? '{}') })
app.drizzle.resource('bench', { async echo (message) { return message.data } })
await app.ready()

const frame = Buffer.from('{"resource":"bench","action":"echo","data":{"id":12345,"name":"bench-user","tags":["alpha","beta"],"active":true},"request_id":17}')
let sent = 0
function fakeSocket () {
  return Object.assign(new EventEmitter(), { readyState: 1, bufferedAmount: 0, send () { sent++ }, ping () {}, close () {}, terminate () {} })
}

// fastify-drizzle: a connection opened on a fake socket, as the route's wsHandler does.
const drizzleSocket = fakeSocket()
new Connection(drizzleSocket, { log: app.log, headers: {} }, app.drizzle.rt).open()

// bare: parse, check the fields, dispatch to the function, JSON.stringify the reply.
const handlers = new Map([['bench', new Map([['echo', async (data) => data]])]])
const bareSocket = fakeSocket()
bareSocket.on('message', (raw) => {
  let msg
  try { msg = JSON.parse(raw.toString()) } catch { return }
  if (msg === null || typeof msg !== 'object' || typeof msg.resource !== 'string' || typeof msg.action !== 'string' ||
    (typeof msg.request_id !== 'string' && typeof msg.request_id !== 'number')) return
  const fn = handlers.get(msg.resource)?.get(msg.action)
  const id = msg.request_id
  fn(msg.data).then(data => bareSocket.send(JSON.stringify({ data: data ?? null, request_id: id })))
})

const tick = () => new Promise(resolve => setImmediate(resolve))

async function round (socket) {
  sent = 0
  gcRuns = 0
  const t0 = process.hrtime.bigint()
  for (let i = 0; i < N; i++) {
    socket.emit('message', frame, false)
    if (i % 100 === 99) await tick()
  }
  const done = () => sent >= N
  while (!done()) await tick()
  return { ns: Number(process.hrtime.bigint() - t0) / N, gc: gcRuns }
}

for (let k = 0; k < 4; k++) {
  const d = await round(drizzleSocket)
  const b = await round(bareSocket)
  console.log(`drizzle ${d.ns.toFixed(0)} ns/message (${d.gc} GCs)   bare ${b.ns.toFixed(0)} ns/message (${b.gc} GCs)`)
}
process.exit(0)
