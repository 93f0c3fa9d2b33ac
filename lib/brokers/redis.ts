import { Redis, type RedisOptions } from 'ioredis'
import type { Broker, BrokerFeature, BrokerLogger } from './types.js'
export type { BrokerLogger } from './types.js'
import { BaseBroker, type BaseSettings } from './base.js'
import { DEFAULT_MAX_MESSAGE_BYTES, isTraceparent, type BrokerMessage } from './wire.js'
import { backoffDelay } from './backoff.js'
import { errorMessage, withTimeout } from './toolkit.js'
import { RedisPresence } from './redis-presence.js'
import { LIBRARY, RedisHistory } from './redis-history.js'
import { fail, logger, optional, positiveInteger, readOptions, silentLogger, string, url, withDefault, type Check } from './options.js'

/**
 * An ioredis client. Left non-generic on purpose: a `Redis<'resp3'>` of ioredis 6 is assignable to
 * it, and the declaration does not depend on ioredis 6's generic parameters.
 */
export type RedisClient = Redis

export interface RedisBrokerOptions {
  /** Where Redis is, `redis://` or `rediss://`. Default `redis://127.0.0.1:6379`. Exclusive with `client`. */
  url?: string
  /**
   * An existing ioredis client. The broker publishes with it and subscribes with a `duplicate()` of
   * it; `close()` never quits it. Exclusive with `url`.
   */
  client?: RedisClient
  /** Channel = prefix + topic. Default `drizzle:`. */
  prefix?: string
  /** Logger for standalone use; once attached to the plugin, the plugin's logger is used. Default: silent. */
  log?: BrokerLogger
  /** Larger messages are dropped on receipt and refused on publish. Default 1 MiB. */
  maxMessageBytes?: number
  /**
   * How long (ms) publish waits for a connection that is being established and for Redis to answer
   * before it rejects with FST_DRIZZLE_BROKER_UNAVAILABLE. Default 1000.
   */
  commandTimeout?: number
  /**
   * Milliseconds the presence members of an instance outlive it when it dies without closing (a
   * SIGKILL, a lost host): each instance renews itself every third of it. Default 15000; their
   * `$leave` follows within 4/3 of it (README "Presence").
   */
  presenceTtl?: number
}

interface Settings extends BaseSettings {
  url: string
  client: RedisClient | undefined
  prefix: string
  commandTimeout: number
  presenceTtl: number
}

const NAME = 'redis'
const DEFAULT_URL = 'redis://127.0.0.1:6379'
const CONNECT_TIMEOUT_MS = 2000
const RECONNECT_BASE_DELAY_MS = 100
const RECONNECT_MAX_DELAY_MS = 2000
const QUIT_TIMEOUT_MS = 500
const DISCONNECT_TIMEOUT_MS = 100
// A SUBSCRIBE with thousands of channels is one huge command; chunks keep each reply small.
const RESUBSCRIBE_CHUNK = 500

// What the broker relies on, applied to every connection it creates (duplicates of a user's client
// included): publications fail fast instead of queueing while Redis is away, and the broker itself
// re-subscribes its topics after a reconnect, so ioredis must neither replay nor resubscribe.
// disconnect() on a connection that is waiting to reconnect arms a timer of disconnectTimeout that
// nothing clears (ioredis 6): the default 2 s would keep a closed standalone worker alive that long.
const CONNECTION_BEHAVIOUR: Partial<RedisOptions> = {
  enableOfflineQueue: false,
  maxRetriesPerRequest: 0,
  autoResubscribe: false,
  autoResendUnfulfilledCommands: false,
  lazyConnect: false,
  // ioredis counts attempts from 1.
  retryStrategy: (attempt: number) => backoffDelay(attempt - 1, RECONNECT_BASE_DELAY_MS, RECONNECT_MAX_DELAY_MS),
  disconnectTimeout: DISCONNECT_TIMEOUT_MS
}

function noop (): void {}

/**
 * A broker over Redis pub/sub (PROTOCOL.md, Redis): channel `<prefix><topic>`, message
 * `{"data": ..., "event"?: ...}`, so any process in any language can publish with a plain PUBLISH.
 */
export function redisBroker (options: RedisBrokerOptions = {}): Broker {
  return new RedisBroker(readSettings(options))
}

/**
 * ioredis reconnects each connection by itself; this class keeps the broker's view of them: the
 * connection state (an outage while any of its connections is down), the topics to subscribe again
 * on every new subscriber connection, and the connections it must end at close.
 */
class RedisBroker extends BaseBroker {
  readonly features: ReadonlySet<BrokerFeature> = new Set(['history', 'presence'])
  readonly presence: RedisPresence
  readonly history: RedisHistory
  private readonly settings: Settings
  /** Connections this broker created; close() ends them. Never the user's client. */
  private readonly owned: Redis[] = []
  private publisher: RedisClient | undefined
  private subscriber: Redis | undefined

  constructor (settings: Settings) {
    super(NAME, 'Redis', settings)
    this.settings = settings
    this.presence = new RedisPresence({
      prefix: settings.prefix,
      origin: this.origin,
      ttl: settings.presenceTtl,
      run: command => this.command(command),
      log: () => this.log
    })
    this.history = new RedisHistory((name, topic, args) => this.callFunction(name, topic, args), (data, event, traceparent) => this.encodePositioned(data, event, traceparent), settings.maxMessageBytes)
  }

  protected async open (): Promise<void> {
    const subscriber = this.createSubscriber()
    this.publisherConnection()
    // Wait for the first connection so that subscriptions are live when the server starts, but
    // never fail startup because Redis is away: the subscriber keeps trying in the background.
    await whenReady(subscriber, this.settings.commandTimeout)
  }

  protected async bind (topic: string): Promise<void> {
    const subscriber = this.subscriber
    // Without a subscriber yet, or while Redis is away, the next 'ready' applies the topic.
    if (subscriber === undefined) return
    if (!await whenReady(subscriber, this.settings.commandTimeout)) return
    if (this.state.closed || !this.topics.has(topic)) return
    try {
      await subscriber.subscribe(this.channelOf(topic))
    } catch (err) {
      this.log.warn({ broker: NAME, topic, err }, 'Redis broker could not subscribe now; it will on reconnect')
    }
  }

  protected async unbind (topic: string): Promise<void> {
    // A connection that is not ready will come back subscribed to the wanted topics only.
    if (this.subscriber?.status !== 'ready') return
    try {
      await this.subscriber.unsubscribe(this.channelOf(topic))
    } catch (err) {
      this.log.debug({ broker: NAME, topic, err }, 'Redis broker could not unsubscribe; the reconnection will not resubscribe')
    }
  }

  protected async send (topic: string, body: Buffer): Promise<void> {
    const connection = this.publisherConnection()
    const timeout = this.settings.commandTimeout
    if (!await whenReady(connection, timeout)) {
      throw this.unavailable(`not connected to Redis (${connection.status})`)
    }
    try {
      // Even with fail-fast options a reply can be lost (half-open TCP, or a user's client that
      // queues): the caller still gets an answer in bounded time.
      await withTimeout(connection.publish(this.channelOf(topic), body), timeout, 'Redis')
    } catch (err) {
      throw this.unavailable(errorMessage(err), err)
    }
  }

  /**
   * Calls one of the history functions (lib/brokers/redis-history.ts) on the publisher connection.
   * Redis loses its functions when it restarts without persistence: a missing function is loaded
   * again, and the call made once more.
   */
  private async callFunction (name: string, topic: string, args: ReadonlyArray<string | Buffer>): Promise<unknown> {
    this.checkTopic(topic)
    if (this.state.closed) throw this.unavailable('closed')
    const connection = this.publisherConnection()
    const timeout = this.settings.commandTimeout
    if (!await whenReady(connection, timeout)) throw this.unavailable(`not connected to Redis (${connection.status})`)
    const call = (): Promise<unknown> => withTimeout(connection.call('FCALL', name, '1', this.channelOf(topic), ...args), timeout, 'Redis')
    try {
      try {
        return await call()
      } catch (err) {
        if (!/function not found/i.test(errorMessage(err))) throw err
        await withTimeout(connection.call('FUNCTION', 'LOAD', 'REPLACE', LIBRARY), timeout, 'Redis')
        return await call()
      }
    } catch (err) {
      throw this.unavailable(errorMessage(err), err)
    }
  }

  /**
   * A history publication: no origin, since it must come back to this instance to be delivered in
   * order. Its trace context is the broker message's `traceparent`, as for PUBLISH: drizzle_publish
   * keeps the message as given, so the stream and every receiver get it.
   */
  private encodePositioned (data: unknown, event: unknown, traceparent: unknown): Buffer {
    if (event !== undefined && typeof event !== 'string') fail('event', 'expected a string', event)
    if (traceparent !== undefined && !isTraceparent(traceparent)) fail('traceparent', 'expected a W3C traceparent ("00-<32 hex>-<16 hex>-<2 hex>")', traceparent)
    const message: BrokerMessage = event === undefined ? { data: data ?? null } : { data: data ?? null, event }
    if (traceparent !== undefined) message.traceparent = traceparent
    const body = Buffer.from(JSON.stringify(message))
    if (body.length > this.settings.maxMessageBytes) {
      throw this.unavailable(`message of ${body.length} bytes exceeds maxMessageBytes (${this.settings.maxMessageBytes})`)
    }
    return body
  }

  protected async release (): Promise<void> {
    await this.presence.close()
    await Promise.all(this.owned.map(endConnection))
  }

  /** Runs a command on the publishing connection, failing fast (FST_DRIZZLE_BROKER_UNAVAILABLE) like publish. */
  private async command<T> (command: (connection: Redis) => Promise<T>): Promise<T> {
    const connection = this.publisherConnection()
    const timeout = this.settings.commandTimeout
    if (!await whenReady(connection, timeout)) throw this.unavailable(`not connected to Redis (${connection.status})`)
    try {
      return await withTimeout(command(connection), timeout, 'Redis')
    } catch (err) {
      throw this.unavailable(errorMessage(err), err)
    }
  }

  private channelOf (topic: string): string {
    return this.settings.prefix + topic
  }

  private publisherConnection (): RedisClient {
    this.publisher ??= this.settings.client ?? this.createConnection('publisher')
    return this.publisher
  }

  private createSubscriber (): Redis {
    const connection = this.createConnection('subscriber')
    connection.on('messageBuffer', (channel: Buffer, payload: Buffer) => this.onMessage(channel, payload))
    connection.on('ready', () => this.resubscribeAll(connection))
    this.subscriber = connection
    return connection
  }

  private createConnection (role: string): Redis {
    const { client, url } = this.settings
    const connection = client === undefined
      ? new Redis(url, { ...CONNECTION_BEHAVIOUR, connectTimeout: CONNECT_TIMEOUT_MS, connectionName: `drizzle-${role}` })
      : client.duplicate({ ...CONNECTION_BEHAVIOUR, connectionName: `drizzle-${role}` })
    this.state.connecting()
    this.watch(connection, role)
    this.owned.push(connection)
    return connection
  }

  /**
   * Reports the connection's losses and recoveries to the connection state, which logs an outage
   * once however many connections and attempts it spans. Listening to 'error' is also what keeps
   * ioredis's errors from being unhandled; the error comes before the 'close' that it explains.
   */
  private watch (connection: Redis, role: string): void {
    let lastError: Error | undefined
    connection.on('error', (err: Error) => {
      lastError = err
      this.log.debug({ broker: NAME, role, err }, 'Redis connection error')
    })
    connection.on('close', () => {
      this.state.lost(lastError ?? new Error('connection closed'), role)
      lastError = undefined
    })
    connection.on('ready', () => this.state.up(role))
  }

  // A fresh connection is subscribed to nothing: it gets every wanted topic, which covers topics
  // subscribed while Redis was down and drops those unsubscribed meanwhile.
  private resubscribeAll (connection: Redis): void {
    if (this.state.closed) return
    const topics = [...this.topics]
    const channels = topics.map((topic) => this.channelOf(topic))
    const done: Array<Promise<unknown>> = []
    for (let i = 0; i < channels.length; i += RESUBSCRIBE_CHUNK) {
      done.push(connection.subscribe(...channels.slice(i, i + RESUBSCRIBE_CHUNK)))
    }
    // Once every topic flows again, the plugin reads back from history what was published meanwhile.
    Promise.all(done).then(() => { if (topics.length > 0) this.sink?.resumed?.(topics) }, (err: Error) => {
      // The connection dropped again; the next 'ready' retries.
      this.log.warn({ broker: NAME, err }, 'Redis broker could not resubscribe')
    })
  }

  // Runs inside ioredis's parser: receive() lets nothing escape, which would break the connection.
  private onMessage (channelBuffer: Buffer, payload: Buffer): void {
    const channel = channelBuffer.toString()
    if (!channel.startsWith(this.settings.prefix)) return
    this.receive(channel.slice(this.settings.prefix.length), payload, { channel })
  }
}

const OPTIONS = {
  url: optional(url(['redis:', 'rediss:'])),
  client: optional(redisClient),
  prefix: withDefault('drizzle:', string),
  log: withDefault(silentLogger, logger),
  maxMessageBytes: withDefault(DEFAULT_MAX_MESSAGE_BYTES, positiveInteger()),
  commandTimeout: withDefault(1000, positiveInteger('milliseconds')),
  presenceTtl: withDefault(15_000, atLeast(300, 'milliseconds'))
} satisfies Record<keyof RedisBrokerOptions, Check<unknown>>

/** An integer of at least `min` (a presence TTL renewed every third of it needs room for a busy event loop). */
function atLeast (min: number, unit: string): Check<number> {
  return (value, name) => {
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) fail(name, `expected an integer of at least ${min} ${unit}`, value)
    return value
  }
}

function readSettings (options: unknown): Settings {
  const settings = readOptions(options, OPTIONS)
  if (settings.url !== undefined && settings.client !== undefined) {
    fail('url', 'expected either url or client, not both', settings.url)
  }
  return { ...settings, url: settings.url ?? DEFAULT_URL }
}

// Duck-typed rather than instanceof: the user's ioredis may be another copy of the module.
function redisClient (value: unknown, name: string): RedisClient {
  const candidate = value as Record<string, unknown> | null
  if (candidate === null || typeof candidate !== 'object' || typeof candidate.duplicate !== 'function' ||
    typeof candidate.publish !== 'function' || typeof candidate.status !== 'string') {
    fail(name, 'expected an ioredis client (new Redis(...))', value)
  }
  return value as RedisClient
}

/**
 * Resolves true once the connection can take a command, false as soon as it cannot within the
 * timeout. A connection being (re)established is waited for, so that a broker used right after its
 * creation works; a connection known to be down answers false at once, so callers fail fast.
 */
function whenReady (connection: RedisClient, timeoutMs: number): Promise<boolean> {
  if (connection.status === 'ready') return Promise.resolve(true)
  // A user's client created with lazyConnect: a command would have connected it too.
  if (connection.status === 'wait') connection.connect().catch(noop)
  else if (connection.status !== 'connecting' && connection.status !== 'connect') return Promise.resolve(false)
  return withTimeout(readyOrDown(connection), timeoutMs, 'Redis').catch(() => false)
}

// One wait per connection, shared by every caller: a listener per waiting publication would pass
// EventEmitter's limit of ten and print MaxListenersExceededWarning under a burst of publications.
const readiness = new WeakMap<RedisClient, Promise<boolean>>()

function readyOrDown (connection: RedisClient): Promise<boolean> {
  let outcome = readiness.get(connection)
  if (outcome !== undefined) return outcome
  outcome = new Promise<boolean>((resolve) => {
    const finish = (ready: boolean): void => {
      connection.off('ready', onReady)
      connection.off('close', onDown)
      connection.off('end', onDown)
      readiness.delete(connection)
      resolve(ready)
    }
    const onReady = (): void => finish(true)
    const onDown = (): void => finish(false)
    connection.once('ready', onReady)
    connection.once('close', onDown)
    connection.once('end', onDown)
  })
  readiness.set(connection, outcome)
  return outcome
}

// QUIT lets Redis finish what was sent; when Redis is away or slow, disconnect() ends it at once
// and cancels any pending reconnection, so close() never hangs and nothing keeps the process alive.
async function endConnection (connection: Redis): Promise<void> {
  if (connection.status === 'ready') {
    await withTimeout(connection.quit(), QUIT_TIMEOUT_MS, 'Redis').catch(noop) // disconnect() below ends it anyway
  }
  if (connection.status !== 'end') connection.disconnect()
}
