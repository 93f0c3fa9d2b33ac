import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import type { FastifyInstance } from 'fastify'
import { build, connect, inject, listen, nextId, type Frame, type TestClient } from './helpers/client.js'
import { waitFor } from './helpers/redis.js'
import { Parser } from '@asyncapi/parser'
import WebSocket from 'ws'
import { memoryBroker, type Position } from '../lib/index.js'
import { DrizzleClient, type RecoveryResult } from '../lib/client/index.js'

// Topic history (README "History and recovery", PROTOCOL.md): positions, `since`, `recovered`,
// replay before live, ctx.position, and what the memory broker keeps. The Redis side is in
// test/history-redis.test.ts.

function declare (app: FastifyInstance): void {
  app.drizzle.topic('rooms/:id', { history: { size: 100, ttl: 60_000 } })
  app.drizzle.topic('small/:id', { history: { size: 5 } })
  app.drizzle.topic('plain/:id')
  app.drizzle.topic('big/:id', { history: { size: 10_000 } })
  app.drizzle.resource('rooms', {
    // Load-then-subscribe: the position first, then the state it goes with.
    load: async (message, ctx) => {
      return { position: await ctx.position(String((message.data as { topic: string }).topic)) }
    },
    watch: async (message, ctx) => { await ctx.subscribe(`rooms/${String((message.data as { id: string }).id)}`); return true }
  })
}

async function subscribe (client: TestClient, topic: string, since?: unknown): Promise<Frame> {
  const id = nextId()
  return client.request('$topic', 'subscribe', since === undefined ? { topic } : { topic, since }, id)
}

/** Publications of `topic` that came after the reply to request `id`, as [offset, data] pairs. */
function after (client: TestClient, reply: Frame, topic: string): Frame[] {
  const start = client.frames.indexOf(reply)
  return client.frames.slice(start + 1).filter(f => f.topic === topic)
}

async function publishMany (app: FastifyInstance, topic: string, from: number, count: number): Promise<void> {
  for (let n = from; n < from + count; n++) await app.drizzle.publish(topic, { n })
}

test('publications of a history topic carry dense offsets; the subscribe reply carries the last offset and the epoch', async t => {
  const app = await build(t, {}, declare)
  const client = await inject(t, app)
  await publishMany(app, 'rooms/1', 1, 2)
  const reply = await subscribe(client, 'rooms/1')
  assert.equal(reply.data.topic, 'rooms/1')
  assert.equal(reply.data.subscribed, true)
  assert.equal(reply.data.offset, 2)
  assert.equal(typeof reply.data.epoch, 'string')
  assert.equal('recovered' in reply.data, false, 'recovered only answers a since')
  await app.drizzle.publish('rooms/1', { n: 3 }, { event: 'msg' })
  await client.waitFor(f => f.topic === 'rooms/1')
  assert.ok(client.raw.includes('{"topic":"rooms/1","data":{"n":3},"event":"msg","offset":3}'), 'offset last in the frame')
  assert.deepEqual(await app.drizzle.position('rooms/1'), { offset: 3, epoch: reply.data.epoch })
  // Other topics are untouched.
  await subscribe(client, 'plain/1')
  await app.drizzle.publish('plain/1', 'x')
  assert.deepEqual(await client.waitFor(f => f.topic === 'plain/1'), { topic: 'plain/1', data: 'x' })
})

test('a client disconnected while 50 publications are made gets exactly those 50, in order, then live ones', async t => {
  const app = await build(t, {}, declare)
  const url = await listen(app)
  const first = await connect(t, url)
  const reply = await subscribe(first, 'rooms/7')
  await publishMany(app, 'rooms/7', 1, 3)
  await waitFor('3 publications', () => first.publications('rooms/7').length === 3)
  const last: Position = { offset: first.publications('rooms/7').at(-1)?.offset, epoch: reply.data.epoch }
  first.terminate()
  await publishMany(app, 'rooms/7', 4, 50)
  const second = await connect(t, url)
  const resumed = await subscribe(second, 'rooms/7', last)
  assert.deepEqual(resumed.data, { topic: 'rooms/7', subscribed: true, offset: 53, epoch: last.epoch, recovered: true })
  await publishMany(app, 'rooms/7', 54, 2)
  await waitFor('52 publications', () => after(second, resumed, 'rooms/7').length === 52)
  const got = after(second, resumed, 'rooms/7')
  assert.deepEqual(got.map(f => f.offset), Array.from({ length: 52 }, (_, i) => 4 + i))
  assert.deepEqual(got.map(f => f.data.n), Array.from({ length: 52 }, (_, i) => 4 + i))
  assert.equal(second.publications('rooms/7').length, 52, 'nothing before the reply')
})

test('since older than size, or of another epoch, answers recovered: false, replays nothing and stays live', async t => {
  const app = await build(t, {}, declare)
  const client = await inject(t, app)
  await publishMany(app, 'small/1', 1, 12)
  const { epoch } = await app.drizzle.position('small/1')
  const old = await subscribe(client, 'small/1', { offset: 6, epoch })
  assert.deepEqual(old.data, { topic: 'small/1', subscribed: true, offset: 12, epoch, recovered: false })
  const other = await inject(t, app)
  const foreign = await subscribe(other, 'small/1', { offset: 11, epoch: 'not-' + epoch })
  assert.deepEqual(foreign.data, { topic: 'small/1', subscribed: true, offset: 12, epoch, recovered: false })
  // Exactly `size` behind is still recoverable.
  const third = await inject(t, app)
  const edge = await subscribe(third, 'small/1', { offset: 7, epoch })
  assert.equal(edge.data.recovered, true)
  await app.drizzle.publish('small/1', 'live')
  for (const c of [client, other]) {
    await c.waitFor(f => f.data === 'live')
    assert.deepEqual(c.publications('small/1'), [{ topic: 'small/1', data: 'live', offset: 13 }], 'nothing replayed, live goes on')
  }
  await third.waitFor(f => f.data === 'live')
  assert.deepEqual(third.publications('small/1').map(f => f.offset), [8, 9, 10, 11, 12, 13])
})

test('hostile since values and since on a topic without history are refused with coded errors', async t => {
  const app = await build(t, {}, declare)
  const client = await inject(t, app)
  await publishMany(app, 'rooms/1', 1, 3)
  const { epoch } = await app.drizzle.position('rooms/1')
  const bad: Array<[unknown, string]> = [
    [null, '/data/since'], ['17', '/data/since'], [[17, epoch], '/data/since'], [17, '/data/since'],
    [{ epoch }, '/data/since/offset'], [{ offset: -1, epoch }, '/data/since/offset'], [{ offset: 1.5, epoch }, '/data/since/offset'],
    [{ offset: 2 ** 60, epoch }, '/data/since/offset'], [{ offset: '1', epoch }, '/data/since/offset'],
    [{ offset: 1 }, '/data/since/epoch'], [{ offset: 1, epoch: '' }, '/data/since/epoch'], [{ offset: 1, epoch: 'e'.repeat(65) }, '/data/since/epoch'],
    [{ offset: 1, epoch: { toString: 1 } }, '/data/since/epoch']
  ]
  for (const [since, path] of bad) {
    const reply = await subscribe(client, 'rooms/1', since)
    assert.equal(reply.code, 'VALIDATION_ERROR', JSON.stringify(since))
    assert.equal(reply.statusCode, 400)
    assert.equal(reply.details?.[0]?.path, path, JSON.stringify(reply))
  }
  assert.equal(app.drizzle.subscriberCount('rooms/1'), 0, 'a refused subscribe subscribes nothing')
  // Well-formed but impossible: ahead of the last offset.
  const ahead = await subscribe(client, 'rooms/1', { offset: Number.MAX_SAFE_INTEGER, epoch })
  assert.deepEqual(ahead.data, { topic: 'rooms/1', subscribed: true, offset: 3, epoch, recovered: false })
  const plain = await subscribe(client, 'plain/1', { offset: 0, epoch })
  assert.equal(plain.code, 'VALIDATION_ERROR')
  assert.equal(plain.details[0].path, '/data/since')
  assert.equal(app.drizzle.subscriberCount('plain/1'), 0)
  await assert.rejects(app.drizzle.position('plain/1'), { code: 'FST_DRIZZLE_NO_HISTORY' })
  await assert.rejects(app.drizzle.position(42 as never), { code: 'FST_DRIZZLE_INVALID_TOPIC' })
})

test('a bad history option fails at declaration with a coded error', async t => {
  for (const history of [{}, { size: 0 }, { size: 1.5 }, { size: 10, ttl: 0 }, { size: 10, extra: 1 }, 'big', null, true]) {
    await assert.rejects(async () => {
      await build(t, {}, app => { app.drizzle.topic('rooms/:id', { history } as never) })
    }, { code: 'FST_DRIZZLE_INVALID_TOPIC' }, JSON.stringify(history))
  }
})

test('publications made while a since subscription is answered come after its replay, each exactly once', async t => {
  const app = await build(t, {}, declare)
  const url = await listen(app)
  const client = await connect(t, url)
  await publishMany(app, 'big/3', 1, 20)
  const { epoch } = await app.drizzle.position('big/3')
  let n = 21
  const state = { publishing: true }
  const publisher = (async () => { while (state.publishing) { await app.drizzle.publish('big/3', { n: n++ }); await new Promise(resolve => setImmediate(resolve)) } })()
  const replies = []
  // Subscribed, then asks again twice to heal: every reply is followed by what it replays.
  for (const since of [5, 10, 2]) replies.push(await subscribe(client, 'big/3', { offset: since, epoch }))
  await waitFor('some live publications', () => n > 300)
  state.publishing = false
  await publisher
  const total = n - 1
  await waitFor('every publication', () => client.publications('big/3').some(f => f.offset === total))
  for (const reply of replies) assert.equal(reply.data.recovered, true)
  // What a client keeps: offsets in order, the ones it had already dropped as duplicates.
  let last = 5
  for (const frame of after(client, replies[0] as Frame, 'big/3')) {
    if (frame.offset <= last) continue
    assert.equal(frame.offset, last + 1, 'no gap')
    assert.equal(frame.data.n, frame.offset)
    last = frame.offset
  }
  assert.equal(last, total)
  // Right after each reply, its replay in order.
  for (const reply of replies) {
    const from = client.frames.indexOf(reply)
    const next = client.frames[from + 1]
    if (next?.topic === 'big/3') assert.ok(next.offset <= reply.data.offset, 'the replay first')
  }
})

test('load-then-subscribe: an action returns ctx.position while publications go on; since it yields every later one once', async t => {
  const app = await build(t, {}, declare)
  const client = await inject(t, app)
  let n = 0
  const state = { publishing: true }
  const publisher = (async () => { while (state.publishing) { await app.drizzle.publish('big/9', { n: ++n }); await new Promise(resolve => setImmediate(resolve)) } })()
  await waitFor('publishing', () => n > 20)
  const loaded = await client.request('rooms', 'load', { topic: 'big/9' })
  const position = loaded.data.position as Position
  assert.ok(position.offset > 0)
  await waitFor('more publications', () => n > position.offset + 50)
  const reply = await subscribe(client, 'big/9', position)
  assert.equal(reply.data.recovered, true)
  await waitFor('more publications', () => n > reply.data.offset + 50)
  state.publishing = false
  await publisher
  await waitFor('every publication', () => client.publications('big/9').at(-1)?.offset === n)
  const got = after(client, reply, 'big/9')
  assert.deepEqual(got.map(f => f.offset), Array.from({ length: n - position.offset }, (_, i) => position.offset + 1 + i))
  assert.deepEqual(got.map(f => f.data.n), got.map(f => f.offset))
})

test('a handler subscription to a history topic receives positioned publications', async t => {
  const app = await build(t, {}, declare)
  const client = await inject(t, app)
  await publishMany(app, 'rooms/4', 1, 2)
  await client.request('rooms', 'watch', { id: '4' })
  await app.drizzle.publish('rooms/4', 'x')
  assert.deepEqual(await client.waitFor(f => f.topic === 'rooms/4'), { topic: 'rooms/4', data: 'x', offset: 3 })
})

test('10,000 idle history topics cost nothing after their ttl', async t => {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  const broker = memoryBroker()
  const app = await build(t, { broker }, a => { a.drizzle.topic('idle/:id', { history: { size: 10, ttl: 200 } }) })
  const heap = (): number => { gc(); gc(); return process.memoryUsage().heapUsed }
  const baseline = heap()
  for (let i = 0; i < 10_000; i++) await app.drizzle.publish(`idle/${i}`, { payload: 'x'.repeat(100), i })
  const kept = (broker.history as unknown as { topics: Map<string, unknown> }).topics
  assert.equal(kept.size, 10_000)
  const full = heap()
  assert.ok(full - baseline > 2_000_000, `history takes room while kept (${full - baseline} bytes)`)
  await waitFor('history dropped after its ttl', () => kept.size === 0, 5000)
  const back = heap()
  assert.ok(back - baseline < 500_000, `back to the baseline: ${back - baseline} bytes above it`)
  // A topic whose history was dropped starts a new epoch at offset 1.
  const { epoch } = await app.drizzle.position('idle/1')
  await app.drizzle.publish('idle/1', 'again')
  assert.deepEqual(await app.drizzle.position('idle/1'), { offset: 1, epoch })
})

// ---- the typed client -------------------------------------------------------------------------

interface Received { offsets: number[], data: unknown[], recoveries: RecoveryResult[], ready: Promise<void> }

/** Records what a subscription delivers; `ready` settles with the server's reply (the position is known then). */
function follow (client: DrizzleClient, topic: string, options: { since?: Position } = {}): Received {
  const received = { offsets: [] as number[], data: [] as unknown[], recoveries: [] as RecoveryResult[] }
  const stop = client.subscribe(topic, (data, frame) => { received.offsets.push(frame.offset as number); received.data.push(data) }, {
    ...options,
    onRecovery: result => received.recoveries.push(result)
  })
  return { ...received, ready: stop.ready }
}

function clientOf (t: TestContext, url: ConstructorParameters<typeof DrizzleClient>[0]): DrizzleClient {
  const client = new DrizzleClient(url, { WebSocket, timeout: 5000, reconnect: { baseDelay: 20, maxDelay: 100 } })
  t.after(() => client.close())
  return client
}

test('client: subscribe since a known position gets what followed it, then live; onRecovery says recovered', async t => {
  const app = await build(t, {}, declare)
  const url = await listen(app)
  await publishMany(app, 'rooms/1', 1, 10)
  const { epoch } = await app.drizzle.position('rooms/1')
  const client = clientOf(t, url)
  const received = follow(client, 'rooms/1', { since: { offset: 4, epoch } })
  await waitFor('the replay', () => received.offsets.length === 6)
  await publishMany(app, 'rooms/1', 11, 2)
  await waitFor('live ones', () => received.offsets.length === 8)
  assert.deepEqual(received.offsets, range(5, 8))
  assert.deepEqual(received.recoveries.map(r => [r.recovered, r.epoch]), [[true, epoch]])
})

test('client: recovers after every reconnect, and tells the app when it could not', async t => {
  const app = await build(t, {}, declare)
  const url = await listen(app)
  // While the gate is shut the client cannot reconnect: publications are made while it is away.
  let gate = Promise.resolve()
  let open = (): void => {}
  const client = clientOf(t, async () => { await gate; return url })
  const rooms = follow(client, 'rooms/2')
  const small = follow(client, 'small/2')
  await rooms.ready
  await small.ready
  await publishMany(app, 'rooms/2', 1, 2)
  await publishMany(app, 'small/2', 1, 2)
  await waitFor('live', () => rooms.offsets.length === 2 && small.offsets.length === 2)
  const reopened = new Promise(resolve => client.on('open', resolve))
  gate = new Promise(resolve => { open = resolve })
  for (const conn of app.drizzle.connections) conn.close(1012, 'restart')
  await waitFor('disconnected', () => app.drizzle.subscriberCount('rooms/2') === 0)
  await publishMany(app, 'rooms/2', 3, 20)
  await publishMany(app, 'small/2', 3, 20)
  open()
  await reopened
  await waitFor('recovered', () => rooms.offsets.length === 22 && small.recoveries.length === 1)
  assert.deepEqual(rooms.offsets, range(1, 22))
  assert.deepEqual(rooms.recoveries.map(r => r.recovered), [true])
  assert.deepEqual(small.recoveries.map(r => [r.recovered, r.offset]), [[false, 22]], 'too old for size 5: the app is told')
  await publishMany(app, 'small/2', 23, 1)
  await waitFor('live again', () => small.offsets.at(-1) === 23)
  assert.deepEqual(small.offsets, [1, 2, 23])
})

test('client: a gap left by the drop slow-consumer policy is detected and healed, every offset once in order', async t => {
  const app = await build(t, { slowConsumer: 'drop', maxBufferedBytes: 256 * 1024 }, declare)
  const url = await listen(app)
  let socket: WebSocket | undefined
  const client = clientOf(t, () => { socket = new WebSocket(url); return socket as never })
  const received = follow(client, 'big/1')
  await received.ready
  const raw = (socket as unknown as { _socket: { pause: () => void, resume: () => void } })._socket
  raw.pause()
  const payload = 'x'.repeat(64 * 1024)
  const count = 300
  for (let n = 1; n <= count; n++) await app.drizzle.publish('big/1', { n, payload })
  raw.resume()
  // The client learns of a gap from the next publication it gets: one made once its socket drained.
  const server = [...app.drizzle.connections][0] as unknown as { socket: WebSocket }
  await waitFor('the backlog written out', () => server.socket.bufferedAmount === 0, 20_000)
  assert.ok(received.offsets.length < count, `publications were dropped (${received.offsets.length} of ${count} arrived)`)
  await app.drizzle.publish('big/1', { n: count + 1, payload })
  await waitFor('every publication', () => received.offsets.at(-1) === count + 1, 20_000)
  assert.deepEqual(received.offsets, range(1, count + 1))
  assert.deepEqual(received.data.map(d => (d as { n: number }).n), range(1, count + 1))
  assert.ok(received.recoveries.length >= 1, 'a gap was healed')
  assert.ok(received.recoveries.every(r => r.recovered))
})

test('client: a history re-subscription the server keeps failing asks again with a doubling backoff, reset by a reply', async t => {
  // Math.random held near 1 makes every full-jitter delay its ceiling: 499, 999, 1998 ms after 1, 2, 3
  // failures in a row. Times are measured where authorize runs; a loaded machine only lengthens the
  // gaps, so they are asserted from below, and the one bound from above has seconds to spare.
  t.mock.method(Math, 'random', () => 0.999)
  const calls: number[] = []
  let failing = 3
  const app = await build(t, {}, app => {
    app.drizzle.topic('flaky/:id', {
      history: { size: 100 },
      authorize: () => {
        calls.push(performance.now())
        if (failing === 0) return true
        failing--
        throw new Error('overloaded')   // a 500: transient, so a subscription with a position asks again
      }
    })
  })
  const url = await listen(app)
  const { epoch } = await app.drizzle.position('flaky/1')
  const client = clientOf(t, url)
  const errors: Array<number | undefined> = []
  client.on('error', err => errors.push(err.statusCode))
  const received = follow(client, 'flaky/1', { since: { offset: 0, epoch } })
  await received.ready
  assert.equal(calls.length, 4, 'three failures, then the reply')
  assert.deepEqual(errors, [500, 500, 500])
  const gaps = spacing(calls)
  for (const [i, ceiling] of [499, 999, 1998].entries()) {
    assert.ok((gaps[i] as number) >= ceiling - 5, `retry ${i + 1} waited ${gaps[i] as number} ms, at least its ${ceiling} ms backoff`)
  }
  // A fixed 250-500 ms delay would have asked 7 times or more over these 3.5 s instead of 4.

  // The reply reset the count: after a reconnect whose renewal fails once, the retry waits one base
  // delay (499 ms), not the 3,996 ms a fourth failure in a row would have waited.
  failing = 1
  const reopened = new Promise(resolve => client.on('open', resolve))
  for (const conn of app.drizzle.connections) conn.close(1012, 'restart')
  await reopened
  await waitFor('the renewal failed once, then asked again', () => calls.length === 6, 20_000)
  const reset = (calls[5] as number) - (calls[4] as number)
  assert.ok(reset >= 494, `the retry after a reset waited ${reset} ms, at least the base backoff`)
  assert.ok(reset < 3500, `the retry after a reset waited ${reset} ms, far less than a fourth failure's 3,996 ms`)
  await app.drizzle.publish('flaky/1', { n: 1 })
  await waitFor('live after the retry', () => received.offsets.length === 1)
})

/** The time between consecutive entries of `times`. */
function spacing (times: number[]): number[] {
  return times.slice(1).map((time, i) => time - (times[i] as number))
}

function range (from: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => from + i)
}

test('the AsyncAPI document describes positions, since and recovered', async t => {
  const app = await build(t, {}, declare)
  const doc = app.drizzle.asyncapi() as any
  const diagnostics = await new Parser().validate(JSON.stringify(doc))
  assert.deepEqual(diagnostics.filter(d => d.severity === 0), [])
  const rooms = Object.values(doc.channels).find((c: any) => c.title === 'rooms/:id') as any
  assert.match(rooms.description, /keeps history/)
  assert.equal(rooms.messages.publication.payload.properties.offset.type, 'integer')
  const plain = Object.values(doc.channels).find((c: any) => c.title === 'plain/:id') as any
  assert.equal(plain.messages.publication.payload.properties.offset, undefined)
  const messages = Object.values(doc.channels.drizzle.messages) as any[]
  const subscribe = messages.find(m => m.title === '$topic.subscribe request').payload.properties.data
  assert.deepEqual(subscribe.properties.since.required, ['offset', 'epoch'])
  const reply = messages.find(m => m.title === '$topic.subscribe reply').payload.properties.data
  assert.deepEqual(Object.keys(reply.properties), ['topic', 'subscribed', 'offset', 'epoch', 'recovered'])
})

test('a topic with history and presence: $join follows the subscribe reply, carries no offset, and is not replayed', async t => {
  const app = await build(t, {}, app => { app.drizzle.topic('both/:id', { history: { size: 10 }, presence: true }) })
  const first = await inject(t, app)
  const second = await inject(t, app)
  await subscribe(first, 'both/1')
  await app.drizzle.publish('both/1', { n: 1 })
  await first.waitFor(f => f.topic === 'both/1' && f.event === undefined)
  const reply = await subscribe(second, 'both/1', { offset: 0, epoch: (await app.drizzle.position('both/1')).epoch })
  assert.equal(reply.data.recovered, true)
  await second.waitFor(f => f.topic === 'both/1' && f.event === '$join')
  assert.deepEqual(second.frames.slice(0, second.frames.indexOf(reply)).filter(f => f.topic === 'both/1'), [], 'nothing of the topic before the reply')
  const own = after(second, reply, 'both/1')
  assert.deepEqual(own.filter(f => f.event === undefined).map(f => [f.offset, f.data]), [[1, { n: 1 }]], 'the replay')
  const join = own.find(f => f.event === '$join') as Frame
  assert.equal('offset' in join, false, '$join carries no position')
  await first.waitFor(f => f.topic === 'both/1' && f.event === '$join' && (f.data as { connection: string }).connection === (join.data as { connection: string }).connection)
  // Joins and leaves are not history: a later recovery replays publications only.
  const third = await inject(t, app)
  const again = await subscribe(third, 'both/1', { offset: 0, epoch: reply.data.epoch })
  await third.waitFor(f => f.topic === 'both/1' && f.event === '$join')
  assert.deepEqual(after(third, again, 'both/1').filter(f => f.event !== '$join').map(f => f.offset), [1])
})
