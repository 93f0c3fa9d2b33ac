import { InvalidTopicError, describe } from '../errors.js'

// The topic rule of the plugin (README "Topics") as a leaf module: brokers apply it to what a
// standalone caller gives them, and importing it loads neither the wire protocol's schemas nor Fastify.

/** The longest topic in characters: the same bound as resource and action names. */
export const MAX_TOPIC_LENGTH = 256

/** A topic is a non-empty string of at most MAX_TOPIC_LENGTH characters of well-formed Unicode; anything else is refused. */
export function checkTopic (topic: unknown): asserts topic is string {
  const reason = topicProblem(topic)
  if (reason !== undefined) throw new InvalidTopicError(`${reason}, received ${describe(topic)}`)
}

/**
 * Why a topic name is unusable, or undefined. Lone surrogates are refused: brokers encode names as
 * UTF-8, where every lone surrogate becomes U+FFFD, so "rooms/\ud800" and "rooms/\udfff" would share
 * one channel and their publications would cross.
 */
export function topicProblem (topic: unknown): string | undefined {
  if (typeof topic !== 'string' || topic.length === 0 || topic.length > MAX_TOPIC_LENGTH) return `expected a non-empty string of at most ${MAX_TOPIC_LENGTH} characters`
  if (!topic.isWellFormed()) return 'expected well-formed Unicode (no lone surrogates)'
  return undefined
}
