// Work that must wait until an action's answer is written: a history subscription sends the
// publications it replays after its reply, never before it (README "History and recovery").

const callbacks = new WeakMap<object, () => void>()
/** How many contexts wait: every other action pays one comparison, no lookup. */
let waiting = 0

/** Runs `fn` once the action of `ctx` has been answered (or has ended, after a timeout). */
export function afterAnswer (ctx: object, fn: () => void): void {
  if (!callbacks.has(ctx)) waiting++
  callbacks.set(ctx, fn)
}

/** Called by the lifecycle once it answered an action, and again when its handler ended. */
export function answered (ctx: object): void {
  if (waiting === 0) return
  const fn = callbacks.get(ctx)
  if (fn === undefined) return
  callbacks.delete(ctx)
  waiting--
  fn()
}
