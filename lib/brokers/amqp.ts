import amqp from 'amqplib'
import type { ChannelModel, ConfirmChannel, ConsumeMessage } from 'amqplib'
import type { Broker, BrokerLogger } from './types.js'
export type { BrokerLogger } from './types.js'
import { BaseBroker, type BaseSettings } from './base.js'
import { DEFAULT_MAX_MESSAGE_BYTES } from './wire.js'
import { backoffDelay } from './backoff.js'
import { TimeoutError, toError, withTimeout } from './toolkit.js'
import { PendingConfirms } from './amqp-confirms.js'
import { fail, logger, positiveInteger, readOptions, redact, silentLogger, url, withDefault, type Check } from './options.js'
import { BrokerClosedError, BrokerUnavailableError } from '../errors.js'

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
  /** Ceiling of the first reconnect delay after an outage, in ms; doubled per failed attempt. Default 100. */
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

interface Settings extends BaseSettings {
  url: string
  exchange: string
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

const NAME = 'amqp'
const MAX_ROUTING_KEY_BYTES = 255
const CLOSE_TIMEOUT_MS = 2000

function noop (): void {}

/**
 * A broker that carries publications through a RabbitMQ direct exchange (PROTOCOL.md, RabbitMQ): routing
 * key = topic, body = `{"data": ..., "event"?: ...}`, so any AMQP client can publish to it.
 */
export function amqpBroker (options: AmqpBrokerOptions = {}): Broker {
  return new AmqpBroker(readSettings(options))
}

/**
 * Owns one connection at a time (a Session) and its reconnection: an attempt in flight, the timer of
 * the next one and the count of failures the backoff grows with. The connection state says which
 * step it is at; a new session declares the exchange, a fresh queue and its bindings from `topics`.
 */
class AmqpBroker extends BaseBroker {
  private readonly settings: Settings
  private readonly confirms: PendingConfirms
  private session: Session | undefined
  private connecting: Promise<void> | undefined
  private retryTimer: NodeJS.Timeout | undefined
  private failures = 0

  constructor (settings: Settings) {
    super(NAME, 'RabbitMQ', settings, { url: redact(settings.url), exchange: settings.exchange })
    this.settings = settings
    this.confirms = new PendingConfirms(NAME, settings.maxPendingBytes, settings.publishTimeout)
  }

  protected async open (): Promise<void> {
    // Waits for the first attempt only: when RabbitMQ is down the plugin still starts, and the queue
    // and bindings are created with the connection that comes later.
    await this.start()
    const session = this.session
    if (session !== undefined && session.queue === undefined) {
      // Connected earlier for a standalone publish (or the attempt was past its consume step).
      await this.consume(session).catch((err: unknown) => this.dropSession(session, toError(err)))
    }
  }

  protected async bind (topic: string): Promise<void> {
    const session = this.session
    if (session?.queue === undefined) return
    try {
      await session.channel.bindQueue(session.queue, this.settings.exchange, topic)
    } catch (err) {
      // The channel is gone; the binding is made again with the next queue.
      this.log.debug({ broker: NAME, topic, err }, 'AMQP bind deferred to the next connection')
    }
  }

  protected async unbind (topic: string): Promise<void> {
    const session = this.session
    if (session?.queue === undefined) return
    try {
      await session.channel.unbindQueue(session.queue, this.settings.exchange, topic)
    } catch (err) {
      // The queue dies with the channel, and the next one is not bound to this topic.
      this.log.debug({ broker: NAME, topic, err }, 'AMQP unbind skipped: the channel is gone')
    }
  }

  protected async send (topic: string, body: Buffer): Promise<void> {
    const session = await this.sessionForPublish()
    await this.confirms.publish(session.channel, this.settings.exchange, topic, body)
  }

  protected async release (): Promise<void> {
    clearTimeout(this.retryTimer)
    this.retryTimer = undefined
    this.confirms.failAll(new BrokerClosedError(NAME))
    const session = this.session
    this.session = undefined
    if (session !== undefined) await closeConnection(session.connection)
    // An attempt in flight closes what it opens once it sees the broker closed; wait a little for it
    // so no socket outlives close() when the server answers, but never hang on an unreachable host.
    if (this.connecting !== undefined) await withTimeout(this.connecting, CLOSE_TIMEOUT_MS, 'RabbitMQ').catch(noop)
  }

  /** The plugin's rule, and the AMQP limit on routing keys (asked by the plugin before it subscribes or publishes). */
  override topicProblem (topic: string): string | undefined {
    return super.topicProblem(topic) ??
      (Buffer.byteLength(topic) > MAX_ROUTING_KEY_BYTES ? `expected at most ${MAX_ROUTING_KEY_BYTES} bytes of UTF-8, the AMQP routing key limit` : undefined)
  }

  /** Starts the connection loop once; resolves when the first attempt has succeeded or failed. */
  private start (): Promise<void> {
    if (this.state.status !== 'idle') return this.connecting ?? Promise.resolve()
    this.state.connecting()
    return this.connect()
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
      if (this.state.closed) {
        await closeConnection(connection)
        return
      }
      const session = await this.openSession(connection)
      if (this.state.closed) {
        await closeConnection(connection)
        return
      }
      this.connected(session)
    } catch (err) {
      if (connection !== undefined) await closeConnection(connection)
      this.connectFailed(toError(err))
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
    this.failures = 0
    this.log.debug({ broker: NAME, url: redact(this.settings.url), queue: session.queue }, 'Connected to RabbitMQ')
    this.state.up()
  }

  private connectFailed (err: Error): void {
    this.state.lost(err)
    this.scheduleReconnect()
  }

  /** Forgets a session whose connection or channel closed, at most once, and starts reconnecting. */
  private dropSession (session: Session, err: Error | undefined): void {
    if (this.session !== session) return
    this.session = undefined
    const cause = err ?? new Error('connection closed')
    this.confirms.failAll(new BrokerUnavailableError(NAME, `connection lost (${cause.message})`))
    // Never rejects; the connection may already be closed, which is fine.
    closeConnection(session.connection)
    this.state.lost(cause)
    this.scheduleReconnect()
  }

  private scheduleReconnect (): void {
    if (this.state.closed || this.retryTimer !== undefined) return
    const delay = backoffDelay(this.failures++, this.settings.reconnectMinDelay, this.settings.reconnectMaxDelay)
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
    this.receive(topic, message.content, { topic })
  }

  private async sessionForPublish (): Promise<Session> {
    const status = this.state.status
    if (status === 'idle' || status === 'connecting') {
      // Standalone use connects lazily; only the very first attempt is awaited. During an outage
      // publications are refused at once rather than queued.
      await this.start()
      if (this.state.closed) throw new BrokerClosedError(NAME)
    }
    const session = this.session
    if (session === undefined) throw this.unavailable(`not connected to RabbitMQ (${this.state.reason})`)
    if (session.blocked !== undefined) {
      throw new BrokerUnavailableError(NAME, `RabbitMQ blocks publishers (${session.blocked})`)
    }
    return session
  }
}

/** Closes a connection without throwing, and without waiting more than a moment for a silent server. */
async function closeConnection (connection: ChannelModel): Promise<void> {
  try {
    await withTimeout(connection.close(), CLOSE_TIMEOUT_MS, 'RabbitMQ')
  } catch (err) {
    // A connection that refused to close was closed already; one that timed out is cut.
    if (err instanceof TimeoutError) destroySocket(connection)
  }
}

function destroySocket (connection: ChannelModel): void {
  // amqplib has no public way to drop a connection whose server no longer answers.
  const internals = connection as unknown as { connection?: { stream?: { destroy?: () => void } } }
  internals.connection?.stream?.destroy?.()
}

const OPTIONS = {
  url: withDefault('amqp://guest:guest@127.0.0.1:5672', url(['amqp:', 'amqps:'])),
  exchange: withDefault('drizzle', exchangeName),
  log: withDefault(silentLogger, logger),
  maxMessageBytes: withDefault(DEFAULT_MAX_MESSAGE_BYTES, positiveInteger()),
  reconnectMinDelay: withDefault(100, positiveInteger('milliseconds')),
  reconnectMaxDelay: withDefault(5000, positiveInteger('milliseconds')),
  connectTimeout: withDefault(5000, positiveInteger('milliseconds')),
  publishTimeout: withDefault(5000, positiveInteger('milliseconds')),
  maxPendingBytes: withDefault(16 * 1024 * 1024, positiveInteger())
} satisfies Record<keyof AmqpBrokerOptions, Check<unknown>>

function readSettings (options: unknown): Settings {
  const settings = readOptions(options, OPTIONS)
  if (settings.reconnectMaxDelay < settings.reconnectMinDelay) {
    fail('reconnectMaxDelay', `expected a number of milliseconds >= reconnectMinDelay (${settings.reconnectMinDelay})`, settings.reconnectMaxDelay)
  }
  return settings
}

// The default exchange ('') can be neither declared nor bound to.
function exchangeName (value: unknown, name: string): string {
  if (typeof value !== 'string' || value === '' || Buffer.byteLength(value) > 255) {
    fail(name, 'expected a non-empty string of at most 255 bytes', value)
  }
  return value
}
