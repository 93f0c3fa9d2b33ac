import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { connect, type Socket } from 'node:net'

// A WebSocket peer written with bare TCP, for what a well-behaved client library never sends:
// fragments of a message that never completes, bad opcodes, unmasked frames.

/** Clients must mask their frames (RFC 6455 5.3); one fixed key is enough for tests. */
const MASK = Buffer.from([0x12, 0x34, 0x56, 0x78])

export const OPCODE = { CONTINUATION: 0, TEXT: 1, BINARY: 2, CLOSE: 8, PING: 9, PONG: 10 } as const

export interface FrameOptions { fin?: boolean, masked?: boolean, rsv1?: boolean }

/** One client frame: masked unless told otherwise, FIN set unless `fin: false`. */
export function clientFrame (opcode: number, payload: Buffer | string, { fin = true, masked = true, rsv1 = false }: FrameOptions = {}): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload) : payload
  const length = body.length
  const extended = length < 126 ? 0 : length < 65536 ? 2 : 8
  const header = Buffer.alloc(2 + extended + (masked ? 4 : 0))
  header[0] = (fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | opcode
  header[1] = (masked ? 0x80 : 0) | (extended === 0 ? length : extended === 2 ? 126 : 127)
  if (extended === 2) header.writeUInt16BE(length, 2)
  else if (extended === 8) header.writeBigUInt64BE(BigInt(length), 2)
  if (!masked) return Buffer.concat([header, body])
  MASK.copy(header, 2 + extended)
  const maskedBody = Buffer.allocUnsafe(length)
  for (let i = 0; i < length; i++) maskedBody[i] = (body[i] as number) ^ (MASK[i & 3] as number)
  return Buffer.concat([header, maskedBody])
}

export interface RawPeerOptions {
  /** Answer the server's pings with pongs, as browsers and ws do (default true). */
  answerPings?: boolean
}

/**
 * A WebSocket connection over a bare TCP socket. It reads what the server sends: the close frame's
 * code, pings (answered unless told not to), text frames. It never answers a close frame, like a
 * peer that only writes.
 */
export class RawPeer {
  /** The code of the server's close frame, once received. */
  closeCode: number | undefined
  /** ms from open() to the close frame. */
  closedAfter: number | undefined
  /** How the TCP connection ended: 'eof' (FIN), 'reset' (ECONNRESET) or 'error'. */
  ending: 'eof' | 'reset' | 'error' | undefined
  pings = 0
  readonly texts: string[] = []
  /** Resolves when the TCP connection is gone. */
  readonly gone: Promise<void>
  private pending: Buffer = Buffer.alloc(0)

  private constructor (readonly socket: Socket, private readonly startedAt: number, private readonly answerPings: boolean) {
    socket.on('data', (chunk: Buffer) => this.read(chunk))
    socket.on('end', () => { this.ending ??= 'eof' })
    socket.on('error', (err: NodeJS.ErrnoException) => { this.ending ??= err.code === 'ECONNRESET' ? 'reset' : 'error' })
    // Not events.once: it would reject on the 'error' a reset emits first.
    this.gone = new Promise(resolve => socket.once('close', () => resolve()))
  }

  /** Connects and completes the upgrade; rejects unless the server answers 101. */
  static async open (url: string, { answerPings = true }: RawPeerOptions = {}): Promise<RawPeer> {
    const { hostname, port, pathname } = new URL(url)
    const socket = connect(Number(port), hostname)
    socket.setNoDelay(true)
    await once(socket, 'connect')
    socket.write(`GET ${pathname} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`)
    let head = Buffer.alloc(0)
    while (head.indexOf('\r\n\r\n') === -1) {
      const [chunk] = await once(socket, 'data') as [Buffer]
      head = Buffer.concat([head, chunk])
    }
    const end = head.indexOf('\r\n\r\n') + 4
    const status = head.subarray(0, end).toString()
    if (!status.startsWith('HTTP/1.1 101')) {
      socket.destroy()
      throw new Error(`upgrade refused: ${status.split('\r\n')[0] ?? ''}`)
    }
    const peer = new RawPeer(socket, performance.now(), answerPings)
    if (end < head.length) peer.read(head.subarray(end))
    return peer
  }

  /** Writes raw bytes; resolves once the kernel took them (or the socket is gone). */
  write (bytes: Buffer): Promise<void> {
    return new Promise(resolve => {
      if (this.socket.destroyed) resolve()
      else this.socket.write(bytes, () => resolve())
    })
  }

  destroy (): void { this.socket.destroy() }

  /** Server frames are never masked. */
  private read (chunk: Buffer): void {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk])
    for (;;) {
      const frame = this.nextFrame()
      if (frame === undefined) return
      this.handle(frame.opcode, frame.payload)
    }
  }

  private nextFrame (): { opcode: number, payload: Buffer } | undefined {
    const buffer = this.pending
    if (buffer.length < 2) return undefined
    let length = (buffer[1] as number) & 0x7f
    let offset = 2
    if (length === 126) {
      if (buffer.length < 4) return undefined
      length = buffer.readUInt16BE(2)
      offset = 4
    } else if (length === 127) {
      if (buffer.length < 10) return undefined
      length = Number(buffer.readBigUInt64BE(2))
      offset = 10
    }
    if (buffer.length < offset + length) return undefined
    this.pending = buffer.subarray(offset + length)
    return { opcode: (buffer[0] as number) & 0x0f, payload: buffer.subarray(offset, offset + length) }
  }

  private handle (opcode: number, payload: Buffer): void {
    if (opcode === OPCODE.CLOSE) {
      this.closeCode ??= payload.length >= 2 ? payload.readUInt16BE(0) : 1005
      this.closedAfter ??= performance.now() - this.startedAt
    } else if (opcode === OPCODE.PING) {
      this.pings++
      if (this.answerPings && !this.socket.destroyed) this.socket.write(clientFrame(OPCODE.PONG, Buffer.from(payload)))
    } else if (opcode === OPCODE.TEXT) {
      this.texts.push(payload.toString())
    }
  }
}
