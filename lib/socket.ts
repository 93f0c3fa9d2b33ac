import { isUtf8 } from 'node:buffer'
import { randomUUID } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import type { WebSocket } from 'ws'
import { simpleFrameEnd, unmask } from './frames.js'

// What the WebSocket transport relies on below ws's public API: close codes, the TCP socket under a
// WebSocket, how much of an unfinished message ws's receiver holds, and write coalescing. Kept here so
// lib/connection.ts reads as the socket's loop only. Every field read from ws is named in ws 8's terms.

export const OPEN = 1

/** WebSocket close codes the plugin uses (RFC 6455 section 7.4.1, and 1013 from the IANA registry). */
export const CLOSE = {
  GOING_AWAY: 1001,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  TRY_AGAIN_LATER: 1013
} as const

/** ws's errors for a peer that broke the protocol (bad opcode, oversized message...): ws closes it itself. */
export function isProtocolError (err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && code.startsWith('WS_ERR_')
}

/** Whether a logger prints info lines. Fastify's disabled logger has no level and only `child`. */
export function infoEnabled (log: FastifyBaseLogger): boolean {
  const withLevels = log as FastifyBaseLogger & { isLevelEnabled?: (level: string) => boolean }
  if (typeof withLevels.isLevelEnabled === 'function') return withLevels.isLevelEnabled('info')
  return log.level !== undefined || Object.keys(log).some(key => key !== 'child')
}

/**
 * The owner of a TCP socket, for the listeners the transport adds (one function for all sockets, no
 * closure each); only set if ws's own link to the WebSocket is not found (see wsLink).
 */
const kOwner = Symbol('fastify-drizzle.connection')

/** What the transport asks of a raw socket's owner. */
export interface SocketOwner {
  measureIncomplete (): void
  /** Several messages came in one chunk: their replies will come in one turn, to be written together. */
  readBatch (): void
  drained (): void
  uncork (): void
}

export interface RawSocket {
  cork (): void
  uncork (): void
  pause (): void
  write (chunk: Buffer): boolean
  on (event: 'data', listener: (this: RawSocket) => void): void
  once (event: 'drain', listener: (this: RawSocket) => void): void
  writableLength: number
  /** Set when a write was refused for a full buffer: 'drain' will follow. */
  writableNeedDrain: boolean
  destroyed: boolean
  [kOwner]?: SocketOwner
  [link: symbol]: unknown
}

/** The TCP socket under a WebSocket (absent under injectWS, and once ws has let it go). */
export function rawSocketOf (socket: WebSocket): RawSocket | undefined {
  return (socket as unknown as { _socket?: RawSocket | null })._socket ?? undefined
}

/**
 * ws's link from its receiver and TCP socket to their WebSocket (ws 8 sets `[kWebSocket]` on both, and
 * clears the TCP socket's when it closes), found by its description on the first socket, null if
 * absent. Listeners on them reach the Connection through it and the WebSocket: a property of ours on
 * the TCP socket would grow its property array by 24 B per connection.
 */
let wsLink: symbol | null | undefined

function findLink (socket: WebSocket): symbol | null {
  const receiver = (socket as unknown as { _receiver?: Record<symbol, unknown> | null })._receiver
  if (receiver == null) return null
  return Object.getOwnPropertySymbols(receiver).find(key => key.description === 'websocket' && receiver[key] === socket) ?? null
}

function ownerOfRaw (raw: RawSocket): SocketOwner | undefined {
  if (wsLink == null) return raw[kOwner]
  return (raw[wsLink] as OwnedSocket | undefined)?.[kConnection]
}

/** After ws's own 'data' listener, when it is not wrapped (see slotOfWsData): what ws holds is unfinished. */
function onRawData (this: RawSocket): void { ownerOfRaw(this)?.measureIncomplete() }

/** After ws's receiver has emitted a pong on the WebSocket. */
function onReceiverPong (this: Record<symbol, unknown>): void {
  ((this[wsLink as symbol] as OwnedSocket | undefined)?.[kConnection])?.ponged()
}

interface Emitter {
  rawListeners (event: string): Function[]
  removeListener (event: string, listener: (...args: any[]) => void): unknown
  on (event: string, listener: (...args: any[]) => void): unknown
}

type Listener = (this: any, arg: any) => void

/**
 * Puts `wrap(ws's listener)` in the slot of ws's own listener for an event (the function named
 * `name`) instead of adding a listener of our own: a second listener would make the emitter's
 * listeners for that event an array (64 B per connection, which EventEmitter copies on every emit),
 * or add a key to its table of events (which grows it by 96 B). The wrapper's `listener` names ws's
 * function, as on a once() wrapper, so ws's own removeListener removes both. ws's function is learnt
 * from the first emitter; the returned function answers false where it is not found, and the caller
 * listens itself.
 */
function inWsSlot (name: string, wrap: (original: Listener) => Listener): (emitter: Emitter, event: string) => boolean {
  let wrapper: (Listener & { listener?: Listener }) | null | undefined
  return (emitter, event) => {
    const listeners = emitter.rawListeners(event)
    if (wrapper === undefined) {
      const only = listeners.length === 1 ? listeners[0] : undefined
      wrapper = only?.name === name ? wrap(only as Listener) : null
      if (wrapper !== null) wrapper.listener = only as Listener
    }
    if (wrapper === null || listeners.length !== 1 || listeners[0] !== wrapper.listener) return false
    emitter.removeListener(event, wrapper.listener as Listener)
    emitter.on(event, wrapper)
    return true
  }
}

const slotOfWsData = inWsSlot('socketOnData', original => function (this: RawSocket, chunk: Buffer) {
  const socket = wsLink == null ? undefined : this[wsLink] as OwnedSocket | undefined
  const receiver = receiverOf(socket)
  messagesInChunk = 0
  let rest: Buffer | undefined = chunk
  if (socket !== undefined && receiver != null) {
    // A frame begun in the previous chunk: ws gets just what it needs to finish it, then is idle again.
    const need = bytesToFinish(receiver)
    if (need > 0 && need < chunk.length) {
      original.call(this, chunk.subarray(0, need))
      rest = chunk.subarray(need)
    }
    rest = readFrames(socket, receiver, rest)
  }
  if (rest !== undefined) original.call(this, rest)
  // By now the chunk is parsed: what ws still holds is unfinished.
  const owner = ownerOfRaw(this)
  if (owner === undefined) return
  if (messagesInChunk > 1) owner.readBatch()
  owner.measureIncomplete()
})
const slotOfWsPong = inWsSlot('receiverOnPong', original => function (this: unknown, data: Buffer) {
  original.call(this, data)
  onReceiverPong.call(this as Record<symbol, unknown>)
})

export function onRawDrain (this: RawSocket): void { ownerOfRaw(this)?.drained() }

/** ws's message parser; its fields say how much of an unfinished message it holds (ws 8). */
interface Receiver { _bufferedBytes: number, _totalPayloadLength: number, _payloadLength: number, _state: number, _opcode: number }

/** ws 8's receiver states while the mask or the payload of a frame whose header was read is awaited. */
const GET_MASK = 3
const GET_DATA = 4

/**
 * Bytes ws's receiver holds for a socket: chunks not yet parsed plus the fragments of the message under
 * way, or undefined when it has none. ws adds a data frame's declared length to _totalPayloadLength as
 * soon as it reads the header, while the payload is still arriving (and counted in _bufferedBytes): that
 * length is taken out, or a 14-byte header declaring 1 MiB would count as 1 MiB, and a big frame
 * arriving in chunks twice.
 */
export function heldBytes (socket: WebSocket): number | undefined {
  const receiver = (socket as unknown as { _receiver?: Receiver | null })._receiver
  if (receiver == null) return undefined
  const awaitingPayload = (receiver._state === GET_MASK || receiver._state === GET_DATA) && receiver._opcode < 0x08
  return receiver._bufferedBytes + receiver._totalPayloadLength - (awaitingPayload ? receiver._payloadLength : 0)
}

// ---- frames read past ws's receiver --------------------------------------------------------------

/** What readFrames() checks of ws 8's receiver: it must hold nothing and deliver messages at once. */
interface IdleReceiver extends Receiver { _fragmented: number, _maxPayload: number, _allowSynchronousEvents: boolean, _errored: boolean, _fin: boolean, _compressed: boolean, writableLength: number }

/** Messages handed to connections since the current chunk of a TCP socket arrived. */
let messagesInChunk = 0

/**
 * Whether ws's receiver delivers a message as soon as its last byte is read, in the same call: no
 * fragmented message under way, nothing queued in its Writable, no error, synchronous events.
 */
function deliversAtOnce (receiver: IdleReceiver): boolean {
  return receiver._fragmented === 0 && receiver._allowSynchronousEvents && !receiver._errored && receiver.writableLength === 0
}

/** Whether ws's receiver is between messages with nothing held, so a whole frame may be read past it. */
function receiverIdle (receiver: IdleReceiver): boolean {
  return receiver._state === 0 && receiver._bufferedBytes === 0 && deliversAtOnce(receiver)
}

/** ws's receiver of a WebSocket (reached from a TCP socket through ws's link, wsLink). */
function receiverOf (socket: WebSocket | undefined): IdleReceiver | null | undefined {
  return (socket as { _receiver?: IdleReceiver | null } | undefined)?._receiver
}

/**
 * How many bytes ws's receiver needs to finish the frame whose header it read from an earlier chunk,
 * when that frame is a whole message ws will deliver at once (final, unfragmented, uncompressed text
 * or binary); 0 otherwise. A peer sending many requests at once has its frames cut at chunk
 * boundaries: past the cut ws reads only the rest of that frame, and the frames after it are read here.
 */
function bytesToFinish (receiver: IdleReceiver): number {
  if (!receiver._fin || receiver._compressed || receiver._opcode === 0 || receiver._opcode > 2 || !deliversAtOnce(receiver)) return 0
  if (receiver._state === GET_DATA) return receiver._payloadLength - receiver._bufferedBytes
  if (receiver._state === GET_MASK) return 4 - receiver._bufferedBytes + receiver._payloadLength
  return 0
}

/** Whether the connection is the socket's only 'message' listener (an app may have added one through it). */
function ownsMessages (socket: WebSocket): boolean {
  return socket.listenerCount('message') === 1 && socket.listenerCount('message', onMessage) === 1
}

/**
 * Reads the whole, simple frames at the start of a chunk of `socket`'s TCP socket and hands each message to
 * its connection, as ws's receiver would have, but without its stream: ws's Writable machinery, three
 * buffer views and two emits per message cost about as much as the rest of a request's JavaScript.
 * Only while ws's receiver is idle, the socket open and the connection its only 'message' listener;
 * at the first frame it would treat differently (see simpleFrameEnd, and text that is not UTF-8, which
 * ws closes with 1007), the rest of the chunk goes to ws, so frames keep their order. Returns what ws
 * must read: the chunk, its tail, or undefined when nothing is left.
 */
function readFrames (socket: OwnedSocket, receiver: IdleReceiver, chunk: Buffer): Buffer | undefined {
  if (!receiverIdle(receiver)) return chunk
  const owner = socket[kConnection]
  let at = 0
  while (at < chunk.length && socket.readyState === OPEN && ownsMessages(socket)) {
    const end = simpleFrameEnd(chunk, at, receiver._maxPayload)
    if (end < 0) break
    // The payload follows the mask, after a 7-bit (2-byte header) or 16-bit (4-byte header) length.
    const start = at + (((chunk[at + 1] as number) & 0x7f) === 126 ? 8 : 6)
    unmask(chunk, start, end)
    const payload = chunk.subarray(start, end)
    const isBinary = chunk[at] === 0x82
    if (!isBinary && !isUtf8(payload)) {
      unmask(chunk, start, end)
      break
    }
    at = end
    deliver(owner, payload, isBinary)
  }
  return at === 0 ? chunk : at === chunk.length ? undefined : chunk.subarray(at)
}

/**
 * Buffered bytes below this are ordinary (a turn's corked frames) and not counted toward
 * maxBufferedBytesTotal; above it the TCP socket surely emits 'drain' when it empties (its
 * highWaterMark is 16 KiB), which is when the count is corrected.
 */
export const BACKLOG = 64 * 1024

/**
 * Write coalescing. Frames written to a socket during one turn of the event loop (the replies to a
 * batch of requests read together, the publications of a broker burst) leave in at most two writes
 * instead of one system call per frame: the first frame at once (alone in its turn is the common
 * case), the rest corked and flushed in one writev when the turn's work is done (process.nextTick
 * runs after the microtasks that send replies); replies to requests read together are corked from
 * the first. The bytes on the wire are the same. A socket with CORK_LIMIT bytes corked is flushed at
 * once, so corking never holds more than that.
 */
export const CORK_LIMIT = 64 * 1024
const turn: SocketOwner[] = []

function endTurn (): void {
  for (const owner of turn) owner.uncork()
  turn.length = 0
}

/** Calls `owner.uncork()` at the end of this turn, for what it writes (and corks) until then. */
export function joinTurn (owner: SocketOwner): void {
  if (turn.push(owner) === 1) process.nextTick(endTurn)
}

// ---- the ws socket's listeners: one function each for all sockets, `this` being the ws socket, so an
// idle connection holds no closures (the benchmark's memory scenario compares it with a bare socket).

/** What the listeners call: the Connection that owns the ws socket. */
export interface FrameOwner {
  readonly log: FastifyBaseLogger
  /** Called for each complete message (the unfinished-message clock, SocketIO.measureIncomplete). */
  messageCompleted (): void
  handleFrame (raw: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void
  ponged (): void
  handleClose (code: number): void
}

const kConnection = Symbol('fastify-drizzle.owner')
type OwnedSocket = WebSocket & { [kConnection]: FrameOwner & SocketOwner }

// No 'error' listener: @fastify/websocket adds one to every socket, which calls its errorHandler (the
// plugin's logs each error once, lib/plugin.ts). A second listener would only log it again, and would
// turn the socket's single 'error' listener into an array (64 B per connection).
export function listenTo (socket: WebSocket, owner: FrameOwner & SocketOwner): void {
  (socket as OwnedSocket)[kConnection] = owner
  socket.on('message', onMessage)
  socket.on('close', onClose)
  wsLink ??= findLink(socket)
  const receiver = (socket as unknown as { _receiver?: Emitter | null })._receiver
  // A 'pong' listener on the WebSocket would be a fourth key in its table of events (with 'message',
  // 'close', and @fastify/websocket's 'error'): that grows the table by 96 B per connection.
  if (wsLink === null || receiver == null || !slotOfWsPong(receiver, 'pong')) socket.on('pong', onPong)
  const raw = rawSocketOf(socket)
  if (raw !== undefined) {
    if (wsLink === null) raw[kOwner] = owner
    if (!slotOfWsData(raw as unknown as Emitter, 'data')) raw.on('data', onRawData)
  }
}

/** After close: no more frames or pongs (a pong the receiver still reads finds a closed connection). */
export function stopListening (socket: WebSocket): void {
  socket.removeListener('message', onMessage)
  socket.removeListener('pong', onPong)
  socket.removeListener('close', onClose)
}

function onMessage (this: WebSocket, raw: Buffer, isBinary: boolean): void {
  deliver((this as OwnedSocket)[kConnection], raw, isBinary)
}

/** A complete message, from ws's receiver or from readFrames(). */
function deliver (conn: FrameOwner & SocketOwner, raw: Buffer, isBinary: boolean): void {
  messagesInChunk++
  conn.messageCompleted()
  try {
    conn.handleFrame(raw, isBinary)
  } catch (err) {
    conn.log.error({ err }, 'frame handling failed')
  }
}

function onPong (this: WebSocket): void { (this as OwnedSocket)[kConnection].ponged() }

function onClose (this: WebSocket, code: number): void { (this as OwnedSocket)[kConnection].handleClose(code) }

/**
 * A UUID as one flat string: randomUUID() returns a tree of ~20 concatenated pieces (about 500 bytes
 * of heap for as long as the string lives); reading a character makes V8 flatten it to ~60 bytes.
 */
export function flatUuid (): string {
  const id = randomUUID()
  id.charCodeAt(0)
  return id
}
