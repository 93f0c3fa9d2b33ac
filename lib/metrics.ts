import type { Counter, Gauge, Registry } from 'prom-client'
import { MissingDependencyError } from './errors.js'
import type { MetricsRegistry, ResolvedMetricsOptions } from './options.js'
import type { CompiledAction } from './resources.js'
import { ALL_TOPIC } from './topics.js'

// Prometheus metrics (DESIGN section 12, README "Observability"). The hot path only bumps plain
// numbers in `Stats`, which exists whether metrics are on or not (an increment costs nothing
// measurable); prom-client reads them when the registry is scraped (`collect`). Only actions, whose
// duration needs a histogram, touch prom-client per call, through label children bound once per action.

/** Counts kept by the core whatever the options; the metrics read them at scrape time. */
export class Stats {
  /** WebSocket messages received (every frame, garbage included) and sent (replies and publications). */
  messagesIn = 0
  messagesOut = 0
  /** Publications this instance delivered to its sockets: made here, or received from the broker. */
  publishedLocal = 0
  publishedBroker = 0
  /** Publication frames written to sockets. */
  deliveries = 0
  /** Publications not written to a slow consumer; slow consumers closed; broker messages that could not be delivered. */
  droppedSlow = 0
  closedSlow = 0
  droppedInvalid = 0
}

/** What the metrics read of the plugin's state at scrape time (the Runtime). */
export interface MetricsSource {
  readonly stats: Stats
  readonly connections: { readonly size: number }
  readonly subscriptions: { readonly byTopic: ReadonlyMap<string, { readonly size: number }> }
  readonly runner: { readonly inFlight: number }
  readonly broker: { health? (): { status: string, outages: number } }
  readonly registry: { readonly resources: ReadonlyMap<string, ReadonlyMap<string, unknown>> }
}

/** The label value of a resource or action name that was not declared: names sent by clients never become labels. */
export const UNKNOWN_LABEL = '(unknown)'
const TOPIC_RESOURCE = '$topic'

/** Seconds; actions over a socket are often sub-millisecond, so the buckets start at 0.5 ms. */
export const DURATION_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

type PromClient = typeof import('prom-client')

/** Loads prom-client only when metrics are asked for: it is an optional peer dependency. */
async function loadPromClient (): Promise<PromClient> {
  try {
    const mod = await import('prom-client') as PromClient & { default?: PromClient }
    return mod.default ?? mod
  } catch {
    throw new MissingDependencyError('metrics', 'prom-client', 'prom-client')
  }
}

/**
 * The counts of one (resource, action) pair, kept as plain numbers: prom-client's own `inc` and
 * `observe` hash the label values on every call (~1 µs per action between them), so the registry
 * reads these at scrape time instead.
 */
class ActionSeries {
  ok = 0
  /** Counts of statuses other than 200. */
  readonly statuses = new Map<number, number>()
  /** Observations per bucket of DURATION_BUCKETS (not cumulative), the last one past every bound. */
  readonly buckets = new Array<number>(DURATION_BUCKETS.length + 1).fill(0)
  sum = 0
  observed = 0

  constructor (readonly resource: string, readonly action: string) {}

  count (status: number): void {
    if (status === 200) this.ok++
    else this.statuses.set(status, (this.statuses.get(status) ?? 0) + 1)
  }

  observe (seconds: number): void {
    let i = 0
    while (i < DURATION_BUCKETS.length && seconds > (DURATION_BUCKETS[i] as number)) i++
    this.buckets[i] = (this.buckets[i] as number) + 1
    this.sum += seconds
    this.observed++
  }
}

/** What the transports call; the prom-client side stays inside this module. */
export interface ActionMetrics {
  /** An action that ran and was answered. */
  action (action: CompiledAction, status: number, seconds: number): void
  /** A request answered without running an action: unknown names, limits. Undeclared names share one label value. */
  refused (resource: string, action: string, status: number): void
  /** A client's recovery of missed publications (history, section 9). */
  recovery (recovered: boolean): void
  /** Unregisters every metric of this app, so the app can be made again in the same process. */
  close (): void
}

class Metrics implements ActionMetrics {
  private readonly names: string[] = []
  private recoveries: Counter | undefined
  /** Every series, for the scrape, by its label values; `byAction` finds an action's without building the key. */
  private readonly series = new Map<string, ActionSeries>()
  private readonly byAction = new WeakMap<CompiledAction, ActionSeries>()

  constructor (private readonly prom: PromClient, private readonly registry: MetricsRegistry, private readonly prefix: string, private readonly source: MetricsSource) {
    registerAll(registry, this.names, () => this.registerEach(source))
  }

  private registerEach (rt: MetricsSource): void {
    const stats = rt.stats
    this.gauge('connections', 'Open WebSocket connections', () => rt.connections.size)
    this.gauge('subscriptions', 'Subscriptions: connection-topic pairs, __all__ not included', () => countSubscriptions(rt))
    this.gauge('actions_in_flight', 'Actions whose handler has not ended (timed-out ones included)', () => rt.runner.inFlight)
    this.gauge('broker_up', '1 while the broker is connected, 0 during an outage or before the first connection', () => brokerUp(rt))
    this.counter('messages_received_total', 'WebSocket messages received', [], () => [[[], stats.messagesIn]])
    this.counter('messages_sent_total', 'WebSocket messages sent (replies and publications)', [], () => [[[], stats.messagesOut]])
    this.counter('publications_total', 'Publications this instance delivered, made here (local) or received from the broker', ['source'],
      () => [[['local'], stats.publishedLocal], [['broker'], stats.publishedBroker]])
    this.counter('deliveries_total', 'Publication frames written to sockets', [], () => [[[], stats.deliveries]])
    this.counter('dropped_total', 'Publications not delivered, and slow consumers closed, by reason', ['reason'],
      () => [[['slow_consumer'], stats.droppedSlow], [['slow_consumer_closed'], stats.closedSlow], [['invalid_broker_message'], stats.droppedInvalid]])
    this.counter('broker_outages_total', 'Times the broker connection was lost (or could not be made)', [], () => [[[], rt.broker.health?.().outages ?? 0]])
    this.counter('actions_total', 'Actions answered, by resource, action and reply statusCode', ['resource', 'action', 'status'], () => this.actionCounts())
    this.registerDurations(this.name('action_duration_seconds'))
    const recoveries = this.counter('recoveries_total', 'Recoveries of missed publications after a reconnect, by whether all were recovered', ['recovered'])
    // Known label values start at 0, so rate() sees the first increment.
    recoveries.labels('true').inc(0)
    recoveries.labels('false').inc(0)
    this.recoveries = recoveries
  }

  /** An action that ran and was answered. */
  action (action: CompiledAction, status: number, seconds: number): void {
    let series = this.byAction.get(action)
    if (series === undefined) {
      // Several compiled actions may share labels: `$topic/subscribe` exists once per declared pattern.
      series = this.seriesOf(action.resource, action.action)
      this.byAction.set(action, series)
    }
    series.count(status)
    series.observe(seconds)
  }

  /** A request answered without running an action: unknown names, limits. Undeclared names share one label value. */
  refused (resource: string, action: string, status: number): void {
    const labels = this.labelsOf(resource, action)
    this.seriesOf(labels[0], labels[1]).count(status)
  }

  /** A client's recovery of missed publications (history, section 9). */
  recovery (recovered: boolean): void {
    this.recoveries?.labels(recovered ? 'true' : 'false').inc()
  }

  /** Unregisters every metric of this app. */
  close (): void {
    for (const name of this.names) this.registry.removeSingleMetric(name)
    this.names.length = 0
  }

  private seriesOf (resource: string, action: string): ActionSeries {
    const key = resource + '\u0000' + action
    let series = this.series.get(key)
    if (series === undefined) {
      series = new ActionSeries(resource, action)
      this.series.set(key, series)
    }
    return series
  }

  /** `drizzle_actions_total` at scrape time: one sample per (resource, action, status) seen. */
  private actionCounts (): Array<[string[], number]> {
    const samples: Array<[string[], number]> = []
    for (const s of this.series.values()) {
      if (s.ok > 0) samples.push([[s.resource, s.action, '200'], s.ok])
      for (const [status, n] of s.statuses) samples.push([[s.resource, s.action, String(status)], n])
    }
    return samples
  }

  /**
   * The duration histogram, registered as the object the registry reads (`get`, in prom-client's
   * format) over the series' plain bucket counts. Series of refusals have no observation and no sample.
   */
  private registerDurations (name: string): void {
    const help = 'Time from the frame to the answer of actions that ran, in seconds'
    const read = (): HistogramSample[] => {
      const values: HistogramSample[] = []
      for (const s of this.series.values()) if (s.observed > 0) pushHistogram(values, name, s)
      return values
    }
    const metric = {
      name,
      help,
      type: 'histogram',
      aggregator: 'sum',
      get: async () => ({ name, help, type: 'histogram', aggregator: 'sum', values: read() }),
      reset: () => {
        for (const s of this.series.values()) { s.buckets.fill(0); s.sum = 0; s.observed = 0 }
      }
    }
    this.registry.registerMetric(metric)
    this.names.push(name)
  }

  private labelsOf (resource: string, action: string): readonly [string, string] {
    const actions = this.source.registry.resources.get(resource)
    if (actions !== undefined) return [resource, actions.has(action) ? action : UNKNOWN_LABEL]
    if (resource === TOPIC_RESOURCE) return [resource, action === 'subscribe' || action === 'unsubscribe' ? action : UNKNOWN_LABEL]
    return [UNKNOWN_LABEL, UNKNOWN_LABEL]
  }

  private name (suffix: string): string {
    return this.prefix + suffix
  }

  private register<M extends Counter | Gauge> (metric: M): M {
    this.registry.registerMetric(metric)
    this.names.push((metric as unknown as { name: string }).name)
    return metric
  }

  private gauge (suffix: string, help: string, read: () => number): void {
    this.register(new this.prom.Gauge({ name: this.name(suffix), help, registers: [], collect () { this.set(read()) } }))
  }

  /** A counter; with `read`, its values are copied from the core's plain counts at each scrape. */
  private counter (suffix: string, help: string, labelNames: string[], read?: () => Array<[string[], number]>): Counter {
    const collect = read === undefined
      ? undefined
      : function (this: Counter) {
        this.reset()
        for (const [values, n] of read()) {
          if (values.length === 0) this.inc(n)
          else this.labels(...values).inc(n)
        }
      }
    return this.register(new this.prom.Counter({ name: this.name(suffix), help, labelNames, registers: [], ...(collect === undefined ? {} : { collect }) }))
  }
}

/** Registers the metrics of an app in the registry it chose (prom-client's default one if none). */
export async function createMetrics (options: ResolvedMetricsOptions, source: MetricsSource): Promise<ActionMetrics> {
  const prom = await loadPromClient()
  const registry: MetricsRegistry = options.registry ?? (prom.register as Registry)
  return new Metrics(prom, registry, options.prefix, source)
}

/**
 * Registers one metric after another; when one fails (a name the registry holds already: another app
 * with the same prefix), those registered before it are removed, so the failed registration leaves
 * the registry as it found it.
 */
function registerAll (registry: MetricsRegistry, names: string[], register: () => void): void {
  try {
    register()
  } catch (err) {
    for (const name of names) registry.removeSingleMetric(name)
    names.length = 0
    throw err
  }
}

interface HistogramSample { labels: Record<string, string | number>, value: number, metricName: string }

/** The samples of one series as Prometheus reads a histogram: cumulative buckets, `+Inf`, sum and count. */
function pushHistogram (values: HistogramSample[], name: string, s: ActionSeries): void {
  let cumulative = 0
  for (let i = 0; i < DURATION_BUCKETS.length; i++) {
    cumulative += s.buckets[i] as number
    values.push({ labels: { resource: s.resource, action: s.action, le: DURATION_BUCKETS[i] as number }, value: cumulative, metricName: `${name}_bucket` })
  }
  values.push({ labels: { resource: s.resource, action: s.action, le: '+Inf' }, value: s.observed, metricName: `${name}_bucket` })
  values.push({ labels: { resource: s.resource, action: s.action }, value: s.sum, metricName: `${name}_sum` })
  values.push({ labels: { resource: s.resource, action: s.action }, value: s.observed, metricName: `${name}_count` })
}

function countSubscriptions (rt: MetricsSource): number {
  let pairs = 0
  for (const [topic, subscribers] of rt.subscriptions.byTopic) if (topic !== ALL_TOPIC) pairs += subscribers.size
  return pairs
}

function brokerUp (rt: MetricsSource): number {
  const health = rt.broker.health?.()
  // A broker that does not report its connection (the in-memory one, a custom one) counts as up.
  return health === undefined || health.status === 'open' ? 1 : 0
}
