// The client's options, their defaults and their validation: a bad value is a TypeError at
// construction (or at the request that passed it), never a client that misbehaves later.
import type { ConnectOption, WebSocketConstructor } from './types.js'

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

/** What the connection works from once the options were checked and defaulted. */
export interface ConnectionSettings {
  readonly WebSocket: WebSocketConstructor | undefined
  readonly protocols: string | string[] | undefined
  readonly connectTimeout: number
  readonly closeTimeout: number
  /** `false`: never reconnect. */
  readonly backoff: Required<ReconnectOptions> | false
}

export interface ClientSettings {
  /** Default request timeout in ms. */
  readonly timeout: number
  readonly connection: ConnectionSettings
}

const DEFAULT_TIMEOUT = 10_000
const DEFAULT_CONNECT_TIMEOUT = 10_000
const DEFAULT_CLOSE_TIMEOUT = 1000
const DEFAULT_BASE_DELAY = 500
const DEFAULT_MAX_DELAY = 30_000

export function resolveOptions (url: ConnectOption, options: DrizzleClientOptions): ClientSettings {
  const WebSocket = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket
  // A connect function may hand over ready-made sockets, so only then can the constructor be missing.
  if (typeof url !== 'function' && WebSocket === undefined) {
    throw new TypeError('DrizzleClient: no WebSocket constructor; pass one as options.WebSocket (in Node 20: the ws package)')
  }
  return {
    timeout: positive(options.timeout, DEFAULT_TIMEOUT, 'timeout'),
    connection: {
      WebSocket,
      protocols: options.protocols,
      connectTimeout: positive(options.connectTimeout, DEFAULT_CONNECT_TIMEOUT, 'connectTimeout'),
      closeTimeout: positive(options.closeTimeout, DEFAULT_CLOSE_TIMEOUT, 'closeTimeout'),
      backoff: backoffOptions(options.reconnect)
    }
  }
}

export function positive (value: number | undefined, fallback: number, name: string): number {
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
    baseDelay: positive(given.baseDelay, DEFAULT_BASE_DELAY, 'reconnect.baseDelay'),
    maxDelay: positive(given.maxDelay, DEFAULT_MAX_DELAY, 'reconnect.maxDelay'),
    maxAttempts
  }
}
