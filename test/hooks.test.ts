import { test } from 'node:test'
import assert from 'node:assert/strict'
import createError from '@fastify/error'
import type { FastifyInstance } from 'fastify'
import { build, inject } from './helpers/client.js'

const Unauthorized = createError('UNAUTHORIZED', 'Log in first', 401)

test('hooks run in Fastify order: scope hooks first, then the action\'s own, around the handler', async t => {
  const calls: string[] = []
  const app = await build(t, {}, app => {
    for (const name of ['onRequest', 'preValidation', 'preHandler', 'onResponse'] as const) {
      app.drizzle.addHook(name, async () => { calls.push('scope:' + name) })
    }
    app.drizzle.addHook('onSend', async (_m, _c, payload) => { calls.push('scope:onSend'); return payload })
    app.drizzle.resource('r', {
      a: {
        onRequest: async () => { calls.push('own:onRequest') },
        preValidation: [async () => { calls.push('own:preValidation1') }, async () => { calls.push('own:preValidation2') }],
        preHandler: async () => { calls.push('own:preHandler') },
        onSend: async () => { calls.push('own:onSend') },
        onResponse: async () => { calls.push('own:onResponse') },
        handler: async () => { calls.push('handler'); return 1 }
      }
    })
  })
  const client = await inject(t, app)
  assert.equal((await client.request('r', 'a')).data, 1)
  await client.quiet(30)
  assert.deepEqual(calls, [
    'scope:onRequest', 'own:onRequest',
    'scope:preValidation', 'own:preValidation1', 'own:preValidation2',
    'scope:preHandler', 'own:preHandler',
    'handler',
    'scope:onSend', 'own:onSend',
    'scope:onResponse', 'own:onResponse'
  ])
})

test('validation runs between preValidation and preHandler', async t => {
  const calls: string[] = []
  const app = await build(t, {}, app => {
    app.drizzle.resource('r', {
      a: {
        schema: { data: { type: 'object', required: ['n'], properties: { n: { type: 'integer' } } } as any },
        preValidation: async (message) => { calls.push('preValidation'); (message.data as Record<string, unknown>).n = 1 },
        preHandler: async () => { calls.push('preHandler') },
        handler: async (message) => message.data
      }
    })
  })
  const client = await inject(t, app)
  // preValidation may normalise data before the schema sees it.
  assert.deepEqual((await client.request('r', 'a', {})).data, { n: 1 })
  assert.deepEqual(calls, ['preValidation', 'preHandler'])
})

test('callback-style and async hooks both work, errors from either refuse the action', async t => {
  const app = await build(t, {}, app => {
    app.drizzle.addHook('preHandler', (message, ctx, done) => {
      if ((message.data as { token?: string } | undefined)?.token === 'cb-bad') return done(new Unauthorized())
      ctx.connection.store.seen = true
      done()
    })
    app.drizzle.addHook('preHandler', async (message) => {
      if ((message.data as { token?: string } | undefined)?.token === 'async-bad') throw new Unauthorized()
    })
    app.drizzle.addHook('onSend', (_m, _c, payload, done) => done(null, { wrapped: payload }))
    app.drizzle.resource('r', { a: async (_m, ctx) => ({ seen: ctx.connection.store.seen }) })
  })
  const client = await inject(t, app)
  assert.deepEqual((await client.request('r', 'a', { token: 'ok' })).data, { wrapped: { seen: true } })
  for (const token of ['cb-bad', 'async-bad']) {
    const refused = await client.request('r', 'a', { token })
    assert.deepEqual({ code: refused.code, statusCode: refused.statusCode, error: refused.error }, { code: 'UNAUTHORIZED', statusCode: 401, error: 'Log in first' })
  }
})

test('onSend may replace the reply data; returning undefined keeps it', async t => {
  const app = await build(t, {}, app => {
    app.drizzle.addHook('onSend', async () => undefined)
    app.drizzle.resource('r', {
      a: { handler: async () => ({ secret: 's', v: 1 }), onSend: async (_m, _c, payload) => ({ v: (payload as { v: number }).v + 1 }) },
      b: { handler: async () => 'kept' }
    })
  })
  const client = await inject(t, app)
  await client.request('r', 'a', undefined, 'a1')
  assert.ok(client.raw.includes('{"data":{"v":2},"request_id":"a1"}'))
  assert.equal((await client.request('r', 'b')).data, 'kept')
})

test('onError sees the real error, cannot change the reply, and its own failure is only logged', async t => {
  const seen: unknown[] = []
  const app = await build(t, {}, app => {
    app.drizzle.addHook('onError', async (message, ctx, error) => { seen.push([message.action, ctx.statusCode, (error as Error).message]) })
    app.drizzle.addHook('onError', async () => { throw new Error('hook broke') })
    app.drizzle.resource('r', {
      fail: async () => { throw new Error('internal detail') },
      conflict: async () => { throw Object.assign(new Error('Already exists'), { statusCode: 409 }) },
      ok: async () => 'fine'
    })
  })
  const client = await inject(t, app)
  const failed = await client.request('r', 'fail')
  assert.equal(failed.error, 'Unknown error')
  const conflict = await client.request('r', 'conflict')
  assert.deepEqual([conflict.code, conflict.statusCode, conflict.error], ['CONFLICT', 409, 'Already exists'])
  assert.equal((await client.request('r', 'ok')).data, 'fine')
  assert.deepEqual(seen, [['fail', 500, 'internal detail'], ['conflict', 409, 'Already exists']])
})

test('onResponse runs after the reply is sent, with the final status', async t => {
  const statuses: number[] = []
  let replyWasSent = false
  const app = await build(t, {}, app => {
    app.drizzle.addHook('onResponse', async (_m, ctx) => { statuses.push(ctx.statusCode) })
    app.drizzle.resource('r', {
      ok: async () => 1,
      bad: async () => { throw Object.assign(new Error('nope'), { statusCode: 400, code: 'BAD' }) },
      check: { handler: async () => 2, onResponse: async () => { replyWasSent = true } }
    })
  })
  const client = await inject(t, app)
  await client.request('r', 'ok')
  await client.request('r', 'bad')
  await client.request('r', 'check')
  await client.quiet(30)
  assert.deepEqual(statuses, [200, 400, 200])
  assert.equal(replyWasSent, true)
})

test('hooks are encapsulated like Fastify\'s: scope and children, never siblings or parent', async t => {
  const calls: string[] = []
  const mark = (label: string) => async (message: { resource: string }) => { calls.push(`${label}>${message.resource}`) }
  const app = await build(t, {}, async app => {
    app.drizzle.addHook('preHandler', mark('root'))
    app.drizzle.resource('top', { get: () => 'top' })
    await app.register(async function scopeA (a: FastifyInstance) {
      a.drizzle.addHook('preHandler', mark('A'))
      a.drizzle.resource('inA', { get: () => 'a' })
      await a.register(async function childOfA (child: FastifyInstance) {
        child.drizzle.addHook('preHandler', mark('A.child'))
        child.drizzle.resource('inAChild', { get: () => 'a-child' })
      })
    })
    await app.register(async function scopeB (b: FastifyInstance) {
      b.drizzle.resource('inB', { get: () => 'b' })
      // A hook added after the resource in the same scope still applies, as in Fastify.
      b.drizzle.addHook('preHandler', mark('B'))
    })
  })
  const client = await inject(t, app)
  for (const resource of ['top', 'inA', 'inAChild', 'inB']) {
    calls.length = 0
    await client.request(resource, 'get')
    const expected: Record<string, string[]> = {
      top: ['root>top'],
      inA: ['root>inA', 'A>inA'],
      inAChild: ['root>inAChild', 'A>inAChild', 'A.child>inAChild'],
      inB: ['root>inB', 'B>inB']
    }
    assert.deepEqual(calls, expected[resource], resource)
  }
})

test('hooks see `this` as the scope they were added in; handlers see their resource\'s scope', async t => {
  const app = await build(t, {}, async app => {
    app.decorate('where', 'root')
    await app.register(async (scope: FastifyInstance) => {
      scope.decorate('where', 'child')
      scope.drizzle.addHook('preHandler', async function (this: FastifyInstance, _m, ctx) { ctx.connection.store.hookScope = (this as any).where })
      scope.drizzle.resource('s', { get (_m, ctx) { return { handler: (this as any).where, hook: ctx.connection.store.hookScope } } })
    })
  })
  const client = await inject(t, app)
  assert.deepEqual((await client.request('s', 'get')).data, { handler: 'child', hook: 'child' })
})

test('fastify-plugin-wrapped plugins share their parent scope, as in Fastify', async t => {
  const { default: fp } = await import('fastify-plugin')
  const calls: string[] = []
  const app = await build(t, {}, async app => {
    await app.register(fp(async (shared: FastifyInstance) => {
      shared.drizzle.addHook('preHandler', async () => { calls.push('shared') })
    }))
    app.drizzle.resource('r', { get: () => 1 })
  })
  const client = await inject(t, app)
  await client.request('r', 'get')
  assert.deepEqual(calls, ['shared'])
})

test('hooks cannot be added once the server is ready', async t => {
  const app = await build(t)
  assert.throws(() => app.drizzle.addHook('preHandler', async () => {}), { code: 'FST_DRIZZLE_ALREADY_STARTED' })
})
