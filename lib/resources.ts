import type { FastifyInstance } from 'fastify'
import { Compile } from 'typebox/compile'
import fjs from 'fast-json-stringify'
import {
  DuplicateResourceError, InvalidActionError, InvalidResourceNameError, InvalidSchemaError, describe
} from './errors.js'
import { ACTION_HOOKS, compileHook, type ActionHookName, type CompiledHook } from './hooks.js'
import { MAX_NAME_LENGTH } from './protocol.js'

export type HookChain = Record<ActionHookName, readonly CompiledHook[]>

/** An action ready to dispatch: schemas compiled, hooks resolved, everything per-message prebuilt. */
export interface CompiledAction {
  readonly resource: string
  readonly action: string
  readonly scope: FastifyInstance
  readonly handler: (this: FastifyInstance, message: any, ctx: any) => unknown
  /** Compiled check of `data`; undefined when the action declares no data schema. */
  readonly validator: { Check (value: unknown): boolean, Errors (value: unknown): Iterable<{ instancePath: string, message: string }> } | undefined
  readonly serialize: (data: unknown) => string
  /** Milliseconds; undefined means the plugin's actionTimeout. */
  readonly timeout: number | undefined
  readonly schema: { data?: unknown, reply?: unknown }
  /** The action's own hooks, run after the hooks of its scope chain. */
  readonly ownHooks: HookChain
  /** Scope hooks then own hooks, set when the server is ready (hooks may be added until then). */
  hooks: HookChain
  /** True when any hook runs before or after the handler, so the plain path can skip the hook runner. */
  hasHooks: boolean
}

const JSON_TYPES = new Set(['string', 'number', 'integer', 'boolean', 'object', 'array', 'null'])
const ACTION_KEYS = new Set(['handler', 'schema', 'timeout', ...ACTION_HOOKS])

export function emptyChain (): HookChain {
  const chain = {} as Record<ActionHookName, CompiledHook[]>
  for (const name of ACTION_HOOKS) chain[name] = []
  return chain
}

export function checkResourceName (name: unknown): asserts name is string {
  if (typeof name !== 'string' || name.length === 0 || name.length > MAX_NAME_LENGTH) {
    throw new InvalidResourceNameError(`expected a non-empty string of at most ${MAX_NAME_LENGTH} characters, received ${describe(name)}`)
  }
  if (name.startsWith('$')) throw new InvalidResourceNameError(`"${name}": names starting with "$" are reserved for built-ins`)
}

/** Resources by name, then actions by name: Maps, so no client string ever reaches an object lookup. */
export class ResourceRegistry {
  readonly resources = new Map<string, Map<string, CompiledAction>>()

  declare (scope: FastifyInstance, name: unknown, actions: unknown): Map<string, CompiledAction> {
    checkResourceName(name)
    if (this.resources.has(name)) throw new DuplicateResourceError(name)
    if (actions === null || typeof actions !== 'object' || Array.isArray(actions)) {
      throw new InvalidActionError('*', name, `actions must be an object of functions or { handler } objects, received ${describe(actions)}`)
    }
    const compiled = new Map<string, CompiledAction>()
    // Own enumerable keys only: inherited members (constructor, toString, __proto__) are never actions.
    for (const actionName of Object.keys(actions)) {
      compiled.set(actionName, compileAction(scope, name, actionName, (actions as Record<string, unknown>)[actionName]))
    }
    if (compiled.size === 0) throw new InvalidActionError('*', name, 'a resource needs at least one action')
    this.resources.set(name, compiled)
    return compiled
  }

  * actions (): Generator<CompiledAction> {
    for (const actions of this.resources.values()) yield * actions.values()
  }
}

export function compileAction (scope: FastifyInstance, resource: string, action: string, definition: unknown): CompiledAction {
  if (action.length === 0 || action.length > MAX_NAME_LENGTH) {
    throw new InvalidActionError(action, resource, `action names must be non-empty strings of at most ${MAX_NAME_LENGTH} characters`)
  }
  if (typeof definition === 'function') {
    return build(scope, resource, action, definition as CompiledAction['handler'], {}, undefined, emptyChain())
  }
  if (definition === null || typeof definition !== 'object' || typeof (definition as { handler?: unknown }).handler !== 'function') {
    throw new InvalidActionError(action, resource, `expected a function or an object with a handler function, received ${describe(definition)}`)
  }
  const def = definition as Record<string, unknown>
  for (const key of Object.keys(def)) {
    if (!ACTION_KEYS.has(key)) throw new InvalidActionError(action, resource, `unknown property "${key}"; expected handler, schema, timeout or a hook name (${ACTION_HOOKS.join(', ')})`)
  }
  const schema = checkSchemaObject(resource, action, def.schema)
  const timeout = def.timeout
  if (timeout !== undefined && (typeof timeout !== 'number' || !Number.isSafeInteger(timeout) || timeout < 0)) {
    throw new InvalidActionError(action, resource, `timeout must be an integer >= 0 (milliseconds), received ${describe(timeout)}`)
  }
  const own = emptyChain() as Record<ActionHookName, CompiledHook[]>
  for (const name of ACTION_HOOKS) {
    const hooks = def[name]
    if (hooks === undefined) continue
    for (const hook of Array.isArray(hooks) ? hooks : [hooks]) own[name].push(compileHook(name, hook, scope))
  }
  return build(scope, resource, action, def.handler as CompiledAction['handler'], schema, timeout as number | undefined, own)
}

function build (scope: FastifyInstance, resource: string, action: string, handler: CompiledAction['handler'],
  schema: { data?: unknown, reply?: unknown }, timeout: number | undefined, ownHooks: HookChain): CompiledAction {
  return {
    resource,
    action,
    scope,
    handler,
    validator: schema.data === undefined ? undefined : compileValidator(resource, action, schema.data),
    serialize: schema.reply === undefined ? stringify : compileSerializer(resource, action, schema.reply),
    timeout,
    schema,
    ownHooks,
    hooks: ownHooks,
    hasHooks: ACTION_HOOKS.some(name => ownHooks[name].length > 0)
  }
}

/** Plain serialization; a handler that returns nothing replies `null`, as the ancestor did. */
function stringify (data: unknown): string {
  return JSON.stringify(data) ?? 'null'
}

function checkSchemaObject (resource: string, action: string, schema: unknown): { data?: unknown, reply?: unknown } {
  if (schema === undefined) return {}
  if (schema === null || typeof schema !== 'object' || Array.isArray(schema)) {
    throw new InvalidSchemaError('action', where(resource, action), `schema must be an object { data?, reply? }, received ${describe(schema)}`)
  }
  for (const key of Object.keys(schema)) {
    if (key !== 'data' && key !== 'reply') throw new InvalidSchemaError('action', where(resource, action), `unknown schema property "${key}"; expected data or reply`)
  }
  return schema as { data?: unknown, reply?: unknown }
}

function checkJsonSchema (kind: string, resource: string, action: string, schema: unknown): void {
  if (schema === null || typeof schema !== 'object' || Array.isArray(schema)) {
    throw new InvalidSchemaError(kind, where(resource, action), `expected a TypeBox or JSON schema object, received ${describe(schema)}`)
  }
  const type = (schema as { type?: unknown }).type
  const types = Array.isArray(type) ? type : type === undefined ? [] : [type]
  for (const t of types) {
    if (typeof t !== 'string' || !JSON_TYPES.has(t)) throw new InvalidSchemaError(kind, where(resource, action), `"type" ${describe(t)} is not a JSON Schema type`)
  }
}

function compileValidator (resource: string, action: string, schema: unknown): CompiledAction['validator'] {
  checkJsonSchema('data', resource, action, schema)
  try {
    return Compile(schema as Parameters<typeof Compile>[0]) as unknown as CompiledAction['validator']
  } catch (err) {
    throw new InvalidSchemaError('data', where(resource, action), (err as Error).message)
  }
}

function compileSerializer (resource: string, action: string, schema: unknown): (data: unknown) => string {
  checkJsonSchema('reply', resource, action, schema)
  let serialize: (data: unknown) => string
  try {
    serialize = fjs(schema as Parameters<typeof fjs>[0])
  } catch (err) {
    throw new InvalidSchemaError('reply', where(resource, action), (err as Error).message)
  }
  return (data: unknown) => data === undefined ? 'null' : serialize(data)
}

function where (resource: string, action: string): string {
  return `action "${action}" of resource "${resource}"`
}

/** A deep plain copy: TypeBox 1.x schemas carry a non-enumerable `~kind`, and Fastify may annotate schemas it is given. */
export function plainSchema (schema: unknown): Record<string, unknown> {
  return JSON.parse(JSON.stringify(schema)) as Record<string, unknown>
}
