// The client's reading of the wire format, frame by frame: what it sends for a request, and how it
// sorts every frame a server (or something pretending to be one) can send. Pure functions, no socket.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { classifyFrame, encodeRequest } from '../lib/client/frames.js'
import { DrizzleClientError } from '../lib/client/index.js'

function errorOf (raw: unknown): DrizzleClientError {
  const incoming = classifyFrame(raw)
  assert.equal(incoming.kind, 'error')
  return (incoming as { error: DrizzleClientError }).error
}

test('a request envelope carries data only when there is some', () => {
  assert.deepEqual(JSON.parse(encodeRequest('todos', 'create', { title: 'a' }, 7)), { resource: 'todos', action: 'create', request_id: 7, data: { title: 'a' } })
  assert.deepEqual(JSON.parse(encodeRequest('todos', 'list', undefined, 8)), { resource: 'todos', action: 'list', request_id: 8 })
  assert.deepEqual(JSON.parse(encodeRequest('todos', 'list', null, 9)), { resource: 'todos', action: 'list', request_id: 9, data: null })
})

test('a frame with a string topic is a publication; event is kept only when it is a string', () => {
  assert.deepEqual(classifyFrame('{"topic":"todos","data":{"id":1},"event":"created"}'),
    { kind: 'publication', publication: { topic: 'todos', data: { id: 1 }, event: 'created' } })
  assert.deepEqual(classifyFrame('{"topic":"todos","data":1,"event":5}'), { kind: 'publication', publication: { topic: 'todos', data: 1 } })
  assert.deepEqual(classifyFrame(new TextEncoder().encode('{"topic":"t"}')), { kind: 'publication', publication: { topic: 't', data: undefined } })
})

test('a reply to a numbered request carries its data, or the error its frame describes', () => {
  assert.deepEqual(classifyFrame('{"data":[1],"request_id":3}'), { kind: 'reply', reply: { requestId: 3, data: [1], error: undefined, more: false } })
  // One item of a streamed reply; `more` means nothing on an error frame.
  assert.deepEqual(classifyFrame('{"data":[1],"request_id":3,"more":true}'), { kind: 'reply', reply: { requestId: 3, data: [1], error: undefined, more: true } })
  assert.equal((classifyFrame('{"request_id":3,"code":"X","error":"x","more":true}') as { reply: { more: boolean } }).reply.more, false)
  const incoming = classifyFrame('{"request_id":4,"code":"FORBIDDEN","error":"no","statusCode":403,"details":[{"path":"/x"}]}')
  assert.equal(incoming.kind, 'reply')
  const error = (incoming as { reply: { error: DrizzleClientError } }).reply.error
  assert.ok(error instanceof DrizzleClientError)
  assert.deepEqual({ type: error.type, message: error.message, code: error.code, statusCode: error.statusCode, details: error.details, requestId: error.requestId },
    { type: 'server', message: 'no', code: 'FORBIDDEN', statusCode: 403, details: [{ path: '/x' }], requestId: 4 })
  // Fields of the wrong type are left out, never trusted.
  const odd = (classifyFrame('{"request_id":5,"code":1,"error":{},"statusCode":"403"}') as { reply: { error: DrizzleClientError } }).reply.error
  assert.deepEqual([odd.message, odd.code, odd.statusCode], ['Server error', undefined, undefined])
})

test('an error frame tied to no request is an error event; a reply no request can await is ignored', () => {
  const error = errorOf('{"request_id":null,"code":"VALIDATION_ERROR","error":"Expected Json encodable string","statusCode":400}')
  assert.deepEqual([error.type, error.code, error.requestId], ['server', 'VALIDATION_ERROR', null])
  // The client numbers its requests: a string id, or a null id without an error, answers nothing.
  assert.deepEqual(classifyFrame('{"request_id":"7","data":1}'), { kind: 'ignored' })
  assert.deepEqual(classifyFrame('{"request_id":"7","code":"X","error":"x"}'), { kind: 'ignored' })
  assert.deepEqual(classifyFrame('{"request_id":null,"data":1}'), { kind: 'ignored' })
})

test('anything else is a protocol error that says what was wrong', () => {
  const cases: Array<[unknown, RegExp]> = [
    ['not json', /not JSON/],
    ['[1,2]', /not a JSON object/],
    ['null', /not a JSON object/],
    ['{"hello":"world"}', /neither a reply nor a publication/],
    [new Uint8Array([0xff, 0xfe]), /not UTF-8/],
    [42, /Unsupported frame data/]
  ]
  for (const [raw, message] of cases) {
    const error = errorOf(raw)
    assert.equal(error.type, 'protocol')
    assert.match(error.message, message)
  }
  assert.equal(errorOf('x'.repeat(500)).details, 'x'.repeat(200), 'at most 200 characters of the frame are kept')
})
