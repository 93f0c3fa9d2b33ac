import assert from 'node:assert/strict'

// Reads a Prometheus text exposition (what a scrape of /metrics returns) into samples, so that tests
// assert on what Prometheus would see rather than on prom-client's objects.

export interface Sample { name: string, labels: Record<string, string>, value: number }

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g

export function parseExposition (text: string): Sample[] {
  const samples: Sample[] = []
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const match = LINE.exec(line)
    assert.ok(match !== null, `not a sample line: ${line}`)
    const labels: Record<string, string> = {}
    for (const [, key, value] of (match[2] ?? '').matchAll(LABEL)) labels[key as string] = (value as string).replace(/\\(.)/g, '$1')
    samples.push({ name: match[1] as string, labels, value: Number(match[3]) })
  }
  return samples
}

/** The value of the one sample with that name and exactly those labels, or undefined. */
export function sample (samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const keys = Object.keys(labels)
  const found = samples.filter(s => s.name === name && Object.keys(s.labels).length === keys.length && keys.every(k => s.labels[k] === labels[k]))
  assert.ok(found.length <= 1, `several samples of ${name} ${JSON.stringify(labels)}`)
  return found[0]?.value
}
