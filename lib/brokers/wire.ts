import sjson from 'secure-json-parse'

/**
 * The language-neutral broker message (PROTOCOL.md, Brokers): `{"data": <payload>, "event"?: "<name>"}`.
 * Publications made by one of our brokers also carry `"origin"`, the publishing broker's id, so that
 * it can skip its own message when the broker echoes it back; other consumers can ignore that field.
 */
export interface BrokerMessage {
  data: unknown
  event?: string
  origin?: string
  /** W3C trace context of the publishing span (PROTOCOL.md, Trace context); optional, ignored when malformed. */
  traceparent?: string
  /** Position of a history publication, set by the broker's server (README "History and recovery"). */
  offset?: number
  epoch?: string
}

/** `version-traceid-spanid-flags`, lowercase hex, as W3C Trace Context level 1 writes it (version ff is invalid). */
const TRACEPARENT = /^(?!ff)[\da-f]{2}-(?!0{32})[\da-f]{32}-(?!0{16})[\da-f]{16}-[\da-f]{2}$/

export function isTraceparent (value: unknown): value is string {
  return typeof value === 'string' && value.length >= 55 && TRACEPARENT.test(value.slice(0, 55)) && (value.length === 55 || value[55] === '-')
}

export const DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024

export function encodeBrokerMessage (data: unknown, event: string | undefined, origin: string, traceparent?: string): string {
  const body: BrokerMessage = event === undefined
    ? { data: data === undefined ? null : data, origin }
    : { data: data === undefined ? null : data, event, origin }
  if (traceparent !== undefined) body.traceparent = traceparent
  return JSON.stringify(body)
}

/**
 * Parses what arrived on a channel or queue. Returns the message, or a string saying why it was
 * dropped: brokers log that reason and deliver nothing.
 */
export function decodeBrokerMessage (raw: string | Buffer, maxBytes = DEFAULT_MAX_MESSAGE_BYTES): BrokerMessage | string {
  const size = typeof raw === 'string' ? Buffer.byteLength(raw) : raw.length
  if (size > maxBytes) return `message of ${size} bytes exceeds the limit of ${maxBytes}`
  let text: string
  try {
    text = typeof raw === 'string' ? raw : utf8.decode(raw)
  } catch {
    return 'message is not valid UTF-8'
  }
  let parsed: unknown
  try {
    parsed = sjson.parse(text, null, { protoAction: 'remove', constructorAction: 'remove' })
  } catch {
    return 'message is not JSON'
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return 'message is not a JSON object'
  if (!Object.hasOwn(parsed, 'data')) return 'message has no "data" field'
  const message = parsed as BrokerMessage
  if (message.event !== undefined && typeof message.event !== 'string') return '"event" is not a string'
  if (message.origin !== undefined && typeof message.origin !== 'string') return '"origin" is not a string'
  if (message.offset !== undefined && (!Number.isSafeInteger(message.offset) || message.offset < 1)) return '"offset" is not a positive integer'
  if (message.epoch !== undefined && typeof message.epoch !== 'string') return '"epoch" is not a string'
  return message
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

/** Random id that tags a broker's own publications. */
export function originId (): string {
  return globalThis.crypto.randomUUID()
}
