// The observability variants side by side (issue #18): `node bench/variants.js bench/results/<file>.jsonl`
// after `node bench/run.js --only=rt,fanout --impls=drizzle,drizzle+metrics,drizzle+otel-off,drizzle+notrace --no-write`.
// Prints, per scenario, each variant's throughput over plain drizzle's, paired by repetition (they ran
// interleaved), against the bounds.
import { readFileSync } from 'node:fs'
import { median } from './common.js'

const FIELD = { rt: 'reqPerSec', fanout: 'deliveriesPerSec' }
// Variant -> the least ratio to plain drizzle the issue accepts. drizzle has @opentelemetry/api and
// no SDK; drizzle+notrace does not even look for one: their ratio is the "not measurable" check.
const BOUNDS = { 'drizzle+metrics': 0.95, 'drizzle+otel-off': 0.9, 'drizzle+notrace': undefined }

const records = readFileSync(process.argv[2], 'utf8').trim().split('\n').map(line => JSON.parse(line))
for (const scenario of [...new Set(records.map(r => r.scenario))]) {
  const field = FIELD[scenario.split('-')[0]]
  if (field === undefined) continue
  const base = records.filter(r => r.scenario === scenario && r.impl === 'drizzle')
  for (const [variant, bound] of Object.entries(BOUNDS)) {
    const ratios = []
    // Server CPU per request, plain over variant: what throughput would be if the server alone were
    // the limit. Less swayed than throughput by a load generator starved on a busy 2-core machine.
    const cpu = []
    for (const b of base) {
      const v = records.find(r => r.scenario === scenario && r.impl === variant && r.rep === b.rep)
      if (v !== undefined && b[field] > 0) ratios.push(v[field] / b[field])
      if (v?.cpuUsPerReq > 0 && b.cpuUsPerReq > 0) cpu.push(b.cpuUsPerReq / v.cpuUsPerReq)
    }
    if (ratios.length === 0) continue
    const m = median(ratios)
    const verdict = bound === undefined ? '(tracing: false over no SDK: ~1 when the check costs nothing)' : m >= bound ? `>= ${bound}: ok` : `< ${bound}: MISSED`
    console.log(`${scenario.padEnd(12)} ${field.padEnd(17)} ${variant.padEnd(17)} ${m.toFixed(3)} (${Math.min(...ratios).toFixed(3)}-${Math.max(...ratios).toFixed(3)}, n=${ratios.length}) ${verdict}`)
    if (cpu.length > 0) console.log(`${''.padEnd(12)} ${'cpu/req (inverse)'.padEnd(17)} ${variant.padEnd(17)} ${median(cpu).toFixed(3)} (${Math.min(...cpu).toFixed(3)}-${Math.max(...cpu).toFixed(3)}, n=${cpu.length})`)
  }
}
