import { performance } from 'node:perf_hooks'

/** What Deadlines keeps: the links live on the entry itself, so tracking one allocates nothing. */
export interface DeadlineEntry {
  deadline: number
  prevDeadline: DeadlineEntry | undefined
  nextDeadline: DeadlineEntry | undefined
  tracked: boolean
}

/**
 * Action time limits without a timer per action: actions in flight sit in an intrusive list with
 * their deadline, and one interval timer (running only while the list is not empty) expires the
 * overdue ones. A setTimeout per message (or a Set entry) cost allocations and garbage collections on
 * every request, though nearly every action finishes long before its limit. The price is precision:
 * an action is expired within `interval` ms after its deadline (a tenth of the shortest limit, at
 * least 5 ms, at most 1 s).
 */
export class Deadlines<T extends DeadlineEntry> {
  private head: DeadlineEntry | undefined
  private tail: DeadlineEntry | undefined
  private timer: ReturnType<typeof setInterval> | undefined
  interval = 1000

  constructor (private readonly expire: (entry: T) => void) {}

  /** Sets the sweep interval from the shortest time limit in use. */
  tune (shortestLimit: number): void {
    this.interval = Math.min(1000, Math.max(5, Math.floor(shortestLimit / 10)))
  }

  /** `now`: performance.now() if the caller has just read it (it costs about as much as the rest). */
  add (entry: T, limit: number, now = performance.now()): void {
    entry.deadline = now + limit
    entry.tracked = true
    entry.prevDeadline = this.tail
    entry.nextDeadline = undefined
    if (this.tail === undefined) this.head = entry
    else this.tail.nextDeadline = entry
    this.tail = entry
    if (this.timer === undefined) {
      this.timer = setInterval(this.sweep, this.interval)
      this.timer.unref()
    }
  }

  delete (entry: T): void {
    if (!entry.tracked) return
    entry.tracked = false
    if (entry.prevDeadline === undefined) this.head = entry.nextDeadline
    else entry.prevDeadline.nextDeadline = entry.nextDeadline
    if (entry.nextDeadline === undefined) this.tail = entry.prevDeadline
    else entry.nextDeadline.prevDeadline = entry.prevDeadline
    entry.prevDeadline = entry.nextDeadline = undefined
  }

  close (): void {
    clearInterval(this.timer)
    this.timer = undefined
  }

  private readonly sweep = (): void => {
    if (this.head === undefined) {
      // Idle: stop until the next action, so an idle server has no timer firing.
      this.close()
      return
    }
    const now = performance.now()
    for (let entry: DeadlineEntry | undefined = this.head; entry !== undefined;) {
      const next: DeadlineEntry | undefined = entry.nextDeadline
      if (now >= entry.deadline) {
        this.delete(entry as T)
        this.expire(entry as T)
      }
      entry = next
    }
  }
}
