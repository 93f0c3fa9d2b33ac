import { test } from 'node:test'
import assert from 'node:assert/strict'
import createError from '@fastify/error'
import type { FastifyInstance } from 'fastify'
import { build, connect, inject, listen, type TestClient } from './helpers/client.js'
import { recordingLogger } from './helpers/logger.js'

const Unauthorized = createError('UNAUTHORIZED', 'Who are you?', 401)

function declare (app: FastifyInstance): void {
  app.drizzle.resource('todos', {
    watch: async (_m, ctx) => { await ctx.subscribe('todos'); return { watching: true } },
    unwatch: async (_m, ctx) => ({ was: await ctx.unsubscribe('todos') }),
    create: async (message, ctx) => { await ctx.publish('todos', message.data, { event: 'created' }); return message.data }
  })
  app.drizzle.topic('rooms/:id', {
    authorize: (ctx, params) => {
      if (params.id === 'vip' && ctx.request.headers['x-user'] === undefined) throw new Unauthorized()
      return !params.id?.startsWith('private-')
    }
  })
  app.drizzle.topic('news')
}

const subscribe = (client: TestClient, topic: unknown, id: string | number = topic as string) =>
  client.request('$topic', 'subscribe', { topic }, id)
const unsubscribe = (client: TestClient, topic: unknown, id: string | number = 'u-' + String(topic)) =>
  client.request('$topic', 'unsubscribe', { topic }, id)

test('sockets subscribed through a handler receive a publication; others receive nothing', async t => {
  const app = await build(t, {}, declare)
  const url = await listen(app)
  const watcher = await connect(t, url)
  const bystander = await connect(t, url)
  const binary: boolean[] = []
  watcher.ws.on('message', (_data: Buffer, isBinary: boolean) => binary.push(isBinary))
  assert.deepEqual((await watcher.request('todos', 'watch')).data, { watching: true })
  await app.drizzle.publish('todos', { id: 1 })
  const frame = await watcher.waitFor(f => f.topic === 'todos')
  assert.deepEqual(frame, { topic: 'todos', data: { id: 1 } })
  assert.ok(watcher.raw.includes('{"topic":"todos","data":{"id":1}}'))
  assert.deepEqual(binary, [false, false], 'replies and publications are text frames')
  assert.equal(await bystander.quiet(100), 0)
  assert.equal(bystander.publications().length, 0)
})

test('ctx.publish from a handler reaches subscribers, with the event name', async t => {
  const app = await build(t, {}, declare)
  const a = await inject(t, app)
  const b = await inject(t, app)
  await b.request('todos', 'watch')
  await a.request('todos', 'create', { title: 'milk' })
  const frame = await b.waitFor(f => f.topic === 'todos')
  assert.deepEqual(frame, { topic: 'todos', data: { title: 'milk' }, event: 'created' })
  assert.equal(a.publications('todos').length, 0, 'the publisher did not subscribe')
})

test('a publication to __all__ reaches every open socket', async t => {
  const app = await build(t, {}, declare)
  const clients = await Promise.all([1, 2, 3].map(() => inject(t, app)))
  await app.drizzle.publish('__all__', 'hello everyone', { event: 'announce' })
  for (const client of clients) {
    assert.deepEqual(await client.waitFor(f => f.topic === '__all__'), { topic: '__all__', data: 'hello everyone', event: 'announce' })
  }
})

test('declared topics: subscribe, refuse (FORBIDDEN, UNAUTHORIZED), unknown (TOPIC_NOT_FOUND)', async t => {
  const app = await build(t, {}, declare)
  const client = await inject(t, app)
  assert.deepEqual(await subscribe(client, 'rooms/42', 7), { data: { topic: 'rooms/42', subscribed: true }, request_id: 7 })
  assert.deepEqual((await subscribe(client, 'news')).data, { topic: 'news', subscribed: true })
  const forbidden = await subscribe(client, 'rooms/private-1')
  assert.deepEqual([forbidden.code, forbidden.statusCode], ['FORBIDDEN', 403])
  const unauthorized = await subscribe(client, 'rooms/vip')
  assert.deepEqual([unauthorized.code, unauthorized.statusCode, unauthorized.error], ['UNAUTHORIZED', 401, 'Who are you?'])
  for (const topic of ['rooms', 'rooms/1/2', 'nope', 'rooms/', '__all__', 'todos']) {
    const unknown = await subscribe(client, topic, 'x-' + topic)
    assert.deepEqual([unknown.code, unknown.statusCode, unknown.error], ['TOPIC_NOT_FOUND', 404, `Topic "${topic}" not found`], topic)
  }
  await app.drizzle.publish(['rooms/42', 'rooms/private-1', 'rooms/vip', 'nope'], 'x')
  await client.waitFor(f => f.topic === 'rooms/42')
  await client.quiet(50)
  assert.deepEqual(client.publications().map(f => f.topic), ['rooms/42'], 'a client never receives a topic it was not let into')
})

test('$topic requests are validated like any action', async t => {
  const app = await build(t, {}, declare)
  const client = await inject(t, app)
  for (const data of [undefined, {}, { topic: '' }, { topic: 5 }, { topic: 'x'.repeat(300) }, ['rooms/1']]) {
    const frame = await client.request('$topic', 'subscribe', data)
    assert.equal(frame.code, 'VALIDATION_ERROR', JSON.stringify(data))
    assert.equal(frame.details[0].path, '/data/topic')
  }
  assert.equal((await client.request('$topic', 'publish', { topic: 'news' })).code, 'ACTION_NOT_FOUND')
  assert.equal((await client.request('$topic', 'constructor', { topic: 'news' })).code, 'ACTION_NOT_FOUND')
})

test('unsubscribe stops delivery, through $topic and through a handler', async t => {
  const app = await build(t, {}, declare)
  const client = await inject(t, app)
  await subscribe(client, 'rooms/1')
  await client.request('todos', 'watch')
  assert.deepEqual((await unsubscribe(client, 'rooms/1')).data, { topic: 'rooms/1', subscribed: false })
  assert.deepEqual((await client.request('todos', 'unwatch')).data, { was: true })
  assert.deepEqual((await client.request('todos', 'unwatch')).data, { was: false })
  await app.drizzle.publish(['rooms/1', 'todos'], 'late')
  assert.equal(await client.quiet(80), 0)
  assert.equal(app.drizzle.subscriberCount('rooms/1'), 0)
  assert.equal(app.drizzle.subscriberCount('todos'), 0)
})

test('a client may unsubscribe itself from an undeclared topic a handler subscribed it to, not from others', async t => {
  const app = await build(t, {}, declare)
  const client = await inject(t, app)
  await client.request('todos', 'watch')
  assert.deepEqual((await unsubscribe(client, 'todos')).data, { topic: 'todos', subscribed: false })
  assert.equal((await unsubscribe(client, 'todos', 'again')).code, 'TOPIC_NOT_FOUND')
  assert.equal((await unsubscribe(client, '__all__')).code, 'TOPIC_NOT_FOUND')
})

test('a publication to two topics reaches the subscribers of each, one frame per topic', async t => {
  const app = await build(t, {}, declare)
  const onlyA = await inject(t, app)
  const onlyB = await inject(t, app)
  const both = await inject(t, app)
  await subscribe(onlyA, 'rooms/a')
  await subscribe(onlyB, 'rooms/b')
  await subscribe(both, 'rooms/a')
  await subscribe(both, 'rooms/b')
  await app.drizzle.publish(['rooms/a', 'rooms/b'], { n: 1 }, { event: 'tick' })
  await both.waitFor(() => both.publications().length === 2)
  await onlyA.waitFor(f => f.topic === 'rooms/a')
  await onlyB.waitFor(f => f.topic === 'rooms/b')
  await Promise.all([onlyA, onlyB, both].map(c => c.quiet(50)))
  assert.deepEqual(onlyA.publications().map(f => f.topic), ['rooms/a'])
  assert.deepEqual(onlyB.publications().map(f => f.topic), ['rooms/b'])
  assert.deepEqual(both.publications().map(f => [f.topic, f.data.n, f.event]).sort(), [['rooms/a', 1, 'tick'], ['rooms/b', 1, 'tick']])
})

test('subscribing twice delivers once', async t => {
  const app = await build(t, {}, declare)
  const client = await inject(t, app)
  await subscribe(client, 'news', 1)
  await subscribe(client, 'news', 2)
  await client.request('todos', 'watch')
  await client.request('todos', 'watch')
  await app.drizzle.publish(['news', 'todos'], 1)
  await client.quiet(60)
  assert.deepEqual(client.publications().map(f => f.topic), ['news', 'todos'])
})

test('hundreds of sockets that subscribed and closed leave delivery to the others intact, and no trace', async t => {
  const app = await build(t, {}, declare)
  const survivor = await inject(t, app)
  await subscribe(survivor, 'news')
  await survivor.request('todos', 'watch')
  const gone: TestClient[] = []
  for (let i = 0; i < 300; i++) {
    const c = await inject(t, app)
    await subscribe(c, 'news', 'n' + i)
    await subscribe(c, `rooms/${i}`, 'r' + i)
    await c.request('todos', 'watch')
    gone.push(c)
  }
  assert.equal(app.drizzle.subscriberCount('news'), 301)
  for (const c of gone) c.terminate()
  await Promise.all(gone.map(c => c.closed))
  const deadline = Date.now() + 2000
  while (app.drizzle.connections.size > 1 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 10))
  assert.equal(app.drizzle.connections.size, 1)
  assert.equal(app.drizzle.subscriberCount('news'), 1)
  assert.equal(app.drizzle.subscriberCount('todos'), 1)
  assert.equal(app.drizzle.subscriberCount('__all__'), 1)
  for (let i = 0; i < 300; i++) assert.equal(app.drizzle.subscriberCount(`rooms/${i}`), 0)
  await app.drizzle.publish(['news', 'todos'], 'still here')
  await survivor.waitFor(() => survivor.publications().length === 2)
  for (const c of gone) assert.equal(c.publications().length, 0)
})

test('lifecycle hooks: onConnect, onSubscribe, onUnsubscribe, onDisconnect (presence tracking)', async t => {
  const events: string[] = []
  const online = new Set<string>()
  const app = await build(t, {}, app => {
    declare(app)
    app.drizzle.addHook('onConnect', async (conn) => { online.add(conn.id); events.push('connect') })
    app.drizzle.addHook('onSubscribe', (_conn, topic, done) => { events.push('subscribe:' + topic); done() })
    app.drizzle.addHook('onUnsubscribe', async (_conn, topic) => { events.push('unsubscribe:' + topic) })
    app.drizzle.addHook('onDisconnect', async (conn) => { online.delete(conn.id); events.push('disconnect') })
  })
  const client = await inject(t, app)
  await client.request('todos', 'watch')
  await subscribe(client, 'news')
  await unsubscribe(client, 'news')
  assert.equal(online.size, 1)
  client.terminate()
  await client.closed
  const deadline = Date.now() + 2000
  while (online.size > 0 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 10))
  assert.equal(online.size, 0)
  assert.deepEqual(events, ['connect', 'subscribe:todos', 'subscribe:news', 'unsubscribe:news', 'unsubscribe:__all__', 'unsubscribe:todos', 'disconnect'])
})

test('topic declarations follow Fastify scopes: the declaring scope\'s hooks guard their subscriptions', async t => {
  const calls: string[] = []
  const app = await build(t, {}, async app => {
    await app.register(async (a: FastifyInstance) => {
      a.drizzle.addHook('preHandler', async (message) => { calls.push('A:' + (message.data as { topic: string }).topic) })
      a.drizzle.topic('a/:id')
    })
    await app.register(async (b: FastifyInstance) => {
      b.drizzle.addHook('preHandler', async (_m, ctx) => {
        calls.push('B')
        if (ctx.request.headers['x-b'] === undefined) throw new Unauthorized()
      })
      b.drizzle.topic('b/:id')
    })
  })
  const client = await inject(t, app)
  assert.equal((await subscribe(client, 'a/1')).data.subscribed, true)
  assert.equal((await subscribe(client, 'b/1')).code, 'UNAUTHORIZED')
  assert.deepEqual(calls, ['A:a/1', 'B'])
})

test('bad topic declarations and publications fail with coded errors', async t => {
  const app = await build(t, {}, declare)
  assert.throws(() => app.drizzle.topic('news'), { code: 'FST_DRIZZLE_DUPLICATE_TOPIC' })
  assert.throws(() => app.drizzle.topic(''), { code: 'FST_DRIZZLE_INVALID_TOPIC' })
  assert.throws(() => app.drizzle.topic('a//b'), { code: 'FST_DRIZZLE_INVALID_TOPIC' })
  assert.throws(() => app.drizzle.topic('a/:'), { code: 'FST_DRIZZLE_INVALID_TOPIC' })
  assert.throws(() => app.drizzle.topic('a/:x/:x'), { code: 'FST_DRIZZLE_INVALID_TOPIC' })
  assert.throws(() => app.drizzle.topic('x', { authorize: 'yes' } as any), { code: 'FST_DRIZZLE_INVALID_TOPIC', message: /authorize.*received a string/ })
  await assert.rejects(app.drizzle.publish('', 1), { code: 'FST_DRIZZLE_INVALID_TOPIC' })
  await assert.rejects(app.drizzle.publish([], 1), { code: 'FST_DRIZZLE_INVALID_TOPIC' })
  await assert.rejects(app.drizzle.publish(5 as any, 1), { code: 'FST_DRIZZLE_INVALID_TOPIC' })
  await assert.rejects(app.drizzle.publish('x', 1, { event: 5 as any }), { code: 'FST_DRIZZLE_INVALID_TOPIC' })
})

test('a publication is serialized once, whatever the number of subscribers', async t => {
  const app = await build(t, {}, declare)
  const clients = await Promise.all(Array.from({ length: 20 }, () => inject(t, app)))
  for (const c of clients) await subscribe(c, 'news')
  let serialized = 0
  const payload = { toJSON () { serialized++; return { big: 'x' } } }
  await app.drizzle.publish('news', payload)
  for (const c of clients) await c.waitFor(f => f.topic === 'news')
  assert.equal(serialized, 1)
})

test('__all__ stays subscribed even where a one-segment :param pattern matches it', async (t) => {
  const app = await build(t, {}, a => { a.drizzle.topic(':room') })
  const client = await inject(t, app)
  for (const action of ['unsubscribe', 'subscribe']) {
    const frame = await client.request('$topic', action, { topic: '__all__' })
    assert.equal(frame.code, 'TOPIC_NOT_FOUND', action)
  }
  assert.equal(app.drizzle.subscriberCount('__all__'), 1)
  assert.deepEqual((await client.request('$topic', 'subscribe', { topic: 'lobby' })).data, { topic: 'lobby', subscribed: true })
})

test('a broker publication nested too deep to serialize is dropped with one warning, not an error', async (t) => {
  const logger = recordingLogger()
  const app = await build(t, {}, undefined, { loggerInstance: logger })
  const client = await inject(t, app)
  let deep: unknown = 1
  for (let i = 0; i < 100_000; i++) deep = [deep]
  const rt = (app.drizzle as unknown as { rt: { deliver (topic: string, data: unknown, event?: string): void } }).rt
  rt.deliver('__all__', deep)
  rt.deliver('__all__', { after: true })
  const frame = await client.waitFor(f => 'topic' in f)
  assert.deepEqual(frame, { topic: '__all__', data: { after: true } })
  const dropped = logger.entries.filter(entry => entry.msg === 'dropped a publication from the broker that cannot be serialized')
  assert.equal(dropped.length, 1)
  assert.equal(dropped[0]?.level, 'warn')
  assert.deepEqual(logger.entries.filter(entry => entry.level === 'error' || entry.level === 'fatal'), [])
})

test('a topic needing a feature its broker lacks is refused when the server becomes ready, naming the feature', async t => {
  const { default: Fastify } = await import('fastify')
  const { default: drizzle } = await import('../lib/index.js')
  // A broker that carries live publications only: no `features`.
  const liveOnly = {
    name: 'live-only',
    async attach () {},
    async subscribe () {},
    async unsubscribe () {},
    async publish () {},
    async close () {}
  }
  for (const [options, feature] of [[{ history: { size: 10 } }, 'history'], [{ presence: true }, 'presence']] as const) {
    const app = Fastify()
    t.after(() => app.close())
    await app.register(drizzle, { broker: liveOnly })
    app.drizzle.topic('rooms/:id', options as never)
    await assert.rejects(async () => { await app.ready() }, (err: Error & { code?: string }) => {
      assert.equal(err.code, 'FST_DRIZZLE_BROKER_UNSUPPORTED')
      assert.equal(err.message, `Broker "live-only" does not support ${feature}, which topic "rooms/:id" declares`)
      return true
    })
  }
})
