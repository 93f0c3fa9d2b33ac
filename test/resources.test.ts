import { test } from 'node:test'
import assert from 'node:assert/strict'
import Fastify from 'fastify'
import Type from 'typebox'
import drizzle, { action } from '../lib/index.js'
import { build, inject } from './helpers/client.js'

async function registered (t: import('node:test').TestContext) {
  const app = Fastify()
  await app.register(drizzle)
  t.after(() => app.close())
  return app
}

test('registration errors are coded and say what was received', async t => {
  const app = await registered(t)
  const cases: Array<[() => unknown, string, RegExp]> = [
    [() => app.drizzle.resource('', { a: () => 1 }), 'FST_DRIZZLE_INVALID_RESOURCE_NAME', /received a string \(""\)/],
    [() => app.drizzle.resource(42 as any, { a: () => 1 }), 'FST_DRIZZLE_INVALID_RESOURCE_NAME', /received number \(42\)/],
    [() => app.drizzle.resource('$topic', { a: () => 1 }), 'FST_DRIZZLE_INVALID_RESOURCE_NAME', /reserved/],
    [() => app.drizzle.resource('x', null as any), 'FST_DRIZZLE_INVALID_ACTION', /received null/],
    [() => app.drizzle.resource('x', [] as any), 'FST_DRIZZLE_INVALID_ACTION', /received an array/],
    [() => app.drizzle.resource('x', {}), 'FST_DRIZZLE_INVALID_ACTION', /at least one action/],
    [() => app.drizzle.resource('x', { get: 'nope' } as any), 'FST_DRIZZLE_INVALID_ACTION', /"get".*received a string \("nope"\)/],
    [() => app.drizzle.resource('x', { get: { handler: 1 } } as any), 'FST_DRIZZLE_INVALID_ACTION', /"get".*keys: handler/],
    [() => app.drizzle.resource('x', { get: { handler () {}, hanlder: 1 } } as any), 'FST_DRIZZLE_INVALID_ACTION', /unknown property "hanlder"/],
    [() => app.drizzle.resource('x', { get: { handler () {}, timeout: -1 } } as any), 'FST_DRIZZLE_INVALID_ACTION', /timeout.*number \(-1\)/],
    [() => app.drizzle.resource('x', { get: { handler () {}, schema: 'x' } } as any), 'FST_DRIZZLE_INVALID_SCHEMA', /received a string/],
    [() => app.drizzle.resource('x', { get: { handler () {}, schema: { body: {} } } } as any), 'FST_DRIZZLE_INVALID_SCHEMA', /unknown schema property "body"/],
    [() => app.drizzle.resource('x', { get: { handler () {}, schema: { data: 5 } } } as any), 'FST_DRIZZLE_INVALID_SCHEMA', /data schema.*number \(5\)/],
    [() => app.drizzle.resource('x', { get: { handler () {}, schema: { data: { type: 'strin' } } } } as any), 'FST_DRIZZLE_INVALID_SCHEMA', /"strin"/],
    [() => app.drizzle.resource('x', { get: { handler () {}, schema: { reply: { type: 'object', properties: { a: { type: 'nope' } } } } } } as any), 'FST_DRIZZLE_INVALID_SCHEMA', /reply schema/],
    [() => app.drizzle.resource('x', { get: { handler () {}, preHandler: 'x' } } as any), 'FST_DRIZZLE_INVALID_HOOK', /preHandler hook must be a function, received a string/],
    [() => app.drizzle.addHook('onFoo' as any, () => {}), 'FST_DRIZZLE_INVALID_HOOK', /unknown hook name a string \("onFoo"\)/],
    [() => app.drizzle.addHook('preHandler', 5 as any), 'FST_DRIZZLE_INVALID_HOOK', /number \(5\)/],
    [() => app.drizzle.addHook('preHandler', async (_m: unknown, _c: unknown, _done: unknown) => {}), 'FST_DRIZZLE_INVALID_HOOK', /async and takes a done callback/]
  ]
  for (const [fn, code, message] of cases) {
    assert.throws(fn, (err: Error & { code: string }) => {
      assert.equal(err.code, code, err.message)
      assert.match(err.message, message)
      return true
    })
  }
})

test('a resource name may be declared once, across scopes too', async t => {
  const app = Fastify()
  await app.register(drizzle)
  app.drizzle.resource('todos', { get: () => [] })
  assert.throws(() => app.drizzle.resource('todos', { other: () => [] }), { code: 'FST_DRIZZLE_DUPLICATE_RESOURCE', message: 'Resource "todos" is already declared' })
  await app.register(async child => {
    assert.throws(() => child.drizzle.resource('todos', { x: () => 1 }), { code: 'FST_DRIZZLE_DUPLICATE_RESOURCE' })
  })
  await app.ready()
  t.after(() => app.close())
})

test('inherited members of the actions object are never actions', async t => {
  class Actions { get () { return 'own' } }
  const proto = { inherited () { return 'nope' } }
  const actions = Object.assign(Object.create(proto), { own: () => 'yes' })
  const app = await build(t, {}, app => {
    app.drizzle.resource('obj', actions)
    // Methods of a class instance live on its prototype: they are not own properties, so not actions.
    assert.throws(() => app.drizzle.resource('cls', new Actions() as any), { code: 'FST_DRIZZLE_INVALID_ACTION' })
  })
  const client = await inject(t, app)
  assert.equal((await client.request('obj', 'own')).data, 'yes')
  assert.equal((await client.request('obj', 'inherited')).code, 'ACTION_NOT_FOUND')
})

test('data is checked by the action schema, without coercion, naming the path', async t => {
  const app = await build(t, {}, app => {
    app.drizzle.resource('todos', {
      create: action({
        schema: { data: Type.Object({ title: Type.String({ minLength: 1 }), tags: Type.Optional(Type.Array(Type.String())) }) },
        handler: async (message) => ({ title: message.data.title })
      }),
      bulk: {
        schema: { data: Type.Array(Type.Object({ id: Type.Integer() }), { maxItems: 3 }) },
        handler: async (message) => (message.data as unknown[]).length
      }
    })
  })
  const client = await inject(t, app)
  assert.deepEqual((await client.request('todos', 'create', { title: 'a' })).data, { title: 'a' })

  const wrongType = await client.request('todos', 'create', { title: 5 })
  assert.equal(wrongType.code, 'VALIDATION_ERROR')
  assert.equal(wrongType.statusCode, 400)
  assert.match(wrongType.error, /"data\/title"/)
  assert.deepEqual(wrongType.details[0].path, '/data/title')

  const missing = await client.request('todos', 'create', {})
  assert.equal(missing.code, 'VALIDATION_ERROR')
  assert.match(JSON.stringify(missing.details), /title/)

  const nested = await client.request('todos', 'create', { title: 'a', tags: ['x', 2] })
  assert.equal(nested.details[0].path, '/data/tags/1')

  const absent = await client.request('todos', 'create')
  assert.equal(absent.code, 'VALIDATION_ERROR')
  assert.equal(absent.details[0].path, '/data')

  // No coercion: "1" is not an integer.
  assert.equal((await client.request('todos', 'bulk', [{ id: '1' }])).code, 'VALIDATION_ERROR')
  assert.equal((await client.request('todos', 'bulk', [{ id: 1 }, { id: 2 }])).data, 2)
  assert.equal((await client.request('todos', 'bulk', [{ id: 1 }, { id: 2 }, { id: 3 }, { id: 4 }])).details[0].path, '/data')
})

test('a reply schema serializes like a Fastify response schema: unknown properties are dropped', async t => {
  const app = await build(t, {}, app => {
    app.drizzle.resource('users', {
      me: {
        schema: { reply: Type.Object({ id: Type.Integer(), name: Type.String() }) },
        handler: async () => ({ id: 1, name: 'ada', passwordHash: 'secret' })
      },
      // Types refuse this (the reply schema asks for an object); at run time it still replies null.
      none: { schema: { reply: Type.Object({ id: Type.Integer() }) }, handler: async () => undefined as any }
    })
  })
  const client = await inject(t, app)
  await client.request('users', 'me', undefined, 'me')
  assert.ok(client.raw.includes('{"data":{"id":1,"name":"ada"},"request_id":"me"}'), client.raw.join('\n'))
  assert.deepEqual(await client.request('users', 'none', undefined, 'none'), { data: null, request_id: 'none' })
})

test('schemas compile once, at registration, never per message', async t => {
  let reads = 0
  const schema = Type.Object({ a: Type.Integer() })
  const counted = new Proxy(schema, { get (target, key, receiver) { reads++; return Reflect.get(target, key, receiver) } })
  const app = await build(t, {}, app => {
    app.drizzle.resource('s', { check: { schema: { data: counted }, handler: async () => 1 } })
  })
  const client = await inject(t, app)
  const afterCompile = reads
  for (let i = 0; i < 50; i++) await client.request('s', 'check', { a: i })
  assert.equal(reads, afterCompile, 'the schema object was read while serving messages')
})

test('resources can be declared after ready, and serve at once', async t => {
  const app = await build(t)
  app.drizzle.resource('late', { get: () => 'late' })
  const client = await inject(t, app)
  assert.equal((await client.request('late', 'get')).data, 'late')
})
