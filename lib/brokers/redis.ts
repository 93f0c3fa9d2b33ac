import { Redis, type RedisOptions } from 'ioredis'
import type { Broker, BrokerLogger, BrokerSink, PublishOptions } from './types.js'
export type { BrokerLogger } from './types.js'
import { DEFAULT_MAX_MESSAGE_BYTES, decodeBrokerMessage, encodeBrokerMessage, isBrokerLogger, originId, silentLogger } from './wire.js'
import { BrokerClosedError, BrokerUnavailableError, InvalidOptionError, InvalidTopicError, describe } from '../errors.js'

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
}

const NAME = 'redis'
const DEFAULT_URL = 'redis://127.0.0.1:6379'
const DEFAULT_PREFIX = 'drizzle:'
const DEFAULT_COMMAND_TIMEOUT_MS = 1000
const CONNECT_TIMEOUT_MS = 2000
const MAX_RECONNECT_DELAY_MS = 2000
const QUIT_TIMEOUT_MS = 500
const DISCONNECT_TIMEOUT_MS = 100
// A SUBSCRIBE with thousands of channels is one huge command; chunks keep each reply small.
const RESUBSCRIBE_CHUNK = 500

// What the broker relies on, applied to every connection it creates (duplicates of a user's client
// included): publications fail fast instead of queueing while Redis is away, and the broker itself
// re-subscribes its desired topics after a reconnect, so ioredis must neither replay nor resubscribe.
// disconnect() on a connection that is waiting to reconnect arms a timer of disconnectTimeout that
// nothing clears (ioredis 6): the default 2 s would keep a closed standalone worker alive that long.
const CONNECTION_BEHAVIOUR: Partial<RedisOptions> = {
  enableOfflineQueue: false,
  maxRetriesPerRequest: 0,
  autoResubscribe: false,
  autoResendUnfulfilledCommands: false,
  lazyConnect: false,
  retryStrategy: reconnectDelay,
  disconnectTimeout: DISCONNECT_TIMEOUT_MS
}

function noop (): void {}

/**
 * A broker over Redis pub/sub (PROTOCOL.md, Redis): channel `<prefix><topic>`, message
 * `{"data": ..., "event"?: ...}`, so any process in any language can publish with a plain PUBLISH.
 */
export function redisBroker (options: RedisBrokerOptions = {}): Broker {
  const config = validateOptions(options)
  const origin = originId()
  // Topics the plugin wants; the truth from which every (re)connection subscribes.
  const desired = new Set<string>()
  const down = new Set<string>()
  let sink: BrokerSink | undefined
  let publisher: RedisClient | undefined
  let subscriber: Redis | undefined
  const owned: Redis[] = []
  let closed = false
  let closing: Promise<void> | undefined

  function log (): BrokerLogger {
    return sink?.log ?? config.log
  }

  function channelOf (topic: string): string {
    return config.prefix + topic
  }

  function createConnection (role: string): Redis {
    const connection = config.client === undefined
      ? new Redis(config.url, { ...CONNECTION_BEHAVIOUR, connectTimeout: CONNECT_TIMEOUT_MS, connectionName: `drizzle-${role}` })
      : config.client.duplicate({ ...CONNECTION_BEHAVIOUR, connectionName: `drizzle-${role}` })
    watchConnection(connection, role)
    owned.push(connection)
    return connection
  }

  /**
   * Logs one error when the broker loses Redis and one info line when every connection is back,
   * however many connections and reconnection attempts the outage spans. Listening to 'error' is
   * also what keeps ioredis's errors from being unhandled.
   */
  function watchConnection (connection: Redis, role: string): void {
    let lastError: Error | undefined
    connection.on('error', (err: Error) => {
      lastError = err
      log().debug({ broker: NAME, role, err }, 'Redis connection error')
    })
    connection.on('close', () => {
      if (closed || down.has(role)) return
      if (down.size === 0) {
        const reason = lastError?.message ?? 'connection closed'
        log().error({ broker: NAME, role, reason }, 'Redis broker lost its connection to Redis; reconnecting')
      }
      down.add(role)
    })
    connection.on('ready', () => {
      lastError = undefined
      if (!down.delete(role) || down.size > 0) return
      log().info({ broker: NAME }, 'Redis broker reconnected to Redis')
    })
  }

  function publisherConnection (): RedisClient {
    publisher ??= config.client ?? createConnection('publisher')
    return publisher
  }

  function createSubscriber (): Redis {
    const connection = createConnection('subscriber')
    connection.on('messageBuffer', onMessage)
    connection.on('ready', resubscribeAll)
    return connection
  }

  // A fresh connection is subscribed to nothing: it gets every desired topic, which covers topics
  // subscribed while Redis was down and drops those unsubscribed meanwhile.
  function resubscribeAll (): void {
    const connection = subscriber
    if (connection === undefined || closed) return
    const channels = [...desired].map(channelOf)
    for (let i = 0; i < channels.length; i += RESUBSCRIBE_CHUNK) {
      connection.subscribe(...channels.slice(i, i + RESUBSCRIBE_CHUNK)).catch((err: Error) => {
        // The connection dropped again; the next 'ready' retries.
        log().warn({ broker: NAME, err }, 'Redis broker could not resubscribe')
      })
    }
  }

  function onMessage (channelBuffer: Buffer, payload: Buffer): void {
    // This runs inside ioredis's parser: a throw here would break the connection, so nothing escapes.
    try {
      const channel = channelBuffer.toString()
      const topic = topicOf(channel)
      if (topic === undefined) return
      const message = decodeBrokerMessage(payload, config.maxMessageBytes)
      if (typeof message === 'string') {
        log().warn({ broker: NAME, channel, bytes: payload.length, reason: message }, 'Redis broker dropped an invalid message')
        return
      }
      // The plugin delivered our own publications locally already.
      if (message.origin === origin) return
      sink?.deliver(topic, message.data, message.event)
    } catch (err) {
      log().error({ broker: NAME, err }, 'Redis broker failed to deliver a message')
    }
  }

  // Messages may still arrive between unsubscribe() and Redis processing UNSUBSCRIBE; the desired
  // set is checked so that unsubscribing takes effect at once.
  function topicOf (channel: string): string | undefined {
    if (!channel.startsWith(config.prefix)) return undefined
    const topic = channel.slice(config.prefix.length)
    return desired.has(topic) ? topic : undefined
  }

  function unavailable (reason: string, cause?: unknown): Error {
    if (closed) return new BrokerClosedError(NAME)
    return cause === undefined
      ? new BrokerUnavailableError(NAME, reason)
      : new BrokerUnavailableError(NAME, reason, { cause })
  }

  async function shutdown (): Promise<void> {
    closed = true
    desired.clear()
    await Promise.all(owned.map(endConnection))
  }

  return {
    name: NAME,

    async attach (newSink: BrokerSink) {
      if (closed) throw new BrokerClosedError(NAME)
      if (sink !== undefined) throw new Error('This Redis broker is already attached')
      sink = newSink
      subscriber = createSubscriber()
      publisherConnection()
      // Wait for the first connection so that subscriptions are live when the server starts, but
      // never fail startup because Redis is away: the subscriber keeps trying in the background.
      await whenReady(subscriber, config.commandTimeout)
    },

    async subscribe (topic: string) {
      if (closed) return
      assertTopic(topic)
      desired.add(topic)
      // Without a subscriber yet, or while Redis is away, the next 'ready' applies the topic.
      if (subscriber === undefined) return
      if (!await whenReady(subscriber, config.commandTimeout)) return
      if (closed || !desired.has(topic)) return
      try {
        await subscriber.subscribe(channelOf(topic))
      } catch (err) {
        log().warn({ broker: NAME, topic, err }, 'Redis broker could not subscribe now; it will on reconnect')
      }
    },

    async unsubscribe (topic: string) {
      if (closed) return
      desired.delete(topic)
      // A connection that is not ready will come back subscribed to desired topics only.
      if (subscriber?.status !== 'ready') return
      try {
        await subscriber.unsubscribe(channelOf(topic))
      } catch (err) {
        log().debug({ broker: NAME, topic, err }, 'Redis broker could not unsubscribe; the reconnection will not resubscribe')
      }
    },

    async publish (topic: string, data: unknown, publishOptions?: PublishOptions) {
      if (closed) throw new BrokerClosedError(NAME)
      assertTopic(topic)
      const body = encodeBrokerMessage(data, publishOptions?.event, origin)
      const size = Buffer.byteLength(body)
      if (size > config.maxMessageBytes) {
        throw new BrokerUnavailableError(NAME, `message of ${size} bytes exceeds maxMessageBytes (${config.maxMessageBytes})`)
      }
      const connection = publisherConnection()
      if (!await whenReady(connection, config.commandTimeout)) {
        throw unavailable(`not connected to Redis (${connection.status})`)
      }
      try {
        await withTimeout(connection.publish(channelOf(topic), body), config.commandTimeout)
      } catch (err) {
        throw unavailable(err instanceof Error ? err.message : String(err), err)
      }
    },

    close () {
      closing ??= shutdown()
      return closing
    }
  }
}

interface ResolvedOptions {
  url: string
  client: RedisClient | undefined
  prefix: string
  log: BrokerLogger
  maxMessageBytes: number
  commandTimeout: number
}

function validateOptions (options: RedisBrokerOptions): ResolvedOptions {
  if (options === null || typeof options !== 'object') {
    throw new InvalidOptionError('options', 'expected an object', describe(options))
  }
  const { url, client, prefix = DEFAULT_PREFIX, log = silentLogger } = options
  const { maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES, commandTimeout = DEFAULT_COMMAND_TIMEOUT_MS } = options
  if (url !== undefined && client !== undefined) {
    throw new InvalidOptionError('url', 'expected either url or client, not both', describe(url))
  }
  if (url !== undefined && !isRedisUrl(url)) {
    throw new InvalidOptionError('url', 'expected a redis:// or rediss:// URL', describe(url))
  }
  if (client !== undefined && !isRedisClient(client)) {
    throw new InvalidOptionError('client', 'expected an ioredis client (new Redis(...))', describe(client))
  }
  if (typeof prefix !== 'string') {
    throw new InvalidOptionError('prefix', 'expected a string', describe(prefix))
  }
  if (!isBrokerLogger(log)) {
    throw new InvalidOptionError('log', 'expected a logger with error, warn, info and debug methods', describe(log))
  }
  if (!isPositiveInteger(maxMessageBytes)) {
    throw new InvalidOptionError('maxMessageBytes', 'expected a positive integer', describe(maxMessageBytes))
  }
  if (!isPositiveInteger(commandTimeout)) {
    throw new InvalidOptionError('commandTimeout', 'expected a positive integer of milliseconds', describe(commandTimeout))
  }
  return { url: url ?? DEFAULT_URL, client, prefix, log, maxMessageBytes, commandTimeout }
}

function isRedisUrl (value: unknown): value is string {
  if (typeof value !== 'string') return false
  try {
    const { protocol } = new URL(value)
    return protocol === 'redis:' || protocol === 'rediss:'
  } catch {
    return false
  }
}

// Duck-typed rather than instanceof: the user's ioredis may be another copy of the module.
function isRedisClient (value: unknown): value is RedisClient {
  if (value === null || typeof value !== 'object') return false
  const candidate = value as Record<string, unknown>
  return typeof candidate.duplicate === 'function' &&
    typeof candidate.publish === 'function' &&
    typeof candidate.status === 'string'
}

function isPositiveInteger (value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0
}

function assertTopic (topic: unknown): asserts topic is string {
  if (typeof topic !== 'string' || topic.length === 0) {
    throw new InvalidTopicError(`expected a non-empty string, received ${describe(topic)}`)
  }
}

/** Exponential backoff capped at 2 s, with jitter so that instances restarted together spread out. */
function reconnectDelay (attempt: number): number {
  const ceiling = Math.min(100 * 2 ** Math.min(attempt - 1, 10), MAX_RECONNECT_DELAY_MS)
  return Math.round(ceiling / 2 + Math.random() * ceiling / 2)
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
  return new Promise((resolve) => {
    const finish = (ready: boolean): void => {
      clearTimeout(timer)
      connection.off('ready', onReady)
      connection.off('close', onDown)
      connection.off('end', onDown)
      resolve(ready)
    }
    const onReady = (): void => finish(true)
    const onDown = (): void => finish(false)
    const timer = setTimeout(onDown, timeoutMs)
    connection.once('ready', onReady)
    connection.once('close', onDown)
    connection.once('end', onDown)
  })
}

// Even with fail-fast options a reply can be lost (half-open TCP, or a user's client that queues):
// the caller still gets an answer in bounded time.
function withTimeout<T> (promise: Promise<T>, timeoutMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`Redis did not answer within ${timeoutMs} ms`)), timeoutMs)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

// QUIT lets Redis finish what was sent; when Redis is away or slow, disconnect() ends it at once
// and cancels any pending reconnection, so close() never hangs and nothing keeps the process alive.
async function endConnection (connection: Redis): Promise<void> {
  if (connection.status === 'ready') {
    try {
      await withTimeout(connection.quit(), QUIT_TIMEOUT_MS)
    } catch {
      // disconnect() below ends it anyway.
    }
  }
  if (connection.status !== 'end') connection.disconnect()
}
