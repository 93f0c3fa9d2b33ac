// The client's one waiting shape, exponential backoff with full jitter: before reconnecting
// (connection.ts) and before asking again for a history subscription the server could not serve
// (topics.ts). It is lib/brokers/backoff.ts's twin: the browser bundle may import only files of
// lib/client/ (scripts/build.js refuses anything else), so the client keeps its own copy.

// Past 2^30 the ceiling is the cap anyway; bounding the exponent keeps 2 ** n finite.
const MAX_EXPONENT = 30

/**
 * A whole number of milliseconds drawn uniformly from [0, min(maxDelay, baseDelay * 2^attempt)),
 * `attempt` counting the failures before this one from 0. Full jitter spreads a crowd of clients that
 * failed together (a server restarting, or overloaded) over the whole window instead of bringing them
 * back in step, and the doubling ceiling slows each one down while the failures go on.
 */
export function backoffDelay (attempt: number, baseDelay: number, maxDelay: number, random: () => number = Math.random): number {
  const exponent = attempt > 0 ? Math.min(Math.floor(attempt), MAX_EXPONENT) : 0
  const ceiling = Math.min(maxDelay, baseDelay * 2 ** exponent)
  return Math.floor(random() * ceiling)
}
