// Black-box tests of fastify-drizzle/client against a real app listening on 127.0.0.1 (ws as the
// WebSocket constructor, as Node 20 users do), plus the injectWS form that needs no network.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import Fastify from 'fastify'
import Type from 'typebox'
import WebSocket, { WebSocketServer } from 'ws'
import drizzle, { action, type InferApi } from '../lib/index.js'
import { DrizzleClient, DrizzleClientError, type DrizzleClientOptions, type Publication } from '../lib/client/index.js'
import { build, listen, sleep } from './helpers/client.js'
import { recordingLogger, type LogEntry } from './helpers/logger.js'

const Todo = Type.Object({ id: Type.Integer(), title: Type.String() })

/** The server side of these tests: a resource, a refused topic pattern and an open one. */
function declare (app: FastifyInstance) {
  const items: Array<{ id: number, title: string }> = []
  const todos = app.drizzle.resource('todos', {
    async list () { return items },
    create: action({
      schema: { data: Type.Object({ title: Type.String() }), reply: Todo },
      async handler (message, ctx) {
        const todo = { id: items.length + 1, title: message.data.title }
        items.push(todo)
        await ctx.publish('todos', todo, { event: 'created' })
        return todo
      }
    }),
    async slow () { await sleep(1500); return { late: true } },
    async watch (_message, ctx) { await ctx.subscribe('todos'); return { watching: true } }
  })
  const rooms = app.drizzle.topic('rooms/:id', { authorize: (_ctx, params) => !String(params.id).startsWith('private-') })
  const news = app.drizzle.topic<'news', { headline: string }>('news')
  return { todos, rooms, news }
}
type Api = InferApi<ReturnType<typeof declare>[keyof ReturnType<typeof declare>]>

async function serve (t: TestContext): Promise<{ app: FastifyInstance, url: string }> {
  const app = await build(t, {}, app => { declare(app) })
  return { app, url: await listen(app) }
}

/** A client with short delays so reconnect tests stay fast; closed after the test. */
function client (t: TestContext, url: ConstructorParameters<typeof DrizzleClient>[0], options: DrizzleClientOptions = {}): DrizzleClient<Api> {
  const c = new DrizzleClient<Api>(url, { WebSocket, timeout: 2000, reconnect: { baseDelay: 20, maxDelay: 100 }, ...options })
  t.after(() => c.close())
  return c
}

function nextEvent<T> (subscribe: (fn: (arg: T) => void) => () => void, ms = 3000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error(`no event within ${ms} ms`)) }, ms)
    const off = subscribe(arg => { clearTimeout(timer); off(); resolve(arg) })
  })
}

/** Publishes until the client's listener got something: proves delivery without racing the subscribe. */
async function publishUntil<T> (app: FastifyInstance, topic: string, data: unknown, received: () => T | undefined, ms = 3000): Promise<T> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    await app.drizzle.publish(topic, data)
    await sleep(30)
    const value = received()
    if (value !== undefined) return value
  }
  throw new Error(`nothing received on ${topic} within ${ms} ms`)
}

async function rejection (promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise
  } catch (err) {
    return err
  }
  throw new Error('expected a rejection')
}

test('request resolves with the reply data, typed from the server declarations', async t => {
  const { url } = await serve(t)
  const c = client(t, url)
  const todo = await c.request('todos', 'create', { title: 'write tests' })
  assert.deepEqual(todo, { id: 1, title: 'write tests' })
  assert.deepEqual(await c.request('todos', 'list'), [{ id: 1, title: 'write tests' }])
  assert.equal(c.state, 'open')
})

test('a request made before the connection opened is sent once it opens', async t => {
  const { url } = await serve(t)
  const c = client(t, url)
  assert.equal(c.state, 'connecting')
  const [created, listed] = await Promise.all([c.request('todos', 'create', { title: 'x' }), c.request('todos', 'list')])
  assert.deepEqual(created, { id: 1, title: 'x' })
  assert.ok(Array.isArray(listed))
})

test('server errors reject with type server and the frame code, statusCode, details and requestId', async t => {
  const { url } = await serve(t)
  const c = new DrizzleClient(url, { WebSocket }) // untyped: any resource and action compile
  t.after(() => c.close())
  const err = await rejection(c.request('todos', 'nope'))
  assert.ok(err instanceof DrizzleClientError)
  assert.equal(err.type, 'server')
  assert.equal(err.code, 'ACTION_NOT_FOUND')
  assert.equal(err.statusCode, 404)
  assert.equal(typeof err.requestId, 'number')
  const invalid = await rejection(c.request('todos', 'create', { title: 42 })) as DrizzleClientError
  assert.equal(invalid.code, 'VALIDATION_ERROR')
  assert.ok(Array.isArray(invalid.details))
})

test('a slow action rejects with type timeout; its late reply is ignored', async t => {
  const { url } = await serve(t)
  const c = client(t, url)
  const errors: DrizzleClientError[] = []
  c.on('error', e => errors.push(e))
  const started = Date.now()
  const err = await rejection(c.request('todos', 'slow', undefined, { timeout: 100 })) as DrizzleClientError
  assert.equal(err.type, 'timeout')
  assert.ok(Date.now() - started < 1000)
  assert.deepEqual(await c.request('todos', 'list'), []) // the connection is still usable
  assert.deepEqual(errors, [])
})

test('aborting rejects with the signal reason (AbortError by default), like fetch', async t => {
  const { url } = await serve(t)
  const c = client(t, url)
  const controller = new AbortController()
  const pending = c.request('todos', 'slow', undefined, { signal: controller.signal })
  setTimeout(() => controller.abort(), 50)
  const err = await rejection(pending) as Error
  assert.equal(err.name, 'AbortError')
  assert.ok(!(err instanceof DrizzleClientError))
  // Already aborted: rejects at once, nothing sent. A custom reason is passed through.
  const reason = new Error('user left the page')
  assert.equal(await rejection(c.request('todos', 'list', undefined, { signal: AbortSignal.abort(reason) })), reason)
})

test('subscribe receives publications of a declared topic; stop() unsubscribes', async t => {
  const { app, url } = await serve(t)
  const c = client(t, url)
  const got: Array<[unknown, Publication]> = []
  const stop = c.subscribe('rooms/42', (data, frame) => got.push([data, frame]))
  await stop.ready
  assert.equal(app.drizzle.subscriberCount('rooms/42'), 1)
  await app.drizzle.publish('rooms/42', { text: 'hi' }, { event: 'message' })
  await publishUntil(app, 'rooms/42', { text: 'again' }, () => got.length >= 2 ? true : undefined)
  assert.deepEqual(got[0], [{ text: 'hi' }, { topic: 'rooms/42', data: { text: 'hi' }, event: 'message' }])
  stop()
  for (let i = 0; i < 50 && app.drizzle.subscriberCount('rooms/42') > 0; i++) await sleep(10)
  assert.equal(app.drizzle.subscriberCount('rooms/42'), 0)
})

test('two listeners of one topic share one server subscription until the last one leaves', async t => {
  const { app, url } = await serve(t)
  const c = client(t, url)
  const a: unknown[] = []
  const b: unknown[] = []
  const stopA = c.subscribe('news', data => a.push(data.headline))
  const stopB = c.subscribe('news', data => b.push(data.headline))
  await Promise.all([stopA.ready, stopB.ready])
  stopA()
  await app.drizzle.publish('news', { headline: 'one' })
  await publishUntil(app, 'news', { headline: 'two' }, () => b.length >= 2 ? true : undefined)
  assert.deepEqual(a, [])
  assert.deepEqual(b.slice(0, 2), ['one', 'two'])
  assert.equal(app.drizzle.subscriberCount('news'), 1)
  stopB()
})

test('a refused subscription surfaces as an error event and a rejected ready; its listener is dropped', async t => {
  const { url } = await serve(t)
  const c = client(t, url)
  const errors: DrizzleClientError[] = []
  c.on('error', e => errors.push(e))
  const stop = c.subscribe('rooms/private-1', () => assert.fail('must not be called'))
  const err = await rejection(stop.ready) as DrizzleClientError
  assert.equal(err.type, 'server')
  assert.equal(err.code, 'FORBIDDEN')
  assert.equal(err.statusCode, 403)
  assert.equal(err.topic, 'rooms/private-1')
  assert.deepEqual(errors.map(e => e.code), ['FORBIDDEN'])
  const unknown = c.subscribe('nowhere' as 'news', () => {})
  assert.equal((await rejection(unknown.ready) as DrizzleClientError).code, 'TOPIC_NOT_FOUND')
  stop() // a no-op now
})

test('listen() and the publication event receive topics the server subscribed the socket to', async t => {
  const { app, url } = await serve(t)
  const c = client(t, url)
  const listened: unknown[] = []
  const all: Publication[] = []
  const off = c.listen('todos', (data, frame) => listened.push([data, frame.event]))
  c.on('publication', frame => all.push(frame))
  assert.deepEqual(await c.request('todos', 'watch'), { watching: true })
  const other = client(t, url)
  await other.request('todos', 'create', { title: 'from another client' })
  await app.drizzle.publish('__all__', { notice: 'everyone' })
  for (let i = 0; i < 100 && all.length < 2; i++) await sleep(10)
  assert.deepEqual(listened, [[{ id: 1, title: 'from another client' }, 'created']])
  assert.deepEqual(all.map(f => f.topic), ['todos', '__all__'])
  off()
})

test('a request pending when the server goes away rejects with type disconnect', async t => {
  const { app, url } = await serve(t)
  const c = client(t, url, { reconnect: false })
  const closed = nextEvent<{ code: number, reconnecting: boolean }>(fn => c.on('close', fn))
  await c.request('todos', 'list')
  const pending = rejection(c.request('todos', 'slow', undefined, { timeout: 5000 }))
  await sleep(50)
  // Terminate the server's sockets: the client sees an abnormal close, not a reply.
  for (const ws of app.websocketServer.clients) ws.terminate()
  const err = await pending as DrizzleClientError
  assert.equal(err.type, 'disconnect')
  assert.equal((await closed).reconnecting, false)
  // Reconnect disabled: the client is closed for good and rejects at once.
  assert.equal(c.state, 'closed')
  assert.equal((await rejection(c.request('todos', 'list')) as DrizzleClientError).type, 'disconnect')
})

test('after the server restarts on the same port, the client reconnects and its subscriptions are renewed', async t => {
  const first = await serve(t)
  const port = Number(new URL(first.url).port)
  const c = client(t, first.url)
  const got: unknown[] = []
  const stop = c.subscribe('news', data => got.push(data.headline))
  await stop.ready
  await first.app.drizzle.publish('news', { headline: 'before' })
  const pending = rejection(c.request('todos', 'slow', undefined, { timeout: 5000 }))
  await sleep(50)
  const closed = nextEvent<{ code: number, reconnecting: boolean }>(fn => c.on('close', fn))
  await first.app.close()
  assert.equal((await pending as DrizzleClientError).type, 'disconnect')
  assert.equal((await closed).reconnecting, true)

  const reopened = nextEvent<{ reconnected: boolean }>(fn => c.on('open', fn), 5000)
  const app = await build(t, {}, app => { declare(app) })
  await app.listen({ port, host: '127.0.0.1' })
  assert.deepEqual(await reopened, { reconnected: true })
  // No call from the app or the test: the client renewed 'news' by itself.
  await publishUntil(app, 'news', { headline: 'after' }, () => got.includes('after') ? true : undefined)
  assert.equal(got[0], 'before')
  assert.deepEqual(await c.request('todos', 'list'), [])
})

test('the url function is called on every attempt; backoff uses full jitter under the ceiling', async t => {
  const { url } = await serve(t)
  const dead = await deadUrl()
  let calls = 0
  const c = client(t, async () => ++calls <= 2 ? dead : url, { reconnect: { baseDelay: 40, maxDelay: 60 } })
  const attempts: Array<{ attempt: number, delay: number }> = []
  const errors: DrizzleClientError[] = []
  c.on('reconnect', e => attempts.push(e))
  c.on('error', e => errors.push(e))
  await nextEvent(fn => c.on('open', fn))
  assert.equal(calls, 3)
  assert.deepEqual(attempts.map(a => a.attempt), [2, 3])
  for (const { attempt, delay } of attempts) assert.ok(delay >= 0 && delay < Math.min(60, 40 * 2 ** (attempt - 1)), `delay ${delay}`)
  assert.deepEqual(errors.map(e => e.type), ['disconnect', 'disconnect'])
  // A drop of the open connection also re-reads the url.
  await c.request('todos', 'list')
})

test('maxAttempts: the client gives up, closes, and rejects waiting requests with disconnect', async t => {
  const dead = await deadUrl()
  const c = client(t, dead, { reconnect: { baseDelay: 5, maxDelay: 10, maxAttempts: 2 } })
  const errors: string[] = []
  c.on('error', e => errors.push(e.message))
  const err = await rejection(c.request('todos', 'list', undefined, { timeout: 3000 })) as DrizzleClientError
  assert.equal(err.type, 'disconnect')
  assert.equal(c.state, 'closed')
  assert.match(errors.at(-1) ?? '', /gave up after 2 failed attempts/)
})

test('a socket that never opens fails its attempt after connectTimeout; a bad factory result is an error too', async t => {
  let dropped = 0
  const stuck = { readyState: 0, onopen: null, onmessage: null, onclose: null, onerror: null, send () {}, close () { dropped++ } }
  const results: unknown[] = [stuck, 42]
  const c = client(t, () => results.shift() as typeof stuck, { connectTimeout: 50, reconnect: { baseDelay: 5, maxDelay: 10, maxAttempts: 2 } })
  const errors: string[] = []
  c.on('error', e => errors.push(e.message))
  const err = await rejection(c.request('todos', 'list')) as DrizzleClientError
  assert.equal(err.type, 'disconnect')
  assert.equal(dropped, 1)
  assert.match(errors[0] ?? '', /not open within 50 ms/)
  assert.match(errors[1] ?? '', /must return a URL string, a URL or a socket/)
  assert.match(errors[2] ?? '', /gave up/)
  assert.equal((await rejection(c.subscribe('news', () => {}).ready) as DrizzleClientError).type, 'disconnect')
})

test('malformed frames from the server are protocol error events, never crashes', async t => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  t.after(() => new Promise(resolve => {
    // ws calls back only once every connection is gone.
    for (const ws of wss.clients) ws.terminate()
    wss.close(resolve)
  }))
  await once(wss, 'listening')
  wss.on('connection', ws => {
    ws.on('message', (raw: Buffer) => {
      const { request_id: id } = JSON.parse(raw.toString()) as { request_id: number }
      ws.send('not json')
      ws.send('[1, 2]')
      ws.send('{"hello": "world"}')
      ws.send(Buffer.from([0xff, 0xfe]), { binary: true })
      ws.send(JSON.stringify({ request_id: 999_999, data: 'nobody asked' }))
      ws.send(JSON.stringify({ request_id: null, code: 'VALIDATION_ERROR', error: 'Expected Json encodable string', statusCode: 400 }))
      // UTF-8 JSON in a binary frame is accepted, as the server accepts it.
      ws.send(Buffer.from(JSON.stringify({ topic: 'news', data: { headline: 'binary' } })), { binary: true })
      ws.send(JSON.stringify({ request_id: id, data: { ok: true } }))
    })
  })
  const { port } = wss.address() as { port: number }
  const c = client(t, `ws://127.0.0.1:${port}`)
  const errors: DrizzleClientError[] = []
  const publications: Publication[] = []
  c.on('error', e => errors.push(e))
  c.on('publication', p => publications.push(p))
  assert.deepEqual(await c.request('todos', 'list'), { ok: true })
  assert.deepEqual(errors.map(e => e.type), ['protocol', 'protocol', 'protocol', 'protocol', 'server'])
  assert.equal(errors[4]?.code, 'VALIDATION_ERROR')
  assert.deepEqual(publications, [{ topic: 'news', data: { headline: 'binary' } }])
  await c.close()
})

test('close() rejects pending requests and subscriptions with disconnect; later calls reject at once', async t => {
  const { url } = await serve(t)
  const c = client(t, url)
  await c.request('todos', 'list')
  const pending = rejection(c.request('todos', 'slow'))
  const stop = c.subscribe('rooms/1', () => {})
  const closed = nextEvent<{ reconnecting: boolean }>(fn => c.on('close', fn))
  await c.close()
  assert.equal((await pending as DrizzleClientError).type, 'disconnect')
  assert.equal((await rejection(stop.ready) as DrizzleClientError).type, 'disconnect')
  assert.deepEqual(await closed, { code: 1000, reason: '', reconnecting: false })
  assert.equal(c.state, 'closed')
  assert.equal((await rejection(c.request('todos', 'list')) as DrizzleClientError).type, 'disconnect')
  await c.close() // idempotent
})

test('a connect function that throws or hands over a closed socket fails its attempt', async t => {
  const { url } = await serve(t)
  const closed = new WebSocket(url)
  await once(closed, 'open')
  closed.close()
  await once(closed, 'close')
  // The closed socket first: an error of the very first attempt would be emitted inside the constructor.
  const attempts: Array<() => WebSocket> = [() => closed, () => { throw new Error('no token yet') }]
  const c = client(t, () => (attempts.shift() ?? (() => { throw new Error('no third attempt') }))(), { reconnect: { baseDelay: 5, maxDelay: 10, maxAttempts: 2 } })
  const errors: string[] = []
  c.on('error', e => errors.push(e.message))
  assert.equal((await rejection(c.request('todos', 'list')) as DrizzleClientError).type, 'disconnect')
  assert.deepEqual(errors.map(m => m.replace(/:.*/, '')), ['Connection attempt failed', 'Connection attempt failed', 'DrizzleClient gave up after 2 failed attempts'])
  assert.match(errors[0] ?? '', /closing or closed/)
  assert.match(errors[1] ?? '', /no token yet/)
})

test('a socket the connect function produces after close() is dropped, connecting or open, without an error', async t => {
  const { app, url } = await serve(t)
  for (const wait of [false, true]) {
    let hand: (socket: WebSocket) => void = () => assert.fail('the connect function was not called')
    const late = new DrizzleClient(() => new Promise<WebSocket>(resolve => { hand = resolve }), { WebSocket })
    const opened: unknown[] = []
    late.on('open', e => opened.push(e))
    await late.close()
    const socket = new WebSocket(url)
    // An open socket is terminated; a connecting one too, which ws reports as an 'error' event.
    if (wait) await once(socket, 'open')
    // Not events.once(): it would reject on that 'error' event, which is ws's, not the client's.
    const gone = new Promise(resolve => socket.once('close', resolve))
    hand(socket)
    await gone
    assert.equal(late.state, 'closed')
    assert.deepEqual(opened, [])
  }
  for (let i = 0; i < 50 && app.websocketServer.clients.size > 0; i++) await sleep(10)
  assert.equal(app.websocketServer.clients.size, 0, 'the server saw both sockets go')
})

test('close() leaves no timers or sockets behind: a Node process using the client exits', async t => {
  const { url } = await serve(t)
  const dead = await deadUrl()
  const fixture = fileURLToPath(new URL('./fixtures/client-exit.ts', import.meta.url))
  const child = spawn(process.execPath, ['--import', 'tsx', fixture, url, dead], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.after(() => child.kill('SIGKILL'))
  let output = ''
  let closedAt = 0
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (chunk: string) => {
    output += chunk
    if (closedAt === 0 && output.includes('closed')) closedAt = Date.now()
  })
  const exit = once(child, 'exit')
  const killer = setTimeout(() => child.kill('SIGKILL'), 10_000)
  const [code] = await exit
  clearTimeout(killer)
  assert.equal(code, 0, output)
  assert.match(output, /listed \[\]/)
  assert.ok(Date.now() - closedAt < 2000, `exited ${Date.now() - closedAt} ms after close()`)
})

test('injectWS: a typed client with no network, for testing an app', async t => {
  const app = Fastify()
  await app.register(drizzle)
  declare(app)
  await app.ready()
  type Declared = ReturnType<typeof declare>
  type TestApi = InferApi<Declared['todos'] | Declared['news']>

  // The socket factory runs on every (re)connection attempt, like a URL function.
  const c = new DrizzleClient<TestApi>(() => app.injectWS('/ws'))
  // One hook, so the client is closed before the app whatever order node:test runs hooks in.
  t.after(async () => { await c.close(); await app.close() })
  const headlines: string[] = []
  await c.subscribe('news', data => headlines.push(data.headline)).ready
  const todo = await c.request('todos', 'create', { title: 'no network' })
  assert.equal(todo.title, 'no network')
  await app.drizzle.publish('news', { headline: 'injected' })
  for (let i = 0; i < 50 && headlines.length === 0; i++) await sleep(10)
  assert.deepEqual(headlines, ['injected'])
})

for (const [label, code, reason] of [['the default code', 1000, ''], ['a code of its own', 4001, 'bye']] as const) {
  test(`injectWS: close() with ${label} ends the server side at once, so app.close() does not wait`, async t => {
    const logs: LogEntry[] = []
    const loggerInstance: FastifyBaseLogger = recordingLogger(logs)
    const app = Fastify({ loggerInstance })
    await app.register(drizzle)
    declare(app)
    await app.ready()
    t.after(() => app.close())
    // The default closeTimeout (1 s): an in-memory socket must not need a short one.
    const c = new DrizzleClient<Api>(() => app.injectWS('/ws'))
    assert.deepEqual(await c.request('todos', 'list'), [])
    const closed = nextEvent<{ code: number }>(fn => c.on('close', fn))

    const started = performance.now()
    await (code === 1000 ? c.close() : c.close(code, reason))
    const clientMs = performance.now() - started
    await app.close()
    const totalMs = performance.now() - started

    assert.deepEqual(await closed, { code, reason, reconnecting: false })
    // The server saw the client's close frame: not 1001 from its own shutdown, nor an abnormal 1006.
    assert.deepEqual(logs.filter(entry => entry.msg === 'connection closed').map(entry => entry.obj.code), [code])
    assert.ok(clientMs < 100, `client.close() took ${clientMs.toFixed(1)} ms`)
    assert.ok(totalMs < 200, `client.close() then app.close() took ${totalMs.toFixed(1)} ms`)
  })
}

/** A ws:// URL on which nothing listens (a port that was just freed). */
async function deadUrl (): Promise<string> {
  const server = Fastify()
  const address = await server.listen({ port: 0, host: '127.0.0.1' })
  await server.close()
  return address.replace('http', 'ws') + '/ws'
}
