// The reconnect delay of every broker. This module imports nothing, Node's built-ins included, so
// the browser client can share it.

// Past 2^30 the ceiling is the cap anyway; bounding the exponent keeps 2 ** n finite.
const MAX_EXPONENT = 30

/**
 * Exponential backoff with full jitter: a whole number of milliseconds drawn uniformly from
 * [0, min(maxDelay, baseDelay * 2^attempt)), `attempt` counting the failures before this one from 0.
 * Full jitter rather than a fixed or half-random delay: instances that lost the same server then come
 * back spread over the whole window instead of in step. `random` is injectable for tests.
 */
export function backoffDelay (attempt: number, baseDelay: number, maxDelay: number, random: () => number = Math.random): number {
  // NaN and negative attempts count as the first; Infinity as the last.
  const exponent = attempt > 0 ? Math.min(Math.floor(attempt), MAX_EXPONENT) : 0
  const ceiling = Math.min(maxDelay, baseDelay * 2 ** exponent)
  return Math.floor(random() * ceiling)
}
