import { test } from 'node:test'
import assert from 'node:assert/strict'
import { once } from 'node:events'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import WebSocket from 'ws'
import type { FastifyInstance } from 'fastify'
import { build, connect, inject, listen, type Frame, type TestClient } from './helpers/client.js'
import { DrizzleClient, DrizzleClientError } from '../lib/client/index.js'

// Streaming replies and $request/cancel (DESIGN section 11, PROTOCOL.md "Streams"), black-box over
// real sockets unless a test needs no network.

/** A promise with its resolve function, to learn that a generator's `finally` ran. */
function deferred<T = void> (): { promise: Promise<T>, resolve: (value: T) => void } {
  let settle!: (value: T) => void
  const promise = new Promise<T>(resolve => { settle = resolve })
  return { promise, resolve: settle }
}

const Conflict = Object.assign(new Error('Ran out of rows'), { statusCode: 409, code: 'CONFLICT' })

interface Probe { finallyRan: { promise: Promise<void>, resolve: () => void }, yielded: number, signal: AbortSignal | undefined }

function declare (app: FastifyInstance, probe: Probe): void {
  app.drizzle.resource('rows', {
    async * count (message) {
      const n = (message.data as { n: number }).n
      for (let i = 0; i < n; i++) yield { i }
      return { total: n }
    },
    async * failing () {
      for (let i = 0; i < 10; i++) yield i
      throw Conflict
    },
    async * crashing () {
      yield 1
      throw new Error('secret internal detail')
    },
    async * endless (_message, ctx) {
      probe.signal = ctx.signal
      try {
        for (let i = 0; ; i++) {
          probe.yielded++
          yield i
        }
      } finally {
        probe.finallyRan.resolve()
      }
    },
    async * nothing () {},
    async wait (_message, ctx) {
      await new Promise((_resolve, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason), { once: true }))
    },
    async plain () { return { ok: true } }
  })
}

function newProbe (): Probe {
  return { finallyRan: deferred(), yielded: 0, signal: undefined }
}

async function setup (t: Parameters<typeof build>[0], probe = newProbe()): Promise<{ app: FastifyInstance, client: TestClient, url: string, probe: Probe }> {
  const app = await build(t, {}, a => declare(a, probe))
  const url = await listen(app)
  const client = await connect(t, url)
  return { app, client, url, probe }
}

const framesOf = (client: TestClient, id: unknown): Frame[] => client.frames.filter(f => f.request_id === id)

test('a generator yielding 1,000 items sends 1,000 `more` frames in order, then one final reply', async t => {
  const { client } = await setup(t)
  client.send({ resource: 'rows', action: 'count', data: { n: 1000 }, request_id: 'c1' })
  const final = await client.waitFor(f => f.request_id === 'c1' && f.more !== true)
  assert.deepEqual(final, { data: { total: 1000 }, request_id: 'c1' })
  const frames = framesOf(client, 'c1')
  assert.equal(frames.length, 1001)
  frames.slice(0, 1000).forEach((frame, i) => assert.deepEqual(frame, { data: { i }, request_id: 'c1', more: true }))
  assert.equal(client.raw[0], '{"data":{"i":0},"request_id":"c1","more":true}')
  assert.equal(client.raw[1000], '{"data":{"total":1000},"request_id":"c1"}', 'the final reply is exactly an ordinary reply')
})

test('a generator returning nothing replies null; plain actions never carry `more`', async t => {
  const { client } = await setup(t)
  assert.deepEqual(await client.request('rows', 'nothing', undefined, 1), { data: null, request_id: 1 })
  assert.deepEqual(await client.request('rows', 'plain', undefined, 2), { data: { ok: true }, request_id: 2 })
  assert.ok(client.frames.every(f => !('more' in f)))
})

test('an error after 10 items ends the stream with an ordinary error frame', async t => {
  const { client } = await setup(t)
  client.send({ resource: 'rows', action: 'failing', request_id: 7 })
  const end = await client.waitFor(f => f.request_id === 7 && f.more !== true)
  assert.deepEqual(end, { request_id: 7, code: 'CONFLICT', error: 'Ran out of rows', statusCode: 409 })
  const frames = framesOf(client, 7)
  assert.equal(frames.length, 11)
  assert.deepEqual(frames.slice(0, 10).map(f => f.data), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
  client.send({ resource: 'rows', action: 'crashing', request_id: 8 })
  const crash = await client.waitFor(f => f.request_id === 8 && f.more !== true)
  assert.deepEqual(crash, { request_id: 8, code: 'INTERNAL_ERROR', error: 'Unknown error', statusCode: 500 })
})

test('$request/cancel mid-stream answers cancelled: true, ends the stream with CANCELLED and runs the generator\'s finally', async t => {
  const { client, probe } = await setup(t)
  client.send({ resource: 'rows', action: 'endless', request_id: 7 })
  await client.waitFor(f => f.request_id === 7 && f.data === 5)
  const answer = await client.request('$request', 'cancel', { request_id: 7 }, 8)
  assert.deepEqual(answer, { data: { cancelled: true }, request_id: 8 })
  const end = await client.waitFor(f => f.request_id === 7 && f.code !== undefined)
  assert.deepEqual(end, { request_id: 7, code: 'CANCELLED', error: 'Request cancelled', statusCode: 499 })
  await probe.finallyRan.promise
  assert.equal(probe.signal?.aborted, true, 'ctx.signal aborts too')
  assert.equal((probe.signal?.reason as { code?: string }).code, 'CANCELLED')
  const frames = framesOf(client, 7)
  assert.equal(frames.indexOf(end), frames.length - 1, 'nothing of stream 7 follows its CANCELLED frame')
  assert.ok(client.frames.indexOf(end) < client.frames.indexOf(answer), 'the stream ends before the cancel is answered')
  // Cancelling it again: nothing of that id runs any more.
  assert.deepEqual((await client.request('$request', 'cancel', { request_id: 7 }, 9)).data, { cancelled: false })
})

test('closing the socket mid-stream runs the generator\'s finally', async t => {
  const { client, probe } = await setup(t)
  client.send({ resource: 'rows', action: 'endless', request_id: 1 })
  await client.waitFor(f => f.request_id === 1 && f.data === 3)
  client.terminate()
  await probe.finallyRan.promise
  assert.equal((probe.signal?.reason as { code?: string }).code, 'CONNECTION_CLOSED')
})

test('a plain action in flight is cancelled the same way: its ctx.signal aborts and its answer is CANCELLED', async t => {
  const { client } = await setup(t)
  client.send({ resource: 'rows', action: 'wait', request_id: 'w' })
  const answer = await client.request('$request', 'cancel', { request_id: 'w' }, 'x')
  assert.deepEqual(answer.data, { cancelled: true })
  assert.deepEqual(await client.reply('w'), { request_id: 'w', code: 'CANCELLED', error: 'Request cancelled', statusCode: 499 })
  assert.equal(framesOf(client, 'w').length, 1, 'answered once')
})

test('hostile cancels: unknown, foreign and own ids, finished actions, malformed data, unknown $request actions', async t => {
  const { client, url, probe } = await setup(t)
  const other = await connect(t, url)
  const cancel = (c: TestClient, target: unknown, id: unknown) => c.request('$request', 'cancel', { request_id: target }, id as string)
  assert.deepEqual((await cancel(client, 404, 'a')).data, { cancelled: false }, 'unknown id')
  assert.deepEqual((await cancel(client, 'a2', 'a2')).data, { cancelled: false }, 'a cancel does not cancel itself')
  await client.request('rows', 'plain', undefined, 'done')
  assert.deepEqual((await cancel(client, 'done', 'b')).data, { cancelled: false }, 'a plain action that has answered')
  // Another connection's stream with the same id is out of reach.
  other.send({ resource: 'rows', action: 'endless', request_id: 5 })
  await other.waitFor(f => f.request_id === 5 && f.data === 2)
  assert.deepEqual((await cancel(client, 5, 'c')).data, { cancelled: false }, 'foreign id')
  assert.equal(probe.yielded > 0 && other.frames.some(f => f.code !== undefined), false, 'the other stream goes on')
  assert.deepEqual((await cancel(other, 5, 'd')).data, { cancelled: true })
  await probe.finallyRan.promise
  const bad = await client.request('$request', 'cancel', { request_id: { $gt: 1 } }, 'e')
  assert.equal(bad.code, 'VALIDATION_ERROR')
  assert.equal(bad.details[0].path.startsWith('/data/request_id'), true)
  assert.equal((await client.request('$request', 'cancel', undefined, 'f')).code, 'VALIDATION_ERROR')
  assert.equal((await client.request('$request', 'constructor', { request_id: 1 }, 'g')).code, 'ACTION_NOT_FOUND')
  assert.equal((await client.request('$request', '__proto__', { request_id: 1 }, 'h')).code, 'ACTION_NOT_FOUND')
})

test('a stream reusing the id of a request in flight is refused; the first one goes on and stays cancellable', async t => {
  const { client, probe } = await setup(t)
  client.send({ resource: 'rows', action: 'endless', request_id: 3 })
  await client.waitFor(f => f.request_id === 3 && f.data === 1)
  client.send({ resource: 'rows', action: 'count', data: { n: 5 }, request_id: 3 })
  const refused = await client.waitFor(f => f.request_id === 3 && f.code !== undefined)
  assert.equal(refused.code, 'VALIDATION_ERROR')
  assert.match(refused.error, /already used by a request in flight/)
  assert.equal(framesOf(client, 3).filter(f => typeof f.data === 'object' && f.data !== null && 'i' in f.data).length, 0, 'the duplicate sent no item')
  assert.deepEqual((await client.request('$request', 'cancel', { request_id: 3 }, 4)).data, { cancelled: true })
  await probe.finallyRan.promise
})

test('plain actions may still reuse an id in flight (older clients do)', async t => {
  const { client } = await setup(t)
  client.send({ resource: 'rows', action: 'wait', request_id: 1 })
  assert.deepEqual(await client.request('rows', 'plain', undefined, 1), { data: { ok: true }, request_id: 1 })
  assert.deepEqual((await client.request('$request', 'cancel', { request_id: 1 }, 2)).data, { cancelled: true }, 'the first keeps the id')
})

test('streams work over injectWS (no TCP socket)', async t => {
  const app = await build(t, {}, a => declare(a, newProbe()))
  const client = await inject(t, app)
  client.send({ resource: 'rows', action: 'count', data: { n: 200 }, request_id: 1 })
  const final = await client.waitFor(f => f.request_id === 1 && f.more !== true)
  assert.deepEqual(final.data, { total: 200 })
  assert.equal(framesOf(client, 1).length, 201)
})

/** A full garbage collection, so that RSS measures what is held, not garbage awaiting collection. */
function collect (): void {
  setFlagsFromString('--expose-gc')
  ;(runInNewContext('gc') as () => void)()
}

async function until (what: string, predicate: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!predicate()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 5))
  }
}

test('a client that stops reading pauses a generator that could produce 1 GB: RSS grows by less than 2x maxBufferedBytes', async t => {
  const maxBufferedBytes = 16 * 1024 * 1024
  const ITEM = 'x'.repeat(64 * 1024)
  const ITEMS = 16 * 1024 // 1 GiB of items
  let yielded = 0
  const finallyRan = deferred()
  const app = await build(t, { maxBufferedBytes }, a => {
    a.drizzle.resource('big', {
      async * blob () {
        try {
          for (let i = 0; i < ITEMS; i++) {
            yielded++
            yield ITEM
          }
        } finally {
          finallyRan.resolve()
        }
      }
    })
  })
  const url = await listen(app)
  const ws = new WebSocket(url)
  t.after(() => ws.terminate())
  await once(ws, 'open')
  let received = 0
  ws.on('message', () => { received++ })
  collect()
  const before = process.memoryUsage().rss
  // The client stops reading: its TCP socket is paused, so the kernel buffers fill, then the server's.
  const tcp = (ws as unknown as { _socket: import('node:net').Socket })._socket
  tcp.pause()
  ws.send(JSON.stringify({ resource: 'big', action: 'blob', request_id: 1 }))
  const server = [...app.websocketServer.clients][0] as WebSocket
  // The generator is pulled only while the socket holds at most half the bound: past it, it must wait.
  await until('the server socket to pass half of maxBufferedBytes', () => server.bufferedAmount > maxBufferedBytes / 2)
  const atPause = yielded
  for (let i = 0; i < 50; i++) await new Promise(resolve => setImmediate(resolve))
  await new Promise(resolve => setTimeout(resolve, 200))
  collect()
  const growth = process.memoryUsage().rss - before
  assert.ok(yielded <= atPause + 1, `the generator is paused (${atPause} items when the bound was passed, ${yielded} now)`)
  // What left the server is in the kernel's socket buffers (a few MB each way on loopback) or in ws's.
  assert.ok(yielded * ITEM.length < maxBufferedBytes + 64 * 1024 * 1024, `${yielded} items yielded of ${ITEMS}`)
  // The margin is what the process holds beside ws's buffer (heap, the items in the kernel's hands
  // being freed lazily): rss grew 6.4-14.0 MiB with 8 MiB buffered in runs on Node 20, so 6 MiB at
  // most beside it; 8 MiB.
  const margin = 8 * 1024 * 1024
  t.diagnostic(`rss growth ${(growth / 1048576).toFixed(1)} MiB with ${yielded} items (${(yielded * ITEM.length / 1048576).toFixed(0)} MiB) yielded, bufferedAmount ${(server.bufferedAmount / 1048576).toFixed(1)} MiB`)
  assert.ok(growth < 2 * maxBufferedBytes + margin, `rss grew by ${growth} bytes`)
  // The stream left the other half of the bound to publications: the socket is not a slow consumer.
  await app.drizzle.publish('__all__', { hello: 'paused reader' })
  assert.equal(server.readyState, WebSocket.OPEN)
  const publication = new Promise<void>(resolve => ws.on('message', (raw: Buffer) => { if (raw.includes('paused reader')) resolve() }))
  // Reading again resumes the stream where it paused: nothing was dropped.
  tcp.resume()
  await publication
  await until('items past the pause to arrive', () => received > atPause + 100)
  assert.ok(yielded > atPause + 100)
  ws.terminate()
  await finallyRan.promise
})

async function clientOf (t: Parameters<typeof build>[0], url: string): Promise<DrizzleClient> {
  const client = new DrizzleClient(url, { WebSocket: WebSocket as never, reconnect: false })
  t.after(() => client.close())
  await new Promise<void>(resolve => client.on('open', () => resolve()))
  return client
}

test('client.stream: `for await` with `break` after 5 items cancels the stream on the server', async t => {
  const { url, probe } = await setup(t)
  const client = await clientOf(t, url)
  const items: unknown[] = []
  for await (const item of client.stream('rows', 'endless')) {
    items.push(item)
    if (items.length === 5) break
  }
  assert.deepEqual(items, [0, 1, 2, 3, 4])
  await probe.finallyRan.promise
  assert.equal((probe.signal?.reason as { code?: string }).code, 'CANCELLED', 'cancelled by $request/cancel, not by a disconnect')
  // The connection goes on serving.
  assert.deepEqual(await client.request('rows', 'plain'), { ok: true })
})

test('client.stream yields every item and returns the final reply; an error frame is thrown from the loop', async t => {
  const { url } = await setup(t)
  const client = await clientOf(t, url)
  const stream = client.stream('rows', 'count', { n: 300 })
  const items: unknown[] = []
  let step = await stream.next()
  while (step.done !== true) { items.push(step.value); step = await stream.next() }
  assert.equal(items.length, 300)
  assert.deepEqual(items[299], { i: 299 })
  assert.deepEqual(step.value, { total: 300 })
  const seen: unknown[] = []
  await assert.rejects(async () => { for await (const item of client.stream('rows', 'failing')) seen.push(item) },
    (err: unknown) => err instanceof DrizzleClientError && err.code === 'CONFLICT' && err.statusCode === 409)
  assert.equal(seen.length, 10)
  // request() on a streaming action resolves with the final reply and ignores the items.
  assert.deepEqual(await client.request('rows', 'count', { n: 50 }), { total: 50 })
})

test('client.stream: aborting its signal cancels on the server and throws the abort reason', async t => {
  const { url, probe } = await setup(t)
  const client = await clientOf(t, url)
  const controller = new AbortController()
  let count = 0
  await assert.rejects(async () => {
    for await (const item of client.stream('rows', 'endless', undefined, { signal: controller.signal })) {
      assert.equal(item, count)
      if (++count === 3) controller.abort(new Error('enough'))
    }
  }, /enough/)
  await probe.finallyRan.promise
  assert.equal((probe.signal?.reason as { code?: string }).code, 'CANCELLED')
})

test('over HTTP (option http) a streaming action answers NDJSON: items, then the final line; errors after the start are a line', async t => {
  const probe = newProbe()
  let responses = 0
  const app = await build(t, { http: true }, a => {
    declare(a, probe)
    a.drizzle.addHook('onResponse', async () => { responses++ })
    a.addHook('onRequest', async (_request, reply) => { reply.header('x-scope', 'root') })
    // fetch (undici) keeps a spare connection open that never carries a request; Node counts it busy
    // and app.close() would wait the keep-alive timeout (72 s) for it.
  }, { forceCloseConnections: true })
  const base = (await app.listen({ port: 0, host: '127.0.0.1' })) + '/ws/rows/'
  const res = await fetch(base + 'count', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ n: 3 }) })
  assert.equal(res.status, 200)
  assert.equal(res.headers.get('content-type'), 'application/x-ndjson; charset=utf-8')
  assert.equal(res.headers.get('x-scope'), 'root', 'headers set by the scope\'s hooks are kept')
  assert.equal(await res.text(), '{"data":{"i":0},"more":true}\n{"data":{"i":1},"more":true}\n{"data":{"i":2},"more":true}\n{"data":{"total":3}}\n')
  const failing = await fetch(base + 'failing', { method: 'POST' })
  assert.equal(failing.status, 200)
  const lines = (await failing.text()).trim().split('\n').map(line => JSON.parse(line))
  assert.equal(lines.length, 11)
  assert.deepEqual(lines[10], { code: 'CONFLICT', error: 'Ran out of rows', statusCode: 409 })
  // Before the handler returned its stream, errors are ordinary HTTP errors.
  const invalid = await fetch(base + 'count', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '"nope"' })
  assert.equal(invalid.status, 400)
  assert.equal(responses, 2, 'drizzle onResponse hooks ran once per stream (the 400 never reached the action)')
  // A client that goes away stops the stream: the generator's finally runs.
  const controller = new AbortController()
  const endless = await fetch(base + 'endless', { method: 'POST', signal: controller.signal })
  const reader = (endless.body as ReadableStream<Uint8Array>).getReader()
  await reader.read()
  controller.abort()
  await probe.finallyRan.promise
  assert.equal((probe.signal?.reason as { code?: string }).code, 'CONNECTION_CLOSED', 'ctx.signal aborts when the HTTP client leaves')
})

test('the AsyncAPI document shows streaming actions\' items, $request/cancel and CANCELLED; it stays valid', async t => {
  const { Parser } = await import('@asyncapi/parser')
  const { app } = await setup(t)
  const doc = app.drizzle.asyncapi({ serverUrl: 'ws://localhost/ws' })
  const diagnostics = await new Parser().validate(JSON.stringify(doc))
  assert.deepEqual(diagnostics.filter(d => d.severity === 0), [])
  const ops = Object.values(doc.operations) as Array<Record<string, any>>
  const count = ops.find(o => o.title === 'rows.count') as Record<string, any>
  assert.deepEqual(count.reply.messages.map((m: { $ref: string }) => m.$ref.split('/').pop()), ['rows.count.item', 'rows.count.reply', 'error'])
  const plain = ops.find(o => o.title === 'rows.plain') as Record<string, any>
  assert.equal(plain.reply.messages.length, 2, 'plain actions have no item message')
  const messages = (doc.channels.drizzle as { messages: Record<string, any> }).messages
  assert.deepEqual(messages['rows.count.item'].payload.properties.more, { type: 'boolean', const: true })
  assert.ok(ops.some(o => o.title === '$request.cancel'))
  assert.deepEqual(messages['_request.cancel.request'].payload.required, ['resource', 'action', 'request_id', 'data'])
  assert.ok((doc.components.schemas.ErrorFrame as any).properties.code.anyOf[0].enum.includes('CANCELLED'))
})

test('a stream\'s time limit covers each item, not the whole stream; a stalled generator gets ACTION_TIMEOUT and its finally runs', async t => {
  const finallyRan = deferred()
  const app = await build(t, {}, a => {
    a.drizzle.resource('slow', {
      steady: {
        timeout: 200,
        async * handler () {
          for (let i = 0; i < 6; i++) {
            await new Promise(resolve => setTimeout(resolve, 60))
            yield i
          }
          return 'done'
        }
      },
      stalled: {
        timeout: 50,
        async * handler (_message, ctx) {
          try {
            yield 'first'
            await new Promise(resolve => ctx.signal.addEventListener('abort', resolve, { once: true }))
            yield 'never sent'
          } finally {
            finallyRan.resolve()
          }
        }
      }
    })
  })
  const client = await inject(t, app)
  client.send({ resource: 'slow', action: 'steady', request_id: 1 })
  assert.deepEqual(await client.waitFor(f => f.request_id === 1 && f.more !== true), { data: 'done', request_id: 1 }, '360 ms in all, 60 ms per item')
  client.send({ resource: 'slow', action: 'stalled', request_id: 2 })
  const end = await client.waitFor(f => f.request_id === 2 && f.more !== true)
  assert.equal(end.code, 'ACTION_TIMEOUT')
  await finallyRan.promise
  assert.deepEqual(framesOf(client, 2).map(f => f.data ?? f.code), ['first', 'ACTION_TIMEOUT'])
})

test('shutdown closes a stream after the grace period: its generator\'s finally runs and close completes', async t => {
  const probe = newProbe()
  const app = await build(t, { closeGracePeriod: 100 }, a => declare(a, probe))
  const url = await listen(app)
  const client = await connect(t, url)
  client.send({ resource: 'rows', action: 'endless', request_id: 1 })
  await client.waitFor(f => f.request_id === 1 && f.data === 3)
  await app.close()
  await probe.finallyRan.promise
  assert.equal(await client.closed, 1001)
})
