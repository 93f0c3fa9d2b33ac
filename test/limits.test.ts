import { test, describe, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import type { FastifyInstance } from 'fastify'
import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import WebSocket from 'ws'
import drizzle, { type DrizzleOptions } from '../lib/index.js'
import { DEFAULTS, resolveOptions } from '../lib/options.js'
import { build, connect, inject, listen, nextId, sleep, type Frame, type TestClient } from './helpers/client.js'
import { ChildServer } from './fixtures/child-server.js'

// Issue #6: every limit (README, Limits and shutdown), its default and its effect. Defaults that would take too
// long to reach by behaviour (30 s timers, 10,000 connections) are read from DEFAULTS and from what
// resolveOptions({}) fills in; their effect is shown with a small value.

const MiB = 1024 * 1024

/** Resources every app here has: an echo, a slow action, and a topic clients may subscribe to. */
function resources (app: FastifyInstance): void {
  app.drizzle.resource('echo', { async get (message) { return message.data ?? null } })
  app.drizzle.resource('slow', {
    async wait (message) {
      const ms = (message.data as { ms?: number } | undefined)?.ms ?? 100
      await sleep(ms)
      return { waited: ms }
    }
  })
  app.drizzle.topic('firehose')
}

/** An echo request of exactly `bytes` bytes on the wire (ASCII, so characters = bytes). */
function frameOfSize (bytes: number, requestId: number): string {
  const empty = JSON.stringify({ resource: 'echo', action: 'get', data: { s: '' }, request_id: requestId })
  assert.ok(bytes >= empty.length)
  return JSON.stringify({ resource: 'echo', action: 'get', data: { s: 'x'.repeat(bytes - empty.length) }, request_id: requestId })
}

/** Status of a WebSocket upgrade over the network: 101 when it opened, else the HTTP status and body. */
interface Upgrade { status: number, body: string, ws: WebSocket, closed: Promise<number> }
async function upgrade (t: TestContext, url: string, options: WebSocket.ClientOptions = {}): Promise<Upgrade> {
  const ws = new WebSocket(url, options)
  t.after(() => ws.terminate())
  ws.on('error', () => {}) // an 'unexpected-response' is reported here too
  const closed = new Promise<number>(resolve => ws.once('close', resolve))
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('upgrade got no answer')), 5000)
    ws.once('open', () => { clearTimeout(timer); resolve({ status: 101, body: '', ws, closed }) })
    ws.once('unexpected-response', (_req, res) => {
      let body = ''
      res.on('data', (chunk: Buffer) => { body += chunk.toString() })
      res.on('end', () => { clearTimeout(timer); resolve({ status: res.statusCode ?? 0, body, ws, closed }) })
    })
  })
}

/** Waits until `check` holds, polling; fails with `what` after `ms`. */
async function until (check: () => boolean, what: string, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(5)
  }
}

function isTooMany (frame: Frame): boolean {
  return frame.code === 'TOO_MANY_REQUESTS' && frame.statusCode === 429
}

/** Sends `count` requests at once and waits for as many replies; returns them. */
async function burst (client: TestClient, count: number, resource: string, action: string, data: unknown, ms = 10_000): Promise<Frame[]> {
  const first = client.frames.length
  const ids: number[] = []
  for (let i = 0; i < count; i++) {
    const id = nextId()
    ids.push(id)
    client.send({ resource, action, data, request_id: id })
  }
  await until(() => client.frames.length - first >= count, `${count} replies`, ms)
  return client.frames.slice(first)
}

describe('registration errors', () => {
  const bad: Array<[keyof DrizzleOptions, unknown, RegExp]> = [
    ['maxPayload', 0, /Invalid option "maxPayload": expected an integer >= 1, received number \(0\)/],
    ['maxPayload', '1mb', /"maxPayload".*received a string \("1mb"\)/],
    ['maxPayload', 1.5, /"maxPayload".*received number \(1\.5\)/],
    ['maxPayload', null, /"maxPayload".*received null/],
    ['maxInFlight', 0, /"maxInFlight": expected an integer >= 1, received number \(0\)/],
    ['maxInFlight', Infinity, /"maxInFlight".*received number \(Infinity\)/],
    ['rateLimit', true, /"rateLimit": expected false or \{ max.*received boolean \(true\)/],
    ['rateLimit', { max: 0, timeWindow: 1000 }, /"rateLimit".*received an object \(keys: max, timeWindow\)/],
    ['rateLimit', { max: 10 }, /"rateLimit".*received an object \(keys: max\)/],
    ['rateLimit', null, /"rateLimit".*received null/],
    ['maxConnections', -1, /"maxConnections": expected an integer >= 1, received number \(-1\)/],
    ['actionTimeout', -5, /"actionTimeout": expected an integer >= 0, received number \(-5\)/],
    ['actionTimeout', '30s', /"actionTimeout".*received a string \("30s"\)/],
    ['maxBufferedBytes', 0, /"maxBufferedBytes": expected an integer >= 1, received number \(0\)/],
    ['slowConsumer', 'kill', /"slowConsumer": expected one of "drop", "close", received a string \("kill"\)/],
    ['heartbeatInterval', -1, /"heartbeatInterval": expected an integer >= 0, received number \(-1\)/],
    ['heartbeatInterval', false, /"heartbeatInterval".*received boolean \(false\)/],
    ['allowedOrigins', 'https://a.example', /"allowedOrigins": expected "\*", an array of origin strings, or a function.*received a string/],
    ['allowedOrigins', [1, 2], /"allowedOrigins".*received an array \(length 2\)/],
    ['allowedOrigins', true, /"allowedOrigins".*received boolean \(true\)/],
    ['closeGracePeriod', -1, /"closeGracePeriod": expected an integer >= 0, received number \(-1\)/],
    ['closeGracePeriod', '5s', /"closeGracePeriod".*received a string \("5s"\)/],
    ['maxSubscriptions', 0, /"maxSubscriptions": expected an integer >= 1, received number \(0\)/],
    ['maxSubscriptions', 1.5, /"maxSubscriptions".*received number \(1\.5\)/],
    ['maxSubscriptions', '128', /"maxSubscriptions".*received a string \("128"\)/],
    ['maxSubscriptions', null, /"maxSubscriptions".*received null/],
    ['maxInFlightTotal', 0, /"maxInFlightTotal": expected an integer >= 1, received number \(0\)/],
    ['maxInFlightTotal', Infinity, /"maxInFlightTotal".*received number \(Infinity\)/],
    ['maxBufferedBytesTotal', -1, /"maxBufferedBytesTotal": expected an integer >= 1, received number \(-1\)/],
    ['maxIncompleteBytesTotal', 0, /"maxIncompleteBytesTotal": expected an integer >= 1, received number \(0\)/],
    ['incompleteTimeout', -1, /"incompleteTimeout": expected an integer >= 0, received number \(-1\)/],
    ['incompleteTimeout', '10s', /"incompleteTimeout".*received a string \("10s"\)/]
  ]
  for (const [name, value, message] of bad) {
    test(`${name}: ${typeof value === 'number' ? String(value) : JSON.stringify(value)} is refused at registration`, async () => {
      const app = Fastify({ logger: false })
      app.register(drizzle, { [name]: value } as DrizzleOptions)
      await assert.rejects(async () => { await app.ready() }, (err: Error & { code?: string }) => {
        assert.equal(err.code, 'FST_DRIZZLE_INVALID_OPTION')
        assert.match(err.message, message)
        return true
      })
      await app.close()
    })
  }

  test('an unknown option is refused and the known ones are listed', async () => {
    const app = Fastify({ logger: false })
    app.register(drizzle, { maxPayLoad: 10 } as unknown as DrizzleOptions)
    await assert.rejects(async () => { await app.ready() }, (err: Error & { code?: string }) => {
      assert.equal(err.code, 'FST_DRIZZLE_INVALID_OPTION')
      assert.match(err.message, /Invalid option "maxPayLoad": unknown option; known options are .*maxPayload.*received number \(10\)/)
      return true
    })
    await app.close()
  })

  test('resolveOptions({}) fills in the documented DEFAULTS of every limit', () => {
    const resolved = resolveOptions({})
    const limits = ['maxPayload', 'maxInFlight', 'rateLimit', 'maxConnections', 'actionTimeout', 'maxBufferedBytes', 'slowConsumer',
      'heartbeatInterval', 'closeGracePeriod'] as const
    for (const key of limits) assert.deepEqual(resolved[key], DEFAULTS[key], key)
    assert.equal(resolved.allowedOrigins, undefined)
  })
})

describe('maxPayload', () => {
  test('default is 1 MiB: a frame of 1 MiB - 100 bytes is served, 1 MiB + 1 closes the socket with 1009', async (t) => {
    assert.equal(DEFAULTS.maxPayload, MiB)
    const app = await build(t, {}, resources)
    const url = await listen(app)

    const fits = await connect(t, url)
    const id = nextId()
    fits.send(frameOfSize(MiB - 100, id))
    const reply = await fits.reply(id, 5000)
    assert.equal(typeof reply.data.s, 'string')
    // The reply is the request without its resource and action: the whole frame was read and served.
    assert.equal(fits.raw.at(-1)?.length, MiB - 100 - '"resource":"echo","action":"get",'.length)

    const tooBig = await connect(t, url)
    tooBig.ws.on('error', () => {})
    tooBig.send(frameOfSize(MiB + 1, nextId()))
    assert.equal(await tooBig.closed, 1009)
    assert.equal(tooBig.frames.length, 0, 'an oversized frame is never dispatched')
  })

  test('with @fastify/websocket registered by the app, a larger ws maxPayload is reported at startup', async () => {
    const lines: string[] = []
    const app = Fastify({ logger: { level: 'warn', stream: { write: (line: string) => { lines.push(line) } } } })
    await app.register(websocket)
    await app.register(drizzle, { heartbeatInterval: 0 })
    await app.ready()
    await app.close()
    assert.ok(lines.some(line => /its ws maxPayload applies instead of the plugin's/.test(line)), lines.join(''))
  })

  test('a smaller maxPayload closes with 1009 above it and serves frames up to it', async (t) => {
    const app = await build(t, { maxPayload: 1000 }, resources)
    const client = await inject(t, app)
    const id = nextId()
    client.send(frameOfSize(1000, id))
    await client.reply(id)
    client.send(frameOfSize(1001, nextId()))
    assert.equal(await client.closed, 1009)
  })

  test('black-box: an 8 MiB frame to a running app is refused with 1009 while other clients are served', async (t) => {
    const app = await build(t, {}, resources)
    const url = await listen(app)
    const bystander = await connect(t, url)

    const attacker = await connect(t, url)
    attacker.ws.on('error', () => {}) // the server may reset the socket while the client still writes
    attacker.send(Buffer.alloc(8 * MiB, 'a'))
    assert.equal(await attacker.closed, 1009)

    const echoed = await bystander.request('echo', 'get', { still: 'served' })
    assert.deepEqual(echoed.data, { still: 'served' })
    const newcomer = await connect(t, url)
    assert.deepEqual((await newcomer.request('echo', 'get', [1])).data, [1])
    await until(() => app.drizzle.connections.size === 2, 'the refused socket to be forgotten')
  })
})

describe('maxInFlight', () => {
  test('default is 1024: of 1100 slow requests at once, 1024 are held and 76 refused with 429', async (t) => {
    assert.equal(DEFAULTS.maxInFlight, 1024)
    const app = await build(t, {}, resources)
    const client = await inject(t, app)
    const replies = await burst(client, 1100, 'slow', 'wait', { ms: 200 })
    assert.equal(replies.filter(isTooMany).length, 76)
    assert.equal(replies.filter(f => f.data?.waited === 200).length, 1024)
    assert.match(replies.find(isTooMany)?.error, /Too many requests in flight \(limit 1024\)/)
  })

  test('a small maxInFlight refuses the excess and admits again once actions finish', async (t) => {
    const app = await build(t, { maxInFlight: 2 }, resources)
    const client = await inject(t, app)
    const replies = await burst(client, 3, 'slow', 'wait', { ms: 100 })
    assert.equal(replies.filter(isTooMany).length, 1)
    const again = await client.request('slow', 'wait', { ms: 1 })
    assert.deepEqual(again.data, { waited: 1 })
  })

  test('black-box: 5,000 slow requests pipelined on one socket are limited, not all held', { timeout: 30_000 }, async (t) => {
    const app = await build(t, {}, resources)
    const url = await listen(app)
    const client = await connect(t, url)
    const replies = await burst(client, 5000, 'slow', 'wait', { ms: 3000 }, 20_000)
    const refused = replies.filter(isTooMany)
    assert.ok(refused.length >= 5000 - DEFAULTS.maxInFlight, `only ${refused.length} refused`)
    assert.ok(replies.filter(f => f.data?.waited === 3000).length <= DEFAULTS.maxInFlight)
    assert.deepEqual((await client.request('echo', 'get', { ok: 1 })).data, { ok: 1 }, 'the socket still works')
  })
})

describe('rateLimit', () => {
  test('default is 10,000 per 1000 ms: request 10,001 of a burst is refused with 429', async (t) => {
    assert.deepEqual(DEFAULTS.rateLimit, { max: 10_000, timeWindow: 1000 })
    // The in-flight limits are raised so that only the rate limit is measured.
    const app = await build(t, { maxInFlight: 1_000_000, maxInFlightTotal: 1_000_000 }, resources)
    // The count is exact only if the whole burst falls in one window: a machine too busy to serve
    // 10,050 requests within 900 ms tries again (the mechanism itself is proven exactly with a small
    // rateLimit below, where timing cannot interfere).
    for (let attempt = 1; attempt <= 3; attempt++) {
      const client = await inject(t, app)
      const started = performance.now()
      const replies = await burst(client, 10_050, 'echo', 'get', undefined)
      const elapsed = performance.now() - started
      if (elapsed >= 900) {
        t.diagnostic(`attempt ${attempt}: the burst took ${Math.round(elapsed)} ms, more than one window`)
        continue
      }
      assert.equal(replies.filter(isTooMany).length, 50)
      assert.match(replies.find(isTooMany)?.error, /Rate limit of 10000 requests per 1000 ms exceeded/)
      return
    }
  })

  test('a small rateLimit refuses the excess, then the next window admits again', async (t) => {
    const app = await build(t, { rateLimit: { max: 5, timeWindow: 200 } }, resources)
    const client = await inject(t, app)
    const replies = await burst(client, 8, 'echo', 'get', undefined)
    assert.equal(replies.filter(isTooMany).length, 3)
    await sleep(220)
    assert.equal((await client.request('echo', 'get', { again: true })).data.again, true)
  })

  test('rateLimit: false lets a burst of 20,000 through', async (t) => {
    const app = await build(t, { rateLimit: false, maxInFlight: 1_000_000, maxInFlightTotal: 1_000_000 }, resources)
    const client = await inject(t, app)
    const replies = await burst(client, 20_000, 'echo', 'get', undefined)
    assert.equal(replies.filter(isTooMany).length, 0)
  })
})

describe('maxConnections', () => {
  test('default is 10,000', () => {
    assert.equal(DEFAULTS.maxConnections, 10_000)
    assert.equal(resolveOptions({}).maxConnections, 10_000)
  })

  test('over the limit the upgrade is refused with 503; a freed slot is usable again', async (t) => {
    const app = await build(t, { maxConnections: 2 }, resources)
    const url = await listen(app)
    const first = await connect(t, url)
    await connect(t, url)
    const refused = await upgrade(t, url)
    assert.equal(refused.status, 503)
    assert.equal(JSON.parse(refused.body).code, 'TOO_MANY_CONNECTIONS')
    first.terminate()
    await until(() => app.drizzle.connections.size === 1, 'the closed slot to be freed')
    assert.equal((await upgrade(t, url)).status, 101)
  })

  test('the cap holds when upgrades pass the guard together while an async app hook runs', async (t) => {
    // Regression: the count was only checked before the app's hooks, so 30 upgrades delayed by an
    // async preHandler (e.g. authentication) all opened with maxConnections: 5.
    const app = await build(t, { maxConnections: 5 }, app => {
      resources(app)
      app.addHook('preHandler', async () => { await sleep(20) })
    })
    const url = await listen(app)
    const attempts = await Promise.all(Array.from({ length: 30 }, () => upgrade(t, url)))
    await sleep(50)
    const opened = attempts.filter(a => a.status === 101 && a.ws.readyState === WebSocket.OPEN)
    assert.equal(app.drizzle.connections.size, 5)
    assert.equal(opened.length, 5)
    const closedCodes = await Promise.all(attempts.filter(a => a.status === 101 && !opened.includes(a)).map(a => a.closed))
    for (const code of closedCodes) assert.equal(code, 1013)
    for (const a of attempts.filter(a => a.status !== 101)) assert.equal(a.status, 503)
  })
})

describe('actionTimeout', () => {
  test('default is 30 s', () => {
    assert.equal(DEFAULTS.actionTimeout, 30_000)
    assert.equal(resolveOptions({}).actionTimeout, 30_000)
  })

  test('an action over the limit gets ACTION_TIMEOUT 504 and its late result is discarded', async (t) => {
    let finished = false
    const app = await build(t, { actionTimeout: 50 }, app => {
      app.drizzle.resource('late', { async run () { await sleep(200); finished = true; return { late: true } } })
    })
    const client = await inject(t, app)
    const id = nextId()
    client.send({ resource: 'late', action: 'run', request_id: id })
    const reply = await client.reply(id)
    assert.deepEqual(reply, { request_id: id, code: 'ACTION_TIMEOUT', error: 'Action did not complete within 50 ms', statusCode: 504 })
    await until(() => finished, 'the handler to finish')
    await sleep(20)
    assert.equal(client.frames.filter(f => f.request_id === id).length, 1, 'the late result is never sent')
  })

  test('an action\'s own timeout overrides the option, both ways, and 0 disables it', async (t) => {
    const app = await build(t, { actionTimeout: 50 }, app => {
      app.drizzle.resource('custom', {
        patient: { timeout: 1000, async handler () { await sleep(150); return 'patient' } },
        hasty: { timeout: 20, async handler () { await sleep(150); return 'hasty' } },
        unbounded: { timeout: 0, async handler () { await sleep(150); return 'unbounded' } }
      })
    })
    const client = await inject(t, app)
    const [patient, hasty, unbounded] = await Promise.all([
      client.request('custom', 'patient'), client.request('custom', 'hasty'), client.request('custom', 'unbounded')
    ])
    assert.equal(patient.data, 'patient')
    assert.equal(hasty.code, 'ACTION_TIMEOUT')
    assert.equal(hasty.error, 'Action did not complete within 20 ms')
    assert.equal(unbounded.data, 'unbounded')
  })
})

describe('maxBufferedBytes and slowConsumer', () => {
  test('defaults are 4 MiB and "close"', () => {
    assert.equal(DEFAULTS.maxBufferedBytes, 4 * MiB)
    assert.equal(DEFAULTS.slowConsumer, 'close')
    const resolved = resolveOptions({})
    assert.equal(resolved.maxBufferedBytes, 4 * MiB)
    assert.equal(resolved.slowConsumer, 'close')
  })

  /** A real client subscribed to 'firehose' that stops reading its socket. */
  async function pausedSubscriber (t: TestContext, url: string): Promise<TestClient> {
    const client = await connect(t, url)
    await client.request('$topic', 'subscribe', { topic: 'firehose' })
    ;(client.ws as unknown as { _socket: { pause (): void } })._socket.pause()
    return client
  }

  function resume (client: TestClient): void {
    (client.ws as unknown as { _socket: { resume (): void } })._socket.resume()
  }

  /** Publishes 16 KiB payloads in batches until `stop()` or 64 MiB were offered; returns how many. */
  async function flood (app: FastifyInstance, stop: () => boolean): Promise<number> {
    const payload = { blob: 'y'.repeat(16 * 1024) }
    let sent = 0
    while (!stop() && sent < 4096) {
      for (let i = 0; i < 64; i++, sent++) await app.drizzle.publish('firehose', payload)
      await new Promise(resolve => setImmediate(resolve))
    }
    return sent
  }

  test('"close": a consumer over maxBufferedBytes is closed with 1013 and the others go on', async (t) => {
    const app = await build(t, { maxBufferedBytes: 64 * 1024 }, resources)
    const url = await listen(app)
    const slow = await pausedSubscriber(t, url)
    const [conn] = [...app.drizzle.connections]
    const socket = (conn as unknown as { socket: WebSocket }).socket
    const sent = await flood(app, () => socket.readyState !== WebSocket.OPEN)
    assert.ok(sent < 4096, 'the slow consumer was closed before the flood ended')
    resume(slow)
    assert.equal(await slow.closed, 1013)
    assert.ok(slow.publications('firehose').length < sent)

    const healthy = await connect(t, url)
    await healthy.request('$topic', 'subscribe', { topic: 'firehose' })
    await app.drizzle.publish('firehose', { after: true })
    await healthy.waitFor(f => f.topic === 'firehose' && f.data.after === true)
  })

  test('"drop": publications over maxBufferedBytes are dropped for that socket, which stays open', async (t) => {
    const app = await build(t, { maxBufferedBytes: 64 * 1024, slowConsumer: 'drop' }, resources)
    const url = await listen(app)
    const slow = await pausedSubscriber(t, url)
    const [conn] = [...app.drizzle.connections]
    const socket = (conn as unknown as { socket: WebSocket }).socket
    const sent = await flood(app, () => false)
    assert.ok(socket.bufferedAmount < 64 * 1024 + 32 * 1024, `buffered ${socket.bufferedAmount} bytes`)
    resume(slow)
    await until(() => socket.bufferedAmount === 0, 'the backlog to drain')
    await sleep(50)
    const received = slow.publications('firehose').length
    assert.ok(received > 0 && received < sent, `received ${received} of ${sent}`)
    assert.equal(slow.closeCode, undefined, 'the socket stays open')
    // Once drained, it receives again and still answers requests.
    await app.drizzle.publish('firehose', { after: true })
    await slow.waitFor(f => f.topic === 'firehose' && f.data.after === true)
    assert.deepEqual((await slow.request('echo', 'get', [2])).data, [2])
  })

  for (const slowConsumer of ['close', 'drop'] as const) {
    test(`black-box: a paused socket offered 200 MB grows the server's RSS by < 120 MB (${slowConsumer})`, { timeout: 60_000 }, async (t) => {
      const options: DrizzleOptions = slowConsumer === 'close' ? {} : { slowConsumer }
      const server = await ChildServer.start(options)
      t.after(() => server.kill())
      const client = await connect(t, server.url)
      await client.request('$topic', 'subscribe', { topic: 'firehose' })
      ;(client.ws as unknown as { _socket: { pause (): void } })._socket.pause()

      const figures = await server.request({ type: 'publish', topic: 'firehose', count: 3200, size: 64 * 1024, batch: 32 }, 'published', 45_000)
      const growth = figures.growth as number
      t.diagnostic(`${slowConsumer}: offered ${((figures.offeredBytes as number) / MiB).toFixed(0)} MiB, RSS ${((figures.baseline as number) / MiB).toFixed(0)} MiB -> peak +${(growth / MiB).toFixed(1)} MiB, max buffered ${((figures.maxBuffered as number) / MiB).toFixed(1)} MiB`)
      assert.ok((figures.offeredBytes as number) >= 200 * MiB)
      assert.ok(growth < 120 * MiB, `RSS grew by ${(growth / MiB).toFixed(1)} MiB`)
      assert.ok((figures.maxBuffered as number) < DEFAULTS.maxBufferedBytes + 128 * 1024)

      resume(client)
      if (slowConsumer === 'close') {
        await client.closed
        assert.equal(server.stderr.match(/slow consumer closed/g)?.length, 1, 'closed and logged once')
        assert.ok(client.closeCode === 1013 || client.closeCode === 1006, `closed with ${client.closeCode}`)
      } else {
        assert.deepEqual((await client.request('echo', 'get', { alive: true }, nextId())).data, { alive: true })
        assert.equal(client.closeCode, undefined)
      }
    })
  }

  test('replies are never dropped: a peer that does not read them is closed with 1013 past 2 x maxBufferedBytes', async (t) => {
    // Regression: replies were written whatever the peer's backlog, so a client sending tiny invalid
    // frames without reading the ~100-byte errors made the server buffer them without bound.
    // rateLimit off: a flood this fast is otherwise closed with 1008 first (tested below).
    const app = await build(t, { maxBufferedBytes: 16 * 1024, slowConsumer: 'drop', rateLimit: false }, resources)
    const url = await listen(app)
    const client = await connect(t, url)
    ;(client.ws as unknown as { _socket: { pause (): void } })._socket.pause()
    const [conn] = [...app.drizzle.connections] as unknown as Array<{ closed: boolean, socket: WebSocket }>
    const socket = conn?.socket as WebSocket
    // The code the server closes with: the client may not read it, if ws's closeTimeout (1 s) destroys
    // the socket first while this one process both floods and serves.
    const codes: number[] = []
    const close = socket.close.bind(socket)
    socket.close = (code?: number, reason?: string) => { codes.push(code as number); close(code, reason) }
    let maxBuffered = 0
    for (let i = 0; i < 100_000; i++) client.ws.send('x')
    await until(() => {
      maxBuffered = Math.max(maxBuffered, socket.bufferedAmount)
      return conn?.closed === true
    }, 'the peer to be closed', 10_000)
    resume(client)
    assert.deepEqual(codes, [1013])
    assert.ok([1013, 1006].includes(await client.closed))
    assert.ok(maxBuffered <= 2 * 16 * 1024 + 1024, `the server buffered ${maxBuffered} bytes`)
    assert.ok(client.frames.length < 100_000)
    assert.ok(client.frames.every(f => f.code === 'VALIDATION_ERROR'))
    await until(() => app.drizzle.connections.size === 0, 'the peer to be forgotten')
  })

  test('black-box: a peer flooding 1,000,000 tiny frames without reading replies grows the server\'s RSS by < 120 MB', { timeout: 60_000 }, async (t) => {
    // rateLimit off, so that the reply-buffer bound is what stops it (with the default, the flood
    // protection closes the peer with 1008 far earlier).
    const server = await ChildServer.start({ rateLimit: false })
    t.after(() => server.kill())
    const client = await connect(t, server.url)
    client.ws.on('error', () => {})
    ;(client.ws as unknown as { _socket: { pause (): void } })._socket.pause()
    const sampling = server.request({ type: 'sample', ms: 30_000, untilClosed: true }, 'sampled', 45_000)
    for (let i = 0; i < 1_000_000; i++) {
      if (client.closeCode !== undefined) break
      client.ws.send('x')
      if (i % 10_000 === 0) await new Promise(resolve => setImmediate(resolve))
    }
    const figures = await sampling
    const growth = figures.growth as number
    t.diagnostic(`reply flood: RSS ${((figures.baseline as number) / MiB).toFixed(0)} MiB -> peak +${(growth / MiB).toFixed(1)} MiB; closed after ${figures.elapsed} ms`)
    assert.equal(figures.connections, 0, 'the peer was closed')
    assert.ok(growth < 120 * MiB, `RSS grew by ${(growth / MiB).toFixed(1)} MiB`)
    assert.match(server.stderr, /slow consumer closed: replies not read/)
  })

  test('a timed-out handler keeps its in-flight slot until it really ends', async (t) => {
    const app = await build(t, { maxInFlight: 2, actionTimeout: 50 }, resources)
    const client = await inject(t, app)
    const [a, b] = await Promise.all([client.request('slow', 'wait', { ms: 400 }), client.request('slow', 'wait', { ms: 400 })])
    assert.deepEqual([a.code, b.code], ['ACTION_TIMEOUT', 'ACTION_TIMEOUT'])
    assert.equal((await client.request('echo', 'get', { n: 1 })).code, 'TOO_MANY_REQUESTS', 'both hung handlers still hold their slot')
    await sleep(450)
    assert.deepEqual((await client.request('echo', 'get', { n: 2 })).data, { n: 2 }, 'the slots are free once the handlers ended')
  })

  test('a peer sending more than twice its rate limit in one window is closed with 1008, garbage included', async (t) => {
    const app = await build(t, { rateLimit: { max: 50, timeWindow: 60_000 } }, resources)
    const client = await connect(t, await listen(app))
    for (let i = 0; i < 60; i++) client.send({ resource: 'echo', action: 'get', request_id: i })
    for (let i = 0; i < 60; i++) client.send('not json')
    assert.equal(await client.closed, 1008)
    const replies = client.frames.filter(f => typeof f.request_id === 'number')
    assert.equal(replies.filter(f => f.code === 'TOO_MANY_REQUESTS').length, 10, 'requests 51 to 60 are refused')
    assert.ok(client.frames.filter(f => f.code === 'VALIDATION_ERROR').length <= 40, 'garbage counts toward the rate')
  })

  test('control: without the policy (1 GB allowed) the same flood does buffer ~200 MB', { timeout: 60_000 }, async (t) => {
    // Shows the measurement above is able to see the growth it bounds.
    const server = await ChildServer.start({ maxBufferedBytes: 1024 * MiB, maxBufferedBytesTotal: 1024 * MiB, slowConsumer: 'drop' })
    t.after(() => server.kill())
    const client = await connect(t, server.url)
    await client.request('$topic', 'subscribe', { topic: 'firehose' })
    ;(client.ws as unknown as { _socket: { pause (): void } })._socket.pause()
    const figures = await server.request({ type: 'publish', topic: 'firehose', count: 3200, size: 64 * 1024, batch: 32 }, 'published', 45_000)
    t.diagnostic(`control: RSS peak +${((figures.growth as number) / MiB).toFixed(1)} MiB, buffered ${((figures.maxBuffered as number) / MiB).toFixed(1)} MiB`)
    assert.ok((figures.maxBuffered as number) > 150 * MiB)
  })
})

describe('heartbeatInterval', () => {
  test('default is 30 s', () => {
    assert.equal(DEFAULTS.heartbeatInterval, 30_000)
    assert.equal(resolveOptions({}).heartbeatInterval, 30_000)
  })

  test('a peer that does not answer pings is terminated; one that does stays', async (t) => {
    const app = await build(t, { heartbeatInterval: 100 }, resources)
    const url = await listen(app)
    const alive = await connect(t, url)
    const silent = await connect(t, url, { autoPong: false })
    let pings = 0
    silent.ws.on('ping', () => { pings++ })
    const started = Date.now()
    assert.equal(await silent.closed, 1006, 'terminated, not closed politely')
    const elapsed = Date.now() - started
    assert.ok(pings >= 1, 'it was pinged first')
    assert.ok(elapsed < 1000, `terminated after ${elapsed} ms`)
    await until(() => app.drizzle.connections.size === 1, 'the dead peer to be forgotten')
    await sleep(300)
    assert.equal(alive.closeCode, undefined)
    assert.deepEqual((await alive.request('echo', 'get', [3])).data, [3])
  })

  test('heartbeatInterval: 0 disables it', async (t) => {
    const app = await build(t, { heartbeatInterval: 0 }, resources)
    const url = await listen(app)
    const silent = await connect(t, url, { autoPong: false })
    let pings = 0
    silent.ws.on('ping', () => { pings++ })
    await sleep(250)
    assert.equal(pings, 0)
    assert.equal(silent.closeCode, undefined)
  })
})

describe('allowedOrigins', () => {
  async function statusFor (t: TestContext, app: FastifyInstance, headers: Record<string, string>): Promise<number> {
    try {
      await inject(t, app, headers)
      return 101
    } catch (err) {
      return Number(/Unexpected server response: (\d+)/.exec((err as Error).message)?.[1])
    }
  }

  test('default: no Origin and the same origin connect; another origin is refused with 403', async (t) => {
    assert.equal(resolveOptions({}).allowedOrigins, undefined)
    const app = await build(t, {}, resources)
    const url = await listen(app)
    const host = new URL(url).host
    assert.equal((await upgrade(t, url)).status, 101, 'no Origin (a non-browser client)')
    assert.equal((await upgrade(t, url, { origin: `http://${host}` })).status, 101, 'same origin')
    const refused = await upgrade(t, url, { origin: 'https://evil.example' })
    assert.equal(refused.status, 403)
    assert.equal(JSON.parse(refused.body).code, 'FORBIDDEN')
    assert.equal((await upgrade(t, url, { origin: `http://${host}.evil.example` })).status, 403, 'a suffix is not the same host')
    assert.equal((await upgrade(t, url, { origin: 'null' })).status, 403, 'an opaque origin')
  })

  test('default: the same-origin check ignores the case of Host and default ports', async (t) => {
    const app = await build(t, {}, resources)
    const statusOf = (headers: Record<string, string>) => statusFor(t, app, headers)
    assert.equal(await statusOf({ origin: 'https://example.com', host: 'EXAMPLE.com' }), 101)
    assert.equal(await statusOf({ origin: 'https://example.com', host: 'example.com:443' }), 101)
    assert.equal(await statusOf({ origin: 'http://example.com:8080', host: 'example.com:8080' }), 101)
    assert.equal(await statusOf({ origin: 'https://example.com', host: 'example.com:8443' }), 403)
    assert.equal(await statusOf({ origin: 'https://example.com' }), 403, 'no Host to compare with')
  })

  test('an array allows exactly its origins', async (t) => {
    const app = await build(t, { allowedOrigins: ['https://app.example', 'https://admin.example'] }, resources)
    assert.equal(await statusFor(t, app, { origin: 'https://app.example' }), 101)
    assert.equal(await statusFor(t, app, { origin: 'https://admin.example' }), 101)
    assert.equal(await statusFor(t, app, { origin: 'https://app.example.evil' }), 403)
    assert.equal(await statusFor(t, app, { origin: 'http://app.example' }), 403)
    assert.equal(await statusFor(t, app, { origin: 'https://same.example', host: 'same.example' }), 403, 'same origin is not implied')
    assert.equal(await statusFor(t, app, {}), 101)
  })

  test('"*" allows any origin', async (t) => {
    const app = await build(t, { allowedOrigins: '*' }, resources)
    assert.equal(await statusFor(t, app, { origin: 'https://anything.example' }), 101)
  })

  test('a function decides, given the origin and the upgrade request', async (t) => {
    const seen: Array<[string, unknown]> = []
    const app = await build(t, {
      allowedOrigins: (origin, request) => {
        seen.push([origin, request.headers['x-tenant']])
        return origin.endsWith('.trusted.example')
      }
    }, resources)
    assert.equal(await statusFor(t, app, { origin: 'https://a.trusted.example', 'x-tenant': 't1' }), 101)
    assert.equal(await statusFor(t, app, { origin: 'https://a.untrusted.example' }), 403)
    assert.deepEqual(seen, [['https://a.trusted.example', 't1'], ['https://a.untrusted.example', undefined]])
  })
})

test('the server keeps serving after every refusal above', async (t) => {
  const app = await build(t, { maxConnections: 3, rateLimit: { max: 2, timeWindow: 60_000 } }, resources)
  const url = await listen(app)
  const client = await connect(t, url)
  const replies = await burst(client, 3, 'echo', 'get', undefined)
  assert.equal(replies.filter(isTooMany).length, 1)
  const other = await connect(t, url)
  assert.deepEqual((await other.request('echo', 'get', [4])).data, [4])
})
