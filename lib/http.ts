import { STATUS_CODES } from 'node:http'
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import type { PublishOptions } from './brokers/types.js'
import { ActionContext, type ContextHost, type DrizzleConnection, type DrizzleConnectionStore } from './context.js'
import { SubscribeNotSupportedError, validationError } from './errors.js'
import { Invocation, runResponseHooks, type Answer } from './lifecycle.js'
import type { Envelope, WireError } from './protocol.js'
import { plainSchema, type CompiledAction } from './resources.js'
import type { Runtime } from './runtime.js'
import { HttpStream } from './http-stream.js'
import type { StreamWriter } from './stream.js'

// Option `http`: every action is also `POST <prefix>/<resource>/<action>`, a real Fastify route added
// in the scope that declared the resource, so that scope's Fastify hooks (auth, rate limits...) guard
// it and sibling scopes' do not. After Fastify's own lifecycle, the request runs the same path as a
// WebSocket message: drizzle hooks -> data validation -> handler -> onSend -> the action's serializer.

/**
 * Names that make a route whose URL is the name itself. find-my-way gives `:` and `*` a meaning and
 * leaves reserved characters (`+`, `@`, `%2F`...) percent-encoded, so other names would need the
 * client to guess an encoding: those actions stay WebSocket-only (with a warning).
 */
const ROUTABLE_NAME = /^[A-Za-z0-9._~-]+$/

/** Documented for @fastify/swagger; Fastify's error format plus our `details`. */
const HTTP_ERROR_SCHEMA = {
  type: 'object',
  required: ['statusCode', 'code', 'error', 'message'],
  properties: {
    statusCode: { type: 'integer' },
    code: { type: 'string' },
    error: { type: 'string' },
    message: { type: 'string' },
    details: { type: 'array', items: { type: 'object', properties: { path: { type: 'string' }, message: { type: 'string' } } } }
  }
}

/** The invocation of each request answered, for the route's onResponse hook to run drizzle's. */
const answered = new WeakMap<FastifyRequest, Invocation>()
const hosts = new WeakMap<Runtime, ContextHost>()

/** Serves the actions of every resource declared from now on as HTTP routes (option `http`). */
export function serveOverHttp (rt: Runtime): void {
  if (rt.options.http !== false) rt.declarationListeners.push((scope, actions) => addHttpRoutes(rt, scope, actions))
}

/**
 * Adds the routes of a just-declared resource. Fastify refuses routes once the server has started,
 * so a resource declared after ready stays WebSocket-only and a warning says so: the declaration
 * itself is valid, and throwing would also take it away from WebSocket clients.
 */
function addHttpRoutes (rt: Runtime, scope: FastifyInstance, actions: ReadonlyMap<string, CompiledAction>): void {
  const http = rt.options.http
  if (http === false) return
  for (const action of actions.values()) {
    if (rt.started) {
      warnSkipped(rt.log, action, 'it was declared after the server started; Fastify cannot add routes then')
      continue
    }
    if (!ROUTABLE_NAME.test(action.resource) || !ROUTABLE_NAME.test(action.action)) {
      warnSkipped(rt.log, action, 'HTTP routes need resource and action names made of letters, digits, ".", "_", "~" and "-"')
      continue
    }
    try {
      scope.route(routeOptions(rt, http.prefix, action))
    } catch (err) {
      // Fastify starts before our onReady hook marks the runtime started (another onReady hook may declare).
      if ((err as { code?: unknown }).code !== 'FST_ERR_INSTANCE_ALREADY_LISTENING') throw err
      warnSkipped(rt.log, action, 'it was declared after the server started; Fastify cannot add routes then')
    }
  }
}

function warnSkipped (log: FastifyBaseLogger, action: CompiledAction, why: string): void {
  log.warn({ resource: action.resource, action: action.action }, `fastify-drizzle: no HTTP route for action "${action.action}" of resource "${action.resource}": ${why}; it is available over WebSocket only`)
}

function routeOptions (rt: Runtime, prefix: string, action: CompiledAction): RouteOptions {
  return {
    method: 'POST',
    url: `${prefix}/${action.resource}/${action.action}`,
    schema: routeSchema(action),
    // The schema is there for @fastify/swagger only. Validation is drizzle's own, inside the action
    // chain as on WebSocket: after drizzle's onRequest/preValidation hooks, with TypeBox's compiler
    // (Fastify's Ajv would coerce types and strip properties) and the same `/data/...` error details.
    validatorCompiler: acceptAnything,
    preParsing: emptyJsonIsNoBody,
    onResponse: runOnResponseHooks,
    handler (request, reply) { return handle(rt, action, request, reply) }
  }
}

function routeSchema (action: CompiledAction): Record<string, unknown> {
  const schema: Record<string, unknown> = {
    summary: `${action.resource}.${action.action}`,
    description: `Action "${action.action}" of resource "${action.resource}" (also over WebSocket)`,
    tags: [action.resource],
    // Replies are strings already serialized by the action's serializer, which Fastify sends as they
    // are; Fastify's serializers of these schemas only format errors thrown by the scope's own hooks.
    response: { '4xx': HTTP_ERROR_SCHEMA, '5xx': HTTP_ERROR_SCHEMA }
  }
  if (action.schema.data !== undefined) schema.body = plainSchema(action.schema.data)
  if (action.schema.reply !== undefined) (schema.response as Record<string, unknown>)[200] = plainSchema(action.schema.reply)
  return schema
}

function acceptAnything (): () => true {
  return () => true
}

/**
 * An empty body means "no data", whatever its Content-Type says: Fastify's JSON parser would refuse
 * an empty `application/json` body (FST_ERR_CTP_EMPTY_JSON_BODY), which many HTTP clients send for
 * a bodiless POST. With the header gone, Fastify skips parsing and `request.body` is undefined.
 */
async function emptyJsonIsNoBody (request: FastifyRequest, _reply: FastifyReply, payload: unknown): Promise<unknown> {
  const headers = request.raw.headers
  // Without Content-Length or Transfer-Encoding an HTTP/1 request has no body (RFC 9112 6.3), the test
  // Fastify applies when there is no Content-Type; HTTP/2 frames a body without either header.
  const length = headers['content-length']
  const bodiless = length === '0' || (length === undefined && headers['transfer-encoding'] === undefined && request.raw.httpVersionMajor === 1)
  if (bodiless) delete headers['content-type']
  return payload
}

async function handle (rt: Runtime, action: CompiledAction, request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
  const message = envelopeOf(action, request)
  if (message instanceof Error) return sendError(reply, { code: 'VALIDATION_ERROR', message: message.message, statusCode: 400, details: message.details })
  const maxTotal = rt.options.maxInFlightTotal
  if (rt.runner.inFlight >= maxTotal) return sendError(reply, { code: 'TOO_MANY_REQUESTS', message: `Too many requests in flight on the server (limit ${maxTotal})`, statusCode: 429 })
  const ctx = new ActionContext(hostOf(rt), new HttpConnection(request), action.resource, action.action, request.id, action.scope)
  return await new Promise<FastifyReply>(resolve => {
    const invocation = new Invocation(action, message, ctx, new HttpAnswer(reply, resolve, () => rt.closing))
    answered.set(request, invocation)
    // run() never rejects: failures are answered (logged when 5xx, with onError/onTimeout run) there.
    rt.runner.run(invocation)
  })
}

/**
 * Answers an action over HTTP: the serialized reply as it is, or Fastify's error format; a streaming
 * action answers NDJSON (lib/http-stream.ts).
 */
class HttpAnswer implements Answer {
  private stream: HttpStream | undefined

  constructor (private readonly response: FastifyReply, private readonly done: (reply: FastifyReply) => void, private readonly closing: () => boolean) {}

  reply (_invocation: Invocation, json: string): void {
    if (this.stream !== undefined) this.stream.reply(json)
    else this.done(this.response.code(200).type('application/json; charset=utf-8').send(json))
  }

  fail (_invocation: Invocation, error: WireError): void {
    if (this.stream !== undefined) this.stream.fail(error)
    else this.done(sendError(this.response, error))
  }

  ended (): void {
    this.stream?.ended()
  }

  /** The response becomes NDJSON, taken over from Fastify (the route handler resolves at once). */
  streamWriter (invocation: Invocation): StreamWriter {
    this.stream = new HttpStream(this.response, invocation, this.closing)
    this.done(this.response)
    return this.stream
  }
}

/** The request body is the message's `data`: an object or an array, or nothing for an empty body. */
function envelopeOf (action: CompiledAction, request: FastifyRequest): Envelope | (Error & { details: unknown }) {
  const body = request.body
  const message: Envelope = { resource: action.resource, action: action.action, request_id: request.id }
  if (body === undefined) return message
  if (body === null || typeof body !== 'object' || Buffer.isBuffer(body)) {
    return validationError('"data" must be an object or an array', [{ path: '/data', message: 'must be an object or an array (send the data as a JSON body)' }])
  }
  message.data = body as Envelope['data']
  return message
}

/** Fastify's error format, `{ statusCode, code, error, message }`, with the codes of the wire protocol. */
function sendError (reply: FastifyReply, wire: WireError): FastifyReply {
  const body: Record<string, unknown> = { statusCode: wire.statusCode, code: wire.code, error: STATUS_CODES[wire.statusCode] ?? 'Error', message: wire.message }
  if (wire.details !== undefined) body.details = wire.details
  return reply.code(wire.statusCode).type('application/json; charset=utf-8').send(JSON.stringify(body))
}

/** Drizzle's onResponse hooks, once Fastify has sent the response, as on WebSocket after the reply frame. */
async function runOnResponseHooks (request: FastifyRequest): Promise<void> {
  const invocation = answered.get(request)
  if (invocation === undefined) return
  answered.delete(request)
  await runResponseHooks(invocation)
}

/** ctx.publish reaches subscribers as from anywhere; an HTTP request has no socket to subscribe. */
function hostOf (rt: Runtime): ContextHost {
  let host = hosts.get(rt)
  if (host === undefined) {
    host = {
      subscribe: () => Promise.reject(new SubscribeNotSupportedError('subscribe')),
      unsubscribe: () => Promise.reject(new SubscribeNotSupportedError('unsubscribe')),
      publish: (topic: string | readonly string[], data: unknown, options?: PublishOptions, from?: ActionContext) => rt.publish(topic, data, options, from),
      logFields: (ctx: ActionContext) => rt.logFields(ctx)
    }
    hosts.set(rt, host)
  }
  return host
}

/**
 * `ctx.connection` over HTTP: a stand-in that lives as long as the request, so handlers written for
 * WebSocket keep working. Its id is the request id, its store starts empty every time and it has no
 * topics; `send` delivers nothing (returns false) and `close` does nothing.
 */
class HttpConnection implements DrizzleConnection {
  readonly id: string
  readonly log: FastifyBaseLogger
  readonly store: DrizzleConnectionStore = Object.create(null)
  readonly topics: ReadonlySet<string> = new Set()
  readonly user = null

  constructor (readonly request: FastifyRequest) {
    this.id = request.id
    this.log = request.log
  }

  send (): boolean { return false }

  close (): void {}
}
