import type { FastifyInstance } from 'fastify'
import type { PublishOptions } from './brokers/types.js'
import type { DrizzleConnection } from './connection.js'
import type { Runtime } from './runtime.js'

/**
 * What `instance.drizzle` returns: the plugin's API bound to the scope it is read from, so that
 * resources, topics and hooks declared through it belong to that Fastify scope.
 */
export class DrizzleScope {
  constructor (private readonly rt: Runtime, readonly instance: FastifyInstance) {}

  resource (name: string, actions: object): unknown {
    this.rt.declareResource(this.instance, name, actions)
    return { name }
  }

  topic (pattern: string, options?: object): this {
    this.rt.declareTopic(this.instance, pattern, options)
    return this
  }

  addHook (name: string, fn: (...args: any[]) => unknown): this {
    this.rt.addHook(this.instance, name, fn)
    return this
  }

  publish (topic: string | readonly string[], data: unknown, options?: PublishOptions): Promise<void> {
    return this.rt.publish(topic, data, options)
  }

  /** Open connections of this app (in this process). */
  get connections (): ReadonlySet<DrizzleConnection> {
    return this.rt.connections
  }

  /** Local subscriber count of a topic. */
  subscriberCount (topic: string): number {
    return this.rt.subscriptions.byTopic.get(topic)?.size ?? 0
  }
}

/** One DrizzleScope per Fastify instance object, made on first use. */
export function scopeGetter (rt: Runtime): (this: FastifyInstance) => DrizzleScope {
  const scopes = new WeakMap<FastifyInstance, DrizzleScope>()
  return function getDrizzle (this: FastifyInstance) {
    let scope = scopes.get(this)
    if (scope === undefined) {
      scope = new DrizzleScope(rt, this)
      scopes.set(this, scope)
    }
    return scope
  }
}
