// Streamed replies (`client.stream`): the items of one request, as an async iterable. Items arrive
// when the server sends them and wait in a queue until the loop asks; leaving the loop early
// (`break`, `return`, a throw) cancels the request on the server with `$request/cancel`.
import type { RequestOptions } from './options.js'
import type { PendingRequests } from './requests.js'

/**
 * The request is sent when iteration starts (the first `next()`), like any async generator. The
 * generator's return value is the final reply's data; an error frame (CANCELLED, a handler's error)
 * or a disconnect is thrown from the loop.
 */
export async function * streamRequest (requests: PendingRequests, resource: string, action: string, data: unknown, options?: RequestOptions): AsyncGenerator<unknown, unknown, undefined> {
  const queue: unknown[] = []
  let wake: (() => void) | undefined
  let settled = false
  const call = requests.open(resource, action, data, options, item => { queue.push(item); wake?.() })
  call.done.then(() => { settled = true; wake?.() }, () => { settled = true; wake?.() })
  try {
    while (true) {
      // Once aborted, items still queued are not handed out: the loop ends with the abort reason.
      while (queue.length > 0 && options?.signal?.aborted !== true) yield queue.shift()
      if (settled) return await call.done
      await new Promise<void>(resolve => { wake = resolve })
      wake = undefined
    }
  } finally {
    // Left early: the server stops producing. Its CANCELLED frame finds no request and is dropped.
    if (!settled) requests.cancel(call.id, new Error('stream closed by the consumer'))
  }
}
