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
import { CLOSE, infoEnabled, listenTo, stopListening, type FrameOwner } from './socket.js'
import { SocketIO, SUBCLASS_FLAG } from './socket-io.js'
import { ALL_TOPIC } from './topics.js'
import { userOf } from './users.js'
import { encodeItem, RequestTable, type Cancellable, type StreamWriter } from './stream.js'

// The WebSocket transport: one Connection owns one socket's loop. Inbound (handle*): frames, pongs,
// close, the rate window and admission; then actions, streams and cancels. Outbound: replies and
// publications through the class it extends (lib/socket-io.ts: coalescing, both backpressure rules,
// the totals, closing). Nothing else writes its fields.

export type { DrizzleConnection, DrizzleConnectionStore } from './context.js'

// Bits of SocketIO.flags (one field for a connection's booleans).
/** Set by the heartbeat; cleared by each pong. */
const AWAITING_PONG = SUBCLASS_FLAG
const LOGS_ACTIONS = SUBCLASS_FLAG << 1

export class Connection extends SocketIO implements Peer, Answer, FrameOwner, StreamWriter, Cancellable {
  /** Rate-limit window: when it started and how many frames it has seen. */
  private windowStart = 0
  private windowCount = 0
  /** Made on first read, like the id (lib/socket-io.ts). */
  private ownStore: DrizzleConnectionStore | undefined
  /** See `topics`. */
  private topicSet: Set<string> | undefined = undefined
  /**
   * Requests in flight: their count, their ids (for `$request/cancel`, lib/stream.ts) and the signals
   * handlers asked for; made by the first request.
   */
  private requests: RequestTable | undefined = undefined

  constructor (socket: WebSocket, readonly request: FastifyRequest, rt: Runtime) {
    super(socket, rt)
    if (!rt.options.disableActionLogging && infoEnabled(this.log)) this.flags |= LOGS_ACTIONS
  }

  /** Whether this connection's "action completed" lines would be printed: if not, none is built. */
  private get logsActions (): boolean { return (this.flags & LOGS_ACTIONS) !== 0 }

  // Read through the request rather than kept: a field is 8 B in every connection.
  get log (): FastifyBaseLogger { return this.request.log }

  get user (): string | null { return userOf(this.request) }

  get store (): DrizzleConnectionStore { return (this.ownStore ??= Object.create(null)) }

  /**
   * Made on first read (a Set with one entry is ~150 B), with `__all__` in it: open() put the
   * connection in `__all__` without it, and an idle connection never reads it.
   */
  get topics (): Set<string> {
    if (this.topicSet === undefined) {
      this.topicSet = new Set()
      this.topicSet.add(ALL_TOPIC)
    }
    return this.topicSet
  }

  /** Starts serving the socket: `__all__`, listeners, onConnect hooks. */
  open (): void {
    const rt = this.rt
    rt.connections.add(this)
    rt.subscriptions.addToAll(this)
    // Actions without a traceparent of their own continue the upgrade request's trace.
    if (rt.tracing?.active === true) rt.tracing.captureUpgrade(this.request)
    rt.users.add(this)
    listenTo(this.socket, this)
    if (rt.appHooks.onConnect.length > 0) runSafeHooks(rt.appHooks.onConnect, this.log, 'onConnect', this).catch(() => {})
  }

  // ---- inbound ------------------------------------------------------------------------------

  /** The heartbeat's answer arrived. */
  ponged (): void { this.flags &= ~AWAITING_PONG }

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
    const invocation = new Invocation(action, message, ctx, this)
    this.requests ??= new RequestTable()
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
    if (this.requests !== undefined && this.requests.size >= maxInFlight) return new TooManyRequestsError(`Too many requests in flight (limit ${maxInFlight})`)
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
    if ((this.flags & AWAITING_PONG) !== 0) {
      this.log.info({ connection: this.id }, 'connection missed its heartbeat; terminating')
      this.socket.terminate()
      return false
    }
    this.flags |= AWAITING_PONG
    try { this.socket.ping() } catch { /* socket already closing: the close event cleans up */ }
    return true
  }

  /** A closed connection leaves no trace: subscriptions, the connection set, listeners, its shares of the totals. */
  handleClose (code: number): void {
    const rt = this.rt
    this.released()
    rt.connections.delete(this)
    const topics = rt.subscriptions.removeAll(this)
    rt.users.remove(this)
    rt.presence.closed(this)
    stopListening(this.socket)
    this.log.debug({ connection: this.id, code }, 'connection closed')
    const signals = this.requests?.signals
    if (signals !== undefined) {
      (this.requests as RequestTable).signals = undefined
      const reason = new ConnectionClosedError()
      for (const controller of signals) controller.abort(reason)
    }
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
    const requests = this.requests
    if (requests === undefined) return
    requests.delete(invocation)
    const signals = requests.signals
    if (signals !== undefined && signals.size > 0) {
      const controller = controllerOf(invocation.ctx)
      if (controller !== undefined) signals.delete(controller)
    }
  }

  abortOnClose (controller: AbortController): void {
    if (this.isClosed) {
      controller.abort(new ConnectionClosedError())
      return
    }
    this.requests ??= new RequestTable()
    this.requests.signals ??= new Set()
    this.requests.signals.add(controller)
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

  // ---- streams (lib/stream.ts) ----------------------------------------------------------------

  /** Answer: a stream's items come back here; a stream reusing an id in flight is refused. */
  streamWriter (invocation: Invocation): StreamWriter | Error {
    return this.requests?.owns(invocation) === true ? this : new DuplicateStreamError(encodeId(invocation.message.request_id))
  }

  item (invocation: Invocation, json: string): void {
    this.sendReply(encodeItem(json, invocation.message.request_id))
  }

  send (topic: string, data: unknown, event?: string): boolean {
    return this.write(encodePublication(topic, data, event))
  }

  /** `$request/cancel`: the request in flight with that id on this connection, if any. */
  cancel (requestId: RequestIdValue, by: Envelope): Promise<boolean> {
    const target = this.requests?.find(requestId, by)
    return target === undefined ? Promise.resolve(false) : this.rt.runner.cancel(target)
  }
}
