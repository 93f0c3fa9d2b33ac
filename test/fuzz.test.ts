import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import type { FastifyInstance } from 'fastify'
import createError from '@fastify/error'
import Type from 'typebox'
import sjson from 'secure-json-parse'
import { build, connect, inject, listen, sleep, type Frame, type TestClient } from './helpers/client.js'

// Hostile input (issue #6; README, Limits and shutdown: no input a client can send crashes the process).
// Every generated frame must get exactly one reply, which is either a valid reply or a coded error of
// the protocol table; no reply may carry a stack or a path; the process must not see an uncaught
// exception or an unhandled rejection; Object.prototype must stay as it was.

/** The protocol's error codes (PROTOCOL.md, Error codes), and the one code the app below throws. */
const CODES: Record<string, number> = {
  VALIDATION_ERROR: 400,
  RESOURCE_NOT_FOUND: 404,
  ACTION_NOT_FOUND: 404,
  TOPIC_NOT_FOUND: 404,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  TOO_MANY_REQUESTS: 429,
  INTERNAL_ERROR: 500,
  ACTION_TIMEOUT: 504,
  SERVICE_UNAVAILABLE: 503,
  APP_CONFLICT: 409
}
const ERROR_KEYS = new Set(['request_id', 'code', 'error', 'statusCode', 'details'])
const Conflict = createError('APP_CONFLICT', 'Already there', 409)

// What a leaked stack or internal path looks like in a reply.
const LEAKS = [/\n\s*at /, /\bat .*\(.*:\d+:\d+\)/, /file:\/\//, /node:internal/, /node_modules/, new RegExp(escape(process.cwd()))]

function escape (text: string): string { return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') }

function fuzzApp (app: FastifyInstance): void {
  app.drizzle.resource('echo', { async get (message) { return message.data ?? null } })
  app.drizzle.resource('typed', {
    create: {
      schema: { data: Type.Object({ title: Type.String({ maxLength: 50 }), n: Type.Optional(Type.Integer()) }) },
      async handler (message) { return message.data }
    }
  })
  app.drizzle.resource('boom', {
    // The message holds a path and a stack on purpose: the client must see neither.
    sync () { throw new Error(`secret failure in ${process.cwd()}/lib/secret.ts`) },
    async coded () { throw new Conflict() },
    async weird () { throw Object.assign(Object.create(null), { statusCode: 'nope', message: new Error('x').stack }) }
  })
  app.drizzle.resource('watch', {
    async sub (message, ctx) {
      const topic = (message.data as { topic?: unknown } | undefined)?.topic
      if (typeof topic === 'string') await ctx.subscribe(topic)
      return { ok: true }
    }
  })
  app.drizzle.topic('room/:id', { authorize: (_ctx, params) => params.id !== 'forbidden' })
}

// ---- generators -------------------------------------------------------------------------------

interface Generated { payload: string | Buffer, binary: boolean }

const text = (payload: string): Generated => ({ payload, binary: false })
const binary = (payload: Uint8Array): Generated => ({ payload: Buffer.from(payload), binary: true })

/** JSON text from [key, value] pairs, so `__proto__` keys and duplicate keys reach the wire as such. */
class Pairs { constructor (readonly pairs: Array<[string, Tree]>) {} }
type Tree = null | boolean | number | string | Tree[] | Pairs | Record<string, unknown>
function serialize (tree: Tree): string {
  if (Array.isArray(tree)) return '[' + tree.map(serialize).join(',') + ']'
  if (tree instanceof Pairs) return '{' + tree.pairs.map(([k, v]) => JSON.stringify(k) + ':' + serialize(v)).join(',') + '}'
  return JSON.stringify(tree) ?? 'null'
}

const dangerousKey = fc.oneof(
  { arbitrary: fc.constantFrom('__proto__', 'constructor', 'prototype', 'toString', 'valueOf', 'hasOwnProperty', '__defineGetter__'), weight: 3 },
  { arbitrary: fc.string({ maxLength: 6 }), weight: 2 }
)
const tree: fc.Arbitrary<Tree> = fc.letrec<{ node: Tree }>(tie => ({
  node: fc.oneof({ depthSize: 'small', withCrossShrink: true },
    fc.oneof(fc.constant(null), fc.boolean(), fc.integer(), fc.double(), fc.string({ maxLength: 10 })),
    fc.array(tie('node'), { maxLength: 3 }),
    fc.array(fc.tuple(dangerousKey, tie('node')), { maxLength: 4 }).map(pairs => new Pairs(pairs)))
})).node

/** `{"constructor":{"prototype":{...}}}` or `{"__proto__":{...}}` buried at a random depth. */
const buriedPoison = fc.tuple(fc.nat(40), fc.constantFrom(
  '{"constructor":{"prototype":{"polluted":true}}}', '{"__proto__":{"polluted":true}}', '{"prototype":{"polluted":true}}'
)).map(([depth, poison]) => '{"a":'.repeat(depth) + poison + '}'.repeat(depth))

const hugeNumber = fc.oneof(
  fc.constantFrom('1e400', '-1e400', '1e-400', '-0', '9007199254740993', '1E308', '1' + '0'.repeat(400), '0.1e1'),
  fc.bigInt({ min: -(2n ** 200n), max: 2n ** 200n }).map(String)
)

const resourceName = fc.constantFrom('echo', 'typed', 'boom', 'watch', '$topic', '$nope', 'nope', 'constructor', '__proto__', 'toString')
const actionName = fc.constantFrom('get', 'create', 'sync', 'coded', 'weird', 'sub', 'subscribe', 'unsubscribe', 'constructor', '__proto__', 'hasOwnProperty', 'toString', 'handler')
const anyJson = fc.oneof(
  fc.constant(null), fc.boolean(), fc.integer(), fc.double(), fc.string({ maxLength: 20 }), fc.constant(''), fc.constant('x'.repeat(300)),
  fc.array(fc.integer(), { maxLength: 3 }), fc.dictionary(fc.string({ maxLength: 4 }), fc.integer(), { maxKeys: 3 })
)
const requestId = fc.oneof(fc.integer(), fc.string({ minLength: 1, maxLength: 20 }))
const topicData = fc.oneof(
  fc.record({ topic: fc.oneof(fc.constantFrom('room/1', 'room/forbidden', 'room/', 'nope', '__all__', 'room/1/2', ''), fc.string({ maxLength: 30 }), anyJson) }),
  anyJson
)

/** Envelopes where each field may be missing or of any type. */
const wrongTypes = fc.record({
  resource: fc.oneof(resourceName, anyJson),
  action: fc.oneof(actionName, anyJson),
  request_id: fc.oneof(requestId, anyJson),
  data: fc.oneof(anyJson, topicData)
}, { requiredKeys: [] }).map(value => text(JSON.stringify(value)))

/** Valid envelopes with random data for every action, known and unknown. */
const validEnvelope = fc.record({ resource: resourceName, action: actionName, request_id: requestId, data: fc.oneof(tree, topicData) })
  .map(({ data, ...rest }) => text(JSON.stringify(rest).slice(0, -1) + ',"data":' + serialize(data) + '}'))

const deepNesting = fc.oneof(
  fc.constantFrom('['.repeat(100_000), '{"a":'.repeat(50_000), '['.repeat(100_000) + ']'.repeat(100_000)).map(text),
  fc.nat(100_000).map(depth => text('{"resource":"echo","action":"get","request_id":"deep","data":' + '['.repeat(depth) + ']'.repeat(depth) + '}')),
  fc.nat(20_000).map(depth => text('{"resource":"echo","action":"get","request_id":"deep-object","data":' + '{"a":'.repeat(depth) + '1' + '}'.repeat(depth) + '}'))
)

const frame: fc.Arbitrary<Generated> = fc.oneof(
  { arbitrary: fc.uint8Array({ maxLength: 200 }).map(binary), weight: 3 },
  { arbitrary: fc.string({ unit: 'binary', maxLength: 200 }).map(text), weight: 3 },
  { arbitrary: fc.jsonValue({ maxDepth: 4 }).map(v => text(JSON.stringify(v))), weight: 2 },
  { arbitrary: tree.map(t => text(serialize(t))), weight: 2 },
  { arbitrary: buriedPoison.map(p => text(`{"resource":"echo","action":"get","request_id":"poison","data":${p}}`)), weight: 1 },
  { arbitrary: buriedPoison.map(text), weight: 1 },
  { arbitrary: hugeNumber.map(n => text(`{"resource":"echo","action":"get","request_id":${n},"data":{"n":${n}}}`)), weight: 1 },
  { arbitrary: wrongTypes, weight: 4 },
  { arbitrary: validEnvelope, weight: 6 },
  { arbitrary: validEnvelope.map(g => binary(Buffer.from(g.payload))), weight: 1 },
  { arbitrary: deepNesting, weight: 1 }
)

// ---- oracle -----------------------------------------------------------------------------------

const utf8 = new TextDecoder('utf-8', { fatal: true })

/** What the server sees of a frame: the text ws delivers (lone surrogates became U+FFFD), or null. */
function textOf (g: Generated): string | null {
  if (!g.binary) return Buffer.from(g.payload as string).toString('utf8')
  try { return utf8.decode(g.payload as Buffer) } catch { return null }
}

/** PROTOCOL.md, Error: the reply carries the frame's request_id when it had a usable one, else null. */
function expectedId (g: Generated): { id: unknown, parsed: Record<string, unknown> | undefined } {
  const source = textOf(g)
  if (source === null) return { id: null, parsed: undefined }
  let value: unknown
  let poisoned = false
  try {
    value = sjson.parse(source, null, { protoAction: 'error', constructorAction: 'ignore' })
  } catch (err) {
    // A frame refused for a __proto__ key is valid JSON: its error still carries its request_id.
    if (!/prototype property/.test((err as Error).message)) return { id: null, parsed: undefined }
    value = JSON.parse(source)
    poisoned = true
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return { id: null, parsed: undefined }
  const record = value as Record<string, unknown>
  const id = Object.hasOwn(record, 'request_id') ? record.request_id : undefined
  const usable = (typeof id === 'string' && id.length >= 1 && id.length <= 256) || Number.isSafeInteger(id)
  // -0 goes on the wire as 0.
  return { id: usable ? JSON.parse(JSON.stringify(id)) : null, parsed: poisoned ? undefined : record }
}

function checkReply (reply: Frame): void {
  if ('code' in reply) {
    for (const key of Object.keys(reply)) assert.ok(ERROR_KEYS.has(key), `unexpected key ${key} in ${JSON.stringify(reply)}`)
    assert.ok(Object.hasOwn(CODES, reply.code), `code ${reply.code} is not in the protocol table`)
    assert.equal(reply.statusCode, CODES[reply.code], `statusCode of ${reply.code}`)
    assert.equal(typeof reply.error, 'string')
    if (reply.code === 'INTERNAL_ERROR') assert.equal(reply.error, 'Unknown error')
    const visible = reply.error + JSON.stringify(reply.details ?? null)
    for (const leak of LEAKS) assert.doesNotMatch(visible, leak)
  } else {
    assert.deepEqual(Object.keys(reply).sort(), ['data', 'request_id'], `not a reply: ${JSON.stringify(reply).slice(0, 200)}`)
  }
}

/** Frames, then as many replies; checks each reply and that the replies answer exactly these frames. */
async function exchange (client: TestClient, frames: Generated[], counters: { frames: number }): Promise<void> {
  const start = client.frames.length
  for (const g of frames) client.ws.send(g.payload, { binary: g.binary })
  counters.frames += frames.length
  const deadline = Date.now() + 15_000
  while (client.frames.length - start < frames.length) {
    if (Date.now() > deadline) throw new Error(`${client.frames.length - start} replies for ${frames.length} frames`)
    await sleep(1)
  }
  const replies = client.frames.slice(start, start + frames.length)
  for (const reply of replies) checkReply(reply)

  const expected = frames.map(expectedId)
  const key = (id: unknown): string => JSON.stringify(id)
  assert.deepEqual(replies.map(r => key(r.request_id)).sort(), expected.map(e => key(e.id)).sort(), 'one reply per frame')
  for (const reply of replies) {
    if (reply.request_id === null) assert.equal(reply.code, 'VALIDATION_ERROR', 'a frame without a usable id failed to parse')
  }
  // Where a frame's id is unique, its reply can be checked against what it asked.
  for (const { id, parsed } of expected) {
    if (id === null || parsed === undefined || expected.filter(e => key(e.id) === key(id)).length !== 1) continue
    const reply = replies.find(r => key(r.request_id) === key(id)) as Frame
    if (parsed.resource === 'echo' && parsed.action === 'get' && !('code' in reply)) {
      assert.equal(JSON.stringify(reply.data), JSON.stringify(parsed.data ?? null), 'echo returns the data it got')
    }
    if (parsed.resource === 'boom') assert.ok('code' in reply, 'boom always fails')
  }
}

/** Fails the test on any uncaught exception or unhandled rejection while `fn` runs. */
async function guarded (t: TestContext, fn: () => Promise<void>): Promise<void> {
  const problems: unknown[] = []
  const record = (err: unknown) => { problems.push(err) }
  process.on('uncaughtException', record)
  process.on('unhandledRejection', record)
  const before = Object.getOwnPropertyNames(Object.prototype).map(name => [name, Object.getOwnPropertyDescriptor(Object.prototype, name)?.value])
  try {
    await fn()
    await sleep(100) // late rejections of timed-out work
  } finally {
    process.off('uncaughtException', record)
    process.off('unhandledRejection', record)
  }
  assert.deepEqual(problems, [])
  const after = Object.getOwnPropertyNames(Object.prototype).map(name => [name, Object.getOwnPropertyDescriptor(Object.prototype, name)?.value])
  assert.equal(after.length, before.length, 'no property added to Object.prototype')
  for (const [i, [name, value]] of after.entries()) {
    assert.equal(name, before[i]?.[0])
    assert.equal(value, before[i]?.[1], `Object.prototype.${String(name)} untouched`)
  }
  assert.equal(({} as Record<string, unknown>).polluted, undefined)
  t.diagnostic('no uncaughtException, no unhandledRejection, Object.prototype untouched')
}

// rateLimit: false because one connection sends ~10,000 frames in a few seconds: with the default
// (10,000 per second) some would be answered TOO_MANY_REQUESTS before reaching the parser and the
// dispatcher, which is what the fuzzer is here to exercise. The limit itself is tested in limits.test.ts.
const FUZZ_OPTIONS = { rateLimit: false as const }
const BATCH = 20

test('fuzz: 10,000+ hostile frames through injectWS each get exactly one safe reply', { timeout: 90_000 }, async (t) => {
  const app = await build(t, FUZZ_OPTIONS, fuzzApp)
  const client = await inject(t, app)
  const counters = { frames: 0 }
  const started = performance.now()
  await guarded(t, async () => {
    await fc.assert(fc.asyncProperty(fc.array(frame, { minLength: BATCH, maxLength: BATCH }), frames => exchange(client, frames, counters)), { numRuns: 520 })
    await sleep(100)
    assert.equal(client.frames.length, counters.frames, 'no extra reply arrived late')
  })
  const seconds = (performance.now() - started) / 1000
  t.diagnostic(`${counters.frames} frames in ${seconds.toFixed(1)} s`)
  assert.ok(counters.frames >= 10_000)
  // The app still serves normally after all that.
  // An id no generator makes (they make short strings and integers), so no earlier reply matches it.
  assert.deepEqual((await client.request('echo', 'get', { after: 'fuzz' }, `after-fuzz-${'z'.repeat(30)}`)).data, { after: 'fuzz' })
  assert.equal(app.drizzle.connections.size, 1)
})

test('fuzz: a slice over a real socket to a listening app', { timeout: 60_000 }, async (t) => {
  const app = await build(t, FUZZ_OPTIONS, fuzzApp)
  const client = await connect(t, await listen(app))
  const counters = { frames: 0 }
  const started = performance.now()
  await guarded(t, async () => {
    await fc.assert(fc.asyncProperty(fc.array(frame, { minLength: BATCH, maxLength: BATCH }), frames => exchange(client, frames, counters)), { numRuns: 60 })
    await sleep(100)
    assert.equal(client.frames.length, counters.frames, 'no extra reply arrived late')
  })
  t.diagnostic(`${counters.frames} frames in ${((performance.now() - started) / 1000).toFixed(1)} s`)
  assert.equal(client.closeCode, undefined, 'the socket survived')
})

test('fuzz: the named nasties, one by one', async (t) => {
  const app = await build(t, FUZZ_OPTIONS, fuzzApp)
  const client = await inject(t, app)
  const nasties = [
    '['.repeat(100_000), '{"a":'.repeat(100_000), '"' + '\\u0000'.repeat(1000) + '"', '1e999999', '-', '', ' ', 'null', '[]', '{}',
    '{"__proto__":{"polluted":1},"resource":"echo","action":"get","request_id":1}',
    '{"resource":"echo","action":"get","request_id":2,"data":{"constructor":{"prototype":{"polluted":1}}}}',
    '{"resource":"echo","action":"constructor","request_id":3}',
    '{"resource":"echo","action":"__proto__","request_id":4}',
    '{"resource":"__proto__","action":"get","request_id":5}',
    '{"resource":"echo","action":"get","request_id":6,"data":' + '['.repeat(100_000) + ']'.repeat(100_000) + '}',
    '{"resource":"echo","action":"get","request_id":1e400}',
    '{"resource":"echo","action":"get","request_id":9007199254740993}',
    '{"resource":"echo","action":"get","request_id":"' + 'x'.repeat(257) + '"}'
  ]
  await guarded(t, async () => {
    await exchange(client, nasties.map(text), { frames: 0 })
  })
  const deep = client.frames.find(f => f.request_id === 6)
  t.diagnostic(`100,000-deep data echoed: ${JSON.stringify(deep).slice(0, 120)}`)
})
