import { test } from 'node:test'
import assert from 'node:assert/strict'
import { connect as connectTcp } from 'node:net'
import { Writable } from 'node:stream'
import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import WebSocket from 'ws'
import drizzle from '../lib/index.js'
import { build, connect, inject, listen } from './helpers/client.js'

test('bad options fail at registration with a coded error saying what was given', async () => {
  const cases: Array<[unknown, RegExp]> = [
    [{ path: 'ws' }, /"path".*starting with "\/".*received a string \("ws"\)/],
    [{ path: 5 }, /"path".*received number \(5\)/],
    [{ broker: {} }, /"broker".*received an object/],
    [{ maxPayload: 0 }, /"maxPayload".*>= 1.*received number \(0\)/],
    [{ maxPayload: '1mb' }, /"maxPayload".*received a string/],
    [{ onProtoPoisoning: 'strip' }, /"onProtoPoisoning".*"error", "remove", "ignore"/],
    [{ disableActionLogging: 'yes' }, /"disableActionLogging".*boolean/],
    [{ rateLimit: { max: 0, timeWindow: 1 } }, /"rateLimit"/],
    [{ allowedOrigins: 'https://a.example' }, /"allowedOrigins"/],
    [{ paht: '/x' }, /"paht": unknown option/],
    ['nope', /"options".*expected an object/]
  ]
  for (const [options, message] of cases) {
    const app = Fastify()
    await assert.rejects(async () => { await app.register(drizzle, options as any) }, (err: Error & { code: string }) => {
      assert.equal(err.code, 'FST_DRIZZLE_INVALID_OPTION')
      assert.match(err.message, message)
      return true
    })
    await app.close()
  }
})

test('registers @fastify/websocket only when absent, and keeps the app\'s own settings', async t => {
  const app = Fastify()
  await app.register(websocket, { options: { maxPayload: 64 } })
  await app.register(drizzle, { heartbeatInterval: 0 })
  app.drizzle.resource('r', { get: () => 'ok' })
  t.after(() => app.close())
  const client = await connect(t, await listen(app))
  assert.equal((await client.request('r', 'get')).data, 'ok')
  client.send({ resource: 'r', action: 'get', request_id: 1, data: { pad: 'x'.repeat(100) } })
  assert.equal(await client.closed, 1009, 'the app\'s maxPayload of 64 bytes applies')
})

test('registering twice on the same app is refused with a coded error', async t => {
  const app = Fastify()
  await app.register(drizzle)
  await assert.rejects(async () => { await app.register(drizzle) }, { code: 'FST_DRIZZLE_ALREADY_REGISTERED' })
  t.after(() => app.close())
})

test('the route is at options.path; a plain GET there gets 426 Upgrade Required', async t => {
  const app = await build(t, { path: '/realtime' }, app => { app.drizzle.resource('r', { get: () => 'here' }) })
  const plain = await app.inject({ method: 'GET', url: '/realtime' })
  assert.equal(plain.statusCode, 426)
  assert.equal(plain.json().code, 'UPGRADE_REQUIRED')
  assert.equal((await app.inject({ method: 'GET', url: '/ws' })).statusCode, 404)
  const client = await inject(t, app, {}, '/realtime')
  assert.equal((await client.request('r', 'get')).data, 'here')
})

test('injectWS upgrades although it sends Sec-WebSocket-Version as a number (ws 8.23.1 wants the string); a real client with another version still gets 400', async t => {
  const app = await build(t, {}, (app) => { app.drizzle.resource('echo', { async back (message) { return message.data } }) })
  const socket = await app.injectWS('/ws')
  t.after(() => socket.terminate())
  const reply = new Promise<Record<string, unknown>>(resolve => socket.once('message', (data: Buffer) => resolve(JSON.parse(data.toString()))))
  socket.send(JSON.stringify({ resource: 'echo', action: 'back', data: { n: 7 }, request_id: 1 }))
  assert.deepEqual(await reply, { data: { n: 7 }, request_id: 1 })
  const url = await listen(app)
  const version8 = new WebSocket(url, { protocolVersion: 8 })
  const status = await new Promise<number>(resolve => {
    version8.on('unexpected-response', (_req, res) => { resolve(res.statusCode ?? 0); version8.terminate() })
    version8.on('open', () => { resolve(101); version8.terminate() })
    version8.on('error', () => {})
  })
  assert.equal(status, 101, 'version 8 is one ws accepts')
  const { port } = new URL(url)
  const head = await new Promise<string>((resolve, reject) => {
    const peer = connectTcp(Number(port), '127.0.0.1', () => {
      peer.write('GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 12\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n')
    })
    peer.once('data', (chunk: Buffer) => { resolve(chunk.toString()); peer.destroy() })
    peer.once('error', reject)
  })
  assert.match(head, /^HTTP\/1\.1 400 /, 'an unsupported version is refused as before')
})

test('the app\'s own Fastify hooks guard the upgrade and decorate ctx.request', async t => {
  const app = await build(t, {}, app => {
    app.decorateRequest('user', null)
    app.addHook('onRequest', async (request, reply) => {
      const token = request.headers.authorization
      if (token !== 'Bearer good') return reply.code(401).send({ error: 'Unauthorized' })
      ;(request as any).user = { id: 7, name: 'ada' }
    })
    app.drizzle.resource('me', { get: (_m, ctx) => (ctx.request as any).user })
  })
  const url = await listen(app)
  const refused = new WebSocket(url)
  const response = await new Promise<number>((resolve, reject) => {
    refused.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0))
    refused.on('open', () => reject(new Error('socket opened without credentials')))
    refused.on('error', () => {})
  })
  assert.equal(response, 401)
  const client = await connect(t, url, { headers: { authorization: 'Bearer good' } })
  assert.deepEqual((await client.request('me', 'get')).data, { id: 7, name: 'ada' })
})

test('ctx carries the connection (id, per-connection store), the names and a child logger', async t => {
  const app = await build(t, {}, app => {
    app.drizzle.resource('ctx', {
      count (_m, ctx) {
        const store = ctx.connection.store as { n?: number }
        store.n = (store.n ?? 0) + 1
        return { id: ctx.connection.id, n: store.n, resource: ctx.resource, action: ctx.action, requestId: ctx.requestId, logs: typeof ctx.log.info }
      }
    })
  })
  const a = await inject(t, app)
  const b = await inject(t, app)
  const a1 = (await a.request('ctx', 'count', undefined, 'x')).data
  const a2 = (await a.request('ctx', 'count')).data
  const b1 = (await b.request('ctx', 'count')).data
  assert.equal(a1.id, a2.id)
  assert.notEqual(a1.id, b1.id)
  assert.match(a1.id, /^[0-9a-f-]{36}$/)
  assert.deepEqual([a1.n, a2.n, b1.n], [1, 2, 1])
  assert.deepEqual([a1.resource, a1.action, a1.requestId, a1.logs], ['ctx', 'count', 'x', 'function'])
})

function capture (): { lines: any[], stream: Writable } {
  const lines: any[] = []
  const stream = new Writable({ write (chunk, _enc, cb) { lines.push(JSON.parse(String(chunk))); cb() } })
  return { lines, stream }
}

test('one "action completed" line per action, 5xx logged with the error, ctx.log carries the names', async t => {
  const { lines, stream } = capture()
  const app = await build(t, {}, app => {
    app.drizzle.resource('log', {
      ok: async (_m, ctx) => { ctx.log.info('inside'); return 1 },
      crash: async () => { throw new Error('kaboom') },
      gone: async () => { throw Object.assign(new Error('Gone'), { statusCode: 410 }) }
    })
  }, { logger: { level: 'info', stream } })
  const client = await inject(t, app)
  await client.request('log', 'ok', undefined, 'l1')
  await client.request('log', 'crash', undefined, 'l2')
  await client.request('log', 'gone', undefined, 'l3')
  await client.request('nope', 'x', undefined, 'l4')
  const completed = lines.filter(l => l.msg === 'action completed')
  assert.deepEqual(completed.map(l => [l.resource, l.action, l.request_id, l.statusCode]), [
    ['log', 'ok', 'l1', 200], ['log', 'crash', 'l2', 500], ['log', 'gone', 'l3', 410], ['nope', 'x', 'l4', 404]
  ])
  for (const line of completed) {
    assert.equal(typeof line.responseTime, 'number')
    assert.equal(line.level, 30)
    assert.ok(line.reqId, 'the upgrade request id ties the lines to the connection')
  }
  const inside = lines.find(l => l.msg === 'inside')
  assert.deepEqual([inside.resource, inside.action, inside.request_id], ['log', 'ok', 'l1'])
  const failure = lines.find(l => l.msg === 'action failed')
  assert.equal(failure.level, 50)
  assert.equal(failure.err.message, 'kaboom')
  assert.match(failure.err.stack, /kaboom/)
  assert.equal(failure.request_id, 'l2')
})

test('disableActionLogging turns the per-action line off but keeps 5xx errors', async t => {
  const { lines, stream } = capture()
  const app = await build(t, { disableActionLogging: true }, app => {
    app.drizzle.resource('log', { ok: async () => 1, crash: async () => { throw new Error('kaboom') } })
  }, { logger: { level: 'info', stream } })
  const client = await inject(t, app)
  await client.request('log', 'ok')
  await client.request('log', 'crash')
  assert.equal(lines.filter(l => l.msg === 'action completed').length, 0)
  assert.equal(lines.filter(l => l.msg === 'action failed').length, 1)
})

test('errors with a status below 500 pass through; others are "Unknown error"', async t => {
  const { default: createError } = await import('@fastify/error')
  const Custom = createError('TODO_EXISTS', 'Todo "%s" exists', 409)
  const app = await build(t, {}, app => {
    app.drizzle.resource('e', {
      fastifyError: async () => { throw new Custom('milk') },
      httpErrorsStyle: async () => { throw Object.assign(new Error('Payment needed'), { status: 402, expose: true }) },
      withDetails: async () => { throw Object.assign(new Error('Bad'), { statusCode: 422, code: 'UNPROCESSABLE', details: [{ path: '/x' }] }) },
      fiveHundredWithCode: async () => { throw Object.assign(new Error('db down at 10.0.0.3'), { statusCode: 503, code: 'DB_DOWN' }) },
      thrownString: async () => { throw 'raw string' }, // eslint-disable-line no-throw-literal
      thrownNull: async () => { throw null }, // eslint-disable-line no-throw-literal
      bigint: async () => ({ n: 10n })
    })
  })
  const client = await inject(t, app)
  const pick = (f: any) => [f.code, f.statusCode, f.error]
  assert.deepEqual(pick(await client.request('e', 'fastifyError')), ['TODO_EXISTS', 409, 'Todo "milk" exists'])
  assert.deepEqual(pick(await client.request('e', 'httpErrorsStyle')), ['PAYMENT_REQUIRED', 402, 'Payment needed'])
  assert.deepEqual((await client.request('e', 'withDetails')).details, [{ path: '/x' }])
  for (const action of ['fiveHundredWithCode', 'thrownString', 'thrownNull', 'bigint']) {
    assert.deepEqual(pick(await client.request('e', action)), ['INTERNAL_ERROR', 500, 'Unknown error'], action)
  }
})

test('many requests in flight on one socket each get their own reply, out of order', async t => {
  const app = await build(t, {}, app => {
    app.drizzle.resource('slow', {
      wait: async (message) => {
        const { ms } = message.data as { ms: number }
        await new Promise(resolve => setTimeout(resolve, ms))
        return ms
      }
    })
  })
  const client = await connect(t, await listen(app))
  const delays = [60, 10, 40, 0, 20]
  const replies = await Promise.all(delays.map((ms, i) => client.request('slow', 'wait', { ms }, 'w' + i)))
  assert.deepEqual(replies.map(r => r.data), delays)
  const order = client.frames.map(f => f.data)
  assert.deepEqual(order, [...delays].sort((a, b) => a - b), 'replies are sent as actions finish')
})

test('thousands of pipelined requests on one real socket are all answered correctly', async t => {
  const app = await build(t, {}, app => {
    app.drizzle.resource('math', {
      double: async (message) => (message.data as { n: number }).n * 2,
      syncDouble: (message) => (message.data as { n: number }).n * 2
    })
  })
  const client = await connect(t, await listen(app))
  const count = 5000
  // One write of all frames at once, so they arrive in as few TCP chunks as the kernel makes.
  for (let i = 0; i < count; i++) client.send({ resource: 'math', action: i % 2 === 0 ? 'double' : 'syncDouble', data: { n: i }, request_id: i })
  await client.waitFor(() => client.frames.length >= count, 10_000)
  const byId = new Map(client.frames.map(f => [f.request_id, f]))
  assert.equal(byId.size, count)
  for (let i = 0; i < count; i++) assert.equal(byId.get(i)?.data, i * 2, `request ${i}`)
})

test('garbage on one socket never reaches or harms another', async t => {
  const app = await build(t, {}, app => { app.drizzle.resource('r', { get: () => 'ok' }) })
  const url = await listen(app)
  const victim = await connect(t, url)
  const attacker = await connect(t, url)
  for (const frame of ['{', '[]', Buffer.from([0xc3, 0x28]), '['.repeat(200_000), JSON.stringify({ resource: 'r', action: 'get', request_id: 'a' })]) attacker.send(frame)
  await attacker.waitFor(f => f.request_id === 'a')
  assert.equal((await victim.request('r', 'get', undefined, 'v')).data, 'ok')
  assert.equal(victim.frames.length, 1, 'the victim got nothing but its reply')
})
