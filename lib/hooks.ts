import type { FastifyInstance } from 'fastify'
import { InvalidHookError, describe } from './errors.js'

// Per-action lifecycle, with Fastify's names, in the order they run:
//   onRequest -> preValidation -> (data validation) -> preHandler -> handler -> onSend -> (reply) -> onResponse
// onError runs when any step before the reply throws; onTimeout when the action exceeded its time.
export const ACTION_HOOKS = ['onRequest', 'preValidation', 'preHandler', 'onSend', 'onResponse', 'onError', 'onTimeout'] as const
// Application hooks: connections and subscriptions are not tied to a scope, like Fastify's onReady/onClose.
export const APPLICATION_HOOKS = ['onConnect', 'onDisconnect', 'onSubscribe', 'onUnsubscribe'] as const

export type ActionHookName = typeof ACTION_HOOKS[number]
export type ApplicationHookName = typeof APPLICATION_HOOKS[number]
export type HookName = ActionHookName | ApplicationHookName

/** How many arguments a hook takes before the optional `done` callback. */
const ARITY: Record<HookName, number> = {
  onRequest: 2,
  preValidation: 2,
  preHandler: 2,
  onSend: 3,
  onResponse: 2,
  onError: 3,
  onTimeout: 2,
  onConnect: 1,
  onDisconnect: 1,
  onSubscribe: 2,
  onUnsubscribe: 2
}

type AnyFn = (...args: any[]) => unknown

/** A hook ready to run: callback-style hooks are wrapped once, at registration, into promise style. */
export interface CompiledHook {
  fn: AnyFn
  scope: FastifyInstance
}

export function isHookName (name: unknown): name is HookName {
  return typeof name === 'string' && Object.hasOwn(ARITY, name)
}

export function isActionHookName (name: string): name is ActionHookName {
  return (ACTION_HOOKS as readonly string[]).includes(name)
}

/** Checks a hook and converts callback style to promise style, so the runner has one calling convention. */
export function compileHook (name: unknown, fn: unknown, scope: FastifyInstance): CompiledHook {
  if (!isHookName(name)) {
    throw new InvalidHookError(`unknown hook name ${describe(name)}; expected one of ${Object.keys(ARITY).join(', ')}`)
  }
  if (typeof fn !== 'function') throw new InvalidHookError(`${name} hook must be a function, received ${describe(fn)}`)
  const arity = ARITY[name]
  if (fn.length <= arity) return { fn: fn as AnyFn, scope }
  if (fn.constructor.name === 'AsyncFunction') {
    throw new InvalidHookError(`${name} hook ${describe(fn)} is async and takes a done callback; use one or the other`)
  }
  return { fn: promisify(fn as AnyFn, arity), scope }
}

function promisify (fn: AnyFn, arity: number): AnyFn {
  return function (this: unknown, ...args: unknown[]) {
    args.length = arity
    return new Promise((resolve, reject) => {
      fn.call(this, ...args, (err?: unknown, value?: unknown) => err ? reject(err) : resolve(value))
    })
  }
}

function isThenable (value: unknown): value is PromiseLike<unknown> {
  return value !== null && typeof value === 'object' && typeof (value as PromiseLike<unknown>).then === 'function'
}

/** Runs hooks in order; each may be sync or return a promise. Throws what a hook throws. */
export async function runHooks (hooks: readonly CompiledHook[], a: unknown, b?: unknown): Promise<void> {
  for (let i = 0; i < hooks.length; i++) {
    const hook = hooks[i] as CompiledHook
    const result = hook.fn.call(hook.scope, a, b)
    if (isThenable(result)) await result
  }
}

/** Runs onSend hooks: each may return a replacement payload (undefined keeps the current one). */
export async function runSendHooks (hooks: readonly CompiledHook[], message: unknown, ctx: unknown, payload: unknown): Promise<unknown> {
  for (let i = 0; i < hooks.length; i++) {
    const hook = hooks[i] as CompiledHook
    let result = hook.fn.call(hook.scope, message, ctx, payload)
    if (isThenable(result)) result = await result
    if (result !== undefined) payload = result
  }
  return payload
}

/** Runs hooks that must not change the outcome (onError, onResponse, application hooks): errors are logged. */
export async function runSafeHooks (hooks: readonly CompiledHook[], log: { error: (obj: object, msg: string) => void }, name: string, a: unknown, b?: unknown, c?: unknown): Promise<void> {
  for (let i = 0; i < hooks.length; i++) {
    const hook = hooks[i] as CompiledHook
    try {
      const result = hook.fn.call(hook.scope, a, b, c)
      if (isThenable(result)) await result
    } catch (err) {
      log.error({ err }, `${name} hook failed`)
    }
  }
}
