import type { WebSocket } from 'ws'

// WebSocket frames (RFC 6455 section 5) as the plugin writes and reads them past ws, on the hot path:
// the bytes of a frame, and whether ws's sender lets one be written now. What decides when they are
// used, and hands ws the rest, is lib/socket.ts.

// ---- written past ws's sender ---------------------------------------------------------------------

/**
 * A text message as the bytes of one unmasked, unfragmented WebSocket frame (RFC 6455 section 5.2):
 * FIN and the text opcode, the payload length in 7, 16 or 64 bits, the UTF-8 payload. A publication is
 * framed once and the same bytes go to every subscriber in one write each, where ws.send would build a
 * header per socket and write header and payload with a writev; a reply is framed with one copy.
 */
export function textFrame (payload: string): Buffer {
  const length = Buffer.byteLength(payload)
  const header = length < 126 ? 2 : length < 65536 ? 4 : 10
  const frame = Buffer.allocUnsafe(header + length)
  frame[0] = 0x81
  if (header === 2) frame[1] = length
  else if (header === 4) {
    frame[1] = 126
    frame.writeUInt16BE(length, 2)
  } else {
    frame[1] = 127
    frame.writeUInt32BE(Math.floor(length / 2 ** 32), 2)
    frame.writeUInt32BE(length >>> 0, 6)
  }
  frame.write(payload, header, length, 'utf8')
  return frame
}

/** The payload of a frame made by textFrame(), for a socket that must go through ws.send. */
export function payloadOf (frame: Buffer): Buffer {
  const marker = frame[1] as number
  return frame.subarray(marker < 126 ? 2 : marker === 126 ? 4 : 10)
}

/** ws 8's sender: idle (state 0) unless it is compressing or reading a Blob, when it queues what comes next. */
interface Sender { _state?: number }

/**
 * Whether a frame may be written to the TCP socket directly, in the order ws itself would have sent
 * it: ws's sender is idle (nothing queued before it) and no extension (permessage-deflate, when the
 * app registered @fastify/websocket with it) transforms frames. Otherwise ws.send does the work.
 */
export function writesDirect (socket: WebSocket): boolean {
  const ws = socket as unknown as { _sender?: Sender | null, _extensions?: Record<string, unknown> }
  return ws._sender?._state === 0 && ws._extensions?.['permessage-deflate'] === undefined
}

// ---- read past ws's receiver ----------------------------------------------------------------------

/**
 * The end of the frame at `at` in `chunk` if it is one ws would deliver unchanged as a message: whole,
 * final, text or binary, masked (as a client must), no extension bits, a length in 7 or 16 bits within
 * ws's maxPayload. -1 for anything else (control frames, fragments, compressed or malformed frames, a
 * frame continued in the next chunk), which ws reads itself.
 */
export function simpleFrameEnd (chunk: Buffer, at: number, maxPayload: number): number {
  if (chunk.length - at < 6) return -1
  const first = chunk[at] as number
  const second = chunk[at + 1] as number
  if ((first !== 0x81 && first !== 0x82) || second < 0x80) return -1
  let length = second & 0x7f
  let maskAt = at + 2
  if (length === 126) {
    if (chunk.length - at < 8) return -1
    length = (chunk[at + 2] as number) << 8 | (chunk[at + 3] as number)
    maskAt = at + 4
  } else if (length === 127) return -1
  if (maxPayload > 0 && length > maxPayload) return -1
  const end = maskAt + 4 + length
  return end <= chunk.length ? end : -1
}

/** XORs chunk[start, end) with the 4-byte mask at start - 4: it masks and unmasks alike (RFC 6455 5.3). */
export function unmask (chunk: Buffer, start: number, end: number): void {
  const m0 = chunk[start - 4] as number
  const m1 = chunk[start - 3] as number
  const m2 = chunk[start - 2] as number
  const m3 = chunk[start - 1] as number
  let i = start
  for (; i + 3 < end; i += 4) {
    chunk[i] = (chunk[i] as number) ^ m0
    chunk[i + 1] = (chunk[i + 1] as number) ^ m1
    chunk[i + 2] = (chunk[i + 2] as number) ^ m2
    chunk[i + 3] = (chunk[i + 3] as number) ^ m3
  }
  if (i < end) chunk[i] = (chunk[i] as number) ^ m0
  if (i + 1 < end) chunk[i + 1] = (chunk[i + 1] as number) ^ m1
  if (i + 2 < end) chunk[i + 2] = (chunk[i + 2] as number) ^ m2
}
