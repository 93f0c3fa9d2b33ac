import { Compile } from 'typebox/compile'
import { InvalidPublicationError, InvalidSchemaError, describe } from './errors.js'
import type { ErrorDetail } from './protocol.js'
import type { DeclaredTopic, TopicPatterns } from './topics.js'

// Typed publications (DESIGN section 11): a declared topic's `schema` is enforced on every path a
// publication takes into this process. `publish` (app.drizzle.publish, ctx.publish) refuses data
// that fails it before anything is delivered, here or through the broker; a publication arriving
// from the broker (another instance, or any process writing the broker format) that fails it is
// dropped, with one warning that names the topic and the paths, never the payload.

interface Checker {
  Check (value: unknown): boolean
  Errors (value: unknown): Iterable<{ instancePath: string, message: string }>
}

/** The compiled schemas of declared topics. Costs nothing while no declared topic has a schema. */
export class TopicSchemas {
  private readonly checkers = new WeakMap<DeclaredTopic, Checker>()
  private count = 0
  /** Publications from the broker dropped for failing their schema. */
  dropped = 0

  /** Compiles a just-declared topic's schema, refusing one that is not a schema object. */
  declare (declared: DeclaredTopic): void {
    const schema = declared.options.schema
    if (schema === undefined) return
    const where = `topic "${declared.pattern}"`
    if (schema === null || typeof schema !== 'object' || Array.isArray(schema)) {
      throw new InvalidSchemaError('data', where, `expected a TypeBox or JSON schema object, received ${describe(schema)}`)
    }
    let checker: Checker
    try {
      checker = Compile(schema as Parameters<typeof Compile>[0]) as unknown as Checker
    } catch (err) {
      throw new InvalidSchemaError('data', where, (err as Error).message)
    }
    this.checkers.set(declared, checker)
    this.count++
  }

  /** What is wrong with `data` for `topic`, or undefined when it passes or the topic has no schema. */
  problems (patterns: TopicPatterns, topic: string, data: unknown): { pattern: string, details: ErrorDetail[] } | undefined {
    if (this.count === 0) return undefined
    const match = patterns.match(topic)
    const checker = match === undefined ? undefined : this.checkers.get(match.declared)
    if (checker === undefined || checker.Check(data)) return undefined
    const details: ErrorDetail[] = []
    // Errors() is ~100x dearer than Check(): only called once Check failed.
    for (const error of checker.Errors(data)) details.push({ path: '/data' + error.instancePath, message: error.message })
    return { pattern: (match as { declared: DeclaredTopic }).declared.pattern, details }
  }

  /** Throws FST_DRIZZLE_INVALID_PUBLICATION (with `details`) when `data` fails a topic's schema. */
  check (patterns: TopicPatterns, topics: readonly string[], data: unknown): void {
    if (this.count === 0) return
    for (const topic of topics) {
      const problem = this.problems(patterns, topic, data)
      if (problem === undefined) continue
      const first = problem.details[0]
      const why = first === undefined ? 'data fails its schema' : `"${first.path}" ${first.message}`
      throw Object.assign(new InvalidPublicationError(topic, why), { topic, pattern: problem.pattern, details: problem.details })
    }
  }
}
