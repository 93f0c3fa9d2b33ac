import { test } from 'node:test'
import assert from 'node:assert/strict'
import { build, connect, inject, listen } from './helpers/client.js'
import type { FastifyInstance } from 'fastify'

function declareTest (app: FastifyInstance): void {
  app.drizzle.resource('test', {
    get: async () => ({ hello: 'world', n: 1 }),
    echo: async (message) => message.data ?? null,
    nothing: async () => undefined,
    crash: async () => { throw new Error('secret database password in /srv/app/db.js:42') },
    syncCrash: () => { throw new TypeError('boom at /home/app/x.ts') }
  })
}

test('the ancestor protocol holds over a real socket', async t => {
  const app = await build(t, {}, declareTest)
  const client = await connect(t, await listen(app))

  await t.test('a request gets exactly {data, request_id}', async () => {
    client.send({ resource: 'test', action: 'get', request_id: 'test123' })
    await client.reply('test123')
    assert.equal(client.raw.at(-1), '{"data":{"hello":"world","n":1},"request_id":"test123"}')
  })

  await t.test('a non-JSON frame gets VALIDATION_ERROR with request_id null', async () => {
    client.send('this is not json')
    const frame = await client.waitFor(f => f.code === 'VALIDATION_ERROR' && f.error === 'Expected Json encodable string')
    assert.deepEqual(frame, { request_id: null, code: 'VALIDATION_ERROR', error: 'Expected Json encodable string', statusCode: 400 })
  })

  await t.test('a handler that returns nothing replies null', async () => {
    const frame = await client.request('test', 'nothing', undefined, 'n1')
    assert.deepEqual(frame, { data: null, request_id: 'n1' })
    assert.ok(client.raw.includes('{"data":null,"request_id":"n1"}'))
  })

  await t.test('unknown resource and action are named', async () => {
    const r = await client.request('nope', 'get', undefined, 'r1')
    assert.deepEqual(r, { request_id: 'r1', code: 'RESOURCE_NOT_FOUND', error: 'Resource "nope" not found', statusCode: 404 })
    const a = await client.request('test', 'nope', undefined, 'r2')
    assert.deepEqual(a, { request_id: 'r2', code: 'ACTION_NOT_FOUND', error: 'Action "nope" not found on resource "test"', statusCode: 404 })
  })

  await t.test('a crashing handler says "Unknown error" and nothing internal', async () => {
    for (const action of ['crash', 'syncCrash']) {
      const id = 'c-' + action
      const frame = await client.request('test', action, undefined, id)
      assert.deepEqual(frame, { request_id: id, code: 'INTERNAL_ERROR', error: 'Unknown error', statusCode: 500 })
      const raw = client.raw.find(r => r.includes(`"${id}"`)) as string
      assert.doesNotMatch(raw, /secret|password|\.js|\.ts|at |stack/)
    }
  })
})

test('each missing required field and each wrong type is named', async t => {
  const app = await build(t, {}, declareTest)
  const client = await inject(t, app)
  const cases: Array<[unknown, string[], unknown]> = [
    [{ action: 'get', request_id: 1 }, ['/resource'], 1],
    [{ resource: 'test', request_id: 2 }, ['/action'], 2],
    [{ resource: 'test', action: 'get' }, ['/request_id'], null],
    [{}, ['/resource', '/action', '/request_id'], null],
    [{ resource: 5, action: 'get', request_id: 3 }, ['/resource'], 3],
    [{ resource: 'test', action: ['get'], request_id: 4 }, ['/action'], 4],
    [{ resource: '', action: 'get', request_id: 5 }, ['/resource'], 5],
    [{ resource: 'test', action: 'get', request_id: 6, data: 'text' }, ['/data'], 6],
    [{ resource: 'test', action: 'get', request_id: 7, data: 42 }, ['/data'], 7],
    [{ resource: 'test', action: 'get', request_id: 8, data: null }, ['/data'], 8],
    [{ resource: 'test', action: 'get', request_id: 1.5 }, ['/request_id'], null],
    [{ resource: 'test', action: 'get', request_id: null }, ['/request_id'], null],
    [{ resource: 'test', action: 'get', request_id: true }, ['/request_id'], null],
    [{ resource: 'test', action: 'get', request_id: {} }, ['/request_id'], null],
    [{ resource: 'test', action: 'get', request_id: '' }, ['/request_id'], null],
    [{ resource: 'test', action: 'get', request_id: 'x'.repeat(257) }, ['/request_id'], null],
    [{ resource: 'test', action: 'get', request_id: 2 ** 60 }, ['/request_id'], null]
  ]
  for (const [frame, paths, id] of cases) {
    const before = client.frames.length
    client.send(frame)
    const reply = await client.waitFor(f => client.frames.indexOf(f) >= before)
    assert.equal(reply.code, 'VALIDATION_ERROR', JSON.stringify(frame))
    assert.equal(reply.statusCode, 400)
    assert.equal(reply.request_id, id, JSON.stringify(frame))
    assert.deepEqual(reply.details.map((d: { path: string }) => d.path), paths, JSON.stringify(frame))
    for (const path of paths) assert.match(reply.error, new RegExp(`"${path.slice(1)}"`))
  }
})

test('frames that are not envelopes are refused, and the socket keeps serving', async t => {
  const app = await build(t, {}, declareTest)
  const client = await inject(t, app)
  const garbage: Array<string | Buffer> = [
    '[]', '"text"', '42', 'null', 'true', '[{"resource":"test"}]', '{', '', ' ',
    '['.repeat(100_000) + ']'.repeat(100_000),
    '{"a":' + '{"a":'.repeat(50_000) + '1' + '}'.repeat(50_001),
    Buffer.from([0xff, 0xfe, 0x00, 0x01]),
    Buffer.from('\u0000\u0001binary')
  ]
  for (const frame of garbage) client.send(frame)
  await client.waitFor(() => client.frames.length >= garbage.length, 5000)
  for (const frame of client.frames.slice(0, garbage.length)) {
    assert.equal(frame.code, 'VALIDATION_ERROR')
    assert.equal(frame.request_id, null)
  }
  const ok = await client.request('test', 'get', undefined, 'after-garbage')
  assert.deepEqual(ok.data, { hello: 'world', n: 1 })
})

test('binary frames holding UTF-8 JSON are served, as the Tornado ancestor did', async t => {
  const app = await build(t, {}, declareTest)
  const client = await inject(t, app)
  client.send(Buffer.from(JSON.stringify({ resource: 'test', action: 'get', request_id: 'bin' })))
  const frame = await client.reply('bin')
  assert.deepEqual(frame.data, { hello: 'world', n: 1 })
})

test('data may be an object or an array, and extra fields reach the handler', async t => {
  const app = await build(t, {}, app => {
    app.drizzle.resource('data', { seen: async (message) => ({ data: message.data ?? null, extra: message.extra ?? null }) })
  })
  const client = await inject(t, app)
  assert.deepEqual((await client.request('data', 'seen', [1, 'two', { three: 3 }])).data, { data: [1, 'two', { three: 3 }], extra: null })
  assert.deepEqual((await client.request('data', 'seen', { a: { b: [] } })).data, { data: { a: { b: [] } }, extra: null })
  assert.deepEqual((await client.request('data', 'seen')).data, { data: null, extra: null })
  client.send({ resource: 'data', action: 'seen', request_id: 'x1', extra: { note: 'passed on' } })
  assert.deepEqual((await client.reply('x1')).data, { data: null, extra: { note: 'passed on' } })
})

test('integer and string request ids round-trip unchanged', async t => {
  const app = await build(t, {}, declareTest)
  const client = await inject(t, app)
  for (const id of [0, -1, Number.MAX_SAFE_INTEGER, 'a', 'ünïcödé-🚀', 'x'.repeat(256)]) {
    const frame = await client.request('test', 'get', undefined, id)
    assert.equal(frame.request_id, id)
  }
})

test('__proto__ in a frame pollutes nothing', async t => {
  const app = await build(t, {}, declareTest)
  const client = await inject(t, app)
  client.send('{"resource":"test","action":"echo","request_id":"p1","data":{"__proto__":{"polluted":true}}}')
  const refused = await client.reply('p1')
  assert.equal(refused.code, 'VALIDATION_ERROR')
  assert.equal(refused.statusCode, 400)
  client.send('{"__proto__":{"polluted":true},"resource":"test","action":"get","request_id":"p2"}')
  assert.match((await client.reply('p2')).error, /__proto__/)
  client.send('{"__proto__":{"polluted":true},"resource":"test","action":"get","request_id":1.5}')
  await client.waitFor(f => f.code === 'VALIDATION_ERROR' && f.request_id === null && /__proto__/.test(f.error))
  client.send('{"resource":"test","action":"echo","request_id":"p3","data":{"constructor":{"prototype":{"polluted":true}}}}')
  await client.reply('p3')
  assert.equal(({} as Record<string, unknown>).polluted, undefined)
  assert.equal(Object.hasOwn(Object.prototype, 'polluted'), false)
})

test('onProtoPoisoning: "remove" strips __proto__ keys instead of refusing', async t => {
  const app = await build(t, { onProtoPoisoning: 'remove' }, declareTest)
  const client = await inject(t, app)
  client.send('{"resource":"test","action":"echo","request_id":"p1","data":{"__proto__":{"polluted":true},"kept":1}}')
  const frame = await client.reply('p1')
  assert.deepEqual(frame.data, { kept: 1 })
  assert.equal(({} as Record<string, unknown>).polluted, undefined)
})

test('names of inherited object members are never resources or actions', async t => {
  const app = await build(t, {}, declareTest)
  const client = await inject(t, app)
  const members = ['constructor', '__proto__', 'toString', 'hasOwnProperty', 'valueOf', '__defineGetter__', 'isPrototypeOf', 'prototype']
  for (const name of members) {
    const r = await client.request(name, 'get')
    assert.equal(r.code, 'RESOURCE_NOT_FOUND', name)
    const a = await client.request('test', name)
    assert.equal(a.code, 'ACTION_NOT_FOUND', name)
  }
})
