import { createError } from '@fastify/error'

// Errors sent to clients in error frames. Their codes are the wire protocol (PROTOCOL.md, Error codes):
// clients and outside tests match on them, so they carry no FST_ prefix.
export const ValidationError = createError('VALIDATION_ERROR', '%s', 400)
export const ResourceNotFoundError = createError('RESOURCE_NOT_FOUND', 'Resource "%s" not found', 404)
export const ActionNotFoundError = createError('ACTION_NOT_FOUND', 'Action "%s" not found on resource "%s"', 404)
export const TopicNotFoundError = createError('TOPIC_NOT_FOUND', 'Topic "%s" not found', 404)
export const UnauthorizedError = createError('UNAUTHORIZED', '%s', 401)
export const ForbiddenError = createError('FORBIDDEN', '%s', 403)
// The refusals of limits come at the rate a hostile client sends: made without a stack trace, which
// cost ~20 µs each (they tell nothing), so refusing is no dearer than serving.
export const TooManyRequestsError = createError('TOO_MANY_REQUESTS', '%s', 429, Error, false)
export const TooManySubscriptionsError = createError('TOO_MANY_SUBSCRIPTIONS', 'Subscription limit of %d topics per connection reached', 429, Error, false)
export const ActionTimeoutError = createError('ACTION_TIMEOUT', 'Action did not complete within %d ms', 504)
export const ShuttingDownError = createError('SERVICE_UNAVAILABLE', 'Server is shutting down', 503)
export const InternalError = createError('INTERNAL_ERROR', 'Unknown error', 500)
// The reason of ctx.signal when the connection of an action in flight closed.
export const ConnectionClosedError = createError('CONNECTION_CLOSED', 'The connection closed before the action ended')
// `$request/cancel` stopped the request (499: the client closed the request, as nginx counts it).
export const CancelledError = createError('CANCELLED', 'Request cancelled', 499, Error, false)
// A stream needs a request_id no other request in flight on its connection uses: its items and its
// cancel would be ambiguous.
export const DuplicateStreamError = createError('VALIDATION_ERROR', 'request_id %s is already used by a request in flight; a stream needs its own', 400)
// The handler returned a stream where the transport has no way to send one.
export const StreamNotSupportedError = createError('STREAM_NOT_SUPPORTED', 'This transport cannot stream a reply', 400)
// Over HTTP (option `http`) a request has no socket to subscribe: ctx.subscribe/unsubscribe throw this.
export const SubscribeNotSupportedError = createError('SUBSCRIBE_NOT_SUPPORTED', 'ctx.%s is not available over HTTP', 400)

// Errors thrown to the developer at registration time. Each message says what was received.
export const InvalidOptionError = createError('FST_DRIZZLE_INVALID_OPTION', 'Invalid option "%s": %s, received %s')
export const AlreadyRegisteredError = createError('FST_DRIZZLE_ALREADY_REGISTERED', 'fastify-drizzle is already registered on this instance or an ancestor')
export const InvalidResourceNameError = createError('FST_DRIZZLE_INVALID_RESOURCE_NAME', 'Invalid resource name: %s')
export const DuplicateResourceError = createError('FST_DRIZZLE_DUPLICATE_RESOURCE', 'Resource "%s" is already declared')
export const InvalidActionError = createError('FST_DRIZZLE_INVALID_ACTION', 'Invalid action "%s" of resource "%s": %s')
export const InvalidSchemaError = createError('FST_DRIZZLE_INVALID_SCHEMA', 'Invalid %s schema of %s: %s')
export const InvalidHookError = createError('FST_DRIZZLE_INVALID_HOOK', 'Invalid hook: %s')
export const InvalidTopicError = createError('FST_DRIZZLE_INVALID_TOPIC', 'Invalid topic: %s')
export const DuplicateTopicError = createError('FST_DRIZZLE_DUPLICATE_TOPIC', 'Topic pattern "%s" is already declared')
// A publication failing its declared topic's schema; no statusCode: a handler publishing bad data is a
// server bug, which the client sees as INTERNAL_ERROR while the log has the details.
export const InvalidPublicationError = createError('FST_DRIZZLE_INVALID_PUBLICATION', 'Invalid publication to topic "%s": %s')
export const AlreadyStartedError = createError('FST_DRIZZLE_ALREADY_STARTED', 'Cannot %s after the server has started')
// An option that needs an optional peer dependency the app has not installed (e.g. metrics: prom-client).
export const MissingDependencyError = createError('FST_DRIZZLE_MISSING_DEPENDENCY', 'Option "%s" needs the package "%s": install it (npm install %s)')

// Errors of brokers, returned to callers of publish().
export const BrokerUnavailableError = createError('FST_DRIZZLE_BROKER_UNAVAILABLE', 'Broker "%s" cannot take the publication: %s', 503)
export const BrokerClosedError = createError('FST_DRIZZLE_BROKER_CLOSED', 'Broker "%s" is closed', 503)
// identify (or publishToUser/disconnectUser) given something that cannot name a user.
export const InvalidUserError = createError('FST_DRIZZLE_INVALID_USER', '%s an invalid user: %s', 500)
export const BrokerUnsupportedError = createError('FST_DRIZZLE_BROKER_UNSUPPORTED', 'Broker "%s" does not support %s, which topic "%s" declares')
// position() of a topic that no declaration with `history` serves.
export const NoHistoryError = createError('FST_DRIZZLE_NO_HISTORY', 'Topic "%s" keeps no history: declare it with topic(pattern, { history: { size } })')

/** A VALIDATION_ERROR carrying the list of what was wrong, each with its path. */
export function validationError (message: string, details: Array<{ path: string, message: string }>): Error & { details: Array<{ path: string, message: string }> } {
  return Object.assign(new ValidationError(message), { details })
}

/** Describes a received value for error messages: its type and a short rendering. */
export function describe (value: unknown): string {
  if (value === null) return 'null'
  if (Array.isArray(value)) return `an array (length ${value.length})`
  switch (typeof value) {
    case 'string': return `a string (${JSON.stringify(value.length > 40 ? value.slice(0, 40) + '...' : value)})`
    case 'function': return `a function (${value.name || 'anonymous'})`
    case 'object': return `an object (keys: ${Object.keys(value).slice(0, 5).join(', ') || 'none'})`
    case 'undefined': return 'undefined'
    default: return `${typeof value} (${String(value)})`
  }
}
