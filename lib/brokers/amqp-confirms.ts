import type { ConfirmChannel } from 'amqplib'
import { BrokerUnavailableError } from '../errors.js'
import { errorMessage } from './toolkit.js'

type Done = (err?: Error) => void

/**
 * Publications sent on a confirm channel and not confirmed yet, bounded in bytes and in time. A
 * confirm channel rather than a plain one because `publish` must report a failure instead of losing
 * the publication (README "Outages"): a plain channel's publish "succeeds" once bytes are buffered,
 * even if the socket dies right after. Confirms are pipelined, so concurrent publications do not
 * wait for each other.
 */
export class PendingConfirms {
  /** Completions of the publications awaiting a confirm, so a lost connection or close() fails them at once. */
  private readonly pending = new Set<Done>()
  private pendingBytes = 0

  constructor (
    private readonly broker: string,
    private readonly maxBytes: number,
    private readonly timeoutMs: number
  ) {}

  /** Publishes and resolves once RabbitMQ has taken the message; rejects at once past `maxBytes`. */
  publish (channel: ConfirmChannel, exchange: string, topic: string, body: Buffer): Promise<void> {
    const size = body.length
    if (this.pendingBytes > 0 && this.pendingBytes + size > this.maxBytes) {
      return Promise.reject(new BrokerUnavailableError(this.broker, `${this.pendingBytes} bytes already await confirmation`))
    }
    return new Promise<void>((resolve, reject) => {
      const done: Done = (err) => {
        if (!this.pending.delete(done)) return
        clearTimeout(timer)
        this.pendingBytes -= size
        if (err === undefined) resolve()
        else reject(err)
      }
      const timer = setTimeout(() => {
        done(new BrokerUnavailableError(this.broker, `RabbitMQ did not confirm within ${this.timeoutMs} ms`))
      }, this.timeoutMs)
      this.pending.add(done)
      this.pendingBytes += size
      try {
        // The return value (write buffer above its mark) is ignored on purpose: what waits for the
        // server is bounded by maxBytes and by the confirm timeout.
        channel.publish(exchange, topic, body, { contentType: 'application/json' }, (err: unknown) => {
          done(err == null ? undefined : new BrokerUnavailableError(this.broker, `RabbitMQ refused the publication (${errorMessage(err)})`))
        })
      } catch (err) {
        done(new BrokerUnavailableError(this.broker, errorMessage(err)))
      }
    })
  }

  /** Rejects every publication still awaiting its confirm. */
  failAll (err: Error): void {
    for (const done of [...this.pending]) done(err)
  }
}
