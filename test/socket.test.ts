import { test } from 'node:test'
import assert from 'node:assert/strict'
import websocket from '@fastify/websocket'
import Fastify, { type FastifyInstance } from 'fastify'
import drizzle from '../lib/index.js'
import { payloadOf, textFrame, writesDirect } from '../lib/socket.js'
import { build, connect, inject, listen } from './helpers/client.js'

// lib/socket.ts: frames the plugin writes to the TCP socket itself, past ws's sender, and when it must
// not. Every size class of the length field, multi-byte UTF-8, and a peer with permessage-deflate.

/** Decodes an unmasked server frame as RFC 6455 section 5.2 lays it out. */
function decode (frame: Buffer): { fin: boolean, opcode: number, masked: boolean, payload: string } {
  const marker = frame[1] as number
  let length = marker & 0x7f
  let offset = 2
  if (length === 126) { length = frame.readUInt16BE(2); offset = 4 } else if (length === 127) { length = Number(frame.readBigUInt64BE(2)); offset = 10 }
  assert.equal(frame.length, offset + length, 'the frame holds exactly its declared payload')
  return { fin: (frame[0] as number) >> 7 === 1, opcode: (frame[0] as number) & 0x0f, masked: marker >> 7 === 1, payload: frame.subarray(offset).toString('utf8') }
}

test('textFrame: one final text frame, unmasked, at every boundary of the length field', () => {
  for (const size of [0, 1, 125, 126, 127, 65535, 65536, 70000]) {
    const payload = 'x'.repeat(size)
    const frame = textFrame(payload)
    const decoded = decode(frame)
    assert.deepEqual({ fin: decoded.fin, opcode: decoded.opcode, masked: decoded.masked }, { fin: true, opcode: 1, masked: false }, `size ${size}`)
    assert.equal(decoded.payload, payload, `size ${size}`)
    assert.equal(payloadOf(frame).toString(), payload, `size ${size}`)
  }
})

test('textFrame: the length counts UTF-8 bytes, not characters', () => {
  // 42 characters of 3 bytes (126 bytes: the 16-bit length) and a 4-byte emoji.
  const payload = '€'.repeat(42) + '😀'
  const decoded = decode(textFrame(payload))
  assert.equal(decoded.payload, payload)
  assert.equal(textFrame(payload)[1], 126)
})

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
