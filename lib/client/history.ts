// History topics on the client (README "History and recovery"): each subscription remembers the
// offset of the last publication it delivered, hands its listeners every offset once and in order,
// and asks the server again `since` that position when one is missing (after a reconnect, or a
// publication the server dropped for a slow consumer), telling the app when that failed.
import { callSafely } from './emitter.js'
import type { Position, Publication, RecoveryResult } from './types.js'

/** Publications kept while a subscribe reply is awaited; past this the oldest go (the replay has them). */
const MAX_KEPT = 10_000

export class TopicCursor {
  /** The last offset delivered and its epoch; undefined until the server answered (no history topic: always). */
  position: Position | undefined
  /** A subscribe is on its way: publications that do not follow the position wait for its reply. */
  waiting = false
  private kept: Publication[] = []
  readonly onRecovery = new Map<unknown, (result: RecoveryResult) => void>()

  constructor (readonly topic: string, since: Position | undefined) {
    if (since !== undefined) this.position = { offset: since.offset, epoch: since.epoch }
  }

  /** The data of the next `$topic/subscribe`: `since` the position when there is one. */
  request (): { topic: string, since?: Position } {
    this.waiting = true
    if (this.position === undefined) return { topic: this.topic }
    return { topic: this.topic, since: { offset: this.position.offset, epoch: this.position.epoch } }
  }

  /** The subscribe failed: what was kept is dropped (the next subscribe replays it). */
  failed (): void {
    this.waiting = false
    this.kept = []
  }

  /**
   * A subscribe reply arrived for a request that asked `since` (or nothing). Publications that
   * arrived before its handling are then delivered if they follow. Returns true when a gap remains.
   */
  replied (data: unknown, since: Position | undefined, deliver: (frame: Publication) => void): boolean {
    this.waiting = false
    const { offset, epoch, recovered } = (data ?? {}) as { offset?: unknown, epoch?: unknown, recovered?: unknown }
    // A topic with history answers its position; publications of others carry no offset.
    if (Number.isSafeInteger(offset) && typeof epoch === 'string') {
      if (since === undefined || recovered !== true || this.position === undefined) {
        this.position = { offset: offset as number, epoch }
      } else {
        // The replay of since+1 .. offset follows; what arrived meanwhile is dropped as seen.
        this.position.epoch = epoch
      }
      if (since !== undefined) {
        const result: RecoveryResult = { topic: this.topic, recovered: recovered === true, offset: this.position.offset, epoch: this.position.epoch }
        for (const fn of [...this.onRecovery.values()]) callSafely(fn, result)
      }
    }
    const kept = this.kept.sort((a, b) => (a.offset as number) - (b.offset as number))
    this.kept = []
    let gap = false
    for (const frame of kept) gap = this.accept(frame, deliver) || gap
    return gap
  }

  /** Delivers a publication if it is the next one; returns true when it reveals a gap to heal. */
  accept (frame: Publication, deliver: (frame: Publication) => void): boolean {
    const position = this.position
    if (frame.offset === undefined) {
      deliver(frame)
      return false
    }
    if (position !== undefined) {
      if (frame.offset <= position.offset) return false
      if (frame.offset === position.offset + 1) {
        position.offset = frame.offset
        deliver(frame)
        return false
      }
    }
    if (this.waiting) {
      if (this.kept.length >= MAX_KEPT) this.kept.shift()
      this.kept.push(frame)
      return false
    }
    if (position === undefined) {
      deliver(frame)
      return false
    }
    // Dropped: the subscribe `since` the position replays it.
    return true
  }
}
