// The socket and its life: one attempt at a time, the reconnect state machine with exponential
// backoff and full jitter, and close(). The connection knows nothing of requests or topics: it tells
// its owner when a socket opened, a frame arrived, a socket was lost, or the client stopped.
//
//   connecting --open--> open --socket closed--> reconnecting --backoff elapsed--> connecting
//   connecting --attempt failed--> reconnecting          any state --close() or gave up--> closed
import { DrizzleClientError, describeError } from './errors.js'
import { noop, type Emitter } from './emitter.js'
import { backoffDelay } from './backoff.js'
import type { ConnectionSettings } from './options.js'
import type { ClientEvents, ClientState, ConnectOption, ConnectTarget, WebSocketLike } from './types.js'

/** What the connection reports to the client, synchronously. */
export interface ConnectionOwner {
  /** A socket opened: send what waited for one. Runs before the `open` event. */
  opened (): void
  /** A frame arrived on the current socket. */
  received (data: unknown): void
  /** The current socket closed: whatever was written to it will get no reply. */
  lost (code: number): void
  /** The client stopped for good: fail everything still waiting. */
  stopped (why: string): void
}

const CONNECTING = 0
const OPEN = 1

export class ClientConnection {
  private socket: WebSocketLike | undefined
  private currentState: ClientState = 'connecting'
  /** Whether any socket ever opened: the next `open` event is then a reconnection. */
  private opened = false
  /** Consecutive failed attempts; the backoff ceiling grows with it, an open resets it. */
  private failures = 0
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined
  private connectTimer: ReturnType<typeof setTimeout> | undefined
  private closing: Promise<void> | undefined

  constructor (
    private readonly connectOption: ConnectOption,
    private readonly settings: ConnectionSettings,
    private readonly owner: ConnectionOwner,
    private readonly events: Emitter<ClientEvents>
  ) {}

  get state (): ClientState { return this.currentState }

  /** Writes a frame to the current socket; false when there is none. Throws what the socket throws. */
  send (frame: string): boolean {
    if (this.socket === undefined) return false
    this.socket.send(frame)
    return true
  }

  /** Starts an attempt: the connect option is read again each time (fresh tokens, rotating hosts). */
  connect (): void {
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

  /**
   * Closes for good: the owner fails everything still waiting, every timer is cleared, and the
   * promise resolves once the socket closed (at most `closeTimeout` ms later, after which a `ws`
   * socket is terminated). Every later call returns the same promise.
   */
  close (code: number, reason: string): Promise<void> {
    this.closing ??= this.closeSocket(code, reason)
    return this.closing
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
    this.listen(socket)
    if ('binaryType' in socket) socket.binaryType = 'arraybuffer'
    if (socket.readyState === OPEN) {
      // A socket factory (injectWS) may hand over a socket that is already open.
      queueMicrotask(() => { if (this.socket === socket && this.currentState === 'connecting') this.onOpen() })
    } else if (socket.readyState === CONNECTING) {
      this.connectTimer = setTimeout(() => {
        if (this.socket !== socket) return
        this.socket = undefined
        dropSocket(socket)
        this.attemptFailed(new Error(`Connection not open within ${this.settings.connectTimeout} ms`))
      }, this.settings.connectTimeout)
    } else {
      this.socket = undefined
      this.attemptFailed(new Error('The socket handed to DrizzleClient is closing or closed'))
    }
  }

  /**
   * Handlers stay attached for the socket's whole life and ignore a socket that is no longer
   * current. They are never removed: `ws` throws on an 'error' event that has no listener.
   */
  private listen (socket: WebSocketLike): void {
    let failure: unknown
    socket.onopen = () => { if (this.socket === socket) this.onOpen() }
    socket.onmessage = (event: { data: unknown }) => { if (this.socket === socket) this.owner.received(event.data) }
    socket.onerror = (event: { error?: unknown } | undefined) => { failure = event?.error ?? event }
    socket.onclose = (event: { code?: number, reason?: string } | undefined) => {
      if (this.socket === socket) this.onClose(event?.code ?? 1006, event?.reason ?? '', failure)
    }
  }

  private createSocket (target: ConnectTarget): WebSocketLike {
    if (isSocket(target)) return target
    if (typeof target !== 'string' && !(target instanceof URL)) {
      throw new TypeError('DrizzleClient: the connect function must return a URL string, a URL or a socket (an object with send and close)')
    }
    if (this.settings.WebSocket === undefined) throw new TypeError('DrizzleClient: no WebSocket constructor; pass one as options.WebSocket')
    return new this.settings.WebSocket(String(target), this.settings.protocols)
  }

  private onOpen (): void {
    clearTimeout(this.connectTimer)
    const reconnected = this.opened
    this.opened = true
    this.failures = 0
    this.currentState = 'open'
    this.owner.opened()
    this.events.emit('open', { reconnected })
  }

  private onClose (code: number, reason: string, failure: unknown): void {
    clearTimeout(this.connectTimer)
    this.socket = undefined
    const wasOpen = this.currentState === 'open'
    this.owner.lost(code)
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
    this.events.emit('error', new DrizzleClientError('disconnect', `Connection attempt failed: ${describeError(cause)}`, { cause }))
    this.scheduleReconnect()
  }

  /** Waits out a backoff before the next attempt; when there will be none, stops the client for good. */
  private scheduleReconnect (): boolean {
    const backoff = this.settings.backoff
    if (backoff === false || this.failures >= backoff.maxAttempts) {
      const why = backoff === false ? 'reconnect is disabled' : `gave up after ${this.failures} failed attempts`
      if (backoff !== false) this.events.emit('error', new DrizzleClientError('disconnect', `DrizzleClient ${why}`))
      this.stop(`Disconnected and ${why}`)
      return false
    }
    // The ceiling starts at baseDelay for a socket that was open, and doubles with each failed attempt.
    const delay = backoffDelay(this.failures, backoff.baseDelay, backoff.maxDelay)
    this.currentState = 'reconnecting'
    this.reconnectTimer = setTimeout(() => { this.reconnectTimer = undefined; this.connect() }, delay)
    this.events.emit('reconnect', { attempt: this.failures + 1, delay })
    return true
  }

  private async closeSocket (code: number, reason: string): Promise<void> {
    const socket = this.socket
    const wasOpen = this.currentState === 'open'
    this.stop('Client closed')
    if (socket === undefined) return
    this.socket = undefined
    const event = await closeGracefully(socket, code, reason, this.settings.closeTimeout)
    if (wasOpen) this.events.emit('close', { code: event?.code ?? code, reason: event?.reason ?? reason, reconnecting: false })
  }

  /** The state every way of stopping ends in: no timers, nothing waiting, no further attempts. */
  private stop (why: string): void {
    this.currentState = 'closed'
    clearTimeout(this.reconnectTimer)
    clearTimeout(this.connectTimer)
    this.owner.stopped(why)
  }
}

interface CloseEvent { code: number, reason: string }

/**
 * Starts the closing handshake and resolves with the peer's close event, or with undefined once
 * `ms` passed (the socket is then dropped): a peer that never answers cannot hold close() up.
 */
function closeGracefully (socket: WebSocketLike, code: number, reason: string, ms: number): Promise<CloseEvent | undefined> {
  return new Promise(resolve => {
    const timer = setTimeout(finish, ms)
    function finish (event?: CloseEvent): void {
      clearTimeout(timer)
      socket.onclose = null
      if (event === undefined) dropSocket(socket)
      resolve(event)
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

/**
 * A socket with no URL was not dialled over a network: `app.injectWS()` hands out such a `ws` socket
 * over an in-memory stream. Browsers' sockets and `ws` clients created from a URL always have one.
 */
function isInMemory (socket: WebSocketLike): boolean {
  return typeof socket.terminate === 'function' && (typeof socket.url !== 'string' || socket.url === '')
}

function isSocket (value: unknown): value is WebSocketLike {
  return typeof value === 'object' && value !== null && !(value instanceof URL) &&
    typeof (value as WebSocketLike).send === 'function' && typeof (value as WebSocketLike).close === 'function'
}

/** Closes a socket without waiting for anyone: terminate when it can (ws), else a plain close. */
function dropSocket (socket: WebSocketLike): void {
  // ws reports terminating a socket that is still connecting as an 'error' event, and throws one
  // nobody listens to: a socket handed over after close() has no listener yet.
  socket.onerror = noop
  try {
    if (typeof socket.terminate === 'function') socket.terminate()
    else socket.close()
  } catch {
    // Already closed: nothing left to drop.
  }
}
