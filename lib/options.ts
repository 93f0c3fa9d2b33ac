import type { FastifyRequest } from 'fastify'
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

export interface PlaygroundOptions {
  /** Path of the page; default `<path>/playground`. */
  path?: string
  /** Serve it even with `NODE_ENV=production` (refused otherwise, so it is never exposed by accident). */
  production?: boolean
}

/**
 * What the plugin uses of a prom-client `Registry` (typed structurally, so that the declarations do not
 * need prom-client): the app's own registry, or prom-client's default one.
 */
export interface MetricsRegistry {
  registerMetric (metric: any): void
  removeSingleMetric (name: string): void
  metrics (): Promise<string>
}

export interface MetricsOptions {
  /** The prom-client registry to register in; default: prom-client's default registry (`register`). */
  registry?: MetricsRegistry
  /** Replaces `drizzle_` at the start of every metric name; default `drizzle_`. */
  prefix?: string
}

export interface ResolvedMetricsOptions { registry: MetricsRegistry | undefined, prefix: string }

export interface ResolvedHttpOptions { prefix: string }

export interface ResolvedPlaygroundOptions { path: string }

export interface ResolvedAsyncApiOptions {
  /** Undefined when the `asyncapi` option is off: `app.drizzle.asyncapi()` still works, no route is served. */
  path: string | undefined
  serverUrl: URL | undefined
  info: { title: string, version: string, description?: string }
}

// ---- the option table ------------------------------------------------------------------------
// Every plugin option is declared once, below: its doc comment (what users see on `DrizzleOptions`),
// its default and its validator. The public type, `DEFAULTS` and `resolveOptions` are derived from it.

/** What a validator may read of the options resolved before it: the table resolves in order, `path` first. */
interface Earlier { readonly path: string }

/** Checks one option's value (the given one, or the default) and returns what the plugin uses, or throws FST_DRIZZLE_INVALID_OPTION. */
type Resolve<Out> = (value: unknown, name: string, earlier: Earlier) => Out

/** An option that users may give as `In` and that the plugin uses as `Out`. */
interface OptionSpec<In, Out> {
  /** Used when the option is `undefined` (never for `null`, a bad value like any other), then checked like a given value. */
  readonly default?: In
  readonly resolve: Resolve<Out>
}

interface DefaultedSpec<In, Out> extends OptionSpec<In, Out> { readonly default: In }

// `In` (what users may write) is what the validator returns, without `undefined`, unless given apart.
function option<Out, In = Exclude<Out, undefined>> (spec: { default: NoInfer<In>, resolve: Resolve<Out> }): DefaultedSpec<In, Out>
function option<Out, In = Exclude<Out, undefined>> (spec: { resolve: Resolve<Out> }): OptionSpec<In, Out>
function option<Out, In> (spec: OptionSpec<In, Out>): OptionSpec<In, Out> {
  return spec
}

const PROTO_ACTIONS: readonly ProtoAction[] = ['error', 'remove', 'ignore']

const OPTIONS = {
  /** Path of the WebSocket route. */
  path: option({ default: '/ws', resolve: routePath }),
  /** Carries publications across processes; the in-memory default serves a single process. */
  broker: option({ resolve: checkBroker }),
  /**
   * Names the user of each WebSocket connection (`connection.user`): called once per connection,
   * after the app's hooks on the upgrade request; returns (or resolves to) a string, a safe integer,
   * or null/undefined for none. A throw refuses the upgrade as a hook's would.
   */
  identify: option<((request: FastifyRequest) => unknown) | undefined>({ resolve: optionalFunction }),
  /** Close the broker when Fastify closes. */
  closeBroker: option({ default: true, resolve: boolean }),
  /** Turn off the "action completed" log line (5xx errors are still logged). */
  disableActionLogging: option({ default: false, resolve: boolean }),
  /** What to do with `__proto__` keys in frames, as Fastify's option of the same name. */
  onProtoPoisoning: option({ default: 'error', resolve: oneOf<ProtoAction>(PROTO_ACTIONS) }),
  /** What to do with `constructor.prototype` keys in frames, as Fastify's option of the same name. */
  onConstructorPoisoning: option({ default: 'ignore', resolve: oneOf<ProtoAction>(PROTO_ACTIONS) }),
  /** Largest frame accepted, in bytes; bigger frames close the socket with 1009. */
  maxPayload: option({ default: 1024 * 1024, resolve: integer(1) }),
  /** Requests a connection may have in flight; more get TOO_MANY_REQUESTS. */
  maxInFlight: option({ default: 1024, resolve: integer(1) }),
  /** Actions in flight across all connections (those of closed connections count until they end); more get TOO_MANY_REQUESTS. */
  maxInFlightTotal: option({ default: 10_000, resolve: integer(1) }),
  /** Topics a connection may be subscribed to (`__all__` not counted); more get TOO_MANY_SUBSCRIPTIONS. */
  maxSubscriptions: option({ default: 1024, resolve: integer(1) }),
  /** Requests per connection per window; more get TOO_MANY_REQUESTS. `false` disables. */
  rateLimit: option({ default: Object.freeze({ max: 10_000, timeWindow: 1000 }), resolve: checkRateLimit }),
  /** Open connections in total; further upgrades are refused with 503. */
  maxConnections: option({ default: 10_000, resolve: integer(1) }),
  /** Milliseconds an action may run before the client gets ACTION_TIMEOUT; 0 disables. */
  actionTimeout: option({ default: 30_000, resolve: integer(0) }),
  /** Bytes a socket may have buffered before it counts as a slow consumer. */
  maxBufferedBytes: option({ default: 4 * 1024 * 1024, resolve: integer(1) }),
  /** Bytes buffered for all sockets together; past it, every socket with a backlog (64 KiB or more) counts as a slow consumer. */
  maxBufferedBytesTotal: option({ default: 128 * 1024 * 1024, resolve: integer(1) }),
  /** Bytes of unfinished (fragmented or partly received) messages held for all sockets together; the socket that passes it is closed with 1009. */
  maxIncompleteBytesTotal: option({ default: 32 * 1024 * 1024, resolve: integer(1) }),
  /** Milliseconds a message may stay unfinished before its socket is closed with 1008; 0 disables. */
  incompleteTimeout: option({ default: 10_000, resolve: integer(0) }),
  /** A slow consumer's fate: `drop` publications for it, or `close` it with 1013. */
  slowConsumer: option({ default: 'close', resolve: oneOf(['drop', 'close']) }),
  /** Milliseconds between pings; a peer that missed the previous pong is terminated. 0 disables. */
  heartbeatInterval: option({ default: 30_000, resolve: integer(0) }),
  /**
   * Origins browsers may connect from. Default: requests without an Origin header (non-browser
   * clients) and same-origin browsers (Origin host equals Host). `'*'` allows any origin.
   */
  allowedOrigins: option({ resolve: checkOrigins }),
  /**
   * Milliseconds `fastify.close()` waits for actions in flight before closing sockets with 1001, and at
   * most as long again for their presence members to be removed before the broker closes.
   */
  closeGracePeriod: option({ default: 5_000, resolve: integer(0) }),
  /** Options for @fastify/websocket's `ws` server, used only when this plugin registers it. */
  websocket: option({ default: Object.freeze({}), resolve: checkWebsocket }),
  /** Also serve every action as `POST <prefix>/<resource>/<action>`, in the scope that declared it (docs/http-and-asyncapi.md). */
  http: option<ResolvedHttpOptions | false, boolean | HttpOptions>({ default: false, resolve: checkHttp }),
  /** Serve an AsyncAPI 3.0 document of the resources and topics at `GET <path>/asyncapi.json`. */
  asyncapi: option<ResolvedAsyncApiOptions, boolean | AsyncApiOptions>({ default: false, resolve: checkAsyncApi }),
  /** Serve a page to try every action and topic from a browser at `GET <path>/playground`; refused under `NODE_ENV=production` unless `{ production: true }`. */
  playground: option<ResolvedPlaygroundOptions | false, boolean | PlaygroundOptions>({ default: false, resolve: checkPlayground }),
  /** Prometheus metrics (README, Observability) in a prom-client registry, the app's or prom-client's default; needs `prom-client`. */
  metrics: option<ResolvedMetricsOptions | false, boolean | MetricsOptions>({ default: false, resolve: checkMetrics }),
  /**
   * OpenTelemetry spans for actions and deliveries, when `@opentelemetry/api` is installed and an SDK is
   * registered before the server is ready; without an SDK nothing is traced and nothing is paid. `false` turns it off.
   */
  tracing: option({ default: true, resolve: boolean })
}

type OptionTable = typeof OPTIONS
type InputOf<Spec> = Spec extends OptionSpec<infer In, unknown> ? In : never
type OutputOf<Spec> = Spec extends OptionSpec<unknown, infer Out> ? Out : never
// Mapped over the table's keys, so each property keeps the doc comment of its table entry.
type OptionInputs = { [Name in keyof OptionTable]?: InputOf<OptionTable[Name]> }

/** Options of `app.register(drizzle, options)`; every one is optional and validated at registration. */
export interface DrizzleOptions extends OptionInputs {}

/** The options as the plugin uses them: validated, defaults filled in. */
export type ResolvedOptions = { [Name in keyof OptionTable]: OutputOf<OptionTable[Name]> }

type OptionDefaults = {
  readonly [Name in keyof OptionTable as OptionTable[Name] extends { default: unknown } ? Name : never]: InputOf<OptionTable[Name]>
}

const NAMES = Object.keys(OPTIONS) as Array<keyof OptionTable>
const KNOWN = new Set<string>(NAMES)

/** The default of every option that has one, as the table declares it. */
export const DEFAULTS = Object.freeze(Object.fromEntries(
  NAMES.filter(name => OPTIONS[name].default !== undefined).map(name => [name, OPTIONS[name].default])
)) as OptionDefaults

/** Validates the plugin options once, at registration, and fills in the defaults. */
export function resolveOptions (input: unknown): ResolvedOptions {
  if (input !== undefined && !isPlainObject(input)) fail('options', 'expected an object', input)
  const options = input ?? {}
  for (const key of Object.keys(options)) if (!KNOWN.has(key)) fail(key, `unknown option; known options are ${NAMES.join(', ')}`, options[key])

  const resolved: Record<string, unknown> = {}
  for (const name of NAMES) {
    const spec: OptionSpec<unknown, unknown> = OPTIONS[name]
    resolved[name] = spec.resolve(options[name] === undefined ? spec.default : options[name], name, resolved as unknown as Earlier)
  }
  return resolved as ResolvedOptions
}

// ---- validators ------------------------------------------------------------------------------

function fail (name: string, expected: string, received: unknown): never {
  throw new InvalidOptionError(name, expected, describe(received))
}

function integer (min: number): Resolve<number> {
  return (value, name) => {
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) fail(name, `expected an integer >= ${min}`, value)
    return value
  }
}

function boolean (value: unknown, name: string): boolean {
  if (typeof value !== 'boolean') fail(name, 'expected a boolean', value)
  return value
}

function oneOf<const T extends string> (allowed: readonly T[]): Resolve<T> {
  return (value, name) => {
    if (typeof value !== 'string' || !allowed.includes(value as T)) fail(name, `expected one of ${allowed.map(a => `"${a}"`).join(', ')}`, value)
    return value as T
  }
}

function routePath (value: unknown, name: string): string {
  if (typeof value !== 'string' || !value.startsWith('/')) fail(name, 'expected a string starting with "/"', value)
  return value
}

function checkBroker (broker: unknown): Broker | undefined {
  if (broker === undefined) return undefined
  const methods = ['attach', 'subscribe', 'unsubscribe', 'publish', 'close']
  if (broker === null || typeof broker !== 'object' || methods.some(m => typeof (broker as Record<string, unknown>)[m] !== 'function')) {
    fail('broker', `expected a broker with methods ${methods.join(', ')} (e.g. redisBroker() from fastify-drizzle/redis)`, broker)
  }
  return broker as Broker
}

function optionalFunction (value: unknown, name: string): ((request: FastifyRequest) => unknown) | undefined {
  if (value !== undefined && typeof value !== 'function') fail(name, 'expected a function (request) => user', value)
  return value as ((request: FastifyRequest) => unknown) | undefined
}

function checkRateLimit (value: unknown): RateLimitOptions | false {
  if (value === false) return false
  const limit = value as RateLimitOptions
  if (value === null || typeof value !== 'object' || !Number.isSafeInteger(limit.max) || limit.max < 1 ||
    !Number.isSafeInteger(limit.timeWindow) || limit.timeWindow < 1) {
    fail('rateLimit', 'expected false or { max: integer >= 1, timeWindow: milliseconds >= 1 }', value)
  }
  return { max: limit.max, timeWindow: limit.timeWindow }
}

function checkOrigins (value: unknown): '*' | readonly string[] | OriginCheck | undefined {
  if (value === undefined || value === '*' || typeof value === 'function') return value as '*' | OriginCheck | undefined
  if (Array.isArray(value) && value.every(v => typeof v === 'string')) return [...value]
  return fail('allowedOrigins', 'expected "*", an array of origin strings, or a function (origin, request) => boolean', value)
}

function checkWebsocket (value: unknown): Record<string, unknown> {
  if (!isPlainObject(value)) fail('websocket', 'expected an object of ws server options', value)
  return value
}

const PATH_SEGMENT = /^\/[^\s?#:*]*$/

/** `true` is `{}`; the prefix defaults to the WebSocket path and loses a trailing slash (`/` gives `/<resource>/<action>`). */
function checkHttp (value: unknown, _name: string, { path }: Earlier): ResolvedHttpOptions | false {
  if (value === false) return false
  const expected = 'expected a boolean or { prefix?: string starting with "/" }'
  if (value !== true && !isPlainObject(value)) fail('http', expected, value)
  const opts = value === true ? {} : value as Record<string, unknown>
  for (const key of Object.keys(opts)) if (key !== 'prefix') fail('http', `${expected}; unknown key "${key}"`, value)
  const prefix = opts.prefix ?? path
  if (typeof prefix !== 'string' || !PATH_SEGMENT.test(prefix)) fail('http.prefix', 'expected a string starting with "/", without spaces, "?", "#", ":" or "*"', prefix)
  return { prefix: prefix.replace(/\/+$/, '') }
}

function checkAsyncApi (value: unknown, _name: string, { path }: Earlier): ResolvedAsyncApiOptions {
  const expected = 'expected a boolean or { path?, serverUrl?, info?: { title?, version?, description? } }'
  if (typeof value !== 'boolean' && !isPlainObject(value)) fail('asyncapi', expected, value)
  const opts = typeof value === 'boolean' ? {} : value as Record<string, unknown>
  for (const key of Object.keys(opts)) if (!['path', 'serverUrl', 'info'].includes(key)) fail('asyncapi', `${expected}; unknown key "${key}"`, value)
  const docPath = opts.path ?? `${path.replace(/\/+$/, '')}/asyncapi.json`
  if (typeof docPath !== 'string' || !PATH_SEGMENT.test(docPath)) fail('asyncapi.path', 'expected a string starting with "/", without spaces, "?", "#", ":" or "*"', docPath)
  return { path: value === false ? undefined : docPath, serverUrl: checkServerUrl(opts.serverUrl), info: checkInfo(opts.info) }
}

function checkPlayground (value: unknown, _name: string, { path }: Earlier): ResolvedPlaygroundOptions | false {
  if (value === false) return false
  const expected = 'expected a boolean or { path?: string starting with "/", production?: boolean }'
  if (value !== true && !isPlainObject(value)) fail('playground', expected, value)
  const opts = value === true ? {} : value as Record<string, unknown>
  for (const key of Object.keys(opts)) if (key !== 'path' && key !== 'production') fail('playground', `${expected}; unknown key "${key}"`, value)
  if (opts.production !== undefined && typeof opts.production !== 'boolean') fail('playground.production', 'expected a boolean', opts.production)
  if (process.env.NODE_ENV === 'production' && opts.production !== true) {
    fail('playground', 'a page that can call every action must not be exposed by accident: NODE_ENV is "production", so give { production: true } to serve it anyway', value)
  }
  const page = opts.path ?? `${path.replace(/\/+$/, '')}/playground`
  if (typeof page !== 'string' || !PATH_SEGMENT.test(page) || page === '/') fail('playground.path', 'expected a string starting with "/", without spaces, "?", "#", ":" or "*", other than "/"', page)
  return { path: page.replace(/\/+$/, '') }
}

const METRIC_PREFIX = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/

/** `true` is `{}`: prom-client's default registry, prefix `drizzle_`. */
function checkMetrics (value: unknown): ResolvedMetricsOptions | false {
  if (value === false) return false
  const expected = 'expected a boolean or { registry?: a prom-client Registry, prefix?: string }'
  if (value !== true && !isPlainObject(value)) fail('metrics', expected, value)
  const opts = value === true ? {} : value as Record<string, unknown>
  for (const key of Object.keys(opts)) if (key !== 'registry' && key !== 'prefix') fail('metrics', `${expected}; unknown key "${key}"`, value)
  const registry = opts.registry as Record<string, unknown> | undefined
  if (registry !== undefined && (registry === null || typeof registry !== 'object' ||
    ['registerMetric', 'removeSingleMetric', 'metrics'].some(m => typeof registry[m] !== 'function'))) {
    fail('metrics.registry', 'expected a prom-client Registry (new Registry() or register)', registry)
  }
  const prefix = opts.prefix ?? 'drizzle_'
  if (typeof prefix !== 'string' || !METRIC_PREFIX.test(prefix)) fail('metrics.prefix', 'expected a Prometheus metric name prefix ([a-zA-Z_:][a-zA-Z0-9_:]*)', prefix)
  return { registry: registry as MetricsRegistry | undefined, prefix }
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
