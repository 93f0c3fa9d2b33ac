import { test } from 'node:test'
import assert from 'node:assert/strict'
import createError from '@fastify/error'
import swagger from '@fastify/swagger'
import Fastify from 'fastify'
import Type from 'typebox'
import drizzle from '../lib/index.js'
import { build, inject } from './helpers/client.js'

const Conflict = createError('TODO_EXISTS', 'Todo "%s" already exists', 409)
const Unauthorized = createError('UNAUTHORIZED', 'Log in first', 401)

function post (app: Awaited<ReturnType<typeof build>>, url: string, payload?: unknown, headers: Record<string, string> = {}) {
  return app.inject({ method: 'POST', url, headers, ...(payload === undefined ? {} : { payload: payload as Record<string, unknown> }) })
}

test('POST /ws/<resource>/<action> runs the action: the body is data, the reply is JSON', async t => {
  const app = await build(t, { http: true }, app => {
    app.drizzle.resource('test', {
      get: async (message) => ({ got: message.data, resource: message.resource, action: message.action, id: message.request_id }),
      sum: {
        schema: { data: Type.Array(Type.Integer()) },
        handler: async (message) => (message.data as number[]).reduce((a, b) => a + b, 0)
      },
      nothing: async () => undefined
    })
  })
  const res = await post(app, '/ws/test/get', {})
  assert.equal(res.statusCode, 200)
  assert.match(res.headers['content-type'] as string, /^application\/json/)
  const body = res.json()
  assert.deepEqual({ ...body, id: undefined }, { got: {}, resource: 'test', action: 'get', id: undefined })
  assert.match(body.id, /^req-/, 'request_id is the Fastify request id')

  const sum = await post(app, '/ws/test/sum', [1, 2, 3])
  assert.equal(sum.statusCode, 200)
  assert.equal(sum.body, '6')

  assert.equal((await post(app, '/ws/test/nothing')).body, 'null', 'a handler returning nothing answers null')
  // An empty body is "no data", even announced as JSON (Fastify's parser would refuse it).
  const empty = await app.inject({ method: 'POST', url: '/ws/test/get', headers: { 'content-type': 'application/json' }, payload: '' })
  assert.equal(empty.statusCode, 200)
  assert.equal(empty.json().got, undefined)
  // The same action still works over WebSocket.
  const client = await inject(t, app)
  assert.equal((await client.request('test', 'sum', [4, 5])).data, 9)
})

test('errors use Fastify\'s format with our codes and statuses; 5xx hides internals and is logged', async t => {
  const logs: Array<Record<string, any>> = []
  const stream = { write (line: string) { logs.push(JSON.parse(line)) } }
  const app = await build(t, { http: true }, app => {
    app.drizzle.resource('todos', {
      create: {
        schema: { data: Type.Object({ title: Type.String({ minLength: 1 }), done: Type.Optional(Type.Boolean()) }) },
        handler: async (message) => { throw new Conflict((message.data as { title: string }).title) }
      },
      plain: async () => { throw Object.assign(new Error('Taken'), { statusCode: 409 }) },
      crash: async () => { throw new Error('secret database password') }
    })
  }, { logger: { level: 'error', stream } })

  const conflict = await post(app, '/ws/todos/create', { title: 'milk' })
  assert.equal(conflict.statusCode, 409)
  assert.deepEqual(conflict.json(), { statusCode: 409, code: 'TODO_EXISTS', error: 'Conflict', message: 'Todo "milk" already exists' })
  assert.deepEqual(conflict.json().code, 'TODO_EXISTS')
  assert.deepEqual((await post(app, '/ws/todos/plain', {})).json(), { statusCode: 409, code: 'CONFLICT', error: 'Conflict', message: 'Taken' })

  // No coercion and no stripping: the same TypeBox check as over WebSocket, details rooted at /data.
  const invalid = await post(app, '/ws/todos/create', { title: 'x', done: 'yes' })
  assert.equal(invalid.statusCode, 400)
  const body = invalid.json()
  assert.equal(body.code, 'VALIDATION_ERROR')
  assert.equal(body.error, 'Bad Request')
  assert.ok(body.details.some((d: { path: string }) => d.path === '/data/done'), JSON.stringify(body))
  const missing = await post(app, '/ws/todos/create')
  assert.equal(missing.statusCode, 400)
  assert.equal(missing.json().code, 'VALIDATION_ERROR')
  const notObject = await app.inject({ method: 'POST', url: '/ws/todos/create', headers: { 'content-type': 'text/plain' }, payload: 'hello' })
  assert.deepEqual([notObject.statusCode, notObject.json().code, notObject.json().details[0].path], [400, 'VALIDATION_ERROR', '/data'])

  const crash = await post(app, '/ws/todos/crash', {})
  assert.equal(crash.statusCode, 500)
  assert.deepEqual(crash.json(), { statusCode: 500, code: 'INTERNAL_ERROR', error: 'Internal Server Error', message: 'Unknown error' })
  assert.doesNotMatch(crash.body, /secret/)
  assert.ok(logs.some(l => l.level === 50 && l.err?.message === 'secret database password' && l.resource === 'todos' && l.action === 'crash'))
})

test('scope encapsulation: the declaring scope\'s Fastify hooks run, a sibling\'s do not, then drizzle hooks', async t => {
  const calls: string[] = []
  const app = await build(t, { http: true }, async app => {
    app.drizzle.addHook('preHandler', async (_m, ctx) => { calls.push('drizzle:root:preHandler:' + ctx.request.headers['x-user']) })
    await app.register(async sibling => {
      sibling.addHook('onRequest', async () => { calls.push('sibling:onRequest') })
      sibling.drizzle.resource('other', { ping: async () => 'pong' })
    })
    await app.register(async scope => {
      scope.addHook('onRequest', async (request) => {
        calls.push('scope:onRequest')
        if (request.headers['x-user'] === undefined) throw new Unauthorized()
      })
      scope.drizzle.addHook('preHandler', async () => { calls.push('drizzle:scope:preHandler') })
      scope.drizzle.resource('secure', {
        get: {
          preHandler: async () => { calls.push('drizzle:own:preHandler') },
          handler: async (_m, ctx) => { calls.push('handler'); return { user: ctx.request.headers['x-user'] } }
        }
      })
    })
  })
  const ok = await post(app, '/ws/secure/get', {}, { 'x-user': 'ann' })
  assert.deepEqual(ok.json(), { user: 'ann' })
  assert.deepEqual(calls, ['scope:onRequest', 'drizzle:root:preHandler:ann', 'drizzle:scope:preHandler', 'drizzle:own:preHandler', 'handler'])

  calls.length = 0
  const refused = await post(app, '/ws/secure/get', {})
  assert.equal(refused.statusCode, 401, refused.body)
  assert.equal(refused.json().code, 'UNAUTHORIZED')
  assert.deepEqual(calls, ['scope:onRequest'], 'a Fastify hook refusing stops the request before any drizzle hook')

  calls.length = 0
  assert.equal((await post(app, '/ws/other/ping', {}, { 'x-user': 'bob' })).body, '"pong"')
  assert.deepEqual(calls, ['sibling:onRequest', 'drizzle:root:preHandler:bob'], 'the secure scope\'s onRequest does not run for a sibling')
})

test('onSend may replace the data, the reply schema is honoured, onError and onResponse run', async t => {
  const seen: string[] = []
  const app = await build(t, { http: true }, app => {
    app.drizzle.addHook('onError', async (_m, ctx, err) => { seen.push(`onError:${ctx.statusCode}:${(err as Error).message}`) })
    app.drizzle.addHook('onResponse', async (m, ctx) => { seen.push(`onResponse:${m.action}:${ctx.statusCode}`) })
    app.drizzle.resource('r', {
      wrapped: { handler: async () => ({ v: 1 }), onSend: async (_m, _c, payload) => ({ wrapped: payload }) },
      shaped: {
        schema: { reply: Type.Object({ id: Type.Integer() }) },
        handler: async () => ({ id: 7, secret: 'not in the reply schema' })
      },
      fails: async () => { throw Object.assign(new Error('Gone'), { statusCode: 410 }) }
    })
  })
  assert.deepEqual((await post(app, '/ws/r/wrapped', {})).json(), { wrapped: { v: 1 } })
  assert.equal((await post(app, '/ws/r/shaped', {})).body, '{"id":7}')
  assert.equal((await post(app, '/ws/r/fails', {})).statusCode, 410)
  assert.deepEqual(seen, ['onResponse:wrapped:200', 'onResponse:shaped:200', 'onError:410:Gone', 'onResponse:fails:410'])
})

test('ctx.subscribe is refused over HTTP, ctx.publish works, ctx.connection is a per-request stand-in', async t => {
  const app = await build(t, { http: true }, app => {
    app.drizzle.resource('r', {
      watch: async (_m, ctx) => { await ctx.subscribe('news'); return 'subscribed' },
      leave: async (_m, ctx) => { await ctx.unsubscribe('news'); return 'left' },
      announce: async (message, ctx) => { await ctx.publish('news', message.data); return 'sent' },
      whoami: async (_m, ctx) => {
        ctx.connection.store.n = ((ctx.connection.store.n as number | undefined) ?? 0) + 1
        return { id: ctx.connection.id, n: ctx.connection.store.n, topics: [...ctx.connection.topics], sent: ctx.connection.send('x', 1) }
      }
    })
  })
  const watch = await post(app, '/ws/r/watch', {})
  assert.equal(watch.statusCode, 400)
  assert.deepEqual(watch.json(), { statusCode: 400, code: 'SUBSCRIBE_NOT_SUPPORTED', error: 'Bad Request', message: 'ctx.subscribe is not available over HTTP' })
  assert.equal((await post(app, '/ws/r/leave', {})).json().message, 'ctx.unsubscribe is not available over HTTP')

  const client = await inject(t, app)
  await client.request('r', 'watch')
  assert.equal((await post(app, '/ws/r/announce', { headline: 'hi' })).body, '"sent"')
  assert.deepEqual((await client.waitFor(f => f.topic === 'news')).data, { headline: 'hi' })

  const who = await post(app, '/ws/r/whoami', {})
  assert.deepEqual(who.json(), { id: who.json().id, n: 1, topics: [], sent: false })
  assert.match(who.json().id, /^req-/)
  assert.equal((await post(app, '/ws/r/whoami', {})).json().n, 1, 'the store does not outlive the request')
})

test('options: prefix, $topic and unroutable names stay WebSocket-only, late resources are warned about', async t => {
  const warnings: string[] = []
  const stream = { write (line: string) { const l = JSON.parse(line); if (l.level === 40) warnings.push(l.msg) } }
  const app = await build(t, { http: { prefix: '/api/' } }, app => {
    app.drizzle.topic('news')
    app.drizzle.resource('todos', { get: async () => 'todos', 'bad name': async () => 'ws only' })
  }, { logger: { level: 'warn', stream } })
  assert.equal((await post(app, '/api/todos/get', {})).body, '"todos"')
  assert.equal((await post(app, '/ws/todos/get', {})).statusCode, 404)
  assert.equal((await post(app, '/api/$topic/subscribe', { topic: 'news' })).statusCode, 404)
  assert.ok(warnings.some(w => w.includes('"bad name"')))

  app.drizzle.resource('late', { get: async () => 'late' })
  assert.ok(warnings.some(w => w.includes('"late"') && w.includes('after the server started')))
  assert.equal((await post(app, '/api/late/get', {})).statusCode, 404)
  const client = await inject(t, app)
  assert.equal((await client.request('late', 'get')).data, 'late')
})

test('http and asyncapi options are validated with coded errors', async () => {
  const bad: unknown[] = [{ http: 'yes' }, { http: { prefix: 'api' } }, { http: { prefix: '/a b' } }, { http: { other: 1 } }, { http: null },
    { asyncapi: 1 }, { asyncapi: { serverUrl: 'http://x' } }, { asyncapi: { info: { title: 3 } } }, { asyncapi: { path: 'doc' } }, { asyncapi: { nope: true } }]
  for (const options of bad) {
    const app = Fastify()
    await assert.rejects(async () => { await app.register(drizzle, options as never) }, (err: { code?: string, message: string }) => {
      assert.equal(err.code, 'FST_DRIZZLE_INVALID_OPTION', JSON.stringify(options))
      return true
    })
    await app.close()
  }
})

test('@fastify/swagger registered first documents the POST routes with their body schemas', async t => {
  const app = Fastify()
  t.after(() => app.close())
  await app.register(swagger, { openapi: { info: { title: 'api', version: '1.0.0' } } })
  await app.register(drizzle, { http: true, heartbeatInterval: 0 })
  const Todo = Type.Object({ id: Type.Integer(), title: Type.String() })
  app.drizzle.resource('todos', {
    create: { schema: { data: Type.Object({ title: Type.String() }), reply: Todo }, handler: async (m) => ({ id: 1, title: (m.data as { title: string }).title }) },
    list: async () => []
  })
  await app.ready()
  const spec = app.swagger() as { paths: Record<string, any> }
  const create = spec.paths['/ws/todos/create']?.post
  assert.ok(create, Object.keys(spec.paths).join(', '))
  assert.deepEqual(create.requestBody.content['application/json'].schema, {
    type: 'object', properties: { title: { type: 'string' } }, required: ['title']
  })
  assert.equal(create.responses['200'].content['application/json'].schema.properties.id.type, 'integer')
  assert.deepEqual(create.tags, ['todos'])
  assert.ok(spec.paths['/ws/todos/list']?.post)
  // Fastify got the schema for documentation only: validation is still drizzle's (no coercion).
  const res = await app.inject({ method: 'POST', url: '/ws/todos/create', payload: { title: 5 } })
  assert.equal(res.statusCode, 400)
  assert.equal(res.json().details[0].path, '/data/title')
})

test('over a listening server with fetch', async t => {
  const app = await build(t, { http: true }, app => {
    app.drizzle.resource('test', {
      get: async (message) => ({ data: message.data }),
      count: async (message) => (message.data as unknown[]).length,
      conflict: async () => { throw new Conflict('x') }
    })
  })
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  const call = (path: string, body?: unknown) => fetch(base + path, {
    method: 'POST',
    ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  })
  const get = await call('/ws/test/get', {})
  assert.equal(get.status, 200)
  assert.deepEqual(await get.json(), { data: {} })
  assert.equal(await (await call('/ws/test/count', [1, 2, 3])).json(), 3)
  const conflict = await call('/ws/test/conflict', {})
  assert.equal(conflict.status, 409)
  assert.equal((await conflict.json() as { code: string }).code, 'TODO_EXISTS')
  assert.deepEqual(await (await call('/ws/test/get')).json(), {}, 'no body: no data')
  const emptyJson = await fetch(base + '/ws/test/get', { method: 'POST', headers: { 'content-type': 'application/json' } })
  assert.deepEqual([emptyJson.status, await emptyJson.json()], [200, {}], 'an empty JSON body: no data')
})
