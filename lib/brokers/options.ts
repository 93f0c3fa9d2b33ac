import { InvalidOptionError, describe } from '../errors.js'
import type { BrokerLogger } from './types.js'

// Option validation shared by the brokers, in the plugin's words: every bad value throws
// FST_DRIZZLE_INVALID_OPTION as `Invalid option "<name>": expected ..., received ...`, and a key no
// broker knows is refused (a misspelt `commandTimout` would otherwise be ignored in silence).

/** Checks one option's value; only `undefined` means "not given" (null is a bad value like any other). */
export type Check<T> = (value: unknown, name: string) => T

type Checked<S> = { [K in keyof S]: S[K] extends Check<infer T> ? T : never }

export function fail (name: string, expected: string, received: unknown): never {
  throw new InvalidOptionError(name, expected, describe(received))
}

/** Validates an options object against one check per known key, refusing keys it does not know. */
export function readOptions<S extends Record<string, Check<unknown>>> (input: unknown, checks: S): Checked<S> {
  const options = input === undefined ? {} : input
  if (!isPlainObject(options)) return fail('options', 'expected an object', input)
  const known = Object.keys(checks)
  for (const key of Object.keys(options)) {
    if (!Object.hasOwn(checks, key)) fail(key, `unknown option; known options are ${known.join(', ')}`, options[key])
  }
  const result: Record<string, unknown> = {}
  for (const key of known) result[key] = (checks[key] as Check<unknown>)(options[key], key)
  return result as Checked<S>
}

/** The check, or `fallback` when the option is not given. */
export function withDefault<T> (fallback: T, check: Check<T>): Check<T> {
  return (value, name) => value === undefined ? fallback : check(value, name)
}

/** The check, or `undefined` when the option is not given. */
export function optional<T> (check: Check<T>): Check<T | undefined> {
  return (value, name) => value === undefined ? undefined : check(value, name)
}

/** A positive safe integer, e.g. a size in bytes or a duration in milliseconds (`unit` names it). */
export function positiveInteger (unit?: string): Check<number> {
  const expected = unit === undefined ? 'expected a positive integer' : `expected a positive integer of ${unit}`
  return (value, name) => {
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) fail(name, expected, value)
    return value
  }
}

export const string: Check<string> = (value, name) => {
  if (typeof value !== 'string') fail(name, 'expected a string', value)
  return value
}

/** A URL of one of `protocols` (e.g. `['redis:', 'rediss:']`); a password never reaches the message. */
export function url (protocols: readonly string[]): Check<string> {
  const article = /^[aeiou]/.test(protocols[0] ?? '') ? 'an' : 'a'
  const expected = `expected ${article} ${protocols.map((p) => `${p}//`).join(' or ')} URL`
  return (value, name) => {
    if (typeof value !== 'string') fail(name, expected, value)
    const parsed = URL.canParse(value) ? new URL(value) : undefined
    if (parsed === undefined || !protocols.includes(parsed.protocol)) fail(name, expected, redact(value))
    return value
  }
}

export const logger: Check<BrokerLogger> = (value, name) => {
  if (!isBrokerLogger(value)) fail(name, 'expected a logger with error, warn, info and debug methods', value)
  return value
}

/** The URL with its password masked, for logs and errors. */
export function redact (value: string): string {
  if (!URL.canParse(value)) return '<invalid url>'
  const parsed = new URL(value)
  if (parsed.password === '') return value
  parsed.password = '***'
  return parsed.toString()
}

/** What a standalone broker logs to when given no logger. */
export const silentLogger: BrokerLogger = { error () {}, warn () {}, info () {}, debug () {} }

function isBrokerLogger (value: unknown): value is BrokerLogger {
  if (value === null || typeof value !== 'object') return false
  const candidate = value as Record<string, unknown>
  return ['error', 'warn', 'info', 'debug'].every((level) => typeof candidate[level] === 'function')
}

function isPlainObject (value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
}
