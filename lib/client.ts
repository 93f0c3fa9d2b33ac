// fastify-drizzle/client: the browser + Node client of wire protocol v1 (PROTOCOL.md; README, Client).
//
// This file runs in browsers: it must not import anything at runtime (no node:*, no ws, no Buffer, no
// process). Only TYPES come from the server side, and `import type` is erased from the build, so
// dist/esm/client.js is one self-contained module a page can load as is.
import type { AnyApi } from './types.js'

// ---- sockets ------------------------------------------------------------------------------------

/** The part of the WebSocket API the client uses; both the browser's WebSocket and `ws` provide it. */
export interface WebSocketLike {
  readonly readyState: number
  /** The address the socket was opened with; absent on an in-memory socket (`app.injectWS`). */
  readonly url?: string
  binaryType?: string
  // Events typed `any`: the DOM's and ws's event classes differ, and a handler property typed with
  // either would reject the other's sockets. The client reads only `data`, `code` and `reason`.
  onopen: ((event: any) => void) | null
  onmessage: ((event: any) => void) | null
  onclose: ((event: any) => void) | null
  onerror: ((event: any) => void) | null
  send (data: string): void
  close (code?: number, reason?: string): void
  /** `ws` only: drops the connection without the closing handshake. */
  terminate? (): void
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike

/** What a connection attempt starts from: a URL, or a socket someone else already created. */
export type ConnectTarget = string | URL | WebSocketLike
/**
 * The client's first argument. A string or URL is the server's address. A function is called again
 * on EVERY connection attempt (fresh tokens, rotating hosts) and may return, or resolve to, a string
 * or URL (the client then creates the socket with the WebSocket constructor) or an already-created
 * socket (any object with `send` and `close` methods: for example `app.injectWS('/ws')` in tests,
 * or `new WebSocket(url, { headers })` from `ws` when Node needs headers).
 */
export type ConnectOption = string | URL | (() => ConnectTarget | Promise<ConnectTarget>)

const CONNECTING = 0
const OPEN = 1

// ---- errors -------------------------------------------------------------------------------------

export type DrizzleClientErrorType = 'timeout' | 'disconnect' | 'server' | 'protocol'

export interface DrizzleClientErrorOptions {
  code?: string
  statusCode?: number
  details?: unknown
  requestId?: string | number | null
  topic?: string
  cause?: unknown
}

/**
 * Every failure the client reports: `timeout` (no reply in time), `disconnect` (the connection was
 * lost or the client closed), `server` (an error frame; `code`, `statusCode`, `details`, `requestId`
 * come from it) and `protocol` (the server sent something that is not protocol v1).
 */
export class DrizzleClientError extends Error {
  override readonly name = 'DrizzleClientError'
  readonly type: DrizzleClientErrorType
  readonly code: string | undefined
  readonly statusCode: number | undefined
  readonly details: unknown
  readonly requestId: string | number | null | undefined
  /** Set on errors of a topic subscription. */
  readonly topic: string | undefined

  constructor (type: DrizzleClientErrorType, message: string, options: DrizzleClientErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.type = type
    this.code = options.code
    this.statusCode = options.statusCode
    this.details = options.details
    this.requestId = options.requestId
    this.topic = options.topic
  }
}

// ---- typing from the server's declarations ------------------------------------------------------

type Resources<Api extends AnyApi> = Api['resources']
export type ResourceName<Api extends AnyApi> = keyof Resources<Api> & string
export type ActionName<Api extends AnyApi, R extends ResourceName<Api>> = keyof Resources<Api>[R] & string
export type RequestData<Api extends AnyApi, R extends ResourceName<Api>, A extends ActionName<Api, R>> =
  Resources<Api>[R][A] extends { data: infer D } ? D : unknown
export type RequestReply<Api extends AnyApi, R extends ResourceName<Api>, A extends ActionName<Api, R>> =
  Resources<Api>[R][A] extends { reply: infer T } ? T : unknown
/** `data` may be left out when the action's data type accepts undefined (no schema: unknown). */
type RequestArgs<D> = undefined extends D ? [data?: D, options?: RequestOptions] : [data: D, options?: RequestOptions]

export type TopicName<Api extends AnyApi> = keyof Api['topics'] & string
export type TopicData<Api extends AnyApi, T extends string> = T extends keyof Api['topics'] ? Api['topics'][T] : unknown

/** A publication frame: `{"topic", "data", "event"?}`. */
export interface Publication<D = unknown> {
  topic: string
  data: D
  event?: string
}

export type TopicListener<D = unknown> = (data: D, frame: Publication<D>) => void

/** What `subscribe` returns: call it to stop; `ready` settles once the server answered the first subscribe. */
export interface Unsubscribe {
  (): void
  /**
   * Resolves when the server confirmed the subscription; rejects with the DrizzleClientError that
   * refused it (FORBIDDEN, TOPIC_NOT_FOUND: the listener is then dropped) or with `disconnect` when
   * the client closed first. Awaiting it is optional: it never causes an unhandled rejection.
   */
  readonly ready: Promise<void>
}

// ---- options and events -------------------------------------------------------------------------

export interface RequestOptions {
  /** Milliseconds to wait for the reply (including time spent waiting for a connection). */
  timeout?: number
  /** Aborting rejects the request with `signal.reason` (as fetch does); the server is not told. */
  signal?: AbortSignal
}

export interface ReconnectOptions {
  /** First backoff ceiling in ms; the ceiling doubles with each failed attempt. Default 500. */
  baseDelay?: number
  /** Largest backoff ceiling in ms. Default 30000. */
  maxDelay?: number
  /** Consecutive failed attempts before the client gives up and closes. Default Infinity. */
  maxAttempts?: number
}

export interface DrizzleClientOptions {
  /** WebSocket constructor; defaults to `globalThis.WebSocket` (browsers). In Node 20 pass `ws`. */
  WebSocket?: WebSocketConstructor
  /** Subprotocols for the WebSocket constructor. */
  protocols?: string | string[]
  /** Default request timeout in ms. Default 10000. */
  timeout?: number
  /** Ms a connection attempt may take before it counts as failed. Default 10000. */
  connectTimeout?: number
  /** Ms `close()` waits for the closing handshake before dropping the socket. Default 1000. */
  closeTimeout?: number
  /** Reconnect with exponential backoff and full jitter (default), or `false` to never reconnect. */
  reconnect?: boolean | ReconnectOptions
}

export interface ClientEvents {
  /** A connection opened; `reconnected` is false only for the first one. */
  open: { reconnected: boolean }
  /** An open connection closed; `reconnecting` says whether a new attempt will follow. */
  close: { code: number, reason: string, reconnecting: boolean }
  /** A new connection attempt is scheduled in `delay` ms (`attempt` counts from 1). */
  reconnect: { attempt: number, delay: number }
  /** Something failed that no promise reports: attempts, subscriptions, malformed frames. */
  error: DrizzleClientError
  /** Every publication frame, whatever its topic. */
  publication: Publication
}

export type ClientState = 'connecting' | 'open' | 'reconnecting' | 'closed'

const DEFAULT_TIMEOUT = 10_000
const MAX_TIMER = 2_147_483_647 // setTimeout fires at once above this
const TOPIC_RESOURCE = '$topic'

// ---- a tiny typed event emitter (no Node EventEmitter: this runs in browsers) --------------------

type Handler<T> = (arg: T) => void

class Emitter<Events> {
  private readonly handlers = new Map<keyof Events, Set<Handler<any>>>()

  on<E extends keyof Events> (event: E, handler: Handler<Events[E]>): () => void {
    let set = this.handlers.get(event)
    if (set === undefined) {
      set = new Set()
      this.handlers.set(event, set)
    }
    set.add(handler)
    return () => { this.off(event, handler) }
  }

  off<E extends keyof Events> (event: E, handler: Handler<Events[E]>): void {
    this.handlers.get(event)?.delete(handler)
  }

  emit<E extends keyof Events> (event: E, arg: Events[E]): void {
    const set = this.handlers.get(event)
    if (set === undefined) return
    for (const handler of [...set]) callSafely(handler, arg)
  }
}

/**
 * Runs a user callback so that its exception cannot break the client's own state (a frame half
 * processed, other listeners skipped). The exception is re-thrown on a fresh stack, which is how the
 * DOM's EventTarget reports listener errors: the page's onerror, or Node's uncaughtException.
 */
function callSafely<A extends unknown[]> (fn: (...args: A) => void, ...args: A): void {
  try {
    fn(...args)
  } catch (err) {
    queueMicrotask(() => { throw err })
  }
}

// ---- the client ---------------------------------------------------------------------------------

interface Pending {
  readonly id: number
  readonly frame: string
  readonly resolve: (data: unknown) => void
  readonly reject: (err: unknown) => void
  timer: ReturnType<typeof setTimeout> | undefined
  /** Written to the current socket (a disconnect rejects it); otherwise it waits for the next open. */
  sent: boolean
  cleanup: () => void
}

interface TopicState {
  readonly listeners: Set<TopicListener<any>>
  readonly ready: Promise<void>
  settle: (err?: unknown) => void
}

interface Reply {
  request_id?: unknown
  data?: unknown
  code?: unknown
  error?: unknown
  statusCode?: unknown
  details?: unknown
  topic?: unknown
  event?: unknown
}

/**
 * A WebSocket client of fastify-drizzle: requests (`request`), topic subscriptions (`subscribe`,
 * `listen`), automatic reconnect. Typed by the server's API: `new DrizzleClient<Api>(url)` with
 * `type Api = InferApi<typeof todos | typeof rooms>` exported by the server code.
 */
export class DrizzleClient<Api extends AnyApi = AnyApi> {
  private readonly connectOption: ConnectOption
  private readonly WebSocketCtor: WebSocketConstructor | undefined
  private readonly options: Required<Omit<DrizzleClientOptions, 'WebSocket' | 'protocols' | 'reconnect'>> & { protocols: string | string[] | undefined }
  private readonly backoff: Required<ReconnectOptions> | false
  private readonly events = new Emitter<ClientEvents>()
  private readonly pending = new Map<number, Pending>()
  private readonly topics = new Map<string, TopicState>()
  private readonly listeners = new Map<string, Set<TopicListener<any>>>()
  /** Per topic, the tail of its $topic requests: a subscribe and a later unsubscribe never overtake each other. */
  private readonly topicOps = new Map<string, Promise<unknown>>()
  private socket: WebSocketLike | undefined
  private currentState: ClientState = 'connecting'
  private nextId = 0
  private failures = 0
  private opened = false
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined
  private connectTimer: ReturnType<typeof setTimeout> | undefined
  private closing: Promise<void> | undefined

  constructor (url: ConnectOption, options: DrizzleClientOptions = {}) {
    this.connectOption = url
    this.WebSocketCtor = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket
    if (typeof url !== 'function' && this.WebSocketCtor === undefined) {
      throw new TypeError('DrizzleClient: no WebSocket constructor; pass one as options.WebSocket (in Node 20: the ws package)')
    }
    this.options = {
      timeout: positive(options.timeout, DEFAULT_TIMEOUT, 'timeout'),
      connectTimeout: positive(options.connectTimeout, 10_000, 'connectTimeout'),
      closeTimeout: positive(options.closeTimeout, 1000, 'closeTimeout'),
      protocols: options.protocols
    }
    this.backoff = backoffOptions(options.reconnect)
    this.connect()
  }

  /** `connecting` (an attempt is under way), `open`, `reconnecting` (waiting out a backoff) or `closed` (for good). */
  get state (): ClientState { return this.currentState }

  on<E extends keyof ClientEvents> (event: E, handler: (arg: ClientEvents[E]) => void): () => void {
    return this.events.on(event, handler)
  }

  off<E extends keyof ClientEvents> (event: E, handler: (arg: ClientEvents[E]) => void): void {
    this.events.off(event, handler)
  }

  // ---- requests ---------------------------------------------------------------------------------

  /**
   * Performs `action` on `resource` and resolves with the reply's `data`. Made while disconnected, the
   * request waits for the next open (within its timeout); it rejects at once with `disconnect` when
   * the client is closed or will not reconnect.
   */
  request<R extends ResourceName<Api>, A extends ActionName<Api, R>> (
    resource: R, action: A, ...args: RequestArgs<RequestData<Api, R, A>>
  ): Promise<RequestReply<Api, R, A>> {
    const [data, options] = args
    return this.enqueue(resource, action, data, options) as Promise<RequestReply<Api, R, A>>
  }

  private enqueue (resource: string, action: string, data: unknown, options: RequestOptions = {}): Promise<unknown> {
    const signal = options.signal
    if (signal?.aborted === true) return Promise.reject(signal.reason)
    if (this.currentState === 'closed') return Promise.reject(new DrizzleClientError('disconnect', 'Client is closed'))
    const timeout = positive(options.timeout, this.options.timeout, 'timeout')
    const id = ++this.nextId
    const envelope: Record<string, unknown> = { resource, action, request_id: id }
    if (data !== undefined) envelope.data = data
    const frame = JSON.stringify(envelope)
    return new Promise((resolve, reject) => {
      const entry: Pending = { id, frame, resolve, reject, timer: undefined, sent: false, cleanup: noop }
      const onAbort = (): void => { this.settle(entry, signal?.reason, false) }
      entry.timer = setTimeout(() => {
        this.settle(entry, new DrizzleClientError('timeout', `${resource}.${action} got no reply within ${timeout} ms`, { requestId: id }), false)
      }, Math.min(timeout, MAX_TIMER))
      signal?.addEventListener('abort', onAbort, { once: true })
      entry.cleanup = () => { clearTimeout(entry.timer); signal?.removeEventListener('abort', onAbort) }
      this.pending.set(id, entry)
      if (this.currentState === 'open') this.write(entry)
    })
  }

  /** Removes a request and settles it: every exit (reply, error, timeout, abort, disconnect) goes through here. */
  private settle (entry: Pending, value: unknown, ok: boolean): void {
    if (this.pending.get(entry.id) !== entry) return
    this.pending.delete(entry.id)
    entry.cleanup()
    if (ok) entry.resolve(value)
    else entry.reject(value)
  }

  private write (entry: Pending): void {
    const socket = this.socket
    if (socket === undefined) return
    try {
      socket.send(entry.frame)
      entry.sent = true
    } catch (err) {
      // A socket that throws on send is on its way out; its close event will follow.
      this.settle(entry, new DrizzleClientError('disconnect', 'Could not send the request', { requestId: entry.id, cause: err }), false)
    }
  }

  // ---- topics -----------------------------------------------------------------------------------

  /**
   * Subscribes to a topic the server declared (`app.drizzle.topic(...)`) with a `$topic/subscribe`
   * request, renewed after every reconnect. Returns the function that removes this listener; the
   * last listener of a topic to leave sends `$topic/unsubscribe`. A refusal (FORBIDDEN,
   * TOPIC_NOT_FOUND, ...) is emitted as an `error` event (with `topic` set), rejects `ready`, and
   * drops the topic's listeners.
   */
  subscribe<T extends TopicName<Api>> (topic: T, listener: TopicListener<TopicData<Api, T>>): Unsubscribe {
    if (this.currentState === 'closed') {
      const dead = newTopicState()
      dead.settle(new DrizzleClientError('disconnect', 'Client is closed', { topic }))
      return Object.assign(noop, { ready: dead.ready })
    }
    let state = this.topics.get(topic)
    if (state === undefined) {
      state = newTopicState()
      this.topics.set(topic, state)
      // Not open yet: the next open subscribes every topic in the map.
      if (this.currentState === 'open') this.sendSubscribe(topic, state)
    }
    state.listeners.add(listener)
    const current = state
    const stop = (): void => { this.unsubscribe(topic, current, listener) }
    return Object.assign(stop, { ready: current.ready })
  }

  /**
   * Listens to publications of a topic without asking the server for it: for topics the server put
   * the connection in itself (a handler's `ctx.subscribe`, or `__all__`). Returns the function that
   * removes the listener.
   */
  listen<T extends string> (topic: T, listener: TopicListener<TopicData<Api, T>>): () => void {
    let set = this.listeners.get(topic)
    if (set === undefined) {
      set = new Set()
      this.listeners.set(topic, set)
    }
    set.add(listener)
    return () => {
      set.delete(listener)
      if (set.size === 0 && this.listeners.get(topic) === set) this.listeners.delete(topic)
    }
  }

  private unsubscribe (topic: string, state: TopicState, listener: TopicListener<any>): void {
    if (!state.listeners.delete(listener) || state.listeners.size > 0 || this.topics.get(topic) !== state) return
    this.topics.delete(topic)
    state.settle(new DrizzleClientError('disconnect', 'Unsubscribed before the server confirmed', { topic }))
    // A closed connection already dropped the server-side subscription: only an open one needs telling.
    if (this.currentState !== 'open') return
    this.topicOp(topic, () => this.enqueue(TOPIC_RESOURCE, 'unsubscribe', { topic })).catch((err: unknown) => {
      if (isClientError(err) && err.type !== 'disconnect') this.emitError(withTopic(err, topic))
    })
  }

  private sendSubscribe (topic: string, state: TopicState): void {
    this.topicOp(topic, () => this.enqueue(TOPIC_RESOURCE, 'subscribe', { topic })).then(() => {
      state.settle()
    }, (err: unknown) => {
      // A disconnect is not a refusal: the next open renews the subscription.
      if (isClientError(err) && err.type === 'disconnect') return
      const error = isClientError(err) ? withTopic(err, topic) : new DrizzleClientError('protocol', String(err), { topic, cause: err })
      if (error.type === 'server' && this.topics.get(topic) === state) this.topics.delete(topic)
      state.settle(error)
      this.emitError(error)
    })
  }

  private topicOp (topic: string, op: () => Promise<unknown>): Promise<unknown> {
    const previous = this.topicOps.get(topic) ?? Promise.resolve()
    const next = previous.then(op, op)
    const tail = next.then(noop, noop)
    this.topicOps.set(topic, tail)
    tail.then(() => { if (this.topicOps.get(topic) === tail) this.topicOps.delete(topic) })
    return next
  }

  // ---- connection -------------------------------------------------------------------------------

  private connect (): void {
    this.currentState = 'connecting'
    let target: ConnectTarget | Promise<ConnectTarget>
    try {
      target = typeof this.connectOption === 'function' ? this.connectOption() : this.connectOption
    } catch (err) {
      this.attemptFailed(err)
      return
    }
    Promise.resolve(target).then(resolved => this.attach(resolved), err => this.attemptFailed(err))
  }

  private attach (target: ConnectTarget): void {
    if (this.currentState === 'closed') {
      // close() was called while the URL or socket was being produced: do not leak the socket.
      if (isSocket(target)) dropSocket(target)
      return
    }
    let socket: WebSocketLike
    try {
      socket = this.createSocket(target)
    } catch (err) {
      this.attemptFailed(err)
      return
    }
    this.socket = socket
    let failure: unknown
    // Handlers stay attached for the socket's whole life and ignore a socket that is no longer
    // current. They are never removed: `ws` throws on an 'error' event that has no listener.
    socket.onopen = () => { if (this.socket === socket) this.onOpen() }
    socket.onmessage = (event: { data: unknown }) => { if (this.socket === socket) this.receive(event.data) }
    socket.onerror = (event: { error?: unknown } | undefined) => { failure = event?.error ?? event }
    socket.onclose = (event: { code?: number, reason?: string } | undefined) => {
      if (this.socket === socket) this.onClose(event?.code ?? 1006, event?.reason ?? '', failure)
    }
    if ('binaryType' in socket) socket.binaryType = 'arraybuffer'
    if (socket.readyState === OPEN) {
      // A socket factory (injectWS) may hand over a socket that is already open.
      queueMicrotask(() => { if (this.socket === socket && this.currentState === 'connecting') this.onOpen() })
    } else if (socket.readyState === CONNECTING) {
      this.connectTimer = setTimeout(() => {
        if (this.socket !== socket) return
        this.socket = undefined
        dropSocket(socket)
        this.attemptFailed(new Error(`Connection not open within ${this.options.connectTimeout} ms`))
      }, this.options.connectTimeout)
    } else {
      this.socket = undefined
      this.attemptFailed(new Error('The socket handed to DrizzleClient is closing or closed'))
    }
  }

  private createSocket (target: ConnectTarget): WebSocketLike {
    if (isSocket(target)) return target
    if (typeof target !== 'string' && !(target instanceof URL)) {
      throw new TypeError('DrizzleClient: the connect function must return a URL string, a URL or a socket (an object with send and close)')
    }
    if (this.WebSocketCtor === undefined) throw new TypeError('DrizzleClient: no WebSocket constructor; pass one as options.WebSocket')
    return new this.WebSocketCtor(String(target), this.options.protocols)
  }

  private onOpen (): void {
    clearTimeout(this.connectTimer)
    const reconnected = this.opened
    this.opened = true
    this.failures = 0
    this.currentState = 'open'
    // Requests made while disconnected, in the order they were made.
    for (const entry of [...this.pending.values()]) if (!entry.sent) this.write(entry)
    for (const [topic, state] of this.topics) this.sendSubscribe(topic, state)
    this.events.emit('open', { reconnected })
  }

  private onClose (code: number, reason: string, failure: unknown): void {
    clearTimeout(this.connectTimer)
    this.socket = undefined
    const wasOpen = this.currentState === 'open'
    for (const entry of [...this.pending.values()]) {
      if (entry.sent) this.settle(entry, new DrizzleClientError('disconnect', `Connection closed (${code}) before the reply`, { requestId: entry.id }), false)
    }
    if (this.currentState === 'closed') return
    if (!wasOpen) {
      this.attemptFailed(failure ?? new Error(`Connection closed (${code}) before it opened`))
      return
    }
    const reconnecting = this.scheduleReconnect()
    this.events.emit('close', { code, reason, reconnecting })
  }

  private attemptFailed (cause: unknown): void {
    clearTimeout(this.connectTimer)
    if (this.currentState === 'closed') return
    this.failures++
    this.emitError(new DrizzleClientError('disconnect', `Connection attempt failed: ${describeError(cause)}`, { cause }))
    this.scheduleReconnect()
  }

  /** Waits out a backoff before the next attempt; when there will be none, closes the client for good. */
  private scheduleReconnect (): boolean {
    const backoff = this.backoff
    if (backoff === false || this.failures >= backoff.maxAttempts) {
      const why = backoff === false ? 'reconnect is disabled' : `gave up after ${this.failures} failed attempts`
      if (backoff !== false) this.emitError(new DrizzleClientError('disconnect', `DrizzleClient ${why}`))
      this.shutdown(`Disconnected and ${why}`)
      return false
    }
    // Full jitter: random(0, min(cap, base * 2^attempt)) spreads a crowd of clients that lost the
    // same server, instead of having them all come back in the same instant.
    const ceiling = Math.min(backoff.maxDelay, backoff.baseDelay * 2 ** this.failures)
    const delay = Math.floor(Math.random() * ceiling)
    this.currentState = 'reconnecting'
    this.reconnectTimer = setTimeout(() => { this.reconnectTimer = undefined; this.connect() }, delay)
    this.events.emit('reconnect', { attempt: this.failures + 1, delay })
    return true
  }

  // ---- frames -----------------------------------------------------------------------------------

  private receive (raw: unknown): void {
    const frame = decodeFrame(raw)
    if (frame instanceof DrizzleClientError) {
      this.emitError(frame)
      return
    }
    if (typeof frame.topic === 'string') {
      this.publish({ topic: frame.topic, data: frame.data, ...(typeof frame.event === 'string' ? { event: frame.event } : {}) })
      return
    }
    if (!Object.hasOwn(frame, 'request_id')) {
      this.emitError(new DrizzleClientError('protocol', 'Frame is neither a reply nor a publication', { details: frame }))
      return
    }
    const error = serverError(frame)
    const entry = typeof frame.request_id === 'number' ? this.pending.get(frame.request_id) : undefined
    // A reply nobody waits for is late (its request timed out or was aborted): dropped on purpose.
    if (entry !== undefined) this.settle(entry, error ?? frame.data, error === undefined)
    else if (error !== undefined && frame.request_id === null) this.emitError(error)
  }

  private publish (frame: Publication): void {
    this.events.emit('publication', frame)
    const subscribed = this.topics.get(frame.topic)
    if (subscribed !== undefined) for (const fn of [...subscribed.listeners]) callSafely(fn, frame.data, frame)
    const listening = this.listeners.get(frame.topic)
    if (listening !== undefined) for (const fn of [...listening]) callSafely(fn, frame.data, frame)
  }

  private emitError (error: DrizzleClientError): void {
    this.events.emit('error', error)
  }

  // ---- closing ----------------------------------------------------------------------------------

  /**
   * Closes for good: rejects every pending request and unconfirmed subscription with `disconnect`,
   * clears every timer, and resolves once the socket closed (at most `closeTimeout` ms later, after
   * which a `ws` socket is terminated).
   */
  close (code = 1000, reason = ''): Promise<void> {
    this.closing ??= this.closeSocket(code, reason)
    return this.closing
  }

  private async closeSocket (code: number, reason: string): Promise<void> {
    const current = this.socket
    const wasOpen = this.currentState === 'open'
    this.shutdown('Client closed')
    if (current === undefined) return
    const socket: WebSocketLike = current
    this.socket = undefined
    const events = this.events
    await new Promise<void>(resolve => {
      const timer = setTimeout(finish, this.options.closeTimeout)
      function finish (event?: { code: number, reason: string }): void {
        clearTimeout(timer)
        socket.onclose = null
        if (event === undefined) dropSocket(socket)
        if (wasOpen) events.emit('close', { code: event?.code ?? code, reason: event?.reason ?? reason, reconnecting: false })
        resolve()
      }
      socket.onclose = finish
      try {
        socket.close(code, reason)
        // The peer of an in-memory socket never learns that the handshake finished, so the server
        // would hold it open until its close timeout (README: Testing). Once the close frame is
        // written, dropping the socket lets the server see both the code and the end at once.
        if (isInMemory(socket)) finish()
      } catch {
        finish()
      }
    })
  }

  /** The state every way of stopping ends in: no timers, nothing pending, no further attempts. */
  private shutdown (why: string): void {
    this.currentState = 'closed'
    clearTimeout(this.reconnectTimer)
    clearTimeout(this.connectTimer)
    for (const entry of [...this.pending.values()]) {
      this.settle(entry, new DrizzleClientError('disconnect', why, { requestId: entry.id }), false)
    }
    for (const [topic, state] of this.topics) state.settle(new DrizzleClientError('disconnect', why, { topic }))
  }
}

// ---- helpers ------------------------------------------------------------------------------------

function noop (): void {}

function newTopicState (): TopicState {
  let settle: (err?: unknown) => void = noop
  const ready = new Promise<void>((resolve, reject) => {
    settle = err => { if (err === undefined) resolve(); else reject(err) }
  })
  // Marks the promise handled: a refusal is also an `error` event, and awaiting `ready` is optional.
  ready.catch(noop)
  return { listeners: new Set(), ready, settle }
}

function isSocket (value: unknown): value is WebSocketLike {
  return typeof value === 'object' && value !== null && !(value instanceof URL) &&
    typeof (value as WebSocketLike).send === 'function' && typeof (value as WebSocketLike).close === 'function'
}

/**
 * A socket with no URL was not dialled over a network: `app.injectWS()` hands out such a `ws` socket
 * over an in-memory stream. Browsers' sockets and `ws` clients created from a URL always have one.
 */
function isInMemory (socket: WebSocketLike): boolean {
  return typeof socket.terminate === 'function' && (typeof socket.url !== 'string' || socket.url === '')
}

/** Closes a socket without waiting for anyone: terminate when it can (ws), else a plain close. */
function dropSocket (socket: WebSocketLike): void {
  try {
    if (typeof socket.terminate === 'function') socket.terminate()
    else socket.close()
  } catch {
    // Already closed: nothing left to drop.
  }
}

function isClientError (err: unknown): err is DrizzleClientError {
  return err instanceof DrizzleClientError
}

function withTopic (err: DrizzleClientError, topic: string): DrizzleClientError {
  return new DrizzleClientError(err.type, err.message, { code: err.code, statusCode: err.statusCode, details: err.details, requestId: err.requestId, topic, cause: err.cause })
}

function describeError (err: unknown): string {
  if (err instanceof Error) return err.message
  if (typeof err === 'object' && err !== null && typeof (err as { message?: unknown }).message === 'string') return (err as { message: string }).message
  return typeof err === 'string' ? err : 'socket error'
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

/** Text frames arrive as strings; a binary frame is accepted when it holds UTF-8 JSON. */
function decodeFrame (raw: unknown): Reply | DrizzleClientError {
  let text: string
  try {
    if (typeof raw === 'string') text = raw
    else if (raw instanceof ArrayBuffer || ArrayBuffer.isView(raw)) text = utf8.decode(raw)
    else return new DrizzleClientError('protocol', 'Unsupported frame data')
  } catch (err) {
    return new DrizzleClientError('protocol', 'Binary frame is not UTF-8 text', { cause: err })
  }
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (err) {
    return new DrizzleClientError('protocol', 'Frame is not JSON', { details: text.slice(0, 200), cause: err })
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return new DrizzleClientError('protocol', 'Frame is not a JSON object', { details: text.slice(0, 200) })
  }
  return value as Reply
}

function serverError (frame: Reply): DrizzleClientError | undefined {
  if (frame.code === undefined && frame.error === undefined) return undefined
  const message = typeof frame.error === 'string' ? frame.error : 'Server error'
  const requestId = typeof frame.request_id === 'string' || typeof frame.request_id === 'number' ? frame.request_id : null
  return new DrizzleClientError('server', message, {
    code: typeof frame.code === 'string' ? frame.code : undefined,
    statusCode: typeof frame.statusCode === 'number' ? frame.statusCode : undefined,
    details: frame.details,
    requestId
  })
}

function positive (value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !(value > 0)) throw new TypeError(`DrizzleClient: ${name} must be a positive number of milliseconds, received ${String(value)}`)
  return value
}

function backoffOptions (option: boolean | ReconnectOptions | undefined): Required<ReconnectOptions> | false {
  if (option === false) return false
  const given = option === true || option === undefined ? {} : option
  const maxAttempts = given.maxAttempts ?? Infinity
  if (typeof maxAttempts !== 'number' || !(maxAttempts >= 0)) throw new TypeError(`DrizzleClient: reconnect.maxAttempts must be a number >= 0, received ${String(maxAttempts)}`)
  return {
    baseDelay: positive(given.baseDelay, 500, 'reconnect.baseDelay'),
    maxDelay: positive(given.maxDelay, 30_000, 'reconnect.maxDelay'),
    maxAttempts
  }
}
