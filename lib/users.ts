import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Broker, PublishOptions } from './brokers/types.js'
import { InvalidOptionError, InvalidUserError, describe } from './errors.js'
import { encodePublicationJson } from './protocol.js'
import { textFrame } from './frames.js'

// Users (README "Presence"): `identify(request)` names the user of each connection; publishToUser
// and disconnectUser reach every connection of a user on every instance. Across processes they
// travel as ordinary publications to the topics `$user/<user>` and `$disconnect/<user>`, which an
// instance subscribes at the broker while it has a connection of that user, so an outside process
// can publish them too (PROTOCOL.md "Users").

/** The topic of publication frames sent to a user: `{"topic":"$user","data":...}`. */
export const USER_TOPIC = '$user'
const USER_PREFIX = '$user/'
const DISCONNECT_PREFIX = '$disconnect/'
/** Longest user id: `$disconnect/<user>` stays within every broker's topic limits. */
export const MAX_USER_LENGTH = 200
export const DEFAULT_DISCONNECT_CODE = 4000
/** A close reason is at most 123 bytes of UTF-8 (RFC 6455). */
const MAX_REASON_BYTES = 123

export type Identify = (request: FastifyRequest) => unknown

export interface DisconnectOptions {
  /** WebSocket close code: 1000, or 3000 to 4999. Default 4000. */
  code?: number
  /** Close reason, at most 123 bytes of UTF-8. */
  reason?: string
}

/** What the directory needs of a connection. */
export interface UserPeer {
  readonly user: string | null
  sendPublication (frame: Buffer): boolean
  close (code?: number, reason?: string): void
}

const identities = new WeakMap<FastifyRequest, string | null>()

/** The user `identify` named for an upgrade request; null without identify, or when it named none. */
export function userOf (request: FastifyRequest): string | null {
  return identities.get(request) ?? null
}

/**
 * The WebSocket route's own preHandler, after the app's hooks: runs `identify` once per connection.
 * A throw fails the upgrade the way any hook's does (an error with statusCode 401 is a 401).
 */
export function identifyHook (identify: Identify, broker: Broker) {
  return async function identifyConnection (request: FastifyRequest, _reply: FastifyReply): Promise<void> {
    const value = await identify(request)
    identities.set(request, checkUser(value, broker, 'identify returned'))
  }
}

/** null/undefined: no user. A string or safe integer: the user, as a string. Anything else is refused. */
function checkUser (value: unknown, broker: Broker, what: string): string | null {
  if (value === undefined || value === null) return null
  if (typeof value === 'number' && Number.isSafeInteger(value)) return String(value)
  const problem = userProblem(value, broker)
  if (problem !== undefined) throw new InvalidUserError(what, `${problem}, received ${describe(value)}`)
  return value as string
}

function userProblem (user: unknown, broker: Broker): string | undefined {
  if (typeof user !== 'string' || user.length === 0 || user.length > MAX_USER_LENGTH) return `expected a non-empty string of at most ${MAX_USER_LENGTH} characters or a safe integer`
  if (!user.isWellFormed()) return 'expected well-formed Unicode (no lone surrogates)'
  return broker.topicProblem?.(DISCONNECT_PREFIX + user)
}

/** This process's connections by user, and the broker topics that reach them. */
export class UserDirectory {
  private readonly byUser = new Map<string, Set<UserPeer>>()

  constructor (private readonly broker: Broker, private readonly onBrokerError: (err: unknown, op: string, topic: string) => void) {}

  add (conn: UserPeer): void {
    const user = conn.user
    if (user === null) return
    let conns = this.byUser.get(user)
    if (conns === undefined) {
      conns = new Set()
      this.byUser.set(user, conns)
      for (const topic of [USER_PREFIX + user, DISCONNECT_PREFIX + user]) this.broker.subscribe(topic).catch(err => this.onBrokerError(err, 'subscribe', topic))
    }
    conns.add(conn)
  }

  remove (conn: UserPeer): void {
    const user = conn.user
    const conns = user === null ? undefined : this.byUser.get(user)
    if (user === null || conns === undefined || !conns.delete(conn) || conns.size > 0) return
    this.byUser.delete(user)
    for (const topic of [USER_PREFIX + user, DISCONNECT_PREFIX + user]) this.broker.unsubscribe(topic).catch(err => this.onBrokerError(err, 'unsubscribe', topic))
  }

  /** Local connections of a user (this process only). */
  count (user: string): number {
    return this.byUser.get(user)?.size ?? 0
  }

  async publishToUser (user: unknown, data: unknown, options?: PublishOptions): Promise<void> {
    const id = this.check(user)
    const event = options?.event
    if (event !== undefined && typeof event !== 'string') throw new InvalidOptionError('event', 'expected a string', describe(event))
    this.deliver(id, JSON.stringify(data) ?? 'null', event)
    await this.broker.publish(USER_PREFIX + id, data, options)
  }

  async disconnectUser (user: unknown, options: DisconnectOptions = {}): Promise<void> {
    const id = this.check(user)
    if (options === null || typeof options !== 'object') throw new InvalidOptionError('options', 'expected { code?, reason? }', describe(options))
    const { code = DEFAULT_DISCONNECT_CODE, reason = '' } = options
    if (!validCloseCode(code)) throw new InvalidOptionError('code', 'expected 1000 or an integer from 3000 to 4999', describe(code))
    if (typeof reason !== 'string' || Buffer.byteLength(reason) > MAX_REASON_BYTES) throw new InvalidOptionError('reason', `expected a string of at most ${MAX_REASON_BYTES} bytes`, describe(reason))
    this.disconnect(id, code, reason)
    await this.broker.publish(DISCONNECT_PREFIX + id, { code, reason })
  }

  /**
   * Takes the publications of `$user/<user>` and `$disconnect/<user>` coming from the broker (other
   * instances, outside processes); returns false for any other topic. A disconnect with a bad code
   * or reason (from an outside process) still disconnects, with the defaults.
   */
  intercept (topic: string, data: unknown, event: string | undefined): boolean {
    if (topic.startsWith(USER_PREFIX)) {
      const json = JSON.stringify(data) ?? 'null'
      this.deliver(topic.slice(USER_PREFIX.length), json, event)
      return true
    }
    if (topic.startsWith(DISCONNECT_PREFIX)) {
      const { code, reason } = (data !== null && typeof data === 'object' ? data : {}) as { code?: unknown, reason?: unknown }
      const validReason = typeof reason === 'string' && Buffer.byteLength(reason) <= MAX_REASON_BYTES
      this.disconnect(topic.slice(DISCONNECT_PREFIX.length), validCloseCode(code) ? code : DEFAULT_DISCONNECT_CODE, validReason ? reason : '')
      return true
    }
    return false
  }

  private check (user: unknown): string {
    return checkUser(user, this.broker, 'user') ?? (() => { throw new InvalidUserError('user', 'expected a user, received null') })()
  }

  private deliver (user: string, json: string, event: string | undefined): void {
    const conns = this.byUser.get(user)
    if (conns === undefined) return
    const frame = textFrame(encodePublicationJson(USER_TOPIC, json, event))
    for (const conn of conns) conn.sendPublication(frame)
  }

  private disconnect (user: string, code: number, reason: string): void {
    const conns = this.byUser.get(user)
    if (conns === undefined) return
    for (const conn of [...conns]) conn.close(code, reason)
  }
}

function validCloseCode (code: unknown): code is number {
  return typeof code === 'number' && Number.isInteger(code) && (code === 1000 || (code >= 3000 && code <= 4999))
}

/** Topics no client may subscribe to: they carry other users' messages. */
export function isUserTopic (topic: string): boolean {
  return topic.startsWith(USER_PREFIX) || topic.startsWith(DISCONNECT_PREFIX)
}
