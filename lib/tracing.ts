import type * as Api from '@opentelemetry/api'
import { isTraceparent } from './brokers/wire.js'
import { kSpan } from './context.js'

// OpenTelemetry traces (DESIGN section 12, README "Observability"): a span per action, continuing the
// frame's `traceparent` or else the upgrade request's trace; a `publish` span per publication whose
// context travels in the broker message; a `process` span on each instance that delivers it, linked
// to that context. `@opentelemetry/api` is an optional peer dependency, loaded if installed. Whether
// an SDK is registered is decided once, when the server becomes ready (`probe`): without one, every
// entry point is a boolean test, so an app without an SDK pays nothing.

type OtelApi = typeof Api

/** A span as the rest of the plugin holds it: opaque, so that no declaration needs @opentelemetry/api. */
export type TraceSpan = object

/** What the tracing needs of an action being run (lifecycle's Invocation). */
export interface TracedInvocation {
  readonly action: { readonly resource: string, readonly action: string }
  readonly message: { readonly request_id: string | number, readonly [extra: string]: unknown }
  /** The handler's context: it holds the span, for logs and publications made in the action. */
  readonly ctx: SpanHolder & { readonly request: object }
}

/** What holds an action's span: its handler context (ActionContext). */
export interface SpanHolder { [kSpan]: object | undefined }

/** A publication being traced: its span, and the context the broker message carries. */
export interface TracedPublish { span: TraceSpan, traceparent: string }

/** Semantic-convention values (RPC and messaging) this plugin writes. */
const RPC_SYSTEM = 'fastify-drizzle'
const TRACER_NAME = 'fastify-drizzle'
const kProbe = Symbol('fastify-drizzle.probe')

/** Loads @opentelemetry/api if the app installed it; undefined otherwise (then nothing is traced). */
export async function loadTracing (): Promise<Tracing | undefined> {
  try {
    const mod = await import('@opentelemetry/api') as OtelApi & { default?: OtelApi }
    return new Tracing(mod.trace === undefined && mod.default !== undefined ? mod.default : mod)
  } catch {
    return undefined
  }
}

export class Tracing {
  /** True once `probe` found an SDK; until then, and without one, nothing is traced. */
  active = false
  /**
   * True when a context manager is registered (`probe`): only then does making a span active change
   * what the app's own code sees. Without one, `context.with` runs the function in the root context
   * whatever it is given, so running an action "with" its span would build a context for nothing.
   */
  activates = false
  private tracer: Api.Tracer | undefined
  /** The context of each upgrade request, captured while its handler ran: the parent of its actions. */
  private readonly upgrades = new WeakMap<object, Api.Context>()
  private readonly api: OtelApi
  /** startSpan's options for actions, made once: the SDK only reads them. */
  private readonly serverKind: Api.SpanOptions

  // Typed `object` so that no declaration of the plugin refers to @opentelemetry/api.
  constructor (api: object) {
    this.api = api as OtelApi
    this.serverKind = { kind: this.api.SpanKind.SERVER }
  }

  /**
   * Decides whether an SDK is registered: the no-op tracer of @opentelemetry/api gives a root span
   * an invalid context, any SDK a valid one (sampled or not). The probe span is never ended, so it is
   * never exported.
   */
  probe (): void {
    const tracer = this.api.trace.getTracer(TRACER_NAME)
    const probe = tracer.startSpan('probe', { root: true }, this.api.ROOT_CONTEXT)
    this.active = this.api.isSpanContextValid(probe.spanContext())
    this.tracer = this.active ? tracer : undefined
    // Asked through the public API, as for the SDK: a context given to `with` is the active one inside
    // it only when a context manager is registered (the API's default one keeps ROOT_CONTEXT).
    const marker = this.api.ROOT_CONTEXT.setValue(kProbe, true)
    this.activates = this.active && this.api.context.with(marker, () => this.api.context.active() === marker)
  }

  /** Keeps the trace of the upgrade request (e.g. @fastify/otel's span), for actions without a traceparent. */
  captureUpgrade (request: object): void {
    if (!this.active) return
    const fromOtel = (request as { opentelemetry?: () => { context?: Api.Context } }).opentelemetry
    const context = typeof fromOtel === 'function' ? fromOtel.call(request)?.context : undefined
    this.upgrades.set(request, context ?? this.api.context.active())
  }

  // ---- actions --------------------------------------------------------------------------------

  /** Starts the span of an action (kind SERVER, named `<resource>/<action>` as RPC spans are). */
  startAction (invocation: TracedInvocation): TraceSpan {
    const { resource, action } = invocation.action
    const span = (this.tracer as Api.Tracer).startSpan(`${resource}/${action}`, this.serverKind, this.parentOf(invocation))
    if (span.isRecording()) {
      span.setAttributes({
        'rpc.system': RPC_SYSTEM,
        'rpc.service': resource,
        'rpc.method': action,
        'drizzle.request_id': String(invocation.message.request_id)
      })
    }
    invocation.ctx[kSpan] = span
    return span
  }

  /**
   * Runs the action with its span active, so the app's own spans (database, HTTP calls) nest in it,
   * an unsampled one included (its children stay unsampled). Callers skip it when `activates` is false.
   */
  runAction<T> (span: TraceSpan, fn: () => Promise<T>): Promise<T> {
    return this.api.context.with(this.api.trace.setSpan(this.api.context.active(), span as Api.Span), fn)
  }

  /** Ends an action's span with the reply's statusCode; 5xx (the server's failures) mark it as an error. */
  endAction (span: TraceSpan, statusCode: number, code: string | undefined): void {
    const s = span as Api.Span
    if (s.isRecording()) {
      s.setAttribute('drizzle.status_code', statusCode)
      if (code !== undefined) s.setAttribute('error.type', code)
      if (statusCode >= 500) s.setStatus({ code: this.api.SpanStatusCode.ERROR, message: code })
    }
    s.end()
  }

  /** `trace_id`, `span_id` and `trace_flags` for the log lines of an action that has a span. */
  logFields (ctx: SpanHolder): Record<string, string> | undefined {
    const span = ctx[kSpan] as Api.Span | undefined
    if (span === undefined) return undefined
    const sc = span.spanContext()
    if (!this.api.isSpanContextValid(sc)) return undefined
    return { trace_id: sc.traceId, span_id: sc.spanId, trace_flags: sc.traceFlags.toString(16).padStart(2, '0') }
  }

  private parentOf (invocation: TracedInvocation): Api.Context {
    const remote = this.remoteContext(invocation.message.traceparent)
    if (remote !== undefined) return this.api.trace.setSpanContext(this.api.ROOT_CONTEXT, remote)
    const request = invocation.ctx.request
    const upgrade = this.upgrades.get(request)
    if (upgrade !== undefined) return upgrade
    // HTTP transport: the route runs in the request's own context.
    const fromOtel = (request as { opentelemetry?: () => { context?: Api.Context } }).opentelemetry
    return (typeof fromOtel === 'function' ? fromOtel.call(request)?.context : undefined) ?? this.api.context.active()
  }

  // ---- publications -----------------------------------------------------------------------------

  /**
   * Starts the span of a publication (kind PRODUCER, `publish`), child of the action it was made in
   * (`from`), of a `traceparent` the caller gave, or of the active context. Undefined when it is not
   * sampled: then no context is carried, and receivers make no span.
   */
  startPublish (topics: readonly string[], system: string, traceparent: string | undefined, from: SpanHolder | undefined, template: string | undefined): TracedPublish | undefined {
    const api = this.api
    const action = from?.[kSpan] as Api.Span | undefined
    const remote = this.remoteContext(traceparent)
    const parent = action !== undefined
      ? api.trace.setSpan(api.context.active(), action)
      : remote !== undefined ? api.trace.setSpanContext(api.ROOT_CONTEXT, remote) : api.context.active()
    const span = (this.tracer as Api.Tracer).startSpan('publish', { kind: api.SpanKind.PRODUCER }, parent)
    if (!span.isRecording()) return undefined
    span.setAttributes(messagingAttributes(system, 'send', 'publish', topics, template))
    return { span, traceparent: traceparentOf(span.spanContext()) }
  }

  /**
   * Sends the publication and ends its span when the broker took it, or failed to; `send` may also
   * throw at once (data that cannot be serialized), which ends the span with that error.
   */
  async endPublish (trace: TracedPublish, send: () => Promise<void>): Promise<void> {
    const span = trace.span as Api.Span
    try {
      await send()
    } catch (err) {
      span.recordException(err as Error)
      span.setStatus({ code: this.api.SpanStatusCode.ERROR, message: (err as Error).message })
      throw err
    } finally {
      span.end()
    }
  }

  /**
   * Starts the span of a publication received from the broker (kind CONSUMER, `process`), in a trace of
   * its own linked to the publisher's span, as messaging conventions do for a message with many receivers.
   */
  startDelivery (topic: string, system: string, traceparent: string, template: string | undefined): TraceSpan | undefined {
    const remote = this.remoteContext(traceparent)
    if (remote === undefined) return undefined
    const api = this.api
    const span = (this.tracer as Api.Tracer).startSpan('process', {
      kind: api.SpanKind.CONSUMER,
      root: true,
      links: [{ context: remote }],
      attributes: messagingAttributes(system, 'process', 'process', [topic], template)
    }, api.ROOT_CONTEXT)
    return span
  }

  endDelivery (span: TraceSpan, delivered: number): void {
    const s = span as Api.Span
    if (s.isRecording()) s.setAttribute('drizzle.deliveries', delivered)
    s.end()
  }

  /** The span context a W3C traceparent describes, or undefined when it is absent or malformed. */
  private remoteContext (traceparent: unknown): Api.SpanContext | undefined {
    if (!isTraceparent(traceparent)) return undefined
    return { traceId: traceparent.slice(3, 35), spanId: traceparent.slice(36, 52), traceFlags: parseInt(traceparent.slice(53, 55), 16) & 1, isRemote: true }
  }
}

function traceparentOf (sc: Api.SpanContext): string {
  return `00-${sc.traceId}-${sc.spanId}-${sc.traceFlags.toString(16).padStart(2, '0')}`
}

function messagingAttributes (system: string, type: string, name: string, topics: readonly string[], template: string | undefined): Api.Attributes {
  const attributes: Api.Attributes = {
    'messaging.system': system,
    'messaging.operation.type': type,
    'messaging.operation.name': name
  }
  if (topics.length === 1) attributes['messaging.destination.name'] = topics[0]
  else {
    attributes['messaging.batch.message_count'] = topics.length
    attributes['drizzle.topics'] = [...topics]
  }
  if (template !== undefined) attributes['messaging.destination.template'] = template
  return attributes
}
