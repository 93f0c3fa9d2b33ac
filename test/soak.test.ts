import { test } from 'node:test'
import assert from 'node:assert/strict'
import v8 from 'node:v8'
import vm from 'node:vm'
import type { FastifyInstance } from 'fastify'
import WebSocket from 'ws'
import { build, listen, sleep } from './helpers/client.js'

// Closing a connection drops all its subscriptions and nothing keeps a reference to a closed socket
// (README, Topics); no input a client can send leaks memory (README, Limits and shutdown). Thousands of connect /
// subscribe / request / disconnect cycles must leave the heap where it was and no timer, connection
// or subscription behind.

/** global.gc, exposed at run time when the file was not started with --expose-gc. */
function exposeGc (): () => void {
  const existing = (globalThis as { gc?: () => void }).gc
  if (typeof existing === 'function') return existing
  v8.setFlagsFromString('--expose-gc')
  return vm.runInNewContext('gc') as () => void
}
const gc = exposeGc()

const ROOMS = 20
const TOPICS = [...Array.from({ length: ROOMS }, (_, i) => `room/${i}`), ...Array.from({ length: ROOMS }, (_, i) => `lobby/${i}`), '__all__']

function soakApp (app: FastifyInstance): void {
  app.drizzle.resource('room', {
    // ctx.subscribe from a handler...
    async join (message, ctx) {
      await ctx.subscribe(`lobby/${(message.data as { room: number }).room}`)
      ctx.connection.store.joined = new Array(64).fill(ctx.connection.id) // per-connection state, dropped with it
      return { joined: true }
    },
    async say (message, ctx) {
      await ctx.publish(`room/${(message.data as { room: number }).room}`, message.data)
      return { said: true }
    }
  })
  // ...and $topic subscriptions by the client, to a declared topic.
  app.drizzle.topic('room/:id')
  app.drizzle.addHook('onConnect', async () => { connected++ })
  app.drizzle.addHook('onDisconnect', async () => { connected-- })
}

/** Connections the app's onConnect saw and onDisconnect did not: 0 once all are gone. */
let connected = 0

/**
 * One cycle over injectWS: connect, subscribe both ways, request, receive a publication, terminate.
 * terminate() and not close(): under injectWS the server sees a clean close only after ws's
 * closeTimeout (30 s by default). Nothing of the client is kept once the cycle ends.
 */
async function cycle (app: FastifyInstance, i: number): Promise<void> {
  const room = i % ROOMS
  let replies = 0
  let published = false
  let done: () => void = () => {}
  const finished = new Promise<void>(resolve => { done = resolve })
  const ws = await app.injectWS('/ws', {}, {
    onInit (socket: WebSocket) {
      socket.on('message', (raw: Buffer) => {
        const frame = JSON.parse(raw.toString())
        if ('topic' in frame) published = true
        else replies++
        if (replies === 3 && published) done()
      })
    }
  } as never)
  ws.send(JSON.stringify({ resource: 'room', action: 'join', data: { room }, request_id: 1 }))
  ws.send(JSON.stringify({ resource: '$topic', action: 'subscribe', data: { topic: `room/${room}` }, request_id: 2 }))
  ws.send(JSON.stringify({ resource: 'room', action: 'say', data: { room, text: 'x'.repeat(100) }, request_id: 3 }))
  const timer = setTimeout(done, 2000)
  await finished
  clearTimeout(timer)
  ws.terminate()
  assert.ok(replies === 3 && published, `cycle ${i}: ${replies} replies, publication ${published}`)
}

async function rounds (app: FastifyInstance, count: number, parallel = 50): Promise<void> {
  for (let i = 0; i < count; i += parallel) {
    await Promise.all(Array.from({ length: Math.min(parallel, count - i) }, (_, k) => cycle(app, i + k)))
  }
}

async function settled (app: FastifyInstance): Promise<void> {
  const deadline = Date.now() + 5000
  while (app.drizzle.connections.size > 0 || app.websocketServer.clients.size > 0) {
    if (Date.now() > deadline) throw new Error(`${app.drizzle.connections.size} connections still open`)
    await sleep(10)
  }
}

/** Heap after collections, the smallest of three reads (a read can land in the middle of a sweep). */
async function heapUsed (): Promise<number> {
  const reads: number[] = []
  for (let i = 0; i < 3; i++) {
    await sleep(20)
    gc()
    gc()
    reads.push(process.memoryUsage().heapUsed)
  }
  return Math.min(...reads)
}

const timers = (): number => process.getActiveResourcesInfo().filter(r => r === 'Timeout').length

function assertNothingLeft (app: FastifyInstance): void {
  assert.equal(connected, 0, 'onDisconnect ran for every connection')
  assert.equal(app.drizzle.connections.size, 0)
  assert.equal(app.websocketServer.clients.size, 0)
  for (const topic of TOPICS) assert.equal(app.drizzle.subscriberCount(topic), 0, topic)
}

test('soak: 10,000 connect / subscribe / request / terminate cycles leave no heap growth, timer or subscription', { timeout: 90_000 }, async (t) => {
  // The default actionTimeout (a timer per action) and a heartbeat stay on, so their timers are counted.
  const app = await build(t, { heartbeatInterval: 10_000 }, soakApp)
  const started = performance.now()

  await rounds(app, 1000) // warm-up: JIT, pools and caches reach their steady size
  await settled(app)
  assertNothingLeft(app)
  const baseline = await heapUsed()
  const baselineTimers = timers()

  await rounds(app, 10_000)
  await settled(app)
  assertNothingLeft(app)
  const after = await heapUsed()
  const growth = (after - baseline) / baseline

  t.diagnostic(`11,000 cycles in ${((performance.now() - started) / 1000).toFixed(1)} s; heap ${(baseline / 2 ** 20).toFixed(1)} MiB -> ${(after / 2 ** 20).toFixed(1)} MiB (${(growth * 100).toFixed(1)}%); Timeout handles ${baselineTimers} -> ${timers()}`)
  assert.ok(growth < 0.10, `heap grew by ${(growth * 100).toFixed(1)}%`)
  assert.ok(timers() <= baselineTimers, `Timeout handles: ${baselineTimers} -> ${timers()}`)
})

test('soak: 500 cycles over real sockets, closed cleanly, leave nothing behind', { timeout: 60_000 }, async (t) => {
  const app = await build(t, { heartbeatInterval: 10_000 }, soakApp)
  const url = await listen(app)
  const baselineTimers = timers()
  for (let i = 0; i < 500; i += 25) {
    await Promise.all(Array.from({ length: 25 }, async (_, k) => {
      const ws = new WebSocket(url)
      const replies: unknown[] = []
      ws.on('message', (raw: Buffer) => replies.push(JSON.parse(raw.toString())))
      await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
      ws.send(JSON.stringify({ resource: 'room', action: 'join', data: { room: (i + k) % ROOMS }, request_id: 1 }))
      ws.send(JSON.stringify({ resource: '$topic', action: 'subscribe', data: { topic: `room/${(i + k) % ROOMS}` }, request_id: 2 }))
      while (replies.length < 2) await sleep(1)
      ws.close(1000)
      await new Promise(resolve => ws.once('close', resolve))
    }))
  }
  await settled(app)
  assertNothingLeft(app)
  await sleep(50)
  assert.ok(timers() <= baselineTimers, `Timeout handles: ${baselineTimers} -> ${timers()}`)
})
