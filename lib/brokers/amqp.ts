import amqp from 'amqplib'
import type { ChannelModel, ConfirmChannel, ConsumeMessage } from 'amqplib'
import type { Broker, BrokerLogger, BrokerSink, PublishOptions } from './types.js'
export type { BrokerLogger } from './types.js'
import { DEFAULT_MAX_MESSAGE_BYTES, decodeBrokerMessage, encodeBrokerMessage, isBrokerLogger, originId, silentLogger } from './wire.js'
import {
  BrokerClosedError,
  BrokerUnavailableError,
  InvalidOptionError,
  InvalidTopicError,
  describe
} from '../errors.js'

// This is the only module that imports amqplib (an optional peer dependency): the plugin itself never
// loads it, only `fastify-drizzle/amqp` does. It relies on the promise API common to amqplib 0.10 to 2.x
// and deliberately not on the connection recovery added in amqplib 1.1, so the whole peer range works
// and outages are logged and reported the way the other brokers do.

export interface AmqpBrokerOptions {
  /** AMQP URL, credentials and vhost included. Default `amqp://guest:guest@127.0.0.1:5672`. */
  url?: string
  /** Name of the durable direct exchange; routing key = topic. Default `drizzle`. */
  exchange?: string
  /** Logger for standalone use; once attached the broker logs through the plugin's logger. Default: silent. */
  log?: BrokerLogger
  /** Larger incoming messages are dropped, larger publications rejected. Default 1 MiB. */
  maxMessageBytes?: number
  /** First delay before reconnecting after an outage, in ms; doubled per failed attempt. Default 100. */
  reconnectMinDelay?: number
  /** Cap of the reconnect delay, in ms. Default 5000. */
  reconnectMaxDelay?: number
  /** Bound on opening a connection (TCP and AMQP handshake), in ms. Default 5000. */
  connectTimeout?: number
  /** Bound on waiting for RabbitMQ to confirm a publication, in ms. Default 5000. */
  publishTimeout?: number
  /** Bytes of publications awaiting confirmation beyond which `publish` rejects at once. Default 16 MiB. */
  maxPendingBytes?: number
}

interface Settings {
  url: string
  exchange: string
  log: BrokerLogger | undefined
  maxMessageBytes: number
  reconnectMinDelay: number
  reconnectMaxDelay: number
  connectTimeout: number
  publishTimeout: number
  maxPendingBytes: number
}

/** One live connection and the confirm channel used for everything on it. */
interface Session {
  connection: ChannelModel
  channel: ConfirmChannel
  /** Server-named exclusive queue; set once consuming, i.e. once the broker is attached. */
  queue: string | undefined
  /** Reason given by RabbitMQ while it blocks publishers (memory or disk alarm). */
  blocked: string | undefined
}

type Settle = (err?: Error) => void

const NAME = 'amqp'
const MAX_ROUTING_KEY_BYTES = 255
const CLOSE_TIMEOUT_MS = 2000

const defaults: Settings = {
  url: 'amqp://guest:guest@127.0.0.1:5672',
  exchange: 'drizzle',
  log: undefined,
  maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES,
  reconnectMinDelay: 100,
  reconnectMaxDelay: 5000,
  connectTimeout: 5000,
  publishTimeout: 5000,
  maxPendingBytes: 16 * 1024 * 1024
}

/**
 * A broker that carries publications through a RabbitMQ direct exchange (README, Brokers): routing
 * key = topic, body = `{"data": ..., "event"?: ...}`, so any AMQP client can publish to it.
 */
export function amqpBroker (options: AmqpBrokerOptions = {}): Broker {
  return new AmqpBroker(validateOptions(options))
}

class AmqpBroker implements Broker {
  readonly name = NAME
  private readonly settings: Settings
  private readonly origin = originId()
  /** Topics with local subscribers: bound now, and bound again on every new queue after a reconnect. */
  private readonly topics = new Set<string>()
  /** Settlers of publications awaiting a confirm, so a lost connection or close() fails them at once. */
  private readonly pending = new Set<Settle>()
  private pendingBytes = 0
  private sink: BrokerSink | undefined
  private session: Session | undefined
  private connecting: Promise<void> | undefined
  private retryTimer: NodeJS.Timeout | undefined
  private attempt = 0
  private started = false
  /** True from the first failure until a connection works again: the outage is logged once. */
  private outage = false
  private lastError = 'not connected yet'
  private closed = false
  private closing: Promise<void> | undefined

  constructor (settings: Settings) {
    this.settings = settings
  }

  private get log (): BrokerLogger {
    return this.sink?.log ?? this.settings.log ?? silentLogger
  }

  async attach (sink: BrokerSink): Promise<void> {
    if (this.closed) throw new BrokerClosedError(NAME)
    if (this.sink !== undefined) throw new Error('The amqp broker is already attached')
    this.sink = sink
    // Waits for the first attempt only: when RabbitMQ is down the plugin still starts, and the queue
    // and bindings are created with the connection that comes later.
    await this.start()
    const session = this.session
    if (session !== undefined && session.queue === undefined) {
      // Connected earlier for a standalone publish (or the attempt was past its consume step).
      await this.consume(session).catch((err: unknown) => this.dropSession(session, toError(err)))
    }
  }

  async subscribe (topic: string): Promise<void> {
    checkTopic(topic)
    if (this.closed) return
    this.topics.add(topic)
    const session = this.session
    if (session?.queue === undefined) return
    try {
      await session.channel.bindQueue(session.queue, this.settings.exchange, topic)
    } catch (err) {
      // The channel is gone; the binding is made again with the next queue.
      this.log.debug({ broker: NAME, topic, err }, 'AMQP bind deferred to the next connection')
    }
  }

  async unsubscribe (topic: string): Promise<void> {
    if (!this.topics.delete(topic)) return
    const session = this.session
    if (session?.queue === undefined) return
    try {
      await session.channel.unbindQueue(session.queue, this.settings.exchange, topic)
    } catch (err) {
      // The queue dies with the channel, and the next one is not bound to this topic.
      this.log.debug({ broker: NAME, topic, err }, 'AMQP unbind skipped: the channel is gone')
    }
  }

  async publish (topic: string, data: unknown, options: PublishOptions = {}): Promise<void> {
    if (this.closed) throw new BrokerClosedError(NAME)
    checkTopic(topic)
    const event = options.event
    if (event !== undefined && typeof event !== 'string') {
      throw new InvalidOptionError('event', 'a string', describe(event))
    }
    const body = Buffer.from(encodeBrokerMessage(data, event, this.origin))
    if (body.length > this.settings.maxMessageBytes) {
      // Same code as the Redis broker: the publication cannot be carried (subscribers would drop it).
      throw new BrokerUnavailableError(NAME, `message of ${body.length} bytes exceeds maxMessageBytes (${this.settings.maxMessageBytes})`)
    }
    const session = await this.sessionForPublish()
    await this.send(session, topic, body)
  }

  close (): Promise<void> {
    this.closing ??= this.shutdown()
    return this.closing
  }

  private async shutdown (): Promise<void> {
    this.closed = true
    clearTimeout(this.retryTimer)
    this.retryTimer = undefined
    this.failPending(new BrokerClosedError(NAME))
    const session = this.session
    this.session = undefined
    if (session !== undefined) await closeConnection(session.connection)
    // An attempt in flight closes what it opens once it sees `closed`; wait a little for it so no
    // socket outlives close() when the server answers, but never hang on an unreachable host.
    if (this.connecting !== undefined) await withTimeout(this.connecting, CLOSE_TIMEOUT_MS)
  }

  /** Starts the connection loop once; resolves when the first attempt has succeeded or failed. */
  private start (): Promise<void> {
    if (!this.started) {
      this.started = true
      return this.connect()
    }
    return this.connecting ?? Promise.resolve()
  }

  private connect (): Promise<void> {
    this.connecting ??= this.tryConnect().finally(() => { this.connecting = undefined })
    return this.connecting
  }

  private async tryConnect (): Promise<void> {
    let connection: ChannelModel | undefined
    try {
      connection = await amqp.connect(this.settings.url, {
        timeout: this.settings.connectTimeout,
        clientProperties: { connection_name: `fastify-drizzle ${this.origin}` }
      })
      if (this.closed) {
        await closeConnection(connection)
        return
      }
      const session = await this.openSession(connection)
      if (this.closed) {
        await closeConnection(connection)
        return
      }
      this.connected(session)
    } catch (err) {
      if (connection !== undefined) await closeConnection(connection)
      if (!this.closed) this.connectFailed(toError(err))
    }
  }

  private async openSession (connection: ChannelModel): Promise<Session> {
    // Listeners go on before anything else is awaited: amqplib throws 'error' events nobody listens to.
    // The error arrives before the 'close' event that reports it, so remember it for the log.
    let lastError: Error | undefined
    const remember = (err: Error): void => { lastError = err }
    connection.on('error', remember)
    const channel = await connection.createConfirmChannel()
    channel.on('error', remember)
    const session: Session = { connection, channel, queue: undefined, blocked: undefined }
    connection.on('close', (err?: Error) => this.dropSession(session, err ?? lastError))
    // A channel error (precondition failed, exchange deleted under a publication...) leaves the
    // connection open: drop it all and rebuild from scratch, which also re-asserts the exchange.
    channel.on('close', () => this.dropSession(session, lastError))
    connection.on('blocked', (reason: string) => this.onBlocked(session, reason))
    connection.on('unblocked', () => this.onUnblocked(session))
    await channel.assertExchange(this.settings.exchange, 'direct', { durable: true })
    if (this.sink !== undefined) await this.consume(session)
    return session
  }

  /** Declares this instance's queue, consumes it and binds it to every wanted topic. */
  private async consume (session: Session): Promise<void> {
    const { channel } = session
    const { queue } = await channel.assertQueue('', { exclusive: true, autoDelete: true, durable: false })
    await channel.consume(queue, (message) => this.onMessage(session, message), { noAck: true })
    // Set before the binds are sent so that a subscribe/unsubscribe from now on is sent after them on
    // the same channel, which keeps the server's bindings in the order the calls were made.
    session.queue = queue
    const exchange = this.settings.exchange
    await Promise.all([...this.topics].map((topic) => channel.bindQueue(queue, exchange, topic)))
  }

  private connected (session: Session): void {
    this.session = session
    this.attempt = 0
    this.lastError = ''
    this.log.debug({ broker: NAME, url: redact(this.settings.url), queue: session.queue }, 'Connected to RabbitMQ')
    if (this.outage) {
      this.outage = false
      this.log.info({ broker: NAME, url: redact(this.settings.url) }, 'RabbitMQ connection restored')
    }
  }

  private connectFailed (err: Error): void {
    this.lastError = err.message
    this.reportOutage(err, 'cannot connect to RabbitMQ')
    this.scheduleReconnect()
  }

  /** Forgets a session whose connection or channel closed, at most once, and starts reconnecting. */
  private dropSession (session: Session, err: Error | undefined): void {
    if (this.session !== session) return
    this.session = undefined
    this.lastError = err?.message ?? 'connection closed'
    this.failPending(new BrokerUnavailableError(NAME, `connection lost (${this.lastError})`))
    // Never rejects; the connection may already be closed, which is fine.
    closeConnection(session.connection)
    if (this.closed) return
    this.reportOutage(err, 'RabbitMQ connection lost')
    this.scheduleReconnect()
  }

  private reportOutage (err: Error | undefined, message: string): void {
    const details = { broker: NAME, url: redact(this.settings.url), exchange: this.settings.exchange, err }
    if (this.outage) {
      this.log.debug(details, `${message}, still retrying`)
      return
    }
    this.outage = true
    this.log.error(details, `${message}; publications fail until it is back, reconnecting`)
  }

  private scheduleReconnect (): void {
    if (this.closed || this.retryTimer !== undefined) return
    const delay = backoff(this.attempt++, this.settings.reconnectMinDelay, this.settings.reconnectMaxDelay)
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined
      this.connect() // never rejects: failures schedule the next attempt
    }, delay)
    // A standalone worker whose broker is down must still be able to exit.
    this.retryTimer.unref()
  }

  private onBlocked (session: Session, reason: string): void {
    session.blocked = reason
    this.log.warn({ broker: NAME, reason }, 'RabbitMQ blocks publishers; publications fail until it unblocks')
  }

  private onUnblocked (session: Session): void {
    session.blocked = undefined
    this.log.info({ broker: NAME }, 'RabbitMQ unblocked publishers')
  }

  private onMessage (session: Session, message: ConsumeMessage | null): void {
    if (message === null) {
      // The server cancelled our consumer (queue deleted by an operator): start over with a new queue.
      this.dropSession(session, new Error('consumer cancelled by the server'))
      return
    }
    const topic = message.fields.routingKey
    const decoded = decodeBrokerMessage(message.content, this.settings.maxMessageBytes)
    if (typeof decoded === 'string') {
      // Only the reason and the size: the body may be huge or hostile.
      this.log.warn({ broker: NAME, topic, bytes: message.content.length, reason: decoded }, 'Dropped a malformed broker message')
      return
    }
    // The plugin already delivered our own publications locally.
    if (decoded.origin === this.origin) return
    try {
      this.sink?.deliver(topic, decoded.data, decoded.event)
    } catch (err) {
      this.log.error({ broker: NAME, topic, err }, 'Delivering a broker message failed')
    }
  }

  private async sessionForPublish (): Promise<Session> {
    if (this.session === undefined && !this.outage) {
      // Standalone use connects lazily; only the very first attempt is awaited. During an outage
      // publications are refused at once rather than queued.
      await this.start()
      if (this.closed) throw new BrokerClosedError(NAME)
    }
    const session = this.session
    if (session === undefined) {
      throw new BrokerUnavailableError(NAME, `not connected to RabbitMQ (${this.lastError})`)
    }
    if (session.blocked !== undefined) {
      throw new BrokerUnavailableError(NAME, `RabbitMQ blocks publishers (${session.blocked})`)
    }
    return session
  }

  /**
   * Publishes on the confirm channel and resolves once RabbitMQ has taken the message. A confirm
   * channel rather than a plain one because publish must report failure instead of
   * losing it: a plain channel's publish "succeeds" once bytes are buffered, even if the socket dies
   * right after. Confirms are pipelined, so concurrent publications do not wait for each other.
   */
  private send (session: Session, topic: string, body: Buffer): Promise<void> {
    const size = body.length
    if (this.pendingBytes > 0 && this.pendingBytes + size > this.settings.maxPendingBytes) {
      return Promise.reject(new BrokerUnavailableError(NAME, `${this.pendingBytes} bytes already await confirmation`))
    }
    return new Promise<void>((resolve, reject) => {
      const settle: Settle = (err) => {
        if (!this.pending.delete(settle)) return
        clearTimeout(timer)
        this.pendingBytes -= size
        if (err === undefined) resolve()
        else reject(err)
      }
      const timer = setTimeout(() => {
        settle(new BrokerUnavailableError(NAME, `RabbitMQ did not confirm within ${this.settings.publishTimeout} ms`))
      }, this.settings.publishTimeout)
      this.pending.add(settle)
      this.pendingBytes += size
      try {
        // The return value (write buffer above its mark) is ignored on purpose: what waits for the
        // server is bounded by maxPendingBytes and by the confirm timeout.
        session.channel.publish(this.settings.exchange, topic, body, { contentType: 'application/json' }, (err: unknown) => {
          settle(err == null ? undefined : new BrokerUnavailableError(NAME, `RabbitMQ refused the publication (${errorMessage(err)})`))
        })
      } catch (err) {
        settle(new BrokerUnavailableError(NAME, errorMessage(err)))
      }
    })
  }

  private failPending (err: Error): void {
    for (const settle of [...this.pending]) settle(err)
  }
}

function checkTopic (topic: unknown): asserts topic is string {
  if (typeof topic !== 'string') throw new InvalidTopicError(`expected a string, received ${describe(topic)}`)
  if (Buffer.byteLength(topic) > MAX_ROUTING_KEY_BYTES) {
    throw new InvalidTopicError(`${describe(topic)} is longer than ${MAX_ROUTING_KEY_BYTES} bytes, the AMQP routing key limit`)
  }
}

/** Closes a connection without throwing, and without waiting more than a moment for a silent server. */
async function closeConnection (connection: ChannelModel): Promise<void> {
  const closed = await withTimeout(connection.close().then(() => true, () => true), CLOSE_TIMEOUT_MS)
  if (closed !== true) destroySocket(connection)
}

function destroySocket (connection: ChannelModel): void {
  // amqplib has no public way to drop a connection whose server no longer answers.
  const internals = connection as unknown as { connection?: { stream?: { destroy?: () => void } } }
  internals.connection?.stream?.destroy?.()
}

/** Resolves with the promise's value, or undefined after `ms`; never rejects, leaves no timer. */
async function withTimeout<T> (promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<undefined>((resolve) => { timer = setTimeout(() => resolve(undefined), ms) })
  try {
    return await Promise.race([promise.catch(() => undefined), timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** Capped exponential backoff with jitter over the upper half, so instances do not reconnect in step. */
function backoff (attempt: number, min: number, max: number): number {
  const ceiling = Math.min(max, min * 2 ** Math.min(attempt, 30))
  return Math.round(ceiling / 2 + Math.random() * ceiling / 2)
}

/** The URL without its password, for logs and errors. */
function redact (url: string): string {
  try {
    const parsed = new URL(url)
    if (parsed.password !== '') parsed.password = '***'
    return parsed.toString()
  } catch {
    return '<invalid url>'
  }
}

function toError (err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err))
}

function errorMessage (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

function validateOptions (options: unknown): Settings {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new InvalidOptionError('options', 'an object', describe(options))
  }
  const given = options as AmqpBrokerOptions
  const settings: Settings = {
    url: checkUrl(given.url ?? defaults.url),
    exchange: checkExchange(given.exchange ?? defaults.exchange),
    log: given.log === undefined ? undefined : checkLogger(given.log),
    maxMessageBytes: checkPositiveInteger('maxMessageBytes', given.maxMessageBytes ?? defaults.maxMessageBytes),
    reconnectMinDelay: checkPositiveInteger('reconnectMinDelay', given.reconnectMinDelay ?? defaults.reconnectMinDelay),
    reconnectMaxDelay: checkPositiveInteger('reconnectMaxDelay', given.reconnectMaxDelay ?? defaults.reconnectMaxDelay),
    connectTimeout: checkPositiveInteger('connectTimeout', given.connectTimeout ?? defaults.connectTimeout),
    publishTimeout: checkPositiveInteger('publishTimeout', given.publishTimeout ?? defaults.publishTimeout),
    maxPendingBytes: checkPositiveInteger('maxPendingBytes', given.maxPendingBytes ?? defaults.maxPendingBytes)
  }
  if (settings.reconnectMaxDelay < settings.reconnectMinDelay) {
    throw new InvalidOptionError('reconnectMaxDelay', `a number of milliseconds >= reconnectMinDelay (${settings.reconnectMinDelay})`, describe(settings.reconnectMaxDelay))
  }
  return settings
}

function checkUrl (url: unknown): string {
  const expectation = 'an amqp:// or amqps:// URL'
  if (typeof url !== 'string') throw new InvalidOptionError('url', expectation, describe(url))
  let protocol: string
  try {
    protocol = new URL(url).protocol
  } catch {
    throw new InvalidOptionError('url', expectation, describe(redact(url)))
  }
  if (protocol !== 'amqp:' && protocol !== 'amqps:') throw new InvalidOptionError('url', expectation, describe(redact(url)))
  return url
}

function checkExchange (exchange: unknown): string {
  // The default exchange ('') cannot be declared nor bound to.
  if (typeof exchange !== 'string' || exchange === '' || Buffer.byteLength(exchange) > 255) {
    throw new InvalidOptionError('exchange', 'a non-empty string of at most 255 bytes', describe(exchange))
  }
  return exchange
}

function checkLogger (log: unknown): BrokerLogger {
  if (!isBrokerLogger(log)) throw new InvalidOptionError('log', 'a logger with error, warn, info and debug methods', describe(log))
  return log as BrokerLogger
}

function checkPositiveInteger (name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    throw new InvalidOptionError(name, 'a positive integer', describe(value))
  }
  return value
}
