import { test, describe, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { once } from 'node:events'
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import WebSocket from 'ws'
import drizzle, { type Broker, type DrizzleOptions } from '../lib/index.js'
import { DEFAULTS, resolveOptions } from '../lib/options.js'
import { ChildServer } from './fixtures/child-server.js'
import { build, connect, inject, listen, sleep, type TestClient } from './helpers/client.js'
import { recordingLogger, type LogEntry } from './helpers/logger.js'
import { clientFrame, OPCODE, RawPeer } from './helpers/raw-peer.js'

// Issue #14, "bounded in total": what a few hostile clients can make the server hold, summed over
// all sockets (subscriptions, unfinished messages, buffered replies, actions in flight), close codes
// and log lines of bad frames, topic names, and the open-file limit. Memory is measured in a child
// process (test/fixtures/limits-server.ts), never in this one; each heavy test prints its figures.

const MiB = 1024 * 1024
const mib = (bytes: unknown): string => ((bytes as number) / MiB).toFixed(1)
const ms = (value: unknown): string => (value as number).toFixed(1)

/** Replies counted by code ('ok' for a reply without error). */
type Tally = Record<string, number>

function count (tally: Tally, key: string): void {
  tally[key] = (tally[key] ?? 0) + 1
}

/**
 * Sends `total` frames on `ws`, at most `window` unanswered at a time, and counts the replies by
 * code: a fast client that reads its replies, so only the server's limits slow it down.
 */
async function pipeline (ws: WebSocket, total: number, frame: (i: number) => string, window: number): Promise<Tally> {
  const tally: Tally = {}
  let sent = 0
  let answered = 0
  return await new Promise((resolve, reject) => {
    const onMessage = (data: Buffer): void => {
      const reply = JSON.parse(data.toString()) as { code?: string, topic?: string }
      if (reply.topic !== undefined) return
      count(tally, reply.code ?? 'ok')
      answered++
      if (sent < total) ws.send(frame(sent++))
      else if (answered === total) finish()
    }
    const onClose = (code: number): void => { finish(new Error(`closed with ${code} after ${answered} replies`)) }
    function finish (err?: Error): void {
      ws.off('message', onMessage)
      ws.off('close', onClose)
      if (err === undefined) resolve(tally)
      else reject(err)
    }
    ws.on('message', onMessage)
    ws.on('close', onClose)
    while (sent < Math.min(window, total)) ws.send(frame(sent++))
  })
}

/** A plain ws client over the network, open. */
async function open (url: string, options: WebSocket.ClientOptions = {}): Promise<WebSocket> {
  const ws = new WebSocket(url, options)
  ws.on('error', () => {})
  await once(ws, 'open')
  return ws
}

/** Waits until `check` holds, polling; fails with `what` after `limit` ms. */
async function until (check: () => boolean, what: string, limit = 5000): Promise<void> {
  const deadline = Date.now() + limit
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(5)
  }
}

/** Polls the child until `check` holds on its stats. */
async function statsUntil (server: ChildServer, check: (stats: Record<string, unknown>) => boolean, what: string, limit = 15_000): Promise<Record<string, unknown>> {
  const deadline = Date.now() + limit
  for (;;) {
    const stats = await server.request({ type: 'stats' }, 'stats')
    if (check(stats)) return stats
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(stats)}`)
    await sleep(20)
  }
}

function echo (app: FastifyInstance): void {
  app.drizzle.resource('echo', { async get (message) { return message.data ?? null } })
}

describe('options', () => {
  test('defaults of the totals', () => {
    const expected = {
      maxSubscriptions: 1024,
      maxInFlightTotal: 10_000,
      maxBufferedBytesTotal: 128 * MiB,
      maxIncompleteBytesTotal: 32 * MiB,
      incompleteTimeout: 10_000
    }
    const resolved = resolveOptions({})
    for (const [name, value] of Object.entries(expected)) {
      assert.equal(DEFAULTS[name as keyof typeof expected], value, name)
      assert.equal(resolved[name as keyof typeof expected], value, name)
    }
  })
})

describe('maxSubscriptions', () => {
  const subscribe = (client: TestClient, topic: string): Promise<Record<string, any>> => client.request('$topic', 'subscribe', { topic })

  test('default 1024: `$topic/subscribe` past it answers TOO_MANY_SUBSCRIPTIONS (429); __all__ is not counted; unsubscribing frees a slot', async (t) => {
    const app = await build(t, {}, app => { app.drizzle.topic('rooms/:id') })
    const client = await inject(t, app)
    // In batches: 1024 subscribes at once would also meet maxInFlight (1024 per connection).
    for (let first = 0; first < 1024; first += 128) {
      const replies = await Promise.all(Array.from({ length: 128 }, (_, i) => subscribe(client, `rooms/${first + i}`)))
      assert.ok(replies.every(reply => reply.data?.subscribed === true))
    }
    const [conn] = [...app.drizzle.connections]
    assert.equal(conn?.topics.size, 1025, '1024 topics and __all__')
    assert.ok(conn?.topics.has('__all__'))

    const refused = await subscribe(client, 'rooms/1024')
    assert.equal(refused.code, 'TOO_MANY_SUBSCRIPTIONS')
    assert.equal(refused.statusCode, 429)
    assert.equal(refused.error, 'Subscription limit of 1024 topics per connection reached')
    assert.equal(app.drizzle.subscriberCount('rooms/1024'), 0)
    assert.equal((await subscribe(client, 'rooms/7')).data?.subscribed, true, 'a topic it holds is not refused')
    assert.equal(conn?.topics.size, 1025)

    assert.equal((await client.request('$topic', 'unsubscribe', { topic: 'rooms/0' })).data?.subscribed, false)
    assert.equal((await subscribe(client, 'rooms/1024')).data?.subscribed, true, 'the freed slot is usable')
    assert.equal((await subscribe(client, 'rooms/1025')).code, 'TOO_MANY_SUBSCRIPTIONS')
    await app.drizzle.publish('rooms/1025', 'not for it')
    await app.drizzle.publish('rooms/1024', 'for it')
    await client.waitFor(f => f.topic === 'rooms/1024')
    assert.equal(client.publications('rooms/1025').length, 0)
  })

  test('a handler\'s ctx.subscribe past the limit rejects with TOO_MANY_SUBSCRIPTIONS (429), sharing one count with `$topic`', async (t) => {
    const caught: Array<{ code?: string, statusCode?: number }> = []
    const app = await build(t, { maxSubscriptions: 3 }, app => {
      app.drizzle.topic('rooms/:id')
      app.drizzle.resource('rooms', {
        async join (message, ctx) { return await ctx.subscribe(`rooms/${String(message.data?.id)}`) },
        async tryJoin (message, ctx) {
          try {
            return await ctx.subscribe(`rooms/${String(message.data?.id)}`)
          } catch (err) {
            caught.push(err as { code?: string, statusCode?: number })
            return 'refused'
          }
        }
      })
    })
    const client = await inject(t, app)
    assert.equal((await client.request('rooms', 'join', { id: 1 })).data, true)
    assert.equal((await subscribe(client, 'rooms/2')).data?.subscribed, true)
    assert.equal((await client.request('rooms', 'join', { id: 3 })).data, true)
    assert.equal((await client.request('rooms', 'join', { id: 1 })).data, false, 'already subscribed: not refused')

    const refused = await client.request('rooms', 'join', { id: 4 })
    assert.deepEqual([refused.code, refused.statusCode, refused.error], ['TOO_MANY_SUBSCRIPTIONS', 429, 'Subscription limit of 3 topics per connection reached'])
    assert.equal((await subscribe(client, 'rooms/4')).code, 'TOO_MANY_SUBSCRIPTIONS')
    assert.equal((await client.request('rooms', 'tryJoin', { id: 5 })).data, 'refused')
    assert.deepEqual(caught.map(err => [err.code, err.statusCode]), [['TOO_MANY_SUBSCRIPTIONS', 429]])
    assert.deepEqual([...[...app.drizzle.connections][0]?.topics ?? []].sort(), ['__all__', 'rooms/1', 'rooms/2', 'rooms/3'])
  })

  const ATTEMPTS = 50_000
  const subscribeFrame = (i: number): string => JSON.stringify({ resource: '$topic', action: 'subscribe', data: { topic: `rooms/${i}` }, request_id: i })

  /**
   * One socket tries ATTEMPTS topics, 32 requests in flight, then closes, while a client of the
   * child times a request every 5 ms and the child samples its RSS. The child first serves 20,000
   * requests, so the baseline is a warm server's, not one still growing its heap.
   */
  async function subscriptionAttack (t: TestContext, options: DrizzleOptions) {
    // rateLimit raised so that 50,000 subscribes take seconds, not the minutes of the default rate.
    const server = await ChildServer.start({ rateLimit: { max: 100_000, timeWindow: 1000 }, ...options })
    t.after(() => server.kill())
    const warm = await open(server.url)
    await pipeline(warm, 20_000, i => JSON.stringify({ resource: 'echo', action: 'get', data: { i }, request_id: i }), 32)
    warm.terminate()
    await statsUntil(server, stats => stats.connections === 0, 'the warm-up client to leave')

    const attacker = await open(server.url)
    const { figures } = await server.sample(120_000)
    const probing = server.request({ type: 'probe', ms: 120_000, every: 5 }, 'probed', 150_000)
    const started = performance.now()
    const tally = await pipeline(attacker, ATTEMPTS, subscribeFrame, 32)
    const elapsed = performance.now() - started
    const held = await server.request({ type: 'stats' }, 'stats')
    attacker.terminate()
    await statsUntil(server, stats => stats.connections === 1, 'the attacker to be closed')
    server.child.send({ type: 'stop' })
    const rss = await figures
    const latency = await probing
    server.kill()
    t.diagnostic(`${ATTEMPTS} subscribes in ${elapsed.toFixed(0)} ms: ${JSON.stringify(tally)}; subscriptions held ${String(held.subscriptions)}; ` +
      `RSS ${mib(rss.baseline)} MiB -> peak +${mib(rss.growth)} MiB; another client: ${String(latency.count)} requests, ` +
      `p50 ${ms(latency.p50)} ms, p99 ${ms(latency.p99)} ms, max ${ms(latency.max)} ms`)
    return { tally, held, growth: rss.growth as number, p99: latency.p99 as number }
  }

  test('black-box: a socket trying 50,000 rooms/N topics grows the server\'s RSS by < 5 MiB; another client\'s p99 stays < 50 ms', { timeout: 240_000 }, async (t) => {
    let run = await subscriptionAttack(t, {})
    // p99 is a timing on two cores shared with other work, and the RSS peak includes garbage a
    // starved GC has not collected yet (seen once at +15 MiB under a load average of 8): a run
    // spoiled by outside load is measured once more before failing.
    if (run.p99 >= 50 || run.growth >= 5 * MiB) run = await subscriptionAttack(t, {})
    assert.deepEqual(run.tally, { ok: 1024, TOO_MANY_SUBSCRIPTIONS: ATTEMPTS - 1024 })
    assert.equal(run.held.subscriptions, 1024 + 2, 'its 1024 topics, its __all__ and the other client\'s')
    assert.ok(run.growth < 5 * MiB, `RSS grew by ${mib(run.growth)} MiB`)
    assert.ok(run.p99 < 50, `p99 ${ms(run.p99)} ms`)
  })

  test('control: with maxSubscriptions 100,000 the same attack holds 50,000 topics and the RSS grows > 10 MiB', { timeout: 120_000 }, async (t) => {
    // Shows that the measurement above sees the growth it bounds.
    const run = await subscriptionAttack(t, { maxSubscriptions: 100_000 })
    assert.deepEqual(run.tally, { ok: ATTEMPTS })
    assert.ok(run.growth > 10 * MiB, `RSS grew by ${mib(run.growth)} MiB`)
  })
})

describe('unfinished messages', () => {
  /** Fragments of one text message that never completes: 16 x 65,000 bytes, under the default maxPayload (1 MiB). */
  const FRAGMENT = Buffer.alloc(65_000, 'x')
  const UNFINISHED = [
    clientFrame(OPCODE.TEXT, FRAGMENT, { fin: false }),
    ...Array.from({ length: 15 }, () => clientFrame(OPCODE.CONTINUATION, FRAGMENT, { fin: false }))
  ]

  test('black-box, defaults: 300 sockets each sending an unfinished ~1 MiB message raise the peak RSS by < 120 MiB and are all closed with 1008 or 1009 within 30 s', { timeout: 120_000 }, async (t) => {
    const server = await ChildServer.start({})
    t.after(() => server.kill())
    // Half answer pings, half do not: neither escapes.
    const peers = await Promise.all(Array.from({ length: 300 }, (_, i) => RawPeer.open(server.url, { answerPings: i % 2 === 0 })))
    t.after(() => { for (const peer of peers) peer.destroy() })
    const { figures } = await server.sample(60_000, true)
    const started = performance.now()
    // One socket after the other: the first ones fit in maxIncompleteBytesTotal (32 MiB) and wait
    // for incompleteTimeout (10 s); the others pass the total and are closed at once.
    for (const peer of peers) for (const frame of UNFINISHED) await peer.write(frame)
    const sent = performance.now() - started
    await Promise.all(peers.map(peer => peer.gone))
    const rss = await figures
    const codes: Tally = {}
    const endings: Tally = {}
    for (const peer of peers) {
      count(codes, String(peer.closeCode))
      count(endings, String(peer.ending))
    }
    const latest = Math.max(...peers.map(peer => peer.closedAfter ?? Infinity))
    t.diagnostic(`300 MiB sent in ${sent.toFixed(0)} ms; close codes ${JSON.stringify(codes)}, TCP endings ${JSON.stringify(endings)}; ` +
      `last close frame ${latest.toFixed(0)} ms after connecting; RSS ${mib(rss.baseline)} MiB -> peak +${mib(rss.growth)} MiB ` +
      `(heap +${mib(rss.heapGrowth)} MiB, external +${mib(rss.externalGrowth)} MiB)`)
    assert.equal((codes['1008'] ?? 0) + (codes['1009'] ?? 0), 300, 'every one got a close frame with 1008 or 1009')
    assert.ok((codes['1008'] ?? 0) >= 1 && (codes['1008'] ?? 0) <= 32, 'those under the total were timed out')
    assert.ok((codes['1009'] ?? 0) >= 300 - 32, 'those past the total were closed at once')
    assert.ok(latest < 30_000)
    assert.ok((rss.growth as number) < 120 * MiB, `RSS grew by ${mib(rss.growth)} MiB`)
    assert.equal(rss.connections, 0)
  })

  test('a socket passing maxIncompleteBytesTotal is closed with 1009; the others holding less go on', async (t) => {
    const app = await build(t, { maxIncompleteBytesTotal: 256 * 1024 }, echo)
    const url = await listen(app)
    // A request sent in fragments; the holder stops before its last one.
    const request = Buffer.from(JSON.stringify({ resource: 'echo', action: 'get', data: { s: 'y'.repeat(200_000) }, request_id: 1 }))
    const holder = await RawPeer.open(url)
    t.after(() => holder.destroy())
    await holder.write(clientFrame(OPCODE.TEXT, request.subarray(0, 100_000), { fin: false }))
    await holder.write(clientFrame(OPCODE.CONTINUATION, request.subarray(100_000, 199_000), { fin: false }))
    // The socket adding bytes while the total is over is the one closed: the holder's must all be
    // read first (the count is private; nothing public says how much a socket holds).
    const [conn] = [...app.drizzle.connections] as unknown as Array<{ strain?: { incomplete: number } }>
    await until(() => (conn?.strain?.incomplete ?? 0) >= 199_000, 'the server to read the holder\'s fragments')

    const greedy = await RawPeer.open(url)
    t.after(() => greedy.destroy())
    await greedy.write(clientFrame(OPCODE.TEXT, Buffer.alloc(100_000, 'z'), { fin: false }))
    await greedy.gone
    assert.equal(greedy.closeCode, 1009)

    // The greedy socket's share was given back: a newcomer may hold 50 KB.
    const small = await RawPeer.open(url)
    t.after(() => small.destroy())
    await small.write(clientFrame(OPCODE.TEXT, Buffer.alloc(50_000, 'w'), { fin: false }))
    await holder.write(clientFrame(OPCODE.CONTINUATION, request.subarray(199_000)))
    await until(() => holder.texts.length > 0, 'the holder\'s reply')
    assert.equal(JSON.parse(holder.texts[0] ?? '{}').data?.s?.length, 200_000, 'the holder completed its request and got its reply')
    assert.equal(holder.closeCode, undefined)
    assert.equal(small.closeCode, undefined)
  })

  test('a frame counts with the bytes received, not the length its header declares', async (t) => {
    // Regression: ws adds a frame's declared length as soon as it reads the header, and that was
    // counted: two 14-byte headers declaring 1,000,000 bytes took the whole 1 MiB budget, closing
    // with 1009 whoever sent a big message next.
    const app = await build(t, { maxIncompleteBytesTotal: MiB }, echo)
    const url = await listen(app)
    const frame = clientFrame(OPCODE.TEXT, Buffer.alloc(1_000_000, 'h'))
    const teasers = await Promise.all([1, 2, 3].map(() => RawPeer.open(url)))
    t.after(() => { for (const peer of teasers) peer.destroy() })
    for (const peer of teasers) await peer.write(frame.subarray(0, 1000))
    const client = await connect(t, url)
    client.send({ resource: 'echo', action: 'get', data: { s: 'm'.repeat(600_000) }, request_id: 'big' })
    assert.equal((await client.reply('big', 5000)).data?.s?.length, 600_000)
    assert.deepEqual(teasers.map(peer => peer.closeCode), [undefined, undefined, undefined])
    assert.equal(client.closeCode, undefined)
  })

  test('a peer that answers pings is closed with 1008 once its message stays unfinished for incompleteTimeout', async (t) => {
    const app = await build(t, { incompleteTimeout: 600, heartbeatInterval: 100 }, echo)
    const peer = await RawPeer.open(await listen(app))
    t.after(() => peer.destroy())
    await peer.write(clientFrame(OPCODE.TEXT, Buffer.alloc(10_000, 'x'), { fin: false }))
    await peer.gone
    t.diagnostic(`closed with ${String(peer.closeCode)} after ${ms(peer.closedAfter)} ms, ${peer.pings} pings answered`)
    assert.equal(peer.closeCode, 1008)
    assert.ok(peer.pings >= 3, `answered ${peer.pings} pings`)
    assert.ok((peer.closedAfter as number) >= 600 && (peer.closedAfter as number) < 5000)
  })

  test('trickled empty fragments do not restart the time limit', async (t) => {
    // Regression: the clock restarted whenever the bytes held shrank, which ws's consuming a frame
    // header does: an empty fragment sent in two TCP segments every 120 ms kept a message open forever.
    const app = await build(t, { incompleteTimeout: 600 }, echo)
    const peer = await RawPeer.open(await listen(app))
    t.after(() => peer.destroy())
    await peer.write(clientFrame(OPCODE.TEXT, Buffer.alloc(10_000, 'x'), { fin: false }))
    const empty = clientFrame(OPCODE.CONTINUATION, Buffer.alloc(0), { fin: false })
    for (let i = 0; i < 40 && peer.closeCode === undefined; i++) {
      await sleep(100)
      await peer.write(empty.subarray(0, 3))
      await sleep(20)
      await peer.write(empty.subarray(3))
    }
    t.diagnostic(`closed with ${String(peer.closeCode)} after ${ms(peer.closedAfter ?? NaN)} ms`)
    assert.equal(peer.closeCode, 1008)
  })

  test('a fragmented message completed in time is served, and the socket stays open', async (t) => {
    const app = await build(t, { incompleteTimeout: 2000, maxIncompleteBytesTotal: 64 * 1024 }, echo)
    const client = await connect(t, await listen(app))
    const text = JSON.stringify({ resource: 'echo', action: 'get', data: { s: 'f'.repeat(30_000) }, request_id: 'fragments' })
    for (let i = 0; i < 3; i++) {
      client.ws.send(text.slice(i * 10_000, (i + 1) * 10_000), { fin: false })
      await sleep(300)
    }
    client.ws.send(text.slice(30_000), { fin: true })
    const reply = await client.reply('fragments')
    assert.equal(reply.data?.s?.length, 30_000)
    // Its bytes no longer count: another message as big is let in.
    client.send({ resource: 'echo', action: 'get', data: { s: 'g'.repeat(50_000) }, request_id: 'whole' })
    assert.equal((await client.reply('whole')).data?.s?.length, 50_000)
    assert.equal(client.closeCode, undefined)
    assert.deepEqual((await client.request('echo', 'get', [1])).data, [1])
  })

  test('a steady stream of complete messages is never timed out, however TCP splits it', async (t) => {
    // Regression: each chunk below ends one request and starts the next with one byte more of it, so
    // the bytes held after every chunk only grow, and the clock, restarted only when they shrank,
    // closed the socket after incompleteTimeout although every request completes within ~20 ms.
    const app = await build(t, { incompleteTimeout: 1000 }, echo)
    const peer = await RawPeer.open(await listen(app))
    t.after(() => peer.destroy())
    const frames = Array.from({ length: 121 }, (_, i) => {
      const empty = JSON.stringify({ resource: 'echo', action: 'get', data: { s: '' }, request_id: i })
      return clientFrame(OPCODE.TEXT, JSON.stringify({ resource: 'echo', action: 'get', data: { s: 's'.repeat(2000 - empty.length) }, request_id: i }))
    })
    let offset = 10
    await peer.write((frames[0] as Buffer).subarray(0, offset))
    for (let i = 0; i < 120; i++) {
      await sleep(20)
      await peer.write(Buffer.concat([(frames[i] as Buffer).subarray(offset), (frames[i + 1] as Buffer).subarray(0, offset + 1)]))
      offset++
    }
    await until(() => peer.texts.length === 120 || peer.closeCode !== undefined, '120 replies')
    assert.equal(peer.closeCode, undefined)
    assert.equal(peer.texts.length, 120)
  })

  test('big complete messages sent back to back for 3 x incompleteTimeout are all served', async (t) => {
    const app = await build(t, { incompleteTimeout: 500 }, echo)
    const client = await connect(t, await listen(app))
    const started = Date.now()
    let sent = 0
    while (Date.now() - started < 1500) {
      client.send({ resource: 'echo', action: 'get', data: { s: 'b'.repeat(200_000) }, request_id: `big-${sent++}` })
      await sleep(10)
    }
    await client.reply(`big-${sent - 1}`, 10_000)
    assert.equal(client.frames.filter(f => f.data?.s?.length === 200_000).length, sent)
    assert.equal(client.closeCode, undefined)
  })
})

describe('maxBufferedBytesTotal', () => {
  /**
   * 50 clients that never read ask for 256 replies of 64 KiB each (16 MiB, twice what
   * 2 x maxBufferedBytes lets one socket buffer). Returns the child's figures.
   */
  async function nonReaders (t: TestContext, options: DrizzleOptions, nodeFlags: string[] = []) {
    const server = await ChildServer.start(options, 15_000, { nodeFlags })
    t.after(() => server.kill())
    const clients = await Promise.all(Array.from({ length: 50 }, () => open(server.url)))
    t.after(() => { for (const ws of clients) ws.terminate() })
    for (const ws of clients) (ws as unknown as { _socket: { pause (): void } })._socket.pause()
    const { figures } = await server.sample(60_000, true)
    const request = JSON.stringify({ resource: 'blob', action: 'get', data: { size: 64 * 1024 }, request_id: 1 })
    for (let i = 0; i < 256; i++) {
      for (const ws of clients) if (ws.readyState === WebSocket.OPEN) ws.send(request)
      if (i % 16 === 15) await sleep(1)
    }
    const rss = await figures
    t.diagnostic(`${JSON.stringify(options)} ${nodeFlags.join(' ')}: RSS ${mib(rss.baseline)} MiB -> peak +${mib(rss.growth)} MiB (heap +${mib(rss.heapGrowth)} MiB); ` +
      `buffered in total at most ${mib(rss.maxBuffered)} MiB; ${String(rss.connections)} of 50 still open after ${String(rss.elapsed)} ms; ` +
      `${server.stderr.match(/slow consumer closed/g)?.length ?? 0} closed as slow consumers`)
    return { rss, server }
  }

  test('black-box: 50 clients requesting 16 MiB each without reading: < 130 MiB buffered, RSS +< 300 MiB under a 384 MiB heap', { timeout: 120_000 }, async (t) => {
    // The replies are built before the check that drops them: at this rate V8 lets gigabytes of
    // garbage wait for collection when the heap may grow to its default (a share of the machine's
    // memory), so the peak RSS says more about V8 than about what the server holds. A heap limit,
    // as containers set, shows the latter: 128 MiB of replies held and the server survives.
    const { rss, server } = await nonReaders(t, {}, ['--max-old-space-size=384'])
    assert.ok((rss.maxBuffered as number) <= 128 * MiB + 50 * 66 * 1024, `buffered ${mib(rss.maxBuffered)} MiB`)
    assert.ok((rss.growth as number) < 300 * MiB, `RSS grew by ${mib(rss.growth)} MiB`)
    assert.equal(rss.connections, 0, 'every non-reader was closed')
    assert.equal(server.stderr.match(/slow consumer closed: replies not read/g)?.length, 50)
    assert.equal(server.child.exitCode, null, 'the server is still up')
  })

  test('control: without the total (1 GiB) the same clients make the server buffer > 250 MiB', { timeout: 120_000 }, async (t) => {
    const { rss } = await nonReaders(t, { maxBufferedBytesTotal: 1024 * MiB })
    assert.ok((rss.maxBuffered as number) > 250 * MiB, `buffered ${mib(rss.maxBuffered)} MiB`)
  })
})

describe('maxInFlightTotal', () => {
  test('black-box: 50 connections x 1,024 held requests: 10,000 run, the rest get TOO_MANY_REQUESTS; reconnecting does not reset the count; RSS +< 40 MiB', { timeout: 120_000 }, async (t) => {
    const server = await ChildServer.start({})
    t.after(() => server.kill())
    const clients = await Promise.all(Array.from({ length: 50 }, () => open(server.url)))
    t.after(() => { for (const ws of clients) ws.terminate() })
    const { figures } = await server.sample(90_000)
    const tally: Tally = {}
    let replies = 0
    const all = new Promise<void>(resolve => {
      for (const ws of clients) {
        ws.on('message', (data: Buffer) => {
          const reply = JSON.parse(data.toString()) as { code?: string, error?: string }
          count(tally, reply.code ?? 'ok')
          if (++replies === 50 * 1024 - 10_000) resolve()
        })
      }
    })
    const request = (id: number): string => JSON.stringify({ resource: 'hold', action: 'wait', request_id: id })
    for (let i = 0; i < 1024; i++) for (const ws of clients) ws.send(request(i))
    await all
    assert.deepEqual(tally, { TOO_MANY_REQUESTS: 50 * 1024 - 10_000 })
    assert.equal((await server.request({ type: 'stats' }, 'stats')).held, 10_000)

    for (const ws of clients) ws.terminate()
    await statsUntil(server, stats => stats.connections === 0, 'the 50 connections to close')
    const again = await connect(t, server.url)
    const refused = await again.request('hold', 'wait')
    assert.equal(refused.code, 'TOO_MANY_REQUESTS')
    assert.equal(refused.error, 'Too many requests in flight on the server (limit 10000)')
    assert.equal((await again.request('echo', 'get', [1])).code, 'TOO_MANY_REQUESTS', 'the old handlers still count')
    assert.equal((await server.request({ type: 'stats' }, 'stats')).held, 10_000)

    server.child.send({ type: 'stop' })
    const rss = await figures
    assert.equal((await server.request({ type: 'release' }, 'released')).count, 10_000)
    assert.deepEqual((await again.request('echo', 'get', [2])).data, [2], 'admitted again once they ended')
    t.diagnostic(`${JSON.stringify(tally)}; RSS ${mib(rss.baseline)} MiB -> peak +${mib(rss.growth)} MiB while 10,000 actions were held`)
    assert.ok((rss.growth as number) < 40 * MiB, `RSS grew by ${mib(rss.growth)} MiB`)
  })

  test('HTTP requests are refused past maxInFlightTotal too', async (t) => {
    let release = (): void => {}
    const gate = new Promise<void>(resolve => { release = resolve })
    const app = await build(t, { http: true, maxInFlightTotal: 2 }, app => {
      echo(app)
      app.drizzle.resource('hold', { async wait () { await gate; return 'released' } })
    })
    const client = await inject(t, app)
    // Frames of one socket are handled in order: both are held when the third arrives.
    const held = [client.request('hold', 'wait'), client.request('hold', 'wait')]
    const refused = await client.request('echo', 'get', [1])
    assert.deepEqual([refused.code, refused.statusCode, refused.error], ['TOO_MANY_REQUESTS', 429, 'Too many requests in flight on the server (limit 2)'])
    const overHttp = await app.inject({ method: 'POST', url: '/ws/echo/get', payload: [1] })
    assert.equal(overHttp.statusCode, 429)
    assert.equal(overHttp.json().code, 'TOO_MANY_REQUESTS')
    release()
    assert.deepEqual((await Promise.all(held)).map(reply => reply.data), ['released', 'released'])
    assert.equal((await app.inject({ method: 'POST', url: '/ws/echo/get', payload: [2] })).statusCode, 200)
  })
})

describe('ctx.signal', () => {
  test('aborts when the action times out, with the ACTION_TIMEOUT error as reason', async (t) => {
    let reason: unknown
    const app = await build(t, {}, app => {
      app.drizzle.resource('slow', {
        wait: {
          timeout: 100,
          async handler (_message, ctx) {
            const signal = ctx.signal
            await once(signal, 'abort')
            reason = signal.reason
            return 'late'
          }
        }
      })
    })
    const client = await inject(t, app)
    const reply = await client.request('slow', 'wait')
    assert.equal(reply.code, 'ACTION_TIMEOUT')
    await sleep(10)
    assert.ok(reason instanceof Error)
    assert.equal((reason as Error & { code: string }).code, 'ACTION_TIMEOUT')
  })

  test('aborts when the connection closes, with a CONNECTION_CLOSED error as reason; read after the close, it is aborted already', async (t) => {
    const reasons: unknown[] = []
    let started = 0
    let closed = (): void => {}
    const whenClosed = new Promise<void>(resolve => { closed = resolve })
    const app = await build(t, {}, app => {
      app.drizzle.resource('slow', {
        async wait (_message, ctx) {
          started++
          const signal = ctx.signal
          await once(signal, 'abort')
          reasons.push(signal.reason)
          return null
        },
        async later (_message, ctx) {
          started++
          await whenClosed
          reasons.push(ctx.signal.aborted ? ctx.signal.reason : 'not aborted')
          return null
        }
      })
    })
    const client = await connect(t, await listen(app))
    client.send({ resource: 'slow', action: 'wait', request_id: 1 })
    client.send({ resource: 'slow', action: 'later', request_id: 2 })
    await until(() => started === 2, 'both actions to start')
    client.terminate()
    await until(() => app.drizzle.connections.size === 0, 'the server to see the close')
    closed()
    await until(() => reasons.length === 2, 'both signals to abort')
    for (const reason of reasons) {
      assert.ok(reason instanceof Error)
      assert.equal((reason as Error & { code: string }).code, 'CONNECTION_CLOSED')
    }
  })

  test('is made only when a handler reads it: actions that never do construct no AbortController', async (t) => {
    const app = await build(t, {}, app => {
      echo(app)
      app.drizzle.resource('signal', {
        async read (_message, ctx) {
          const first = ctx.signal
          return first === ctx.signal && !first.aborted
        }
      })
    })
    const client = await inject(t, app)
    const Original = globalThis.AbortController
    let constructed = 0
    globalThis.AbortController = class extends Original {
      constructor () {
        super()
        constructed++
      }
    }
    t.after(() => { globalThis.AbortController = Original })
    await Promise.all(Array.from({ length: 200 }, (_, i) => client.request('echo', 'get', [i])))
    assert.equal(constructed, 0)
    assert.equal((await client.request('signal', 'read')).data, true, 'one signal per action, the same on every read')
    assert.equal(constructed, 1)
  })

  test('the signal of an action that ended is not kept: closing the connection later does not abort it', async (t) => {
    const signals: AbortSignal[] = []
    const app = await build(t, {}, app => {
      app.drizzle.resource('signal', { async keep (_message, ctx) { signals.push(ctx.signal); return null } })
    })
    const client = await connect(t, await listen(app))
    await Promise.all(Array.from({ length: 20 }, () => client.request('signal', 'keep')))
    client.terminate()
    await client.closed
    await sleep(50)
    assert.equal(app.drizzle.connections.size, 0)
    assert.equal(signals.length, 20)
    assert.ok(signals.every(signal => !signal.aborted))
  })
})

describe('protocol errors', () => {
  /** An app on a listening socket whose log lines are recorded. */
  async function loggedApp (t: TestContext): Promise<{ url: string, entries: LogEntry[] }> {
    const entries: LogEntry[] = []
    const logger: FastifyBaseLogger = recordingLogger(entries)
    const app = Fastify({ loggerInstance: logger })
    await app.register(drizzle, { heartbeatInterval: 0 })
    echo(app)
    t.after(() => app.close())
    return { url: await listen(app), entries }
  }

  /** No line at warn or above, and no error or stack in any line (a logged Error prints its stack). */
  function assertQuiet (entries: readonly LogEntry[]): void {
    const loud = entries.filter(entry => ['warn', 'error', 'fatal'].includes(entry.level))
    assert.deepEqual(loud.map(entry => entry.msg), [])
    for (const entry of entries) {
      for (const value of Object.values(entry.obj)) {
        assert.ok(!(value instanceof Error), `"${entry.msg ?? ''}" logs an error`)
        if (typeof value === 'string') assert.doesNotMatch(value, /\n\s+at /, `"${entry.msg ?? ''}" logs a stack`)
      }
    }
  }

  test('20 senders of oversized frames each get a 1009 close frame, none a reset, and one info line each without a stack', { timeout: 60_000 }, async (t) => {
    const { url, entries } = await loggedApp(t)
    const results = await Promise.all(Array.from({ length: 20 }, async () => {
      const ws = await open(url)
      t.after(() => ws.terminate())
      const errors: string[] = []
      ws.on('error', (err: NodeJS.ErrnoException) => errors.push(err.code ?? err.message))
      const closed = new Promise<number>(resolve => ws.once('close', resolve))
      ws.send(Buffer.alloc(DEFAULTS.maxPayload + 1, 'a'))
      return { code: await closed, errors }
    }))
    assert.deepEqual(results.map(result => result.code), Array(20).fill(1009))
    assert.deepEqual(results.flatMap(result => result.errors), [], 'no ECONNRESET')
    const lines = entries.filter(entry => entry.obj.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH')
    assert.equal(lines.length, 20)
    assert.ok(lines.every(entry => entry.level === 'info'))
    assertQuiet(entries)
  })

  const malformed: Array<[string, Buffer, number, string]> = [
    ['a reserved opcode (3)', clientFrame(3, 'x'), 1002, 'WS_ERR_INVALID_OPCODE'],
    ['an unmasked frame', clientFrame(OPCODE.TEXT, '{}', { masked: false }), 1002, 'WS_ERR_EXPECTED_MASK'],
    ['invalid UTF-8 in a text frame', clientFrame(OPCODE.TEXT, Buffer.from([0x7b, 0xff, 0xfe, 0x7d])), 1007, 'WS_ERR_INVALID_UTF8'],
    ['RSV1 without an extension', clientFrame(OPCODE.TEXT, '{}', { rsv1: true }), 1002, 'WS_ERR_UNEXPECTED_RSV_1'],
    ['a ping of 126 bytes', clientFrame(OPCODE.PING, Buffer.alloc(126)), 1002, 'WS_ERR_INVALID_CONTROL_PAYLOAD_LENGTH'],
    ['a continuation without a message', clientFrame(OPCODE.CONTINUATION, 'x'), 1002, 'WS_ERR_INVALID_OPCODE']
  ]
  for (const [what, frame, code, wsCode] of malformed) {
    test(`${what}: close frame ${code}, the connection ends without a reset, one info line without a stack`, async (t) => {
      const { url, entries } = await loggedApp(t)
      const peer = await RawPeer.open(url)
      t.after(() => peer.destroy())
      await peer.write(frame)
      await until(() => peer.closeCode !== undefined, 'a close frame')
      assert.equal(peer.closeCode, code)
      // ws ends the connection after its close frame and reads what is left: no reset.
      await peer.gone
      assert.equal(peer.ending, 'eof')
      const lines = entries.filter(entry => typeof entry.obj.code === 'string' && (entry.obj.code as string).startsWith('WS_ERR_'))
      assert.deepEqual(lines.map(entry => [entry.level, entry.obj.code]), [['info', wsCode]])
      assertQuiet(entries)
    })
  }
})

describe('topic names', () => {
  const LONE = ['rooms/\ud800', 'rooms/\udfff', 'rooms/a\udc00b']

  test('lone surrogates are refused on `$topic/subscribe` with VALIDATION_ERROR at /data/topic; a well-formed pair is not', async (t) => {
    const app = await build(t, {}, app => { app.drizzle.topic('rooms/:id') })
    const client = await inject(t, app)
    for (const topic of LONE) {
      for (const action of ['subscribe', 'unsubscribe']) {
        const reply = await client.request('$topic', action, { topic })
        assert.deepEqual([reply.code, reply.statusCode, reply.details?.[0]?.path], ['VALIDATION_ERROR', 400, '/data/topic'], `${action} ${JSON.stringify(topic)}`)
        assert.match(reply.error, /well-formed Unicode/)
      }
    }
    assert.equal((await client.request('$topic', 'subscribe', { topic: 'rooms/\ud83d\ude00' })).data?.subscribed, true)
    assert.equal([...app.drizzle.connections][0]?.topics.size, 2)
  })

  test('drizzle.publish, ctx.subscribe, ctx.unsubscribe and ctx.publish refuse them with FST_DRIZZLE_INVALID_TOPIC; nothing is delivered', async (t) => {
    const app = await build(t, {}, app => {
      app.drizzle.topic('rooms/:id')
      app.drizzle.resource('rooms', {
        async use (message, ctx) {
          const topic = message.data?.topic as string
          const codes: string[] = []
          for (const attempt of [() => ctx.subscribe(topic), () => ctx.unsubscribe(topic), () => ctx.publish(topic, 1)]) {
            await attempt().then(() => codes.push('accepted'), (err: { code: string }) => codes.push(err.code))
          }
          return codes
        }
      })
    })
    const client = await inject(t, app)
    assert.equal((await client.request('$topic', 'subscribe', { topic: 'rooms/1' })).data?.subscribed, true)
    for (const topic of LONE) {
      await assert.rejects(app.drizzle.publish(topic, 'x'), { code: 'FST_DRIZZLE_INVALID_TOPIC', message: /well-formed Unicode/ })
      await assert.rejects(app.drizzle.publish(['rooms/1', topic], 'x'), { code: 'FST_DRIZZLE_INVALID_TOPIC' })
      assert.deepEqual((await client.request('rooms', 'use', { topic })).data, Array(3).fill('FST_DRIZZLE_INVALID_TOPIC'))
    }
    assert.equal(await client.quiet(50), 0)
    assert.equal(client.publications().length, 0, 'the array with a bad topic delivered nothing')
  })

  /** A broker that carries topics of at most 255 UTF-8 bytes (the AMQP routing key limit), recording what it was asked. */
  function shortTopicsBroker (calls: string[]): Broker {
    return {
      name: 'short',
      async attach () {},
      topicProblem: topic => Buffer.byteLength(topic) > 255 ? 'is longer than 255 bytes, the broker\'s limit' : undefined,
      async subscribe (topic) { calls.push(`subscribe ${topic}`) },
      async unsubscribe (topic) { calls.push(`unsubscribe ${topic}`) },
      async publish (topic) { calls.push(`publish ${topic}`) },
      async close () {}
    }
  }

  test('a broker\'s topicProblem refuses a topic where it enters: VALIDATION_ERROR on the wire, FST_DRIZZLE_INVALID_TOPIC in the server API', async (t) => {
    const calls: string[] = []
    const app = await build(t, { broker: shortTopicsBroker(calls) }, app => {
      app.drizzle.topic('rooms/:id')
      app.drizzle.resource('rooms', {
        async join (message, ctx) { return await ctx.subscribe(message.data?.topic as string).catch((err: { code: string }) => err.code) }
      })
    })
    const client = await inject(t, app)
    const tooLong = 'rooms/' + 'é'.repeat(126) // 132 characters, 258 bytes
    const longest = 'rooms/' + 'é'.repeat(124) + 'e' // 255 bytes
    const reply = await client.request('$topic', 'subscribe', { topic: tooLong })
    assert.deepEqual([reply.code, reply.statusCode, reply.details?.[0]?.path], ['VALIDATION_ERROR', 400, '/data/topic'])
    assert.match(reply.error, /longer than 255 bytes/)
    assert.equal(reply.data, undefined, 'never subscribed: true')
    assert.equal((await client.request('rooms', 'join', { topic: tooLong })).data, 'FST_DRIZZLE_INVALID_TOPIC')
    await assert.rejects(app.drizzle.publish(tooLong, 1), { code: 'FST_DRIZZLE_INVALID_TOPIC', message: /longer than 255 bytes/ })
    assert.equal([...app.drizzle.connections][0]?.topics.has(tooLong), false)

    assert.equal((await client.request('$topic', 'subscribe', { topic: longest })).data?.subscribed, true)
    await app.drizzle.publish(longest, 1)
    assert.deepEqual(calls.filter(call => !call.endsWith('__all__')), [`subscribe ${longest}`, `publish ${longest}`], 'the broker never saw the long topic')
  })
})

describe('open files', () => {
  test('under ulimit -n 256 the server warns at startup, then once when connections near the limit', { timeout: 60_000 }, async (t) => {
    const server = await ChildServer.start({}, 15_000, { openFiles: 256 })
    t.after(() => server.kill())
    const sockets: WebSocket[] = []
    t.after(() => { for (const ws of sockets) ws.terminate() })
    let opened = 0
    let failed = 0
    for (let i = 0; i < 240; i++) {
      const ws = new WebSocket(server.url)
      sockets.push(ws)
      // Not events.once: it rejects on the 'error' a refused socket emits before 'close'.
      const outcome = await new Promise(resolve => {
        ws.on('error', () => {})
        ws.once('open', () => resolve('open'))
        ws.once('close', () => resolve('closed'))
      })
      if (outcome === 'open') opened++
      else failed++
    }
    await sleep(200)
    const startup = server.stderr.match(/the open-file limit \(256\) is below maxConnections/g) ?? []
    const near = server.stderr.split('\n').filter(line => line.includes('connections are near the open-file limit'))
    t.diagnostic(`${opened} of 240 connections opened, ${failed} refused by the OS; near-limit warnings: ${near.length}`)
    assert.equal(startup.length, 1)
    assert.equal(near.length, 1, 'warned once, not once per connection')
    const warnedAt = JSON.parse(near[0] as string).connections as number
    assert.ok(warnedAt === 192 && warnedAt < opened, `warned at ${warnedAt} connections, ${opened} opened`)
  })
})
