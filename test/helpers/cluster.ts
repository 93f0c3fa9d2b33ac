import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import Fastify, { type FastifyInstance } from 'fastify'
import drizzle, { type Broker } from '../../lib/index.js'
import { connect, listen, type TestClient } from './client.js'

// The black-box suite every real broker must pass: two Fastify instances on one broker server, with
// clients over real sockets. Each broker's test file runs it and adds what is specific to that broker.

export interface Backend {
  /** false, or why the server is missing (then the suite is skipped loudly; in CI it fails instead). */
  skip: string | false
  /** A fresh namespace (a Redis prefix, a RabbitMQ exchange) so tests never see each other. */
  namespace (t: TestContext): string
  broker (namespace: string): Broker
  /** Publishes a raw body as a process in another language would (no origin). */
  publishRaw (namespace: string, topic: string, body: string | Buffer): Promise<void>
}

export interface Instance { app: FastifyInstance, url: string }

export async function instance (t: TestContext, broker: Broker): Promise<Instance> {
  const app = Fastify()
  await app.register(drizzle, { broker, heartbeatInterval: 0, closeGracePeriod: 100 })
  app.drizzle.resource('todos', {
    watch: async (_m, ctx) => { await ctx.subscribe('todos'); return true },
    create: async (message, ctx) => { await ctx.publish('todos', message.data, { event: 'created' }); return message.data }
  })
  app.drizzle.topic('rooms/:id')
  t.after(() => app.close())
  return { app, url: await listen(app) }
}

/** Waits until a raw publication to `__all__` reaches every client, then forgets what they got. */
export async function untilSubscribed (backend: Backend, namespace: string, clients: TestClient[], topic = '__all__'): Promise<void> {
  const deadline = Date.now() + 10_000
  for (let n = 0; ; n++) {
    const probe = `probe-${n}`
    await backend.publishRaw(namespace, topic, JSON.stringify({ data: probe }))
    const got = await Promise.all(clients.map(c => c.waitFor(f => f.data === probe, 300).then(() => true, () => false)))
    if (got.every(Boolean)) break
    if (Date.now() > deadline) assert.fail('the instances did not subscribe the broker within 10 s')
  }
  await new Promise(resolve => setTimeout(resolve, 100))
  for (const c of clients) c.frames.length = 0
}

export async function cluster (t: TestContext, backend: Backend, namespace = backend.namespace(t)) {
  const a = await instance(t, backend.broker(namespace))
  const b = await instance(t, backend.broker(namespace))
  const clients = { a1: await connect(t, a.url), a2: await connect(t, a.url), b1: await connect(t, b.url), b2: await connect(t, b.url) }
  for (const c of [clients.a1, clients.b1]) await c.request('todos', 'watch')
  for (const c of [clients.a2, clients.b2]) await c.request('$topic', 'subscribe', { topic: 'rooms/1' })
  await untilSubscribed(backend, namespace, [clients.a1, clients.b1], 'todos')
  await untilSubscribed(backend, namespace, [clients.a2, clients.b2], 'rooms/1')
  await untilSubscribed(backend, namespace, Object.values(clients))
  return { namespace, a, b, clients }
}

/** Frames in a canonical order, to compare what arrived regardless of the order it arrived in. */
function byContent<T> (frames: T[]): T[] {
  return frames.map(f => [JSON.stringify(f), f] as const).sort(([x], [y]) => x < y ? -1 : x > y ? 1 : 0).map(([, f]) => f)
}

/** A marker on `__all__` published after other messages arrives after them: then the rest is in. */
export async function settle (backend: Backend, namespace: string, clients: TestClient[], marker = 'marker'): Promise<void> {
  await backend.publishRaw(namespace, '__all__', JSON.stringify({ data: marker }))
  for (const c of clients) await c.waitFor(f => f.topic === '__all__' && f.data === marker, 5000)
}

export function clusterSuite (name: string, backend: Backend): void {
  const skip = backend.skip
  const timeout = 30_000

  test(`${name}: a publication from either instance reaches the subscribers of both exactly once, event included`, { skip, timeout }, async t => {
    const { namespace, a, b, clients } = await cluster(t, backend)
    // Two publications from each instance, interleaved in time.
    await a.app.drizzle.publish('todos', { from: 'a', n: 1 }, { event: 'created' })
    await clients.b2.request('todos', 'create', { from: 'b', n: 1 })
    await a.app.drizzle.publish('todos', { from: 'a', n: 2 }, { event: 'created' })
    await clients.b2.request('todos', 'create', { from: 'b', n: 2 })
    await b.app.drizzle.publish('rooms/1', { from: 'b' })
    await a.app.drizzle.publish('__all__', 'from-a')
    const all = Object.values(clients)
    // Publications of one instance are ordered; wait for the last one on every client.
    for (const c of all) await c.waitFor(f => f.data === 'from-a')
    await settle(backend, namespace, all)
    const sent = [1, 2].flatMap(n => ['a', 'b'].map(from => ({ topic: 'todos', data: { from, n }, event: 'created' })))
    for (const c of [clients.a1, clients.b1]) {
      const got = c.publications('todos')
      assert.deepEqual(byContent(got), byContent(sent), 'every publication exactly once, event included')
      // Order is promised per publishing instance only: each instance delivers its own publications
      // to its sockets at once and the other's when the broker brings them.
      for (const from of ['a', 'b']) {
        assert.deepEqual(got.filter(f => f.data.from === from).map(f => f.data.n), [1, 2], `${from}'s publications in the order ${from} made them`)
      }
    }
    for (const c of [clients.a2, clients.b2]) {
      assert.deepEqual(c.publications('rooms/1'), [{ topic: 'rooms/1', data: { from: 'b' } }])
      assert.equal(c.publications('todos').length, 0, 'not subscribed to todos')
    }
    // The marker is published after every client received from-a: that order is causal, so promised.
    for (const c of all) assert.deepEqual(c.publications('__all__').map(f => f.data), ['from-a', 'marker'], '__all__ spans instances, once each')
  })

  test(`${name}: a process in another language publishes to every instance`, { skip, timeout }, async t => {
    const { namespace, clients } = await cluster(t, backend)
    await backend.publishRaw(namespace, 'todos', '{"data": {"id": 1, "py": true}, "event": "created"}')
    await backend.publishRaw(namespace, 'rooms/1', '{"data": [1, 2]}')
    await settle(backend, namespace, Object.values(clients))
    for (const c of [clients.a1, clients.b1]) assert.deepEqual(c.publications('todos'), [{ topic: 'todos', data: { id: 1, py: true }, event: 'created' }])
    for (const c of [clients.a2, clients.b2]) assert.deepEqual(c.publications('rooms/1'), [{ topic: 'rooms/1', data: [1, 2] }])
  })

  test(`${name}: garbage published to the broker harms nobody`, { skip, timeout }, async t => {
    const { namespace, a, clients } = await cluster(t, backend)
    const garbage: Array<string | Buffer> = [
      'not json', '', '[]', 'null', '"text"', '{"nodata":1}', '{"data":1,"event":5}', '{"data":1,"origin":7}',
      'x'.repeat(2 * 1024 * 1024), Buffer.from([0xff, 0xfe, 0xfd]), '{'.repeat(10_000),
      '{"__proto__":{"polluted":1},"data":"stripped"}'
    ]
    for (const g of garbage) await backend.publishRaw(namespace, 'todos', g)
    await settle(backend, namespace, Object.values(clients))
    for (const c of [clients.a1, clients.b1]) {
      assert.deepEqual(c.publications('todos'), [{ topic: 'todos', data: 'stripped' }], 'only the valid message, __proto__ stripped')
    }
    assert.equal(({} as Record<string, unknown>).polluted, undefined)
    assert.equal((await clients.a1.request('todos', 'create', { still: 'serving' })).data.still, 'serving')
    await a.app.drizzle.publish('todos', 'after garbage')
    await clients.b1.waitFor(f => f.data === 'after garbage')
  })

  test(`${name}: no message of one app reaches another app on another namespace`, { skip, timeout }, async t => {
    const one = await cluster(t, backend)
    const other = await cluster(t, backend)
    await one.a.app.drizzle.publish(['todos', '__all__'], 'for app one')
    await one.clients.b1.waitFor(f => f.topic === '__all__' && f.data === 'for app one')
    await settle(backend, other.namespace, Object.values(other.clients))
    for (const c of Object.values(other.clients)) assert.equal(c.frames.filter(f => f.data === 'for app one').length, 0)
  })
}
