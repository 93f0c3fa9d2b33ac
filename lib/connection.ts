import { performance } from 'node:perf_hooks'
import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type { WebSocket } from 'ws'
import { ActionContext, controllerOf, type DrizzleConnectionStore } from './context.js'
import { ConnectionClosedError, DuplicateStreamError, ShuttingDownError, TooManyRequestsError } from './errors.js'
import { runSafeHooks } from './hooks.js'
import { Invocation, runResponseHooks, toWireError, type Answer } from './lifecycle.js'
import { encodeError, encodeId, encodePublication, encodeReply, FrameError, parseFrame, type Envelope, type RequestIdValue, type WireError } from './protocol.js'
import type { CompiledAction } from './resources.js'
import type { Peer, Runtime } from './runtime.js'
import { BACKLOG, CLOSE, CORK_LIMIT, corkForTurn, drained, flatUuid, heldBytes, infoEnabled, kOwner, listenTo, onRawData, onRawDrain, OPEN, rawSocketOf, stopListening, type FrameOwner, type RawSocket, type SocketOwner } from './socket.js'
import { ALL_TOPIC } from './topics.js'
import { userOf } from './users.js'
import { encodeItem, RequestTable, type Cancellable, type StreamWriter } from './stream.js'

// The WebSocket transport: one Connection owns one socket's loop. Inbound (handle*): frames, pongs,
// close. Outbound (send*): replies and publications, each with its backpressure rule. Nothing else
// writes its fields.

export type { DrizzleConnection, DrizzleConnectionStore } from './context.js'

/** A Buffer holding UTF-8 JSON still goes out as a text frame. */
const TEXT_FRAME = { binary: false }

export class Connection implements Peer, Answer, SocketOwner, FrameOwner, StreamWriter, Cancellable {
  readonly topics = new Set<string>()
  readonly log: FastifyBaseLogger
  readonly user: string | null
  /** Requests of this connection whose handler has not ended. */
  private inFlight = 0
  private isClosed = false
  /** Rate-limit window: when it started and how many frames it has seen. */
  private windowStart = 0
  private windowCount = 0
  /** Set by the heartbeat; cleared by each pong. */
  private awaitingPong = false
  /** Whether this connection's "action completed" lines would be printed: if not, none is built. */
  private readonly logsActions: boolean
  /** The TCP socket under the WebSocket while it is corked by write(). */
  private corkedSocket: RawSocket | undefined
  /** Signals of actions in flight that handlers asked for (ctx.signal), aborted on close. */
  private signals: Set<AbortController> | undefined
  /** This socket's share of rt.totals.buffered: its bufferedAmount when last measured, if >= BACKLOG. */
  private backlog = 0
  /** Whether a 'drain' listener waits to correct `backlog`. */
  private watchingDrain = false
  /** This socket's share of rt.totals.incomplete: bytes of unfinished messages ws holds for it. */
  private incomplete = 0
  /** When the unfinished message began: when unfinished data appeared after a complete message. */
  private incompleteSince = 0
  /** Set by each complete message, cleared by measureIncomplete(). */
  completedMessage = false
  // Made on first read: an idle connection should cost no more heap than a bare ws socket (the
  // benchmark's memory scenario), and most connections never read either.
  private uuid: string | undefined
  private ownStore: DrizzleConnectionStore | undefined
  /** Requests in flight by id, for `$request/cancel` (lib/stream.ts). */
  private readonly requests = new RequestTable()
  /** Streams paused until this socket drains (lib/stream.ts). */
  private drainWaiters: Array<() => void> | undefined

  constructor (readonly socket: WebSocket, readonly request: FastifyRequest, private readonly rt: Runtime) {
    this.log = request.log
    this.user = userOf(request)
    this.logsActions = !rt.options.disableActionLogging && infoEnabled(this.log)
  }

  get closed (): boolean { return this.isClosed }

  /** Unique across processes (a UUID). */
  get id (): string { return (this.uuid ??= flatUuid()) }

  get store (): DrizzleConnectionStore { return (this.ownStore ??= Object.create(null)) }

  /** Starts serving the socket: `__all__`, listeners, onConnect hooks. */
  open (): void {
    const rt = this.rt
    rt.connections.add(this)
    rt.subscriptions.add(this, ALL_TOPIC)
    // Actions without a traceparent of their own continue the upgrade request's trace.
    if (rt.tracing?.active === true) rt.tracing.captureUpgrade(this.request)
    rt.users.add(this)
    listenTo(this.socket, this)
    const raw = rawSocketOf(this.socket)
    if (raw !== undefined) {
      raw[kOwner] = this
      raw.on('data', onRawData)
    }
    if (rt.appHooks.onConnect.length > 0) runSafeHooks(rt.appHooks.onConnect, this.log, 'onConnect', this).catch(() => {})
  }

  // ---- inbound ------------------------------------------------------------------------------

  /** The heartbeat's answer arrived. */
  ponged (): void { this.awaitingPong = false }

  /** Entry point of a frame; never throws (the socket listener relies on it). */
  handleFrame (raw: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void {
    // A connection being closed (slow consumer) can no longer be answered: its backlog of frames is
    // neither parsed nor run.
    if (this.isClosed) return
    this.rt.stats.messagesIn++
    // Every frame counts toward the rate, garbage included: parsing and answering it costs too.
    if (!this.countFrame()) return
    const parsed = parseFrame(raw, isBinary, this.rt.parseOptions)
    if (parsed instanceof FrameError) {
      this.log.debug({ err: parsed.reason }, 'frame rejected')
      const wire = toWireError(parsed.reason)
      this.sendReply(encodeError(parsed.requestId, wire))
      this.rt.metrics?.refused('', '', wire.statusCode)
      return
    }
    const refusal = this.admit()
    if (refusal !== undefined) {
      this.refuse(parsed, refusal)
      return
    }
    const action = this.rt.resolve(this, parsed)
    if (action instanceof Error) {
      this.refuse(parsed, action)
      return
    }
    this.run(action, parsed)
  }

  private run (action: CompiledAction, message: Envelope): void {
    const ctx = new ActionContext(this.rt, this, action.resource, action.action, message.request_id, action.scope)
    this.inFlight++
    const invocation = new Invocation(action, message, ctx, this)
    this.requests.add(invocation)
    // run() never rejects: failures are answered or logged there.
    this.rt.runner.run(invocation)
  }

  /**
   * Counts a frame in the rate window. Past the limit requests are refused (admit); a peer that sends
   * twice the limit in one window is flooding, and answering each frame with an error would still
   * cost a parse and a reply: it is closed with 1008 instead. Returns false once closed.
   */
  private countFrame (): boolean {
    const rate = this.rt.options.rateLimit
    if (rate === false) return true
    const now = performance.now()
    if (now - this.windowStart >= rate.timeWindow) {
      this.windowStart = now
      this.windowCount = 0
    }
    if (++this.windowCount <= 2 * rate.max) return true
    this.shut(CLOSE.POLICY_VIOLATION, 'Rate limit exceeded', 'connection flooding past twice its rate limit; closing', { frames: this.windowCount, timeWindow: rate.timeWindow })
    return false
  }

  /** Applies shutdown and the rate and in-flight limits; returns the error to send when refused. */
  private admit (): Error | undefined {
    // New work during shutdown would keep extending the grace period that in-flight actions get.
    if (this.rt.closing) return new ShuttingDownError()
    const rate = this.rt.options.rateLimit
    if (rate !== false && this.windowCount > rate.max) {
      return new TooManyRequestsError(`Rate limit of ${rate.max} requests per ${rate.timeWindow} ms exceeded`)
    }
    const maxInFlight = this.rt.options.maxInFlight
    if (this.inFlight >= maxInFlight) return new TooManyRequestsError(`Too many requests in flight (limit ${maxInFlight})`)
    const maxTotal = this.rt.options.maxInFlightTotal
    if (this.rt.runner.inFlight >= maxTotal) return new TooManyRequestsError(`Too many requests in flight on the server (limit ${maxTotal})`)
    return undefined
  }

  /** Answers a request that never reached an action (unknown names, limits). */
  private refuse (message: Envelope, error: Error): void {
    const wire = toWireError(error)
    this.sendReply(encodeError(message.request_id, wire))
    this.rt.metrics?.refused(message.resource, message.action, wire.statusCode)
    if (this.logsActions) {
      this.log.info({ resource: message.resource, action: message.action, request_id: message.request_id, statusCode: wire.statusCode, responseTime: 0 }, 'action completed')
    }
  }

  /**
   * The heartbeat's check, once per interval: a peer that missed the previous pong is terminated;
   * otherwise it is pinged. Returns false when it was terminated.
   */
  checkHeartbeat (): boolean {
    if (this.awaitingPong) {
      this.log.info({ connection: this.id }, 'connection missed its heartbeat; terminating')
      this.socket.terminate()
      return false
    }
    this.awaitingPong = true
    try { this.socket.ping() } catch { /* socket already closing: the close event cleans up */ }
    return true
  }

  /**
   * Counts the bytes ws holds for messages not yet complete (fragments, a partly received frame) in
   * the total of all sockets. The socket that takes the total past maxIncompleteBytesTotal is closed
   * with 1009 and no longer read: peers that never finish their messages cannot add up.
   */
  measureIncomplete (): void {
    const held = heldBytes(this.socket)
    if (held === undefined) return
    const before = this.incomplete
    // The time limit counts from the start of the message now unfinished. Only a completed message
    // starts a new one: the bytes held shrink too when ws consumes a frame header, so a peer
    // trickling empty fragments would otherwise restart the clock forever, and they may keep
    // growing across chunks of a steady stream whose messages all complete.
    if (held > 0 && (before === 0 || this.completedMessage)) this.incompleteSince = performance.now()
    this.completedMessage = false
    if (held === before) return
    const totals = this.rt.totals
    totals.incomplete += held - before
    this.incomplete = held
    if (held > before && totals.incomplete > this.rt.options.maxIncompleteBytesTotal) {
      this.stopReading(CLOSE.MESSAGE_TOO_BIG, 'Too much unfinished data on the server', { incompleteBytes: held, incompleteTotal: totals.incomplete })
    }
  }

  /** The sweep's check: a message unfinished for longer than incompleteTimeout closes the socket with 1008. */
  checkIncomplete (now: number): void {
    const limit = this.rt.options.incompleteTimeout
    if (this.incomplete === 0 || limit === 0 || now - this.incompleteSince < limit || this.isClosed) return
    this.stopReading(CLOSE.POLICY_VIOLATION, 'Message not completed in time', { incompleteBytes: this.incomplete, ms: Math.round(now - this.incompleteSince) })
  }

  /** Closes for unfinished data and reads no more: the close handshake then ends by ws's closeTimeout. */
  private stopReading (code: number, reason: string, fields: Record<string, unknown>): void {
    this.shut(code, reason, 'connection closed: ' + reason.toLowerCase(), fields)
    rawSocketOf(this.socket)?.pause()
  }

  /** A closed connection leaves no trace: subscriptions, the connection set, listeners, its shares of the totals. */
  handleClose (code: number): void {
    const rt = this.rt
    this.isClosed = true
    rt.totals.buffered -= this.backlog
    rt.totals.incomplete -= this.incomplete
    this.backlog = this.incomplete = 0
    rt.connections.delete(this)
    const topics = rt.subscriptions.removeAll(this)
    rt.users.remove(this)
    rt.presence.closed(this)
    stopListening(this.socket)
    this.log.debug({ connection: this.id, code }, 'connection closed')
    if (this.signals !== undefined) {
      const reason = new ConnectionClosedError()
      for (const controller of this.signals) controller.abort(reason)
      this.signals = undefined
    }
    // Paused streams see the socket gone and close their generators.
    this.wakeWriters()
    if (rt.appHooks.onUnsubscribe.length > 0) {
      for (const topic of topics) runSafeHooks(rt.appHooks.onUnsubscribe, this.log, 'onUnsubscribe', this, topic).catch(() => {})
    }
    if (rt.appHooks.onDisconnect.length > 0) runSafeHooks(rt.appHooks.onDisconnect, this.log, 'onDisconnect', this).catch(() => {})
  }

  // ---- outbound -----------------------------------------------------------------------------

  /** The action's result (Answer, called by the lifecycle). */
  reply (invocation: Invocation, json: string): void {
    this.sendReply(encodeReply(json, invocation.message.request_id))
    this.completed(invocation)
  }

  /** The action's failure or timeout (Answer, called by the lifecycle). */
  fail (invocation: Invocation, error: WireError): void {
    this.sendReply(encodeError(invocation.message.request_id, error))
    this.completed(invocation)
  }

  /** The handler has ended (Answer): its in-flight slot is free. */
  ended (invocation: Invocation): void {
    this.inFlight--
    this.requests.delete(invocation)
    if (this.signals !== undefined && this.signals.size > 0) {
      const controller = controllerOf(invocation.ctx)
      if (controller !== undefined) this.signals.delete(controller)
    }
  }

  abortOnClose (controller: AbortController): void {
    if (this.isClosed) {
      controller.abort(new ConnectionClosedError())
      return
    }
    this.signals ??= new Set()
    this.signals.add(controller)
  }

  /** The "action completed" line, then onResponse hooks (whose errors are only logged). */
  private completed (invocation: Invocation): void {
    if (this.logsActions) {
      const { action, message, ctx } = invocation
      const trace = this.rt.tracing === undefined ? undefined : this.rt.logFields(ctx)
      this.log.info({ resource: action.resource, action: action.action, request_id: message.request_id, statusCode: ctx.statusCode, responseTime: performance.now() - invocation.started, ...trace }, 'action completed')
    }
    if (invocation.action.hooks.onResponse.length > 0) runResponseHooks(invocation).catch(err => this.log.error({ err }, 'onResponse failed'))
  }

  /**
   * Writes a reply. Replies are never dropped (every request gets one), so a peer that sends requests
   * and never reads the replies would have the server buffer them without bound. Publications stop at
   * maxBufferedBytes; replies get as much again, then the peer is closed with 1013 whatever the
   * slowConsumer policy says.
   */
  private sendReply (frame: string): void {
    const buffered = this.measureBacklog()
    if (buffered > 2 * this.rt.options.maxBufferedBytes || this.overTotal(buffered)) {
      if (!this.isClosed) this.rt.stats.closedSlow++
      this.shut(CLOSE.TRY_AGAIN_LATER, 'Slow consumer', 'slow consumer closed: replies not read', { bufferedAmount: buffered, bufferedTotal: this.rt.totals.buffered })
      return
    }
    this.write(frame)
  }

  /** Writes a publication unless the socket is a slow consumer; then drops it or closes the socket. */
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
    const before = this.backlog
    if (counted !== before) {
      this.rt.totals.buffered += counted - before
      this.backlog = counted
      if (counted > 0 && !this.watchingDrain) {
        this.watchingDrain = true
        rawSocketOf(this.socket)?.once('drain', onRawDrain)
      }
    }
    return buffered
  }

  /** Resolves once the socket has no backlog: a history replay waits for it rather than being dropped. */
  whenDrained (): Promise<void> { return this.isClosed ? Promise.resolve() : drained(this.socket) }

  /** The TCP socket emptied its buffer: measure again (it may have a backlog again already). */
  drained (): void {
    this.watchingDrain = false
    this.measureBacklog()
    this.wakeWriters()
  }

  // ---- streams (lib/stream.ts) ----------------------------------------------------------------

  /** Answer: a stream's items come back here; a stream reusing an id in flight is refused. */
  streamWriter (invocation: Invocation): StreamWriter | Error {
    return this.requests.owns(invocation) ? this : new DuplicateStreamError(encodeId(invocation.message.request_id))
  }

  item (invocation: Invocation, json: string): void {
    this.sendReply(encodeItem(json, invocation.message.request_id))
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
    (this.drainWaiters ??= []).push(wake)
    if (!this.watchingDrain) {
      this.watchingDrain = true
      raw.once('drain', onRawDrain)
    }
  }

  get gone (): boolean { return this.isClosed }

  private wakeWriters (): void {
    const waiters = this.drainWaiters
    if (waiters === undefined) return
    this.drainWaiters = undefined
    for (const wake of waiters) wake()
  }

  /** `$request/cancel`: the request in flight with that id on this connection, if any. */
  cancel (requestId: RequestIdValue, by: Envelope): Promise<boolean> {
    const target = this.requests.find(requestId, by)
    return target === undefined ? Promise.resolve(false) : this.rt.runner.cancel(target)
  }

  /** Past maxBufferedBytesTotal, every socket with a backlog is a slow consumer. */
  private overTotal (buffered: number): boolean {
    return buffered >= BACKLOG && this.rt.totals.buffered > this.rt.options.maxBufferedBytesTotal
  }

  send (topic: string, data: unknown, event?: string): boolean {
    return this.write(encodePublication(topic, data, event))
  }

  /** Writes a frame if the socket is still open; a closed socket is never written to. */
  private write (frame: string | Buffer): boolean {
    if (this.isClosed || this.socket.readyState !== OPEN) return false
    let raw = this.corkedSocket
    if (raw === undefined) {
      raw = rawSocketOf(this.socket)
      if (raw !== undefined && !raw.destroyed) {
        corkForTurn(raw, this)
        this.corkedSocket = raw
      }
    }
    if (typeof frame === 'string') this.socket.send(frame)
    else this.socket.send(frame, TEXT_FRAME)
    this.rt.stats.messagesOut++
    if (raw !== undefined && raw.writableLength >= CORK_LIMIT) this.uncork()
    return true
  }

  /** Flushes what write() corked (once per turn, or early at CORK_LIMIT bytes). */
  uncork (): void {
    const raw = this.corkedSocket
    if (raw === undefined) return
    this.corkedSocket = undefined
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
  private shut (code: number, reason: string, why: string, fields: Record<string, unknown>): void {
    if (this.isClosed) return
    this.log.warn({ connection: this.id, ...fields }, why)
    this.close(code, reason)
    this.isClosed = true
  }
}
