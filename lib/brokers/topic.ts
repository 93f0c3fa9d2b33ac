import { InvalidTopicError, describe } from '../errors.js'

// The topic rule of the plugin (README "Topics") as a leaf module: brokers apply it to what a
// standalone caller gives them, and importing it loads neither the wire protocol's schemas nor Fastify.

/** The longest topic in characters: the same bound as resource and action names. */
export const MAX_TOPIC_LENGTH = 256

/** A topic is a non-empty string of at most MAX_TOPIC_LENGTH characters; anything else is refused. */
export function checkTopic (topic: unknown): asserts topic is string {
  if (typeof topic !== 'string' || topic.length === 0 || topic.length > MAX_TOPIC_LENGTH) {
    throw new InvalidTopicError(`expected a non-empty string of at most ${MAX_TOPIC_LENGTH} characters, received ${describe(topic)}`)
  }
}
