import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Deadlines, type DeadlineEntry } from '../lib/deadlines.js'
import { sleep } from './helpers/client.js'

const entry = (name: string): DeadlineEntry & { name: string } =>
  ({ name, deadline: 0, prevDeadline: undefined, nextDeadline: undefined, tracked: false })

test('overdue entries expire once, within the sweep interval; deleted ones never do', async () => {
  const expired: string[] = []
  const deadlines = new Deadlines<ReturnType<typeof entry>>(e => expired.push(e.name))
  deadlines.tune(50)
  assert.equal(deadlines.interval, 5)
  const a = entry('a')
  const b = entry('b')
  const c = entry('c')
  const d = entry('d')
  deadlines.add(a, 30)
  deadlines.add(b, 30)
  deadlines.add(c, 300)
  deadlines.add(d, 30)
  deadlines.delete(b)
  deadlines.delete(b)
  await sleep(80)
  assert.deepEqual(expired, ['a', 'd'])
  deadlines.delete(c)
  await sleep(50)
  assert.deepEqual(expired, ['a', 'd'])
  deadlines.close()
})

test('the sweep stops when nothing is tracked, and starts again with the next entry', async () => {
  const expired: string[] = []
  const deadlines = new Deadlines<ReturnType<typeof entry>>(e => expired.push(e.name))
  deadlines.tune(10)
  const timers = () => process.getActiveResourcesInfo().filter(r => r === 'Timeout').length
  const before = timers()
  const a = entry('a')
  deadlines.add(a, 1000)
  deadlines.delete(a)
  await sleep(30)
  assert.equal((deadlines as unknown as { timer: unknown }).timer, undefined, 'idle: no interval left')
  deadlines.add(entry('b'), 10)
  await sleep(50)
  assert.deepEqual(expired, ['b'])
  assert.ok(timers() <= before)
  deadlines.close()
})

test('tune clamps the interval between 5 ms and 1 s', () => {
  const deadlines = new Deadlines(() => {})
  deadlines.tune(1)
  assert.equal(deadlines.interval, 5)
  deadlines.tune(30_000)
  assert.equal(deadlines.interval, 1000)
  deadlines.tune(2_000)
  assert.equal(deadlines.interval, 200)
})
