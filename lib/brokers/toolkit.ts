import type { BrokerLogger } from './types.js'

// What every broker's connection handling shares: the connection state with its outage log lines,
// and one way to bound the wait for a server that does not answer.

/**
 * Where a broker's connection stands:
 * `idle` (nothing opened yet) -> `connecting` (first attempt) -> `open` <-> `reconnecting` (an
 * outage: publications are refused until the connection is back), and `closed` for good from any state.
 */
export type ConnectionStatus = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed'

/**
 * The connection state of a broker, kept in one place. A broker may hold several connections
 * (Redis: a publisher and a subscriber, each named by its role): the outage starts when the first one
 * fails and ends when every one is back. An outage is logged once at `error` when it starts, its
 * further failed attempts at `debug`, and its end once at `info`, however long it lasts.
 */
export class ConnectionState {
  private current: ConnectionStatus = 'idle'
  private readonly down = new Set<string>()
  private lastReason = 'not connected yet'
  /** Outages so far (metrics): each counts once, however many connections and attempts it spans. */
  outages = 0

  /**
   * @param server How logs name the server, e.g. "Redis", "RabbitMQ".
   * @param fields Logged with every line (the broker's name, a URL without its password...).
   */
  constructor (
    private readonly server: string,
    private readonly log: () => BrokerLogger,
    private readonly fields: Record<string, unknown>
  ) {}

  get status (): ConnectionStatus {
    return this.current
  }

  get closed (): boolean {
    return this.current === 'closed'
  }

  /** Why the broker has no connection now, for the error a refused publication carries. */
  get reason (): string {
    return this.lastReason
  }

  /** The first connection attempt is under way. */
  connecting (): void {
    if (this.current === 'idle') this.current = 'connecting'
  }

  /** A connection works (again). */
  up (role = ''): void {
    if (this.current === 'closed') return
    this.down.delete(role)
    if (this.down.size > 0) return
    const ended = this.current === 'reconnecting'
    this.current = 'open'
    this.lastReason = ''
    if (ended) this.log().info({ ...this.fields }, `${this.server} connection restored`)
  }

  /** A connection was lost, or could not be made. */
  lost (err: Error, role = ''): void {
    if (this.current === 'closed') return
    this.down.add(role)
    this.lastReason = err.message
    const what = this.current === 'open' ? `${this.server} connection lost` : `cannot connect to ${this.server}`
    const details = role === '' ? { ...this.fields, err } : { ...this.fields, role, err }
    if (this.current === 'reconnecting') {
      this.log().debug(details, `${what}, still retrying`)
      return
    }
    this.current = 'reconnecting'
    this.outages++
    this.log().error(details, `${what}; publications fail until it is back, reconnecting`)
  }

  close (): void {
    this.current = 'closed'
  }
}

/** What `withTimeout` rejects with when the time is up. */
export class TimeoutError extends Error {
  override name = 'TimeoutError'

  constructor (what: string, ms: number) {
    super(`${what} did not answer within ${ms} ms`)
  }
}

/**
 * Settles as `promise` does if it settles within `ms`, else rejects with a TimeoutError saying that
 * `what` did not answer. Leaves no timer behind either way. The promise itself is not cancelled: a
 * caller that must free what it holds does so on TimeoutError.
 */
export function withTimeout<T> (promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const timeout = new Promise<never>((resolve, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(what, ms)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

export function toError (err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err))
}

export function errorMessage (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
