// A tiny typed event emitter, and the one way the client calls code it does not own. No Node
// EventEmitter: this runs in browsers.

type Handler<T> = (arg: T) => void

export class Emitter<Events> {
  private readonly handlers = new Map<keyof Events, Set<Handler<any>>>()

  on<E extends keyof Events> (event: E, handler: Handler<Events[E]>): () => void {
    let set = this.handlers.get(event)
    if (set === undefined) {
      set = new Set()
      this.handlers.set(event, set)
    }
    set.add(handler)
    return () => { this.off(event, handler) }
  }

  off<E extends keyof Events> (event: E, handler: Handler<Events[E]>): void {
    this.handlers.get(event)?.delete(handler)
  }

  emit<E extends keyof Events> (event: E, arg: Events[E]): void {
    const set = this.handlers.get(event)
    if (set === undefined) return
    // A copy: a handler that removes itself (or another) must not make the loop skip one.
    for (const handler of [...set]) callSafely(handler, arg)
  }
}

/**
 * Runs a user callback so that its exception cannot break the client's own state (a frame half
 * processed, other listeners skipped). The exception is re-thrown on a fresh stack, which is how the
 * DOM's EventTarget reports listener errors: the page's onerror, or Node's uncaughtException.
 */
export function callSafely<A extends unknown[]> (fn: (...args: A) => void, ...args: A): void {
  try {
    fn(...args)
  } catch (err) {
    queueMicrotask(() => { throw err })
  }
}

export function noop (): void {}
