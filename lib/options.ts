import type { Broker } from './brokers/types.js'
import { InvalidOptionError, describe } from './errors.js'
import type { ProtoAction } from './protocol.js'

export type OriginCheck = (origin: string, request: { headers: Record<string, string | string[] | undefined> }) => boolean

export interface RateLimitOptions {
  /** Requests allowed per connection in each window. */
  max: number
  /** Window length in milliseconds. */
  timeWindow: number
}

export interface DrizzleOptions {
  /** Path of the WebSocket route. */
  path?: string
  /** Carries publications across processes; the in-memory default serves a single process. */
  broker?: Broker
  /** Close the broker when Fastify closes. */
  closeBroker?: boolean
  /** Turn off the "action completed" log line (5xx errors are still logged). */
  disableActionLogging?: boolean
  /** What to do with `__proto__` keys in frames, as Fastify's option of the same name. */
  onProtoPoisoning?: ProtoAction
  /** What to do with `constructor.prototype` keys in frames, as Fastify's option of the same name. */
  onConstructorPoisoning?: ProtoAction
  /** Largest frame accepted, in bytes; bigger frames close the socket with 1009. */
  maxPayload?: number
  /** Requests a connection may have in flight; more get TOO_MANY_REQUESTS. */
  maxInFlight?: number
  /** Actions in flight across all connections (those of closed connections count until they end); more get TOO_MANY_REQUESTS. */
  maxInFlightTotal?: number
  /** Topics a connection may be subscribed to (`__all__` not counted); more get TOO_MANY_SUBSCRIPTIONS. */
  maxSubscriptions?: number
  /** Requests per connection per window; more get TOO_MANY_REQUESTS. `false` disables. */
  rateLimit?: RateLimitOptions | false
  /** Open connections in total; further upgrades are refused with 503. */
  maxConnections?: number
  /** Milliseconds an action may run before the client gets ACTION_TIMEOUT; 0 disables. */
  actionTimeout?: number
  /** Bytes a socket may have buffered before it counts as a slow consumer. */
  maxBufferedBytes?: number
  /** Bytes buffered for all sockets together; past it, every socket with a backlog counts as a slow consumer. */
  maxBufferedBytesTotal?: number
  /** Bytes of unfinished (fragmented or partly received) messages held for all sockets together; the socket that passes it is closed with 1009. */
  maxIncompleteBytesTotal?: number
  /** Milliseconds a message may stay unfinished before its socket is closed with 1008; 0 disables. */
  incompleteTimeout?: number
  /** A slow consumer's fate: `drop` publications for it, or `close` it with 1013. */
  slowConsumer?: 'drop' | 'close'
  /** Milliseconds between pings; a peer that missed the previous pong is terminated. 0 disables. */
  heartbeatInterval?: number
  /**
   * Origins browsers may connect from. Default: requests without an Origin header (non-browser
   * clients) and same-origin browsers (Origin host equals Host). `'*'` allows any origin.
   */
  allowedOrigins?: '*' | readonly string[] | OriginCheck
  /** Milliseconds `fastify.close()` waits for actions in flight before closing sockets with 1001. */
  closeGracePeriod?: number
  /** Options for @fastify/websocket's `ws` server, used only when this plugin registers it. */
  websocket?: Record<string, unknown>
  /** Also serve every action as `POST <prefix>/<resource>/<action>`, in the scope that declared it (docs/http-and-asyncapi.md). */
  http?: boolean | HttpOptions
  /** Serve an AsyncAPI 3.0 document of the resources and topics at `GET <path>/asyncapi.json`. */
  asyncapi?: boolean | AsyncApiOptions
}

export interface HttpOptions {
  /** Path prefix of the action routes; default: the WebSocket `path`, so `POST /ws/todos/get`. */
  prefix?: string
}

export interface AsyncApiOptions {
  /** Path of the document route; default `<path>/asyncapi.json`. */
  path?: string
  /**
   * URL of the server as clients reach it, e.g. `wss://api.example.com` (a path, if any, is where a
   * proxy mounts the app). Default: the host and protocol of each request for the document.
   */
  serverUrl?: string
  /** The document's `info`; default title "fastify-drizzle API", version "1.0.0". */
  info?: { title?: string, version?: string, description?: string }
}

export interface ResolvedHttpOptions { prefix: string }

export interface ResolvedAsyncApiOptions {
  /** Undefined when the `asyncapi` option is off: `app.drizzle.asyncapi()` still works, no route is served. */
  path: string | undefined
  serverUrl: URL | undefined
  info: { title: string, version: string, description?: string }
}

export const DEFAULTS = {
  path: '/ws',
  closeBroker: true,
  disableActionLogging: false,
  onProtoPoisoning: 'error' as ProtoAction,
  onConstructorPoisoning: 'ignore' as ProtoAction,
  maxPayload: 1024 * 1024,
  maxInFlight: 1024,
  maxInFlightTotal: 10_000,
  maxSubscriptions: 1024,
  rateLimit: { max: 10_000, timeWindow: 1000 } as RateLimitOptions | false,
  maxConnections: 10_000,
  actionTimeout: 30_000,
  maxBufferedBytes: 4 * 1024 * 1024,
  maxBufferedBytesTotal: 128 * 1024 * 1024,
  maxIncompleteBytesTotal: 32 * 1024 * 1024,
  incompleteTimeout: 10_000,
  slowConsumer: 'close' as 'drop' | 'close',
  heartbeatInterval: 30_000,
  closeGracePeriod: 5_000,
  http: false as boolean | HttpOptions,
  asyncapi: false as boolean | AsyncApiOptions
} as const

export type ResolvedOptions = Required<Omit<DrizzleOptions, 'broker' | 'allowedOrigins' | 'websocket' | 'rateLimit' | 'http' | 'asyncapi'>> & {
  http: ResolvedHttpOptions | false
  asyncapi: ResolvedAsyncApiOptions
  broker: Broker | undefined
  allowedOrigins: '*' | readonly string[] | OriginCheck | undefined
  websocket: Record<string, unknown>
  rateLimit: RateLimitOptions | false
}

const PROTO_ACTIONS = ['error', 'remove', 'ignore']
const KNOWN = new Set(['path', 'broker', 'closeBroker', 'disableActionLogging', 'onProtoPoisoning', 'onConstructorPoisoning',
  'maxPayload', 'maxInFlight', 'maxInFlightTotal', 'maxSubscriptions', 'rateLimit', 'maxConnections', 'actionTimeout',
  'maxBufferedBytes', 'maxBufferedBytesTotal', 'maxIncompleteBytesTotal', 'incompleteTimeout', 'slowConsumer',
  'heartbeatInterval', 'allowedOrigins', 'closeGracePeriod', 'websocket', 'http', 'asyncapi'])

function fail (name: string, expected: string, received: unknown): never {
  throw new InvalidOptionError(name, expected, describe(received))
}

// Only `undefined` means "use the default": `null` is a bad value like any other, reported as received.
function given (options: Record<string, unknown>, name: keyof typeof DEFAULTS): unknown {
  return options[name] === undefined ? DEFAULTS[name] : options[name]
}

function integer (options: Record<string, unknown>, name: keyof typeof DEFAULTS, min: number): number {
  const value = given(options, name)
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) fail(name, `expected an integer >= ${min}`, value)
  return value
}

function boolean (options: Record<string, unknown>, name: keyof typeof DEFAULTS): boolean {
  const value = given(options, name)
  if (typeof value !== 'boolean') fail(name, 'expected a boolean', value)
  return value
}

function oneOf<T extends string> (options: Record<string, unknown>, name: keyof typeof DEFAULTS, allowed: readonly string[]): T {
  const value = given(options, name)
  if (typeof value !== 'string' || !allowed.includes(value)) fail(name, `expected one of ${allowed.map(a => `"${a}"`).join(', ')}`, value)
  return value as T
}

/** Validates the plugin options once, at registration, and fills in the defaults. */
export function resolveOptions (input: unknown): ResolvedOptions {
  if (input !== undefined && (input === null || typeof input !== 'object' || Array.isArray(input))) fail('options', 'expected an object', input)
  const options = (input ?? {}) as Record<string, unknown>
  for (const key of Object.keys(options)) if (!KNOWN.has(key)) fail(key, `unknown option; known options are ${[...KNOWN].join(', ')}`, options[key])

  const path = given(options, 'path')
  if (typeof path !== 'string' || !path.startsWith('/')) fail('path', 'expected a string starting with "/"', path)

  return {
    path,
    broker: checkBroker(options.broker),
    closeBroker: boolean(options, 'closeBroker'),
    disableActionLogging: boolean(options, 'disableActionLogging'),
    onProtoPoisoning: oneOf(options, 'onProtoPoisoning', PROTO_ACTIONS),
    onConstructorPoisoning: oneOf(options, 'onConstructorPoisoning', PROTO_ACTIONS),
    maxPayload: integer(options, 'maxPayload', 1),
    maxInFlight: integer(options, 'maxInFlight', 1),
    maxInFlightTotal: integer(options, 'maxInFlightTotal', 1),
    maxSubscriptions: integer(options, 'maxSubscriptions', 1),
    rateLimit: checkRateLimit(options.rateLimit),
    maxConnections: integer(options, 'maxConnections', 1),
    actionTimeout: integer(options, 'actionTimeout', 0),
    maxBufferedBytes: integer(options, 'maxBufferedBytes', 1),
    maxBufferedBytesTotal: integer(options, 'maxBufferedBytesTotal', 1),
    maxIncompleteBytesTotal: integer(options, 'maxIncompleteBytesTotal', 1),
    incompleteTimeout: integer(options, 'incompleteTimeout', 0),
    slowConsumer: oneOf(options, 'slowConsumer', ['drop', 'close']),
    heartbeatInterval: integer(options, 'heartbeatInterval', 0),
    closeGracePeriod: integer(options, 'closeGracePeriod', 0),
    allowedOrigins: checkOrigins(options.allowedOrigins),
    websocket: checkWebsocket(options.websocket),
    http: checkHttp(given(options, 'http'), path),
    asyncapi: checkAsyncApi(given(options, 'asyncapi'), path)
  }
}

function checkBroker (broker: unknown): Broker | undefined {
  if (broker === undefined) return undefined
  const methods = ['attach', 'subscribe', 'unsubscribe', 'publish', 'close']
  if (broker === null || typeof broker !== 'object' || methods.some(m => typeof (broker as Record<string, unknown>)[m] !== 'function')) {
    fail('broker', `expected a broker with methods ${methods.join(', ')} (e.g. redisBroker() from fastify-drizzle/redis)`, broker)
  }
  return broker as Broker
}

function checkRateLimit (value: unknown): RateLimitOptions | false {
  if (value === undefined) return DEFAULTS.rateLimit
  if (value === false) return false
  const limit = value as RateLimitOptions
  if (value === null || typeof value !== 'object' || !Number.isSafeInteger(limit.max) || limit.max < 1 ||
    !Number.isSafeInteger(limit.timeWindow) || limit.timeWindow < 1) {
    fail('rateLimit', 'expected false or { max: integer >= 1, timeWindow: milliseconds >= 1 }', value)
  }
  return { max: limit.max, timeWindow: limit.timeWindow }
}

function checkOrigins (value: unknown): ResolvedOptions['allowedOrigins'] {
  if (value === undefined || value === '*' || typeof value === 'function') return value as ResolvedOptions['allowedOrigins']
  if (Array.isArray(value) && value.every(v => typeof v === 'string')) return [...value]
  return fail('allowedOrigins', 'expected "*", an array of origin strings, or a function (origin, request) => boolean', value)
}

function checkWebsocket (value: unknown): Record<string, unknown> {
  if (value === undefined) return {}
  if (value === null || typeof value !== 'object' || Array.isArray(value)) fail('websocket', 'expected an object of ws server options', value)
  return value as Record<string, unknown>
}

const PATH_SEGMENT = /^\/[^\s?#:*]*$/

/** `true` is `{}`; the prefix defaults to the WebSocket path and loses a trailing slash (`/` gives `/<resource>/<action>`). */
function checkHttp (value: unknown, path: string): ResolvedHttpOptions | false {
  if (value === false) return false
  const expected = 'expected a boolean or { prefix?: string starting with "/" }'
  if (value !== true && !isPlainObject(value)) fail('http', expected, value)
  const opts = value === true ? {} : value as Record<string, unknown>
  for (const key of Object.keys(opts)) if (key !== 'prefix') fail('http', `${expected}; unknown key "${key}"`, value)
  const prefix = opts.prefix ?? path
  if (typeof prefix !== 'string' || !PATH_SEGMENT.test(prefix)) fail('http.prefix', 'expected a string starting with "/", without spaces, "?", "#", ":" or "*"', prefix)
  return { prefix: prefix.replace(/\/+$/, '') }
}

function checkAsyncApi (value: unknown, path: string): ResolvedAsyncApiOptions {
  const expected = 'expected a boolean or { path?, serverUrl?, info?: { title?, version?, description? } }'
  if (typeof value !== 'boolean' && !isPlainObject(value)) fail('asyncapi', expected, value)
  const opts = typeof value === 'boolean' ? {} : value as Record<string, unknown>
  for (const key of Object.keys(opts)) if (!['path', 'serverUrl', 'info'].includes(key)) fail('asyncapi', `${expected}; unknown key "${key}"`, value)
  const docPath = opts.path ?? `${path.replace(/\/+$/, '')}/asyncapi.json`
  if (typeof docPath !== 'string' || !PATH_SEGMENT.test(docPath)) fail('asyncapi.path', 'expected a string starting with "/", without spaces, "?", "#", ":" or "*"', docPath)
  return { path: value === false ? undefined : docPath, serverUrl: checkServerUrl(opts.serverUrl), info: checkInfo(opts.info) }
}

function checkServerUrl (value: unknown): URL | undefined {
  if (value === undefined) return undefined
  const url = typeof value === 'string' && URL.canParse(value) ? new URL(value) : undefined
  if (url === undefined || (url.protocol !== 'ws:' && url.protocol !== 'wss:')) fail('asyncapi.serverUrl', 'expected a ws:// or wss:// URL', value)
  return url
}

function checkInfo (value: unknown): ResolvedAsyncApiOptions['info'] {
  const info = { title: 'fastify-drizzle API', version: '1.0.0' } as ResolvedAsyncApiOptions['info']
  if (value === undefined) return info
  if (!isPlainObject(value)) fail('asyncapi.info', 'expected an object { title?, version?, description? }', value)
  for (const [key, v] of Object.entries(value)) {
    if (!['title', 'version', 'description'].includes(key) || typeof v !== 'string') fail(`asyncapi.info.${key}`, 'expected a string (title, version or description)', v)
    info[key as 'title'] = v
  }
  return info
}

function isPlainObject (value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
}
