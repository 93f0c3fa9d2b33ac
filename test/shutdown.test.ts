import { test, describe, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { connect as netConnect, type Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'
import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import drizzle from '../lib/index.js'
import { DEFAULTS, resolveOptions } from '../lib/options.js'
import { build, connect, inject, listen, nextId, sleep } from './helpers/client.js'
import { ChildServer } from './fixtures/child-server.js'

// README, Limits and shutdown: fastify.close() stops accepting connections, lets actions in flight finish within
// closeGracePeriod, then closes sockets with 1001; a peer that never answers cannot hold it up.

function resources (app: FastifyInstance): void {
  app.drizzle.resource('slow', {
    async wait (message) {
      const ms = (message.data as { ms?: number } | undefined)?.ms ?? 100
      await sleep(ms)
      return { waited: ms }
    }
  })
}

/** A fresh app (not build(): these tests close it themselves and time the close). */
async function app (t: TestContext, options: Parameters<typeof build>[1] = {}): Promise<FastifyInstance> {
  const fastify = Fastify({ logger: false })
  await fastify.register(drizzle, { heartbeatInterval: 0, ...options })
  resources(fastify)
  await fastify.ready()
  t.after(() => fastify.close())
  return fastify
}

async function timed (fn: () => PromiseLike<unknown>): Promise<number> {
  const started = performance.now()
  await fn()
  return performance.now() - started
}

/** A raw TCP client that completes the WebSocket handshake and then never reads nor answers. */
async function deafPeer (t: TestContext, url: string): Promise<Socket> {
  const { hostname, port, pathname } = new URL(url)
  const socket = netConnect(Number(port), hostname)
  t.after(() => socket.destroy())
  socket.on('error', () => {})
  await once(socket, 'connect')
  socket.write(`GET ${pathname} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`)
  const [head] = await once(socket, 'data') as [Buffer]
  assert.match(head.toString(), /^HTTP\/1.1 101 /)
  socket.pause()
  return socket
}

describe('closeGracePeriod', () => {
  test('default is 5 s', () => {
    assert.equal(DEFAULTS.closeGracePeriod, 5000)
    assert.equal(resolveOptions({}).closeGracePeriod, 5000)
  })

  test('an action in flight gets its reply, then the socket closes with 1001', async (t) => {
    // Regression: @fastify/websocket's own preClose used to close every client first, with no code
    // (1005), before the reply could be sent.
    const fastify = await app(t, { closeGracePeriod: 2000 })
    const url = await listen(fastify)
    const client = await connect(t, url)
    const events: string[] = []
    client.ws.on('message', () => events.push('reply'))
    client.ws.on('close', (code: number) => events.push(`close ${code}`))
    const id = nextId()
    client.send({ resource: 'slow', action: 'wait', data: { ms: 300 }, request_id: id })
    await sleep(50)
    const elapsed = await timed(() => fastify.close())
    assert.deepEqual((await client.reply(id)).data, { waited: 300 })
    assert.equal(await client.closed, 1001)
    assert.deepEqual(events, ['reply', 'close 1001'])
    assert.ok(elapsed >= 200 && elapsed < 1500, `close took ${elapsed} ms`)
    assert.equal(fastify.drizzle.connections.size, 0)
  })

  test('it waits no longer than the grace period, then closes with 1001 anyway', async (t) => {
    const fastify = await app(t, { closeGracePeriod: 100 })
    const url = await listen(fastify)
    const client = await connect(t, url)
    const id = nextId()
    client.send({ resource: 'slow', action: 'wait', data: { ms: 3000 }, request_id: id })
    await sleep(50)
    const elapsed = await timed(() => fastify.close())
    assert.equal(await client.closed, 1001)
    assert.ok(elapsed < 1000, `close took ${elapsed} ms`)
    assert.equal(client.frames.length, 0, 'the unfinished action has no socket to reply on')
  })

  test('with nothing in flight, close() does not wait for the grace period', async (t) => {
    const fastify = await app(t, { closeGracePeriod: 5000 })
    const url = await listen(fastify)
    const client = await connect(t, url)
    const elapsed = await timed(() => fastify.close())
    assert.equal(await client.closed, 1001)
    assert.ok(elapsed < 500, `close took ${elapsed} ms`)
  })

  test('requests sent during the grace period are refused with SERVICE_UNAVAILABLE, and so are new connections', async (t) => {
    const fastify = await app(t, { closeGracePeriod: 2000 })
    const client = await inject(t, fastify)
    const slow = nextId()
    client.send({ resource: 'slow', action: 'wait', data: { ms: 300 }, request_id: slow })
    await sleep(20)
    const closing = fastify.close()
    await sleep(20)
    const late = await client.request('slow', 'wait', { ms: 1 })
    assert.deepEqual(late, { request_id: late.request_id, code: 'SERVICE_UNAVAILABLE', error: 'Server is shutting down', statusCode: 503 })
    await assert.rejects(fastify.injectWS('/ws'), /Unexpected server response: 503/)
    await closing
    assert.deepEqual((await client.reply(slow)).data, { waited: 300 })
  })

  test('a peer that never answers the close cannot hold shutdown', async (t) => {
    const fastify = await app(t, { closeGracePeriod: 100 })
    const url = await listen(fastify)
    await deafPeer(t, url)
    const paused = await connect(t, url)
    ;(paused.ws as unknown as { _socket: { pause (): void } })._socket.pause()
    assert.equal(fastify.drizzle.connections.size, 2)
    const elapsed = await timed(() => fastify.close())
    assert.ok(elapsed < 2500, `close took ${elapsed} ms`)
    assert.equal(fastify.drizzle.connections.size, 0)
  })

  test('close() leaves no timer behind', async (t) => {
    const before = process.getActiveResourcesInfo().filter(r => r === 'Timeout').length
    const fastify = await app(t, { heartbeatInterval: 50, closeGracePeriod: 1000 })
    const url = await listen(fastify)
    const client = await connect(t, url)
    await client.request('slow', 'wait', { ms: 1 })
    await fastify.close()
    await client.closed
    await sleep(20)
    assert.equal(process.getActiveResourcesInfo().filter(r => r === 'Timeout').length, before)
  })

  test('with @fastify/websocket registered by the app, close() still closes every socket, bounded', async (t) => {
    const fastify = Fastify({ logger: false })
    await fastify.register(websocket)
    await fastify.register(drizzle, { heartbeatInterval: 0, closeGracePeriod: 100 })
    resources(fastify)
    t.after(() => fastify.close())
    const url = await listen(fastify)
    const client = await connect(t, url)
    const elapsed = await timed(() => fastify.close())
    await client.closed
    assert.ok(elapsed < 2500, `close took ${elapsed} ms`)
    assert.equal(fastify.drizzle.connections.size, 0)
  })
})

test('SIGTERM: the child app replies to the action in flight, closes the socket with 1001 and exits', { timeout: 30_000 }, async (t) => {
  const server = await ChildServer.start({ closeGracePeriod: 3000 })
  t.after(() => server.kill())
  const client = await connect(t, server.url)
  const events: string[] = []
  client.ws.on('message', () => events.push('reply'))
  client.ws.on('close', (code: number) => events.push(`close ${code}`))
  const id = nextId()
  client.send({ resource: 'slow', action: 'wait', data: { ms: 500 }, request_id: id })
  await sleep(100)
  server.child.kill('SIGTERM')

  assert.deepEqual((await client.reply(id, 5000)).data, { waited: 500 })
  assert.equal(await client.closed, 1001)
  assert.deepEqual(events, ['reply', 'close 1001'])
  const exitCode = await Promise.race([server.exited, sleep(5000).then(() => 'still running')])
  assert.equal(exitCode, 0, 'the process ended by itself: no timer or socket kept it alive')
})
