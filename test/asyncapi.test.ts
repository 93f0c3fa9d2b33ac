import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Parser } from '@asyncapi/parser'
import type { FastifyInstance } from 'fastify'
import Type from 'typebox'
import { build } from './helpers/client.js'

const Todo = Type.Object({ id: Type.Integer(), title: Type.String() })

function declare (app: FastifyInstance): void {
  app.drizzle.resource('todos', {
    list: async () => [],
    create: { schema: { data: Type.Object({ title: Type.String() }), reply: Todo }, handler: async () => ({ id: 1, title: 't' }) },
    bulk: { schema: { data: Type.Array(Type.Integer()) }, handler: async () => 0 }
  })
  app.drizzle.resource('users', { me: async () => ({}) })
  app.drizzle.topic('todos')
  app.drizzle.topic('rooms/:roomId/messages/:messageId', { schema: Type.Object({ text: Type.String() }), authorize: () => true })
}

/** Errors are diagnostics of severity 0; warnings and hints are allowed. */
async function parseErrors (doc: unknown): Promise<unknown[]> {
  const diagnostics = await new Parser().validate(JSON.stringify(doc))
  return diagnostics.filter(d => d.severity === 0).map(d => ({ code: d.code, message: d.message, path: d.path.join('/') }))
}

test('app.drizzle.asyncapi() is a valid AsyncAPI 3.0 document naming resources, actions and topics', async t => {
  const app = await build(t, { asyncapi: { serverUrl: 'wss://api.example.com', info: { title: 'Todos', version: '2.1.0' } } }, declare)
  const doc = app.drizzle.asyncapi()
  assert.deepEqual(await parseErrors(doc), [])
  assert.equal(doc.asyncapi, '3.0.0')
  assert.deepEqual(doc.info, { title: 'Todos', version: '2.1.0', description: doc.info.description })
  assert.deepEqual(doc.servers.drizzle, { host: 'api.example.com', protocol: 'wss' })

  const ws = doc.channels.drizzle as { address: string, messages: Record<string, any> }
  assert.equal(ws.address, '/ws')
  for (const name of ['todos.list', 'todos.create', 'todos.bulk', 'users.me', '$topic.subscribe', '$topic.unsubscribe']) {
    const op = Object.values(doc.operations).find(o => o.title === name) as Record<string, any>
    assert.ok(op, `operation ${name}`)
    assert.equal(op.action, 'receive')
    assert.equal(op.reply.messages.length, 2, 'reply and error')
  }
  // The request envelope carries the data schema; the reply {data, request_id} carries the reply schema.
  const request = ws.messages['todos.create.request'].payload
  assert.deepEqual(request.properties.data, { type: 'object', properties: { title: { type: 'string' } }, required: ['title'] })
  assert.deepEqual(request.properties.resource, { type: 'string', const: 'todos' })
  assert.ok(request.required.includes('data'))
  assert.deepEqual(ws.messages['todos.bulk.request'].payload.properties.data, { type: 'array', items: { type: 'integer' } })
  assert.deepEqual(ws.messages['todos.create.reply'].payload.properties.data.properties.id, { type: 'integer' })
  assert.deepEqual(ws.messages['todos.create.reply'].payload.required, ['data', 'request_id'])
  const errorFrame = doc.components.schemas.ErrorFrame as Record<string, any>
  assert.ok(errorFrame.properties.code.anyOf[0].enum.includes('ACTION_NOT_FOUND'))

  // Topics: a channel each, `:param` as `{param}` with its parameters, and a send operation.
  const rooms = Object.values(doc.channels).find(c => c.title === 'rooms/:roomId/messages/:messageId') as Record<string, any>
  assert.equal(rooms.address, 'rooms/{roomId}/messages/{messageId}')
  assert.deepEqual(Object.keys(rooms.parameters), ['roomId', 'messageId'])
  assert.deepEqual(rooms.messages.publication.payload.properties.data, { type: 'object', properties: { text: { type: 'string' } }, required: ['text'] })
  assert.deepEqual(rooms.messages.publication.payload.required, ['topic', 'data'])
  assert.ok(Object.values(doc.channels).some(c => c.address === 'todos'))
  assert.ok(Object.values(doc.channels).some(c => c.address === '__all__'))
  const sends = Object.values(doc.operations).filter(o => o.action === 'send').map(o => o.title)
  assert.deepEqual(sends.sort(), ['publish __all__', 'publish rooms/:roomId/messages/:messageId', 'publish todos'])

  // The check above can fail: a wrong operation action is an error.
  const broken = { ...doc, operations: { ...doc.operations, bad: { action: 'publish', channel: { $ref: '#/channels/drizzle' } } } }
  assert.notDeepEqual(await parseErrors(broken), [])

  // No TypeBox internals leak, and it survives JSON.
  assert.deepEqual(JSON.parse(JSON.stringify(doc)), doc)
})

test('GET /ws/asyncapi.json serves the document with the host clients used', async t => {
  const app = await build(t, { asyncapi: true }, declare)
  const res = await app.inject({ method: 'GET', url: '/ws/asyncapi.json', headers: { host: 'todos.example:8080' } })
  assert.equal(res.statusCode, 200)
  assert.match(res.headers['content-type'] as string, /^application\/json/)
  const doc = res.json()
  assert.deepEqual(doc.servers.drizzle, { host: 'todos.example:8080', protocol: 'ws' })
  assert.deepEqual(await parseErrors(doc), [])
  // Resources declared after start are in the next document: it is built from the registry each time.
  app.drizzle.resource('late', { get: async () => 1 })
  const again = (await app.inject({ method: 'GET', url: '/ws/asyncapi.json' })).json()
  assert.ok(Object.values(again.operations as Record<string, { title: string }>).some(o => o.title === 'late.get'))
})

test('odd names become safe keys; the route is absent unless asked for; serverUrl may be given per call', async t => {
  const app = await build(t, { path: '/live' }, app => {
    app.drizzle.resource('to dos/x', { 'get all': async () => [] })
    app.drizzle.resource('to_dos_x', { get_all: async () => [] })
  })
  assert.equal((await app.inject({ method: 'GET', url: '/live/asyncapi.json' })).statusCode, 404)
  const doc = app.drizzle.asyncapi({ serverUrl: 'ws://proxy.example/app' })
  assert.deepEqual(doc.servers.drizzle, { host: 'proxy.example', protocol: 'ws', pathname: '/app' })
  assert.equal((doc.channels.drizzle as { address: string }).address, '/live')
  const keys = Object.keys(doc.operations)
  assert.ok(keys.includes('to_dos_x.get_all') && keys.includes('to_dos_x.get_all_2'), keys.join(', '))
  assert.deepEqual(await parseErrors(doc), [])
  assert.throws(() => app.drizzle.asyncapi({ serverUrl: 'http://x' }), { code: 'FST_DRIZZLE_INVALID_OPTION' })
})

test('the document of a listening server names its address and parses', async t => {
  const app = await build(t, { asyncapi: true }, declare)
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  const doc = await (await fetch(base + '/ws/asyncapi.json')).json() as Record<string, any>
  assert.equal(doc.servers.drizzle.host, new URL(base).host)
  assert.deepEqual(await parseErrors(doc), [])
  assert.equal(app.drizzle.asyncapi().servers.drizzle?.host, new URL(base).host)
})
