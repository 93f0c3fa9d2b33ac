import type { Broker, BrokerHealth, BrokerLogger, BrokerSink, PublishOptions } from './types.js'
import { decodeBrokerMessage, encodeBrokerMessage, isTraceparent, originId } from './wire.js'
import { topicProblem } from './topic.js'
import { fail } from './options.js'
import { ConnectionState } from './toolkit.js'
import { BrokerClosedError, BrokerUnavailableError, InvalidTopicError, describe } from '../errors.js'

/** Settings every broker has. */
export interface BaseSettings {
  /** Where a standalone broker logs; once attached, the plugin's logger is used. */
  log: BrokerLogger
  /** Larger messages are dropped on receipt and refused on publish. */
  maxMessageBytes: number
}

/**
 * What the Redis and the RabbitMQ brokers share: the Broker API with its checks (the topic rule, the
 * event, the message size, a closed broker), the set of topics with local subscribers, the connection
 * state, and the hand-over of received messages to the plugin. A broker adds its server's side:
 * `open` (at attach), `bind`/`unbind` (a topic gained its first or lost its last subscriber), `send`
 * (one publication) and `release` (at close).
 */
export abstract class BaseBroker implements Broker {
  readonly name: string
  /** Tags this broker's publications, so that it can skip them when the server echoes them back. */
  protected readonly origin = originId()
  /** Topics with local subscribers: bound now, and bound again by every new connection. */
  protected readonly topics = new Set<string>()
  protected readonly state: ConnectionState
  protected sink: BrokerSink | undefined
  private readonly base: BaseSettings
  private closing: Promise<void> | undefined

  protected constructor (name: string, server: string, settings: BaseSettings, logFields: Record<string, unknown> = {}) {
    this.name = name
    this.base = settings
    this.state = new ConnectionState(server, () => this.log, { broker: name, ...logFields })
  }

  protected get log (): BrokerLogger {
    return this.sink?.log ?? this.base.log
  }

  async attach (sink: BrokerSink): Promise<void> {
    if (this.state.closed) throw new BrokerClosedError(this.name)
    if (this.sink !== undefined) throw new Error(`This ${this.name} broker is already attached`)
    this.sink = sink
    await this.open()
  }

  async subscribe (topic: string): Promise<void> {
    this.checkTopic(topic)
    if (this.state.closed) return
    this.topics.add(topic)
    await this.bind(topic)
  }

  async unsubscribe (topic: string): Promise<void> {
    if (this.state.closed || !this.topics.delete(topic)) return
    await this.unbind(topic)
  }

  async publish (topic: string, data: unknown, options?: PublishOptions): Promise<void> {
    this.checkTopic(topic)
    if (this.state.closed) throw new BrokerClosedError(this.name)
    await this.send(topic, this.encode(data, options?.event, options?.traceparent))
  }

  health (): BrokerHealth {
    return { status: this.state.status, outages: this.state.outages }
  }

  close (): Promise<void> {
    this.closing ??= this.shutdown()
    return this.closing
  }

  /** Why this broker cannot carry a topic: the plugin's rule; a broker whose server has a stricter one adds to it. */
  topicProblem (topic: string): string | undefined {
    return topicProblem(topic)
  }

  protected checkTopic (topic: unknown): asserts topic is string {
    const reason = this.topicProblem(topic as string)
    if (reason !== undefined) throw new InvalidTopicError(`${reason}, received ${describe(topic)}`)
  }

  /**
   * Hands a message from the server to the plugin. It runs inside the client library's event
   * handlers, so nothing thrown escapes. A malformed message is logged (`where` it came from, its
   * size and why, never its content) and dropped; our own publications are skipped (the plugin has
   * delivered them locally already); a topic unsubscribed a moment ago is ignored, so that
   * unsubscribing takes effect at once even while the server still sends.
   */
  protected receive (topic: string, raw: Buffer, where: Record<string, string>): void {
    try {
      if (!this.topics.has(topic)) return
      const message = decodeBrokerMessage(raw, this.base.maxMessageBytes)
      if (typeof message === 'string') {
        this.log.warn({ broker: this.name, ...where, bytes: raw.length, reason: message }, 'Dropped a malformed broker message')
        return
      }
      if (message.origin === this.origin) return
      // A trace context is a hint: a malformed one is ignored, never a reason to drop the publication.
      const traceparent = isTraceparent(message.traceparent) ? message.traceparent : undefined
      if (message.offset !== undefined && message.epoch !== undefined) {
        this.sink?.deliver(topic, message.data, message.event, { offset: message.offset, epoch: message.epoch, traceparent })
        return
      }
      this.sink?.deliver(topic, message.data, message.event, traceparent === undefined ? undefined : { traceparent })
    } catch (err) {
      this.log.error({ broker: this.name, topic, err }, 'Delivering a broker message failed')
    }
  }

  /** The error a publication that cannot be sent now rejects with. */
  protected unavailable (reason: string, cause?: unknown): Error {
    if (this.state.closed) return new BrokerClosedError(this.name)
    return cause === undefined
      ? new BrokerUnavailableError(this.name, reason)
      : new BrokerUnavailableError(this.name, reason, { cause })
  }

  /** Connects for the plugin: called once, by attach. */
  protected abstract open (): Promise<void>
  /** Makes the server send this topic's messages (the topic is in `topics` already). */
  protected abstract bind (topic: string): Promise<void>
  /** Stops the server sending this topic's messages (the topic has left `topics` already). */
  protected abstract unbind (topic: string): Promise<void>
  /** Sends one publication; rejects when the server cannot take it now. */
  protected abstract send (topic: string, body: Buffer): Promise<void>
  /** Frees what the broker created, without hanging on a server that is gone. */
  protected abstract release (): Promise<void>

  private async shutdown (): Promise<void> {
    this.state.close()
    this.topics.clear()
    await this.release()
  }

  private encode (data: unknown, event: unknown, traceparent: unknown): Buffer {
    if (event !== undefined && typeof event !== 'string') fail('event', 'expected a string', event)
    if (traceparent !== undefined && !isTraceparent(traceparent)) fail('traceparent', 'expected a W3C traceparent ("00-<32 hex>-<16 hex>-<2 hex>")', traceparent)
    const body = Buffer.from(encodeBrokerMessage(data, event, this.origin, traceparent))
    if (body.length > this.base.maxMessageBytes) {
      // The publication cannot be carried: every subscriber would drop it.
      throw new BrokerUnavailableError(this.name, `message of ${body.length} bytes exceeds maxMessageBytes (${this.base.maxMessageBytes})`)
    }
    return body
  }
}
