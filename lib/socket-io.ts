import { performance } from 'node:perf_hooks'
import type { FastifyBaseLogger } from 'fastify'
import type { WebSocket } from 'ws'
import type { Runtime } from './runtime.js'
import { payloadOf, textFrame, writesDirect } from './frames.js'
import { BACKLOG, CLOSE, CORK_LIMIT, flatUuid, heldBytes, joinTurn, OPEN, onRawDrain, rawSocketOf, type RawSocket, type SocketOwner } from './socket.js'

// The bytes of one WebSocket, in and out: write coalescing, both backpressure rules (publications at
// maxBufferedBytes, replies at twice that), this socket's shares of the server-wide totals (bytes
// buffered, bytes of unfinished messages), drain waiters, and closing. Connection (lib/connection.ts)
// extends it with the protocol: frames, actions, streams, subscriptions. One object per socket either
// way: this is the part of its loop that knows nothing of frames.

/** A Buffer holding UTF-8 JSON still goes out as a text frame. */
const TEXT_FRAME = { binary: false }

// A socket's booleans are bits of one field: a boolean field costs 8 B in every connection.
const CLOSED = 1
const WATCHING_DRAIN = 2
/** Set by each complete message, cleared by measureIncomplete(). */
const COMPLETED_MESSAGE = 4
/** Set while write() holds the TCP socket corked for the rest of the turn. */
const CORKED = 8
/** Set when several messages were read from one chunk, until the turn of their replies ends. */
const BATCH = 16
/** The bits from this one up are the subclass's (lib/connection.ts). */
export const SUBCLASS_FLAG = 32

/**
 * What a socket holds only while strained: a backlog, unfinished incoming messages, streams waiting for
 * it to drain. Made the first time one appears, so an idle socket does not carry these fields.
 */
class Strain {
  /** This socket's share of rt.totals.buffered: its bufferedAmount when last measured, if >= BACKLOG. */
  backlog = 0
  /** This socket's share of rt.totals.incomplete: bytes of unfinished messages ws holds for it. */
  incomplete = 0
  /** When the unfinished message began: when unfinished data appeared after a complete message. */
  incompleteSince = 0
  /** Streams paused until this socket drains (lib/stream.ts). */
  drainWaiters: Array<() => void> | undefined = undefined
}

export abstract class SocketIO implements SocketOwner {
  /** CLOSED, WATCHING_DRAIN, COMPLETED_MESSAGE, CORKED, BATCH, and the subclass's bits from SUBCLASS_FLAG. */
  protected flags = 0
  /** The TCP socket under the WebSocket once write() wrote to it in this turn (see uncork). */
  private turnSocket: RawSocket | undefined
  private strain: Strain | undefined = undefined
  // Made on first read: an idle connection should cost no more heap than a bare ws socket (the
  // benchmark's memory scenario), and most connections never read it.
  private uuid: string | undefined

  constructor (readonly socket: WebSocket, protected readonly rt: Runtime) {}

  abstract get log (): FastifyBaseLogger

  get closed (): boolean { return this.isClosed }

  protected get isClosed (): boolean { return (this.flags & CLOSED) !== 0 }

  messageCompleted (): void { this.flags |= COMPLETED_MESSAGE }

  readBatch (): void { this.flags |= BATCH }

  /** Unique across processes (a UUID). */
  get id (): string { return (this.uuid ??= flatUuid()) }

  /** At close: this socket's shares of the totals go back, and paused streams see it gone. */
  protected released (): void {
    this.flags |= CLOSED
    const strain = this.strain
    if (strain !== undefined) {
      this.rt.totals.buffered -= strain.backlog
      this.rt.totals.incomplete -= strain.incomplete
      strain.backlog = strain.incomplete = 0
    }
    this.wakeWriters()
  }

  /**
   * Counts the bytes ws holds for messages not yet complete (fragments, a partly received frame) in
   * the total of all sockets. The socket that takes the total past maxIncompleteBytesTotal is closed
   * with 1009 and no longer read: peers that never finish their messages cannot add up.
   */
  measureIncomplete (): void {
    const held = heldBytes(this.socket)
    if (held === undefined) return
    const before = this.strain === undefined ? 0 : this.strain.incomplete
    const completed = (this.flags & COMPLETED_MESSAGE) !== 0
    this.flags &= ~COMPLETED_MESSAGE
    if (held === 0 && before === 0) return
    const strain = (this.strain ??= new Strain())
    // The time limit counts from the start of the message now unfinished. Only a completed message
    // starts a new one: the bytes held shrink too when ws consumes a frame header, so a peer
    // trickling empty fragments would otherwise restart the clock forever, and they may keep
    // growing across chunks of a steady stream whose messages all complete.
    if (held > 0 && (before === 0 || completed)) strain.incompleteSince = performance.now()
    if (held === before) return
    const totals = this.rt.totals
    totals.incomplete += held - before
    strain.incomplete = held
    if (held > before && totals.incomplete > this.rt.options.maxIncompleteBytesTotal) {
      this.stopReading(CLOSE.MESSAGE_TOO_BIG, 'Too much unfinished data on the server', { incompleteBytes: held, incompleteTotal: totals.incomplete })
    }
  }

  /** The sweep's check: a message unfinished for longer than incompleteTimeout closes the socket with 1008. */
  checkIncomplete (now: number): void {
    const limit = this.rt.options.incompleteTimeout
    const strain = this.strain
    if (strain === undefined || strain.incomplete === 0 || limit === 0 || now - strain.incompleteSince < limit || this.isClosed) return
    this.stopReading(CLOSE.POLICY_VIOLATION, 'Message not completed in time', { incompleteBytes: strain.incomplete, ms: Math.round(now - strain.incompleteSince) })
  }

  /** Closes for unfinished data and reads no more: the close handshake then ends by ws's closeTimeout. */
  protected stopReading (code: number, reason: string, fields: Record<string, unknown>): void {
    this.shut(code, reason, 'connection closed: ' + reason.toLowerCase(), fields)
    rawSocketOf(this.socket)?.pause()
  }

  /**
   * Writes a reply. Replies are never dropped (every request gets one), so a peer that sends requests
   * and never reads the replies would have the server buffer them without bound. Publications stop at
   * maxBufferedBytes; replies get as much again, then the peer is closed with 1013 whatever the
   * slowConsumer policy says.
   */
  protected sendReply (frame: string): void {
    const buffered = this.measureBacklog()
    if (buffered > 2 * this.rt.options.maxBufferedBytes || this.overTotal(buffered)) {
      if (!this.isClosed) this.rt.stats.closedSlow++
      this.shut(CLOSE.TRY_AGAIN_LATER, 'Slow consumer', 'slow consumer closed: replies not read', { bufferedAmount: buffered, bufferedTotal: this.rt.totals.buffered })
      return
    }
    this.write(frame)
  }

  /**
   * Writes a publication (a whole frame from textFrame(), the same bytes for every subscriber) unless
   * the socket is a slow consumer; then drops it or closes the socket.
   */
  sendPublication (frame: Buffer): boolean {
    // A slow consumer being closed stays subscribed until its close completes (up to ws's
    // closeTimeout): skip it quietly instead of closing and logging it again for every publication.
    if (this.isClosed) return false
    const buffered = this.measureBacklog()
    if (buffered > this.rt.options.maxBufferedBytes || this.overTotal(buffered)) {
      this.rt.stats.droppedSlow++
      if (this.rt.options.slowConsumer === 'close') {
        this.rt.stats.closedSlow++
        this.shut(CLOSE.TRY_AGAIN_LATER, 'Slow consumer', 'slow consumer closed', { bufferedAmount: buffered, bufferedTotal: this.rt.totals.buffered })
      }
      return false
    }
    return this.write(frame)
  }

  /**
   * The socket's bufferedAmount, also counted in rt.totals.buffered when it is a backlog (>= BACKLOG);
   * the count is corrected at the next write or when the TCP socket drains.
   */
  measureBacklog (): number {
    const buffered = this.socket.bufferedAmount
    const counted = buffered >= BACKLOG ? buffered : 0
    const before = this.strain === undefined ? 0 : this.strain.backlog
    if (counted !== before) {
      this.rt.totals.buffered += counted - before
      this.strain ??= new Strain()
      this.strain.backlog = counted
      if (counted > 0) this.watchDrain(rawSocketOf(this.socket))
    }
    return buffered
  }

  /** Resolves once the socket has no backlog: a history replay waits for it rather than being dropped. */
  whenDrained (): Promise<void> {
    if (this.isClosed || this.socket.bufferedAmount < BACKLOG) return Promise.resolve()
    return new Promise(resolve => { this.onWritable(resolve) })
  }

  /** The TCP socket emptied its buffer: measure again (it may have a backlog again already). */
  drained (): void {
    this.flags &= ~WATCHING_DRAIN
    this.measureBacklog()
    this.wakeWriters()
  }

  /**
   * A stream is pulled only while the socket holds at most half of maxBufferedBytes, whatever the
   * slowConsumer policy: the other half is left to publications, so a reader that is merely slower
   * than its stream is not taken for a slow consumer (and closed) by the next publication.
   */
  writable (): boolean {
    const buffered = this.measureBacklog()
    return buffered <= this.rt.options.maxBufferedBytes / 2 && !this.overTotal(buffered)
  }

  /**
   * Wakes `wake` when the TCP socket drains. 'drain' only follows a write the socket refused; a
   * backlog of corked bytes that were never refused is looked at again on the next turn instead.
   */
  onWritable (wake: () => void): void {
    const raw = rawSocketOf(this.socket)
    if (this.isClosed || raw === undefined || raw.destroyed || !raw.writableNeedDrain) {
      setImmediate(wake)
      return
    }
    this.strain ??= new Strain()
    this.strain.drainWaiters ??= []
    this.strain.drainWaiters.push(wake)
    this.watchDrain(raw)
  }

  /** One 'drain' listener at a time, whoever needs it (a backlog to correct, streams to wake). */
  private watchDrain (raw: RawSocket | undefined): void {
    if (raw === undefined || (this.flags & WATCHING_DRAIN) !== 0) return
    this.flags |= WATCHING_DRAIN
    raw.once('drain', onRawDrain)
  }

  get gone (): boolean { return this.isClosed }

  protected wakeWriters (): void {
    const strain = this.strain
    const waiters = strain?.drainWaiters
    if (strain === undefined || waiters === undefined) return
    strain.drainWaiters = undefined
    for (const wake of waiters) wake()
  }

  /** Past maxBufferedBytesTotal, every socket with a backlog is a slow consumer. */
  private overTotal (buffered: number): boolean {
    return buffered >= BACKLOG && this.rt.totals.buffered > this.rt.options.maxBufferedBytesTotal
  }

  /**
   * Writes a reply (its JSON) or a publication (a frame from textFrame()) if the socket is still open;
   * a closed socket is never written to. Frames go to the TCP socket directly when ws's sender is idle
   * (lib/socket.ts writesDirect), through ws.send otherwise (and under injectWS, which has no TCP socket).
   *
   * The socket is corked from the second frame of a turn on, or from the first when several requests
   * were read together (their replies follow): a frame alone in its turn, the common case of many
   * peers with a request each and of publications one at a time, leaves at once, without the cork's
   * buffering and second pass. Publications are not corked from their first frame either: a turn
   * that holds one publication per socket paid Node's corked-write path for nothing, and a burst
   * after a quiet spell paid it slowly (Redis p99 1.23x the hand relay against 1.00x without it); a
   * broker burst still leaves in two writes per socket per turn.
   */
  protected write (frame: string | Buffer): boolean {
    if (this.isClosed || this.socket.readyState !== OPEN) return false
    let raw = this.turnSocket
    if (raw === undefined) {
      raw = rawSocketOf(this.socket)
      if (raw !== undefined && !raw.destroyed) {
        joinTurn(this)
        this.turnSocket = raw
        if ((this.flags & BATCH) !== 0) this.cork(raw)
      } else raw = undefined
    } else if ((this.flags & CORKED) === 0) this.cork(raw)
    if (raw !== undefined && writesDirect(this.socket)) raw.write(typeof frame === 'string' ? textFrame(frame) : frame)
    else this.socket.send(typeof frame === 'string' ? frame : payloadOf(frame), TEXT_FRAME)
    this.rt.stats.messagesOut++
    if (raw !== undefined && raw.writableLength >= CORK_LIMIT) this.uncork()
    return true
  }

  private cork (raw: RawSocket): void {
    raw.cork()
    this.flags |= CORKED
  }

  /** Ends write()'s turn: flushes what it corked (once per turn, or early at CORK_LIMIT bytes). */
  uncork (): void {
    this.flags &= ~BATCH
    const raw = this.turnSocket
    if (raw === undefined) return
    this.turnSocket = undefined
    if ((this.flags & CORKED) === 0) return
    this.flags &= ~CORKED
    raw.uncork()
  }

  close (code = 1000, reason?: string): void {
    if (this.socket.readyState === OPEN) this.socket.close(code, reason)
  }

  /** Closes with 1001 for shutdown; a peer that never answers the close is terminated after 1 s. */
  closeForShutdown (): Promise<void> {
    const socket = this.socket
    if (socket.readyState === 3) return Promise.resolve()
    return new Promise<void>(resolve => {
      const timer = setTimeout(() => socket.terminate(), 1000)
      socket.once('close', () => { clearTimeout(timer); resolve() })
      socket.close(CLOSE.GOING_AWAY, 'Server shutting down')
    })
  }

  /**
   * Stops serving a peer that broke a limit and closes it with `code`. It is marked closed at once:
   * its close event may come only after ws's closeTimeout, and until then nothing more is read from it
   * or written to it, and the warning is logged once.
   */
  protected shut (code: number, reason: string, why: string, fields: Record<string, unknown>): void {
    if (this.isClosed) return
    this.log.warn({ connection: this.id, ...fields }, why)
    this.close(code, reason)
    this.flags |= CLOSED
  }
}
