import { test } from 'node:test'
import assert from 'node:assert/strict'
import { payloadOf, simpleFrameEnd, textFrame, unmask } from '../lib/frames.js'

// lib/frames.ts: the bytes of the frames the plugin writes past ws's sender and reads past its
// receiver. Every size class of the length field, multi-byte UTF-8, and every frame the reader must
// leave to ws.

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

/** A client frame: masked with `key`, its length in 7, 16 or 64 bits. */
function clientFrame (payload: Buffer, first = 0x81, bits: 7 | 16 | 64 = payload.length < 126 ? 7 : 16, key = [1, 2, 3, 4]): Buffer {
  const header = Buffer.alloc(bits === 7 ? 2 : bits === 16 ? 4 : 10)
  header[0] = first
  if (bits === 7) header[1] = 0x80 | payload.length
  else if (bits === 16) { header[1] = 0x80 | 126; header.writeUInt16BE(payload.length, 2) } else { header[1] = 0x80 | 127; header.writeBigUInt64BE(BigInt(payload.length), 2) }
  return Buffer.concat([header, Buffer.from(key), Buffer.from(payload.map((b, i) => b ^ (key[i & 3] as number)))])
}

test('simpleFrameEnd: whole, final, masked text or binary frames with 7- and 16-bit lengths, at any offset', () => {
  for (const size of [0, 1, 125, 126, 127, 1000, 65535]) {
    const frame = clientFrame(Buffer.alloc(size, 0x61))
    const chunk = Buffer.concat([Buffer.from([9, 9, 9]), frame, Buffer.from([7])])
    assert.equal(simpleFrameEnd(chunk, 3, 0), 3 + frame.length, `size ${size}`)
    assert.equal(simpleFrameEnd(frame, 0, size), frame.length, `size ${size} at maxPayload`)
    // maxPayload 0 is no limit, as in ws.
    if (size >= 2) assert.equal(simpleFrameEnd(frame, 0, size - 1), -1, `size ${size} over maxPayload`)
    assert.equal(simpleFrameEnd(frame.subarray(0, frame.length - 1), 0, 0), -1, `size ${size} cut short`)
  }
  assert.equal(simpleFrameEnd(clientFrame(Buffer.from('{}'), 0x82), 0, 0), 8, 'binary')
})

test('simpleFrameEnd: everything ws must read itself is -1', () => {
  const payload = Buffer.from('{"a":1}')
  const unmasked = Buffer.concat([Buffer.from([0x81, payload.length]), payload])
  const cases: Array<[string, Buffer]> = [
    ['not final (a first fragment)', clientFrame(payload, 0x01)],
    ['a continuation', clientFrame(payload, 0x80)],
    ['compressed (RSV1)', clientFrame(payload, 0xc1)],
    ['RSV2', clientFrame(payload, 0xa1)],
    ['ping', clientFrame(payload, 0x89)],
    ['pong', clientFrame(payload, 0x8a)],
    ['close', clientFrame(Buffer.from([3, 232]), 0x88)],
    ['reserved opcode', clientFrame(payload, 0x83)],
    ['64-bit length', clientFrame(payload, 0x81, 64)],
    ['unmasked', unmasked],
    ['a header cut short', clientFrame(Buffer.alloc(200)).subarray(0, 3)],
    ['a mask cut short', clientFrame(payload).subarray(0, 5)]
  ]
  for (const [what, frame] of cases) assert.equal(simpleFrameEnd(frame, 0, 0), -1, what)
})

test('unmask: XOR with the 4-byte mask before the payload, at every length modulo 4; twice restores it', () => {
  for (let size = 0; size < 12; size++) {
    const text = Buffer.from('abcdefghijklmnop'.slice(0, size))
    const frame = clientFrame(text, 0x81, 7, [0x37, 0xfa, 0x21, 0x3d])
    const masked = Buffer.from(frame)
    unmask(frame, 6, frame.length)
    assert.equal(frame.subarray(6).toString(), text.toString(), `size ${size}`)
    unmask(frame, 6, frame.length)
    assert.deepEqual(frame, masked, `size ${size}`)
  }
})
