// The wire format as the client sees it (protocol v1, the README's "Protocol" section): the request
// envelope it sends, and the sorting of every incoming frame into a publication, a reply, or a
// protocol error.
import { DrizzleClientError } from './errors.js'
import type { Publication } from './types.js'

/** An incoming frame, sorted: what the client does next depends only on `kind`. */
export type Incoming =
  | { readonly kind: 'publication', readonly publication: Publication }
  | { readonly kind: 'reply', readonly reply: Reply }
  /** Not protocol v1, or an error frame the server could not tie to a request (`request_id` null). */
  | { readonly kind: 'error', readonly error: DrizzleClientError }
  /** A reply no request can be waiting for (an id the client never uses); dropped. */
  | { readonly kind: 'ignored' }

/**
 * A reply to request `requestId`: `error` is set for an error frame, else `data` is the result.
 * `more` marks one item of a streamed reply (`{"data", "request_id", "more": true}`); the stream's
 * end is an ordinary reply or error frame.
 */
export interface Reply {
  readonly requestId: number
  readonly data: unknown
  readonly error: DrizzleClientError | undefined
  readonly more: boolean
}

/** The fields of a decoded frame the client reads; every one is checked before use. */
interface Frame {
  request_id?: unknown
  data?: unknown
  code?: unknown
  error?: unknown
  statusCode?: unknown
  details?: unknown
  topic?: unknown
  event?: unknown
  offset?: unknown
  more?: unknown
}

/** `{"resource", "action", "data"?, "request_id"}`: `data` left out when there is none. */
export function encodeRequest (resource: string, action: string, data: unknown, requestId: number): string {
  const envelope: Record<string, unknown> = { resource, action, request_id: requestId }
  if (data !== undefined) envelope.data = data
  return JSON.stringify(envelope)
}

export function classifyFrame (raw: unknown): Incoming {
  const frame = decodeFrame(raw)
  if (frame instanceof DrizzleClientError) return { kind: 'error', error: frame }
  if (typeof frame.topic === 'string') return { kind: 'publication', publication: toPublication(frame.topic, frame) }
  if (!Object.hasOwn(frame, 'request_id')) {
    return { kind: 'error', error: new DrizzleClientError('protocol', 'Frame is neither a reply nor a publication', { details: frame }) }
  }
  const error = serverError(frame)
  // The client numbers its requests, so only a number can answer one.
  if (typeof frame.request_id === 'number') return { kind: 'reply', reply: { requestId: frame.request_id, data: frame.data, error, more: error === undefined && frame.more === true } }
  if (error !== undefined && frame.request_id === null) return { kind: 'error', error }
  return { kind: 'ignored' }
}

function toPublication (topic: string, frame: Frame): Publication {
  const publication: Publication = { topic, data: frame.data, ...(typeof frame.event === 'string' ? { event: frame.event } : {}) }
  if (Number.isSafeInteger(frame.offset)) publication.offset = frame.offset as number
  return publication
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

/** Text frames arrive as strings; a binary frame is accepted when it holds UTF-8 JSON. */
function decodeFrame (raw: unknown): Frame | DrizzleClientError {
  let text: string
  try {
    if (typeof raw === 'string') text = raw
    else if (raw instanceof ArrayBuffer || ArrayBuffer.isView(raw)) text = utf8.decode(raw)
    else return new DrizzleClientError('protocol', 'Unsupported frame data')
  } catch (err) {
    return new DrizzleClientError('protocol', 'Binary frame is not UTF-8 text', { cause: err })
  }
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (err) {
    return new DrizzleClientError('protocol', 'Frame is not JSON', { details: text.slice(0, 200), cause: err })
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return new DrizzleClientError('protocol', 'Frame is not a JSON object', { details: text.slice(0, 200) })
  }
  return value as Frame
}

function serverError (frame: Frame): DrizzleClientError | undefined {
  if (frame.code === undefined && frame.error === undefined) return undefined
  const message = typeof frame.error === 'string' ? frame.error : 'Server error'
  const requestId = typeof frame.request_id === 'string' || typeof frame.request_id === 'number' ? frame.request_id : null
  return new DrizzleClientError('server', message, {
    code: typeof frame.code === 'string' ? frame.code : undefined,
    statusCode: typeof frame.statusCode === 'number' ? frame.statusCode : undefined,
    details: frame.details,
    requestId
  })
}
