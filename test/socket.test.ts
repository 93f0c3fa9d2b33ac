import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import websocket from '@fastify/websocket'
import Fastify, { type FastifyInstance } from 'fastify'
import type WebSocket from 'ws'
import drizzle, { type DrizzleOptions } from '../lib/index.js'
import { writesDirect } from '../lib/frames.js'
import { build, connect, inject, listen, sleep, type Frame, type TestClient } from './helpers/client.js'

// lib/socket.ts: frames the plugin writes to the TCP socket itself, past ws's sender, and reads past ws's
// receiver, and when it must not: real sockets, hand-made frames cut at every kind of boundary, and a
// peer with permessage-deflate. The bytes of frames themselves: test/frames.test.ts.

/** An app whose `echo/size` action answers `n` characters, and which publishes `n` characters on `big`. */
async function sized (app: FastifyInstance): Promise<void> {
  app.drizzle.resource('echo', {
    async size (message) { return { text: '€é'.repeat((message.data as { n: number }).n) } }
  })
  app.drizzle.topic('big')
}

for (const n of [1, 40, 30_000, 40_000]) {
  test(`replies and publications of ${n * 2} characters arrive whole over a real socket`, async (t) => {
    const app = await build(t, {}, sized)
    const client = await connect(t, await listen(app))
    const reply = await client.request('echo', 'size', { n })
    assert.equal(reply.data.text, '€é'.repeat(n))
    const sub = await client.request('$topic', 'subscribe', { topic: 'big' })
    assert.equal(sub.data.subscribed, true)
    await app.drizzle.publish('big', { text: 'é'.repeat(n) })
    const publication = await client.waitFor(f => f.topic === 'big')
    assert.equal(publication.data.text, 'é'.repeat(n))
  })
}

test('many frames in one turn (coalesced) keep their order', async (t) => {
  const app = await build(t, {}, sized)
  const client = await connect(t, await listen(app))
  await client.request('$topic', 'subscribe', { topic: 'big' })
  for (let i = 0; i < 300; i++) app.drizzle.publish('big', { i, pad: 'p'.repeat(i * 7) }).catch(() => {})
  await client.waitFor(f => f.topic === 'big' && f.data.i === 299)
  assert.deepEqual(client.publications('big').map(f => f.data.i), Array.from({ length: 300 }, (_, i) => i))
})

test('with permessage-deflate negotiated, frames go through ws (compressed) and arrive whole', async (t) => {
  const deflating = Fastify({ logger: false })
  t.after(() => deflating.close())
  // The app's own @fastify/websocket, with compression on: the plugin keeps it (DESIGN section 4).
  await deflating.register(websocket, { options: { perMessageDeflate: { threshold: 0 } } })
  await deflating.register(drizzle, { heartbeatInterval: 0 })
  await sized(deflating)
  const client = await connect(t, await listen(deflating), { perMessageDeflate: true })
  assert.match(client.ws.extensions, /permessage-deflate/)
  const server = [...deflating.websocketServer.clients][0]
  assert.ok(server !== undefined)
  assert.equal(writesDirect(server), false, 'a compressing socket is never written to directly')
  for (const n of [3, 40_000]) {
    const reply = await client.request('echo', 'size', { n })
    assert.equal(reply.data.text, '€é'.repeat(n))
  }
  await client.request('$topic', 'subscribe', { topic: 'big' })
  await deflating.drizzle.publish('big', { text: 'ok' })
  assert.equal((await client.waitFor(f => f.topic === 'big')).data.text, 'ok')
})

test('a plain socket is written directly; an injected one (no TCP socket) goes through ws', async (t) => {
  const app = await build(t, {}, sized)
  await connect(t, await listen(app))
  const server = [...app.websocketServer.clients][0]
  assert.ok(server !== undefined)
  assert.equal(writesDirect(server), true)
  const injected = await inject(t, app)
  const reply = await injected.request('echo', 'size', { n: 2 })
  assert.equal(reply.data.text, '€é€é')
})

// ---- frames read past ws's receiver (lib/socket.ts readFrames) -------------------------------------

/** A client frame as RFC 6455 lays it out, masked; `bits` forces the size of the length field. */
function masked (payload: string | Buffer, options: { opcode?: number, fin?: boolean, bits?: 7 | 16 | 64, mask?: boolean } = {}): Buffer {
  const body = Buffer.isBuffer(payload) ? payload : Buffer.from(payload)
  const bits = options.bits ?? (body.length < 126 ? 7 : body.length < 65536 ? 16 : 64)
  const header = Buffer.alloc(bits === 7 ? 2 : bits === 16 ? 4 : 10)
  header[0] = ((options.fin ?? true) ? 0x80 : 0) | (options.opcode ?? 1)
  if (bits === 7) header[1] = body.length
  else if (bits === 16) { header[1] = 126; header.writeUInt16BE(body.length, 2) } else { header[1] = 127; header.writeBigUInt64BE(BigInt(body.length), 2) }
  if (options.mask === false) return Buffer.concat([header, body])
  header[1] = (header[1] as number) | 0x80
  const key = Buffer.from([0x37, 0xfa, 0x21, 0x3d])
  const out = Buffer.from(body)
  for (let i = 0; i < out.length; i++) out[i] = (out[i] as number) ^ (key[i & 3] as number)
  return Buffer.concat([header, key, out])
}

const envelope = (id: number, pad = 0): string => JSON.stringify({ resource: 'echo', action: 'back', data: { id, pad: 'é'.repeat(pad) }, request_id: id })

/** An app echoing `data`, a client, and the server's ws socket with a count of what its receiver read. */
async function rawPeer (t: TestContext, options: DrizzleOptions = {}): Promise<{ app: FastifyInstance, client: TestClient, write: (chunk: Buffer) => void, receiverReads: number[], server: WebSocket, ran: number[] }> {
  const ran: number[] = []
  const app = await build(t, { heartbeatInterval: 0, ...options }, (app) => {
    app.drizzle.resource('echo', {
      async back (message) {
        ran.push(message.request_id as number)
        return message.data
      }
    })
  })
  const client = await connect(t, await listen(app))
  await client.request('echo', 'back', { warm: true })
  const server = [...app.websocketServer.clients][0] as WebSocket
  const receiver = (server as unknown as { _receiver: { write: (chunk: Buffer) => boolean } })._receiver
  const receiverReads: number[] = []
  const write = receiver.write
  receiver.write = function (this: unknown, chunk: Buffer) { receiverReads.push(chunk.length); return write.call(this, chunk) }
  const socket = (client.ws as unknown as { _socket: { write (chunk: Buffer): boolean } })._socket
  return { app, client, write: chunk => { socket.write(chunk) }, receiverReads, server, ran }
}

async function replies (client: TestClient, ids: number[]): Promise<Frame[]> {
  await client.reply(ids[ids.length - 1], 5000)
  return client.frames.filter(f => typeof f.request_id === 'number' && ids.includes(f.request_id))
}

test('simple frames in one chunk (7- and 16-bit lengths, text and binary) are read past ws and answered in order', async (t) => {
  const { client, write, receiverReads } = await rawPeer(t)
  const ids = Array.from({ length: 60 }, (_, i) => 1000 + i)
  write(Buffer.concat(ids.map((id, i) => masked(envelope(id, i * 3), { opcode: i % 3 === 0 ? 2 : 1 }))))
  const got = await replies(client, ids)
  assert.deepEqual(got.map(f => f.request_id), ids)
  assert.deepEqual(got.map(f => f.data.pad.length), ids.map((_, i) => i * 3), 'multi-byte payloads unmasked whole')
  assert.deepEqual(receiverReads, [], "ws's receiver read nothing: every frame was simple")
})

test('a chunk mixing simple frames with a ping, a fragmented message and a 64-bit length: ws reads from the first it must, in order', async (t) => {
  const { client, write, receiverReads } = await rawPeer(t)
  const pong = new Promise<string>(resolve => client.ws.once('pong', (data: Buffer) => resolve(data.toString())))
  const fragmented = envelope(3)
  const chunk = Buffer.concat([
    masked(envelope(1)),
    masked(envelope(2)),
    masked('ping!', { opcode: 9 }),
    masked(fragmented.slice(0, 10), { fin: false }),
    masked(fragmented.slice(10), { opcode: 0 }),
    masked(envelope(4), { bits: 64 }),
    masked(envelope(5))
  ])
  write(chunk)
  const got = await replies(client, [1, 2, 3, 4, 5])
  assert.deepEqual(got.map(f => f.request_id), [1, 2, 3, 4, 5])
  assert.equal(await pong, 'ping!')
  const tail = chunk.length - masked(envelope(1)).length - masked(envelope(2)).length
  assert.deepEqual(receiverReads, [tail], 'ws read the chunk from the ping on')
  // Once ws is idle again, simple frames go past it again.
  write(Buffer.concat([masked(envelope(6)), masked(envelope(7))]))
  assert.deepEqual((await replies(client, [6, 7])).map(f => f.request_id), [6, 7])
  assert.deepEqual(receiverReads, [tail])
})

test('frames cut across chunks at any byte are answered whole', async (t) => {
  const { client, write, receiverReads } = await rawPeer(t)
  const ids = [11, 12, 13, 14]
  const bytes = Buffer.concat(ids.map((id, i) => masked(envelope(id, i * 60))))
  // Cuts inside a header, inside a 16-bit length, inside a mask and inside payloads.
  const cuts = [1, 3, 5, 7, 50, 140, 141, 300, bytes.length - 1]
  let from = 0
  for (const cut of [...cuts, bytes.length]) {
    write(bytes.subarray(from, cut))
    from = cut
    await sleep(2)
  }
  assert.deepEqual((await replies(client, ids)).map(f => [f.request_id, f.data.pad.length]), ids.map((id, i) => [id, i * 60]))
  assert.ok(receiverReads.length > 0, 'unfinished frames went to ws')
})

// A peer that breaks the protocol is closed at once, as ws does it: the frames before the bad one ran,
// but their replies find the socket closing (ws's own path behaves the same), and nothing after it runs.
test('text that is not UTF-8 after a good frame: the good one runs, then ws closes with 1007', async (t) => {
  const { client, write, ran } = await rawPeer(t)
  write(Buffer.concat([masked(envelope(21)), masked(Buffer.from([0x7b, 0xff, 0xfe, 0x7d])), masked(envelope(22))]))
  assert.equal(await client.closed, 1007)
  assert.deepEqual(ran.slice(1), [21], 'nothing after the bad frame ran')
})

test('a binary frame that is not UTF-8 gets VALIDATION_ERROR, as through ws', async (t) => {
  const { client, write } = await rawPeer(t)
  write(Buffer.concat([masked(Buffer.from([0xff, 0x00]), { opcode: 2 }), masked(envelope(23))]))
  await client.reply(23)
  const refused = client.frames.find(f => f.request_id === null)
  assert.equal(refused?.code, 'VALIDATION_ERROR')
})

test('an unmasked frame closes with 1002; a frame over maxPayload with 1009', async (t) => {
  const first = await rawPeer(t)
  first.write(Buffer.concat([masked(envelope(31)), masked(envelope(32), { mask: false })]))
  assert.equal(await first.client.closed, 1002)
  assert.deepEqual(first.ran.slice(1), [31])

  const second = await rawPeer(t, { maxPayload: 200 })
  second.write(Buffer.concat([masked(envelope(33)), masked(envelope(34, 150))]))
  assert.equal(await second.client.closed, 1009)
  assert.deepEqual(second.ran.slice(1), [33])
})

test('a close frame in a chunk: the frames before it run, none after it', async (t) => {
  const { client, write, ran } = await rawPeer(t)
  const close = Buffer.alloc(2)
  close.writeUInt16BE(1000)
  write(Buffer.concat([masked(envelope(41)), masked(close, { opcode: 8 }), masked(envelope(42))]))
  assert.equal(await client.closed, 1000)
  assert.deepEqual(ran.slice(1), [41])
})

test("a 'message' listener the app added to the socket still sees every message (ws reads them then)", async (t) => {
  const { client, write, receiverReads, server } = await rawPeer(t)
  const seen: string[] = []
  server.on('message', (data: Buffer) => seen.push(JSON.parse(data.toString()).request_id))
  write(Buffer.concat([masked(envelope(51)), masked(envelope(52))]))
  assert.deepEqual((await replies(client, [51, 52])).map(f => f.request_id), [51, 52])
  assert.deepEqual(seen, [51, 52])
  assert.equal(receiverReads.length, 1)
})

test('a frame alone in its turn is written at once, a publication too; from the second frame of a turn on, the socket is corked until the turn ends', async (t) => {
  const app = await build(t, {}, (app) => {
    app.drizzle.resource('echo', {
      async one () { return 1 },
      async three (_message, ctx) {
        // From a microtask, as most handlers write after an await: the turn ends once they are done.
        await Promise.resolve()
        ctx.connection.send('own', 1)
        ctx.connection.send('own', 2)
        return 3
      }
    })
    app.drizzle.topic('news')
  })
  const client = await connect(t, await listen(app))
  await client.request('$topic', 'subscribe', { topic: 'news' })
  const server = [...app.websocketServer.clients][0] as WebSocket
  const raw = (server as unknown as { _socket: { cork (): void, uncork (): void, write (chunk: Buffer): boolean } })._socket
  const calls: string[] = []
  for (const name of ['cork', 'uncork', 'write'] as const) {
    const original = raw[name] as (...args: unknown[]) => unknown
    raw[name] = function (this: unknown, ...args: unknown[]) { calls.push(name); return original.apply(this, args) } as never
  }
  assert.equal((await client.request('echo', 'one')).data, 1)
  assert.deepEqual(calls, ['write'], 'a lone reply is not corked')
  calls.length = 0
  assert.equal((await client.request('echo', 'three')).data, 3)
  assert.deepEqual(calls, ['write', 'cork', 'write', 'write', 'uncork'])
  assert.deepEqual(client.publications('own').map(f => f.data), [1, 2])
  calls.length = 0
  await app.drizzle.publish('news', { n: 1 })
  await client.waitFor(f => f.topic === 'news')
  assert.deepEqual(calls, ['write'], 'a publication alone in its turn is not corked')
  calls.length = 0
  // A broker burst: several publications to the socket in one turn.
  await Promise.all([1, 2, 3].map(n => app.drizzle.publish('news', { n: n + 1 })))
  await client.waitFor(f => f.topic === 'news' && (f.data as { n: number }).n === 4)
  assert.deepEqual(calls, ['write', 'cork', 'write', 'write', 'uncork'], 'from the second publication of a turn on, corked')
  assert.deepEqual(client.publications('news').map(f => (f.data as { n: number }).n), [1, 2, 3, 4])
})

test('a frame begun in one chunk: ws reads only the rest of it from the next, and the frames after it are read past ws', async (t) => {
  const { client, write, receiverReads, server } = await rawPeer(t)
  const first = masked(envelope(61, 40))
  const cut = 30 // inside the payload
  write(first.subarray(0, cut))
  const receiver = (server as unknown as { _receiver: { _bufferedBytes: number } })._receiver
  // Loopback TCP hands a small write over whole: wait until ws holds the start of the frame.
  while (receiver._bufferedBytes === 0) await sleep(2)
  write(Buffer.concat([first.subarray(cut), masked(envelope(62)), masked(envelope(63))]))
  assert.deepEqual((await replies(client, [61, 62, 63])).map(f => f.request_id), [61, 62, 63])
  assert.deepEqual(receiverReads, [cut, first.length - cut], 'ws read the start of the frame, then exactly its rest')
})

test('several requests read in one chunk have their replies corked and written together', async (t) => {
  const { client, write, server } = await rawPeer(t)
  const raw = (server as unknown as { _socket: { cork (): void, write (chunk: Buffer): boolean } })._socket
  const calls: string[] = []
  for (const name of ['cork', 'write'] as const) {
    const original = raw[name] as (...args: unknown[]) => unknown
    raw[name] = function (this: unknown, ...args: unknown[]) { calls.push(name); return original.apply(this, args) } as never
  }
  write(Buffer.concat([masked(envelope(71)), masked(envelope(72)), masked(envelope(73))]))
  assert.deepEqual((await replies(client, [71, 72, 73])).map(f => f.request_id), [71, 72, 73])
  assert.deepEqual(calls, ['cork', 'write', 'write', 'write'])
})

test('a frame finished by ws that is not UTF-8 closes with 1007, and nothing after it in the chunk runs', async (t) => {
  const { client, write, ran, server } = await rawPeer(t)
  const bad = masked(Buffer.concat([Buffer.from('{"x":"'), Buffer.from([0xff, 0xfe]), Buffer.from('"}')]))
  write(bad.subarray(0, 8))
  const receiver = (server as unknown as { _receiver: { _bufferedBytes: number } })._receiver
  while (receiver._bufferedBytes === 0) await sleep(2)
  write(Buffer.concat([bad.subarray(8), masked(envelope(81))]))
  assert.equal(await client.closed, 1007)
  assert.deepEqual(ran.slice(1), [], 'the frame after the bad one did not run')
})

test("when ws's own 'data' listener is not alone (an app listener before the upgrade), the plugin listens itself and ws reads every frame", async (t) => {
  let seen = 0
  const app = await build(t, {}, (app) => {
    app.drizzle.resource('echo', { async back (message) { return message.data } })
    // Before the upgrade: it stays on the socket beside ws's socketOnData.
    app.addHook('onRequest', async (request) => { request.raw.socket.on('data', () => { seen++ }) })
  })
  const client = await connect(t, await listen(app))
  const server = [...app.websocketServer.clients][0] as WebSocket
  const raw = (server as unknown as { _socket: { listeners (event: string): Function[] } })._socket
  const names = raw.listeners('data').map(listener => listener.name)
  assert.ok(names.includes('socketOnData'), "ws's listener is in place, not wrapped")
  assert.ok(names.includes('onRawData'), "the plugin's own listener measures what ws holds")
  const receiver = (server as unknown as { _receiver: { write: (chunk: Buffer) => boolean } })._receiver
  let reads = 0
  const write = receiver.write
  receiver.write = function (this: unknown, chunk: Buffer) { reads++; return write.call(this, chunk) }
  assert.deepEqual((await client.request('echo', 'back', { n: 1 })).data, { n: 1 })
  assert.ok(reads >= 1, 'ws read the frame')
  assert.ok(seen >= 1)
})

test('the same random stream of frames, cut at random points, is answered alike with frames read past ws and with ws reading all', async (t) => {
  const direct = await rawPeer(t)
  const viaWs = await rawPeer(t)
  // A second 'message' listener: the plugin then leaves every frame to ws (see the test above).
  viaWs.server.on('message', () => {})
  let seed = 20261202
  const random = (): number => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31
  const frames: Buffer[] = []
  const ids: number[] = []
  for (let i = 0; i < 300; i++) {
    const id = 5000 + i
    const text = envelope(id, Math.floor(random() * 120))
    const kind = random()
    if (kind < 0.1) {
      frames.push(masked('ping ' + i, { opcode: 9 }))
      continue
    }
    ids.push(id)
    if (kind < 0.2) {
      const cut = 1 + Math.floor(random() * (text.length - 2))
      frames.push(masked(text.slice(0, cut), { fin: false }), masked(text.slice(cut), { opcode: 0 }))
    } else if (kind < 0.25) frames.push(masked(text, { bits: 64 }))
    else if (kind < 0.35) frames.push(masked(text, { opcode: 2 }))
    else frames.push(masked(text))
  }
  // A simple frame first, on its own: read past ws on one side whatever the chunks that follow.
  const first = masked(envelope(4999))
  direct.write(first)
  viaWs.write(first)
  await Promise.all([direct.client.reply(4999), viaWs.client.reply(4999)])
  const bytes = Buffer.concat(frames)
  for (let at = 0; at < bytes.length;) {
    const next = Math.min(bytes.length, at + 1 + Math.floor(random() * 700))
    direct.write(bytes.subarray(at, next))
    viaWs.write(bytes.subarray(at, next))
    at = next
    if (random() < 0.2) await sleep(1)
  }
  const answer = (f: Frame): unknown => [f.request_id, f.data?.id, f.data?.pad]
  const got = (await replies(direct.client, ids)).map(answer)
  assert.deepEqual(got.map(a => (a as unknown[])[0]), ids, 'every request answered once, in order')
  assert.deepEqual(got, (await replies(viaWs.client, ids)).map(answer))
  const total = first.length + bytes.length
  assert.ok(direct.receiverReads.reduce((a, b) => a + b, 0) <= total - first.length, "frames were read past ws's receiver")
  assert.equal(viaWs.receiverReads.reduce((a, b) => a + b, 0), total, 'ws read every byte')
})
