import type { AddressInfo } from 'node:net'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { InvalidOptionError, describe } from './errors.js'
import { MAX_NAME_LENGTH, MAX_REQUEST_ID_LENGTH } from './protocol.js'
import { plainSchema, type CompiledAction } from './resources.js'
import type { Runtime } from './runtime.js'
import { CancelData, isGeneratorFunction, REQUEST_RESOURCE } from './stream.js'
import { ALL_TOPIC, type DeclaredTopic } from './topics.js'
import { PRESENCE_RESOURCE, presenceSettings } from './presence.js'
import { USER_TOPIC } from './users.js'

// An AsyncAPI 3.0 document generated from the declarations, read from the registry each time it is
// asked for: resources may be declared after the server started, and the document is not a hot path.
// Seen from the server: it *receives* action requests on the WebSocket channel and answers with a
// reply (AsyncAPI 3 operation replies), and it *sends* publications on each topic channel.

export interface AsyncApiServer {
  host: string
  protocol: 'ws' | 'wss'
  pathname?: string
  description?: string
}

/** The generated document: plain JSON (no functions, no TypeBox symbols), ready for JSON.stringify. */
export interface AsyncApiDocument {
  asyncapi: '3.0.0'
  info: { title: string, version: string, description?: string }
  defaultContentType: string
  servers: Record<string, AsyncApiServer>
  channels: Record<string, Record<string, unknown>>
  operations: Record<string, Record<string, unknown>>
  components: { schemas: Record<string, unknown> }
}

export interface AsyncApiCallOptions {
  /** The server's URL as clients reach it (`ws://` or `wss://`); overrides the `serverUrl` option. */
  serverUrl?: string | URL
}

const SERVER = 'drizzle'
const WS_CHANNEL = 'drizzle'
const ERROR_MESSAGE = 'error'
const TOPIC_RESOURCE = '$topic'

// Codes the plugin itself sends (PROTOCOL.md, Error codes); a handler's own 4xx errors add theirs.
const PROTOCOL_CODES = ['VALIDATION_ERROR', 'RESOURCE_NOT_FOUND', 'ACTION_NOT_FOUND', 'TOPIC_NOT_FOUND', 'UNAUTHORIZED', 'FORBIDDEN',
  'TOO_MANY_REQUESTS', 'ACTION_TIMEOUT', 'SERVICE_UNAVAILABLE', 'INTERNAL_ERROR', 'CANCELLED']

const REQUEST_ID_REF = { $ref: '#/components/schemas/RequestId' }
const CORRELATION = { location: '$message.payload#/request_id' }

const COMPONENT_SCHEMAS = {
  RequestId: {
    description: 'Chosen by the client; echoed in the reply or error frame',
    oneOf: [
      { type: 'string', minLength: 1, maxLength: MAX_REQUEST_ID_LENGTH },
      { type: 'integer', minimum: Number.MIN_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER }
    ]
  },
  ErrorFrame: {
    type: 'object',
    required: ['request_id', 'code', 'error', 'statusCode'],
    properties: {
      request_id: { description: 'null when the frame could not be parsed or carried no usable id', oneOf: [REQUEST_ID_REF, { type: 'null' }] },
      code: {
        anyOf: [
          { type: 'string', enum: PROTOCOL_CODES, description: 'Codes of the protocol' },
          { type: 'string', description: 'Code of an error a handler threw with a statusCode below 500 (e.g. CONFLICT)' }
        ]
      },
      error: { type: 'string', description: 'Human-readable message; "Unknown error" for any 5xx' },
      statusCode: { type: 'integer', minimum: 400, maximum: 599 },
      details: {
        type: 'array',
        items: { type: 'object', required: ['path', 'message'], properties: { path: { type: 'string' }, message: { type: 'string' } } }
      }
    }
  }
}

/** Builds the document for the app `rt` serves; `server` is where clients connect. */
export function buildAsyncApi (rt: Runtime, server: AsyncApiServer): AsyncApiDocument {
  const info = rt.options.asyncapi.info
  const doc: AsyncApiDocument = {
    asyncapi: '3.0.0',
    info: { ...info, description: info.description ?? 'WebSocket API served by fastify-drizzle: actions on resources (request/reply) and topic publications.' },
    defaultContentType: 'application/json',
    servers: { [SERVER]: server },
    channels: {},
    operations: {},
    components: { schemas: plainSchema(COMPONENT_SCHEMAS) }
  }
  const messages: Record<string, unknown> = {
    [ERROR_MESSAGE]: message('error', 'Error frame', 'The reply when an action fails', { $ref: '#/components/schemas/ErrorFrame' }, true)
  }
  doc.channels[WS_CHANNEL] = {
    address: rt.options.path,
    title: 'WebSocket endpoint',
    description: 'Every frame travels on this one WebSocket: action requests and their replies, and the publications of every topic the connection is subscribed to.',
    servers: [{ $ref: `#/servers/${SERVER}` }],
    messages,
    bindings: { ws: { method: 'GET', bindingVersion: '0.1.0' } }
  }
  const keys: Keys = { messages: new KeyAllocator([ERROR_MESSAGE]), channels: new KeyAllocator([WS_CHANNEL]), operations: new KeyAllocator([]) }
  for (const action of rt.registry.actions()) {
    addAction(doc, messages, keys, action.resource, action.action, action.schema, describeAction(action), isGeneratorFunction(action.handler))
  }
  addTopicActions(doc, messages, keys)
  addAction(doc, messages, keys, REQUEST_RESOURCE, 'cancel', { data: CancelData, reply: CANCEL_REPLY },
    'Built-in: cancel a request of this connection still in flight; it ends with a CANCELLED error (499)')
  const declared = rt.patterns.all()
  for (const topic of declared) {
    const channelKey = addTopic(doc, keys, topic.pattern, topic.params, topic.options.schema, topicDescription(topic), keepsHistory(topic))
    const presence = presenceSettings(topic)
    // A specification extension, so tools (the playground) know the topic answers $presence/get.
    if (presence !== undefined) (doc.channels[channelKey] as Record<string, unknown>)['x-drizzle-presence'] = presence
    if (presence?.events === true) addPresenceEvents(doc, channelKey, topic.pattern)
  }
  if (declared.some(t => presenceSettings(t) !== undefined)) addPresenceAction(doc, messages, keys)
  if (rt.options.identify !== undefined) {
    addTopic(doc, keys, USER_TOPIC, [undefined], undefined,
      'Publications to the connection\'s user (`app.drizzle.publishToUser(user, data, { event })`, or a broker message to `$user/<user>`), on every instance. Never subscribed: every identified connection receives it.')
  }
  if (!declared.some(t => t.pattern === ALL_TOPIC)) {
    addTopic(doc, keys, ALL_TOPIC, [undefined], undefined, 'Every connection receives it from the moment it connects (`app.drizzle.publish("__all__", data)`).')
  }
  return doc
}

function describeAction (action: CompiledAction): string {
  return `Action "${action.action}" of resource "${action.resource}"`
}

function topicDescription (topic: DeclaredTopic): string {
  const who = topic.options.authorize === undefined ? 'Any client' : 'A client the topic\'s authorize function accepts'
  const history = keepsHistory(topic)
    ? ' It keeps history: every publication carries its "offset"; subscribing with "since": {"offset","epoch"} replays what followed that position (the reply says "recovered").'
    : ''
  return `Declared topic "${topic.pattern}". ${who} may subscribe with {"resource":"$topic","action":"subscribe","data":{"topic":"<topic>"}}; handlers may subscribe connections too.${history}`
}

function keepsHistory (topic: DeclaredTopic): boolean {
  const history = (topic.options as { history?: unknown }).history
  return history !== undefined && history !== false
}

/** A position in a topic's history (README "History and recovery"). */
const POSITION = {
  type: 'object',
  required: ['offset', 'epoch'],
  properties: { offset: { type: 'integer', minimum: 0 }, epoch: { type: 'string', minLength: 1, maxLength: 64 } }
}

const CANCEL_REPLY = { type: 'object', required: ['cancelled'], properties: { cancelled: { type: 'boolean', description: 'false when nothing of that id runs' } } }

/**
 * An action: a request message and a reply message on the WebSocket channel, and a receive operation
 * with its reply. A streaming action (an async generator handler) adds its item message: items come
 * first, then the reply or an error.
 */
function addAction (doc: AsyncApiDocument, messages: Record<string, unknown>, keys: Keys, resource: string, action: string,
  schema: { data?: unknown, reply?: unknown }, description: string, streams = false): void {
  const name = `${resource}.${action}`
  const requestKey = keys.messages.take(`${name}.request`)
  const replyKey = keys.messages.take(`${name}.reply`)
  messages[requestKey] = message(requestKey, `${name} request`, description, requestPayload(resource, action, schema.data), true)
  messages[replyKey] = message(replyKey, `${name} reply`, `Reply of ${description.toLowerCase()}`, replyPayload(schema.reply), true)
  const ref = (key: string) => ({ $ref: `#/channels/${WS_CHANNEL}/messages/${key}` })
  const replies = [ref(replyKey), ref(ERROR_MESSAGE)]
  if (streams) {
    const itemKey = keys.messages.take(`${name}.item`)
    messages[itemKey] = message(itemKey, `${name} item`, `One item of the streamed reply of ${description.toLowerCase()}; the reply (or an error) ends the stream`, ITEM_PAYLOAD, true)
    replies.unshift(ref(itemKey))
  }
  doc.operations[keys.operations.take(name)] = {
    action: 'receive',
    channel: { $ref: `#/channels/${WS_CHANNEL}` },
    title: name,
    summary: description,
    tags: [{ name: resource }],
    messages: [ref(requestKey)],
    reply: { channel: { $ref: `#/channels/${WS_CHANNEL}` }, messages: replies }
  }
}

/** The built-in `$topic` resource through which clients subscribe themselves to declared topics. */
function addTopicActions (doc: AsyncApiDocument, messages: Record<string, unknown>, keys: Keys): void {
  for (const action of ['subscribe', 'unsubscribe']) {
    const subscribing = action === 'subscribe'
    const data = { type: 'object', required: ['topic'], properties: { topic: { type: 'string', minLength: 1, maxLength: MAX_NAME_LENGTH }, ...(subscribing ? { since: { ...POSITION, description: 'History topics only: replay what followed this position' } } : {}) } }
    const positions = {
      offset: { type: 'integer', minimum: 0, description: 'History topics only: the last assigned offset' },
      epoch: { type: 'string', description: 'History topics only: the epoch of the topic\'s history' },
      recovered: { type: 'boolean', description: 'With since only: false when what followed it cannot be replayed (reload the state)' }
    }
    const reply = { type: 'object', required: ['topic', 'subscribed'], properties: { topic: { type: 'string' }, subscribed: { type: 'boolean', const: subscribing }, ...(subscribing ? positions : {}) } }
    addAction(doc, messages, keys, TOPIC_RESOURCE, action, { data, reply },
      `Built-in: ${action} the connection ${action === 'subscribe' ? 'to' : 'from'} a topic (declared topics only for subscribe)`)
  }
}

const MEMBER = { type: 'object', required: ['connection', 'user'], properties: { connection: { type: 'string' }, user: { type: ['string', 'null'] } } }

/** The built-in `$presence/get`, for subscribers of topics declared with presence. */
function addPresenceAction (doc: AsyncApiDocument, messages: Record<string, unknown>, keys: Keys): void {
  const data = { type: 'object', required: ['topic'], properties: { topic: { type: 'string', minLength: 1, maxLength: MAX_NAME_LENGTH } } }
  const reply = { type: 'object', required: ['topic', 'members'], properties: { topic: { type: 'string' }, members: { type: 'array', items: MEMBER } } }
  addAction(doc, messages, keys, PRESENCE_RESOURCE, 'get', { data, reply },
    'Built-in: the members of a topic declared with presence, on every instance (FORBIDDEN unless subscribed to it)')
}

/** `$join` and `$leave` frames on a presence topic's channel, sent by its send operation too. */
function addPresenceEvents (doc: AsyncApiDocument, channelKey: string, pattern: string): void {
  const channel = doc.channels[channelKey] as { messages: Record<string, unknown> }
  for (const [key, event, what] of [['join', '$join', 'subscribed'], ['leave', '$leave', 'unsubscribed or closed']] as const) {
    const payload = { type: 'object', required: ['topic', 'event', 'data'], properties: { topic: { type: 'string' }, event: { type: 'string', const: event }, data: MEMBER } }
    channel.messages[key] = message(key, `${pattern} ${event}`, `A connection ${what} (presence)`, payload, false)
  }
  for (const operation of Object.values(doc.operations) as Array<{ channel: { $ref: string }, messages: unknown[] }>) {
    if (operation.channel.$ref !== `#/channels/${channelKey}`) continue
    for (const key of ['join', 'leave']) operation.messages.push({ $ref: `#/channels/${channelKey}/messages/${key}` })
  }
}

/** A topic: a channel whose address has `{param}` for each `:param`, and the server's send operation. Returns the channel's key. */
function addTopic (doc: AsyncApiDocument, keys: Keys, pattern: string, params: readonly (string | undefined)[],
  schema: unknown, description: string, positioned = false): string {
  const segments = pattern.split('/').map((segment, i) => params[i] === undefined ? segment : `{${params[i]}}`)
  const name = pattern.replace(/\//g, '.').replace(/:/g, '')
  const channelKey = keys.channels.take(`topic.${name}`)
  const parameters: Record<string, unknown> = {}
  for (const param of params) if (param !== undefined) parameters[param] = { description: `The ":${param}" segment of "${pattern}"` }
  const payload = {
    type: 'object',
    required: ['topic', 'data'],
    properties: {
      topic: { type: 'string', description: `The concrete topic (${pattern})` },
      data: schema === undefined ? {} : plainSchema(schema),
      event: { type: 'string', description: 'Optional event name given to publish()' },
      ...(positioned ? { offset: { type: 'integer', minimum: 1, description: 'Position in the topic\'s history: one more than the previous publication\'s (a publication from a plain Redis PUBLISH has none)' } } : {})
    }
  }
  doc.channels[channelKey] = {
    address: segments.join('/'),
    title: pattern,
    description,
    servers: [{ $ref: `#/servers/${SERVER}` }],
    ...(Object.keys(parameters).length > 0 ? { parameters } : {}),
    messages: { publication: message('publication', `${pattern} publication`, `A publication on ${pattern}`, payload, false) }
  }
  doc.operations[keys.operations.take(`publish.${name}`)] = {
    action: 'send',
    channel: { $ref: `#/channels/${channelKey}` },
    title: `publish ${pattern}`,
    summary: `The server sends each publication on ${pattern} to the connections subscribed to it`,
    messages: [{ $ref: `#/channels/${channelKey}/messages/publication` }]
  }
  return channelKey
}

function message (name: string, title: string, summary: string, payload: unknown, correlated: boolean): Record<string, unknown> {
  return { name, title, summary, contentType: 'application/json', payload, ...(correlated ? { correlationId: CORRELATION } : {}) }
}

function requestPayload (resource: string, action: string, data: unknown): Record<string, unknown> {
  return {
    type: 'object',
    required: data === undefined ? ['resource', 'action', 'request_id'] : ['resource', 'action', 'request_id', 'data'],
    properties: {
      resource: { type: 'string', const: resource },
      action: { type: 'string', const: action },
      request_id: REQUEST_ID_REF,
      data: data === undefined ? { type: ['object', 'array'] } : plainSchema(data)
    }
  }
}

const ITEM_PAYLOAD = {
  type: 'object',
  required: ['data', 'request_id', 'more'],
  properties: {
    data: { description: 'A value the handler yielded' },
    request_id: REQUEST_ID_REF,
    more: { type: 'boolean', const: true }
  }
}

function replyPayload (reply: unknown): Record<string, unknown> {
  return {
    type: 'object',
    required: ['data', 'request_id'],
    properties: {
      data: reply === undefined ? { description: 'The handler\'s return value; null when it returns nothing' } : plainSchema(reply),
      request_id: REQUEST_ID_REF
    }
  }
}

interface Keys { messages: KeyAllocator, channels: KeyAllocator, operations: KeyAllocator }

/**
 * Keys for channels, messages and operations: names may hold any character, but keys appear in
 * `$ref` JSON pointers and AsyncAPI tools expect identifiers, so they are reduced to [A-Za-z0-9._-]
 * and made unique with a numeric suffix.
 */
class KeyAllocator {
  private readonly used: Set<string>
  constructor (reserved: readonly string[]) { this.used = new Set(reserved) }

  take (name: string): string {
    const base = name.replace(/[^A-Za-z0-9._-]/g, '_')
    let key = base
    for (let n = 2; this.used.has(key); n++) key = `${base}_${n}`
    this.used.add(key)
    return key
  }
}

// ---- where clients connect --------------------------------------------------------------------

/** The server object: `serverUrl` (call or option), else the request's host, else the listening address. */
export function serverOf (rt: Runtime, request?: FastifyRequest, override?: string | URL): AsyncApiServer {
  const url = override === undefined ? rt.options.asyncapi.serverUrl : parseServerUrl(override)
  if (url !== undefined) {
    const pathname = url.pathname.replace(/\/+$/, '')
    return { host: url.host, protocol: url.protocol === 'wss:' ? 'wss' : 'ws', ...(pathname === '' ? {} : { pathname }) }
  }
  if (request !== undefined) return { host: request.host, protocol: request.protocol === 'https' ? 'wss' : 'ws' }
  return { host: listeningHost(rt.root), protocol: 'ws' }
}

function parseServerUrl (value: string | URL): URL {
  const url = value instanceof URL ? value : URL.canParse(value) ? new URL(value) : undefined
  if (url === undefined || (url.protocol !== 'ws:' && url.protocol !== 'wss:')) {
    throw new InvalidOptionError('serverUrl', 'expected a ws:// or wss:// URL', describe(value))
  }
  return url
}

function listeningHost (app: FastifyInstance): string {
  const address = app.server.address() as AddressInfo | string | null
  if (address === null || typeof address === 'string') return 'localhost'
  return address.family === 'IPv6' ? `[${address.address}]:${address.port}` : `${address.address}:${address.port}`
}

/** `GET <asyncapi.path>`: the document, with the host clients used to reach this request. */
export function addAsyncApiRoute (rt: Runtime, app: FastifyInstance): void {
  const path = rt.options.asyncapi.path
  if (path === undefined) return
  app.route({
    method: 'GET',
    url: path,
    handler (request: FastifyRequest, reply: FastifyReply) {
      reply.type('application/json; charset=utf-8').send(JSON.stringify(buildAsyncApi(rt, serverOf(rt, request))))
    }
  })
}
