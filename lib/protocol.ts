import Type from 'typebox'
import { Compile } from 'typebox/compile'
import sjson from 'secure-json-parse'
import { ValidationError, validationError } from './errors.js'

// Wire protocol v1 (README, Protocol). Everything that turns bytes into envelopes and replies into
// bytes lives here, so the connection and dispatch code never touch JSON directly.

export const MAX_REQUEST_ID_LENGTH = 256
export const MAX_NAME_LENGTH = 256

const RequestId = Type.Union([
  Type.String({ minLength: 1, maxLength: MAX_REQUEST_ID_LENGTH }),
  Type.Integer({ minimum: Number.MIN_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER })
])

export const EnvelopeSchema = Type.Object({
  resource: Type.String({ minLength: 1, maxLength: MAX_NAME_LENGTH }),
  action: Type.String({ minLength: 1, maxLength: MAX_NAME_LENGTH }),
  request_id: RequestId,
  data: Type.Optional(Type.Union([Type.Object({}), Type.Array(Type.Unknown())]))
})

const envelope = Compile(EnvelopeSchema)
const requestId = Compile(RequestId)

export type RequestIdValue = string | number

export interface Envelope {
  resource: string
  action: string
  request_id: RequestIdValue
  data?: Record<string, unknown> | unknown[]
  [extra: string]: unknown
}

export interface ErrorDetail {
  path: string
  message: string
}

/** What the client is told about each envelope field it got wrong; the message names the field. */
const FIELD_RULES: Record<string, string> = {
  resource: `"resource" must be a non-empty string of at most ${MAX_NAME_LENGTH} characters`,
  action: `"action" must be a non-empty string of at most ${MAX_NAME_LENGTH} characters`,
  request_id: `"request_id" must be a non-empty string of at most ${MAX_REQUEST_ID_LENGTH} characters or a safe integer`,
  data: '"data" must be an object or an array'
}

export type ProtoAction = 'error' | 'remove' | 'ignore'

export interface ParseOptions {
  protoAction: ProtoAction
  constructorAction: ProtoAction
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

/** A parse failure: the error to send, with the request_id recovered when the frame had a usable one. */
export class FrameError {
  constructor (readonly reason: Error & { details?: ErrorDetail[] }, readonly requestId: RequestIdValue | null) {}
}

/**
 * Turns a raw frame into a validated envelope, or a FrameError. Binary frames are accepted when they
 * hold UTF-8 JSON, as the Tornado ancestor did (Python's json.loads takes bytes).
 */
export function parseFrame (raw: Buffer | ArrayBuffer | Buffer[], isBinary: boolean, options: ParseOptions): Envelope | FrameError {
  let value: unknown
  let text = ''
  try {
    // ws has already checked text frames are UTF-8; binary frames are checked here.
    text = !isBinary && Buffer.isBuffer(raw) ? raw.toString('utf8') : decodeText(raw)
    value = sjson.parse(text, null, options)
  } catch (err) {
    if (!isProtoError(err)) return new FrameError(new ValidationError('Expected Json encodable string'), null)
    return new FrameError(new ValidationError('Frame contains a forbidden __proto__ or constructor.prototype key'), requestIdOf(text))
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return new FrameError(new ValidationError('Expected a JSON object with "resource", "action" and "request_id"'), null)
  }
  if (envelope.Check(value)) return value as Envelope
  return new FrameError(envelopeError(value as Record<string, unknown>), usableRequestId(value as Record<string, unknown>))
}

function decodeText (raw: Buffer | ArrayBuffer | Buffer[]): string {
  if (Array.isArray(raw)) return utf8.decode(Buffer.concat(raw))
  return utf8.decode(raw)
}

function isProtoError (err: unknown): boolean {
  return err instanceof SyntaxError && /prototype property/.test(err.message)
}

/**
 * The request_id of a frame refused for a poisoned key, so the client can match the error. Plain
 * JSON.parse is safe here: it makes "__proto__" an own property and never touches a prototype.
 */
function requestIdOf (text: string): RequestIdValue | null {
  const value: unknown = JSON.parse(text)
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? usableRequestId(value as Record<string, unknown>) : null
}

function usableRequestId (value: Record<string, unknown>): RequestIdValue | null {
  const id = Object.hasOwn(value, 'request_id') ? value.request_id : undefined
  return requestId.Check(id) ? id as RequestIdValue : null
}

/** Builds one VALIDATION_ERROR naming every wrong envelope field (only called after Check failed). */
function envelopeError (value: Record<string, unknown>): Error & { details: ErrorDetail[] } {
  const details: ErrorDetail[] = []
  for (const field of ['resource', 'action', 'request_id']) {
    if (!Object.hasOwn(value, field)) details.push({ path: '/' + field, message: `"${field}" is required` })
  }
  const seen = new Set<string>()
  for (const error of envelope.Errors(value)) {
    const field = error.instancePath.split('/')[1]
    if (field === undefined || seen.has(field) || !Object.hasOwn(FIELD_RULES, field)) continue
    seen.add(field)
    details.push({ path: '/' + field, message: FIELD_RULES[field] as string })
  }
  return validationError(details.map(d => d.message).join('; '), details)
}

/** Details of a failed `data` schema check, paths rooted at the envelope (`/data/...`). */
export function dataErrors (errors: Iterable<{ instancePath: string, message: string }>): ErrorDetail[] {
  const details: ErrorDetail[] = []
  for (const error of errors) details.push({ path: '/data' + error.instancePath, message: error.message })
  return details
}

// Replies are assembled from pre-serialized parts: the request_id is serialized once per message and
// the data by the action's serializer, so a reply costs one JSON.stringify of the data at most.
export function encodeReply (data: string, id: RequestIdValue): string {
  return '{"data":' + data + ',"request_id":' + encodeId(id) + '}'
}

export function encodeId (id: RequestIdValue | null): string {
  return typeof id === 'number' ? String(id) : JSON.stringify(id)
}

export interface WireError {
  code: string
  message: string
  statusCode: number
  details?: unknown
}

export function encodeError (id: RequestIdValue | null, error: WireError): string {
  const frame: Record<string, unknown> = { request_id: id, code: error.code, error: error.message, statusCode: error.statusCode }
  if (error.details === undefined) return JSON.stringify(frame)
  frame.details = error.details
  try {
    return JSON.stringify(frame)
  } catch {
    // details an app attached (cyclic, BigInt...) must not cost the client its answer.
    delete frame.details
    return JSON.stringify(frame)
  }
}

export function encodePublication (topic: string, data: unknown, event: string | undefined): string {
  return encodePublicationJson(topic, JSON.stringify(data) ?? 'null', event)
}

/** Builds a publication frame around data serialized once for every topic and socket. */
export function encodePublicationJson (topic: string, json: string, event: string | undefined): string {
  return '{"topic":' + JSON.stringify(topic) + ',"data":' + json + (event === undefined ? '}' : ',"event":' + JSON.stringify(event) + '}')
}
