// Turns the run's records into a printed table, bench/ratios.svg and the generated part of
// BENCHMARKS.md (between the results markers; the hand-written text around them is kept).
// `node bench/report.js bench/results/<file>.jsonl` re-renders a past run.
import { readFileSync, writeFileSync, existsSync } from 'node:fs'
import { cpus, totalmem } from 'node:os'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { median } from './common.js'
import { svgChart } from './svg.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const IMPLS = ['drizzle', 'bare', 'socketio', 'nes']
const NAMES = { drizzle: 'fastify-drizzle', bare: 'bare @fastify/websocket', socketio: 'Socket.IO 4', nes: '@hapi/nes' }
const RATIO_TO = ['bare', 'socketio', 'nes']
// The second wave's variants of drizzle (bench/server.js), each compared with plain drizzle of the same repetition.
const VARIANT_NAMES = { 'drizzle-history': 'history on', 'drizzle+metrics': 'metrics on', 'drizzle+otel-off': 'OTel SDK, sampling off', 'drizzle+notrace': 'tracing: false' }

// [field, label, decimals]; server CPU per operation first: it is the steadiest figure on 2 cores,
// where the load generators bound throughput as much as the servers do.
const METRICS = {
  rt: [['cpuUsPerReq', 'server CPU µs/request', 1], ['reqPerSec', 'requests/s', 0], ['p50Ms', 'p50 latency ms', 2], ['p99Ms', 'p99 latency ms', 2]],
  fanout: [['cpuUsPerDeliveryOne', 'server CPU µs/delivery, one publication at a time', 2], ['cpuUsPerDelivery', 'server CPU µs/delivery, burst', 2], ['deliveriesPerSec', 'deliveries/s, burst', 0], ['allReceivedMs', 'ms until all received (one publication)', 1], ['lost', 'lost deliveries', 0]],
  memory: [['heapPerConn', 'heap after GC, bytes/connection', 0], ['rssPerConn', 'RSS, bytes/connection', 0]],
  redis: [['cpuUsPerDeliveryOne', 'CPU µs/delivery, both servers, one at a time', 2], ['cpuUsPerDelivery', 'CPU µs/delivery, both servers, burst', 2], ['deliveriesPerSec', 'deliveries/s, burst', 0], ['allReceivedMs', 'ms publish -> all received, p50 (one at a time, 40/s)', 1], ['allReceivedP99Ms', 'ms publish -> all received, p99 (one at a time, 40/s)', 1], ['lost', 'lost deliveries', 0]]
}

// [scenario family, field, versus, comparison, bound]: drizzle ÷ versus, paired per repetition.
const TARGETS = [
  ['rt', 'cpuUsPerReq', 'bare', '<=', 0.9],
  ['rt', 'cpuUsPerReq', 'socketio', '<=', 0.75],
  ['rt', 'reqPerSec', 'bare', '>=', 0.85],
  ['rt', 'reqPerSec', 'socketio', '>=', 1.5],
  ['rt', 'p99Ms', 'bare', '<=', 1.2],
  ['fanout', 'cpuUsPerDeliveryOne', 'bare', '<=', 1.1],
  ['fanout', 'deliveriesPerSec', 'bare', '>=', 0.9],
  ['fanout', 'deliveriesPerSec', 'socketio', '>=', 1.3],
  ['memory', 'heapPerConn', 'bare', '<=', 1.0],
  ['memory', 'heapPerConn', 'socketio', '<=', 0.65],
  ['redis', 'cpuUsPerDeliveryOne', 'bare', '<=', 1.25],
  ['redis', 'deliveriesPerSec', 'bare', '>=', 0.8],
  ['redis', 'allReceivedP99Ms', 'bare', '<=', 1.2]
]

// [scenario family, field, variant, comparison, bound]: variant ÷ plain drizzle (issues #15, #18).
// Without a bound the row is reported only ("tracing: false" against no SDK: ~1 when the check costs nothing).
const VARIANT_TARGETS = [
  ['rt', 'reqPerSec', 'drizzle+metrics', '>=', 0.95],
  ['rt', 'cpuUsPerReq', 'drizzle+metrics', '<=', 1 / 0.95],
  ['rt', 'reqPerSec', 'drizzle+otel-off', '>=', 0.9],
  ['rt', 'cpuUsPerReq', 'drizzle+otel-off', '<=', 1 / 0.9],
  ['rt', 'reqPerSec', 'drizzle+notrace'],
  ['rt', 'cpuUsPerReq', 'drizzle+notrace'],
  ['fanout', 'deliveriesPerSec', 'drizzle-history', '>=', 0.8],
  ['fanout', 'cpuUsPerDeliveryOne', 'drizzle-history'],
  ['fanout', 'deliveriesPerSec', 'drizzle+metrics', '>=', 0.95],
  ['fanout', 'deliveriesPerSec', 'drizzle+otel-off', '>=', 0.9],
  ['fanout', 'deliveriesPerSec', 'drizzle+notrace'],
  ['redis', 'deliveriesPerSec', 'drizzle-history', '>=', 0.6],
  ['redis', 'cpuUsPerDeliveryOne', 'drizzle-history'],
  ['redis', 'allReceivedP99Ms', 'drizzle-history']
]

const family = (scenario) => scenario.split('-')[0]

function fmt (x, decimals) {
  if (!Number.isFinite(x)) return '–'
  return x.toLocaleString('en-US', { minimumFractionDigits: decimals, maximumFractionDigits: decimals })
}

function spread (values, decimals) {
  const v = values.filter(Number.isFinite)
  if (v.length === 0) return '–'
  const m = fmt(median(v), decimals)
  if (v.length === 1) return m
  return `${m} (${fmt(Math.min(...v), decimals)}–${fmt(Math.max(...v), decimals)})`
}

/** Per-repetition ratios `impl`/other, paired by repetition (they ran side by side). */
function ratios (rows, field, other, impl = 'drizzle') {
  const out = []
  for (const d of rows.filter(r => r.impl === impl)) {
    const o = rows.find(r => r.impl === other && r.rep === d.rep)
    if (o !== undefined && Number.isFinite(d[field]) && Number.isFinite(o[field]) && o[field] !== 0) out.push(d[field] / o[field])
  }
  return out
}

const rangeOf = (r) => ({ median: median(r), min: Math.min(...r), max: Math.max(...r) })
const meets = (cmp, bound, m) => cmp === undefined || (cmp === '>=' ? m >= bound : m <= bound)

/** The variants beside plain drizzle, then streams and the presence join storm (their own baselines). */
function secondWave (records, scenarios) {
  const rows = []
  for (const scenario of scenarios) {
    const fam = family(scenario)
    const here = records.filter(r => r.scenario === scenario)
    for (const [f, field, variant, cmp, bound] of VARIANT_TARGETS) {
      if (f !== fam) continue
      const r = ratios(here, field, 'drizzle', variant)
      if (r.length === 0) continue
      rows.push({ scenario, what: `${VARIANT_NAMES[variant]} ÷ plain drizzle, ${field}`, cmp, bound, ...rangeOf(r), met: meets(cmp, bound, median(r)) })
    }
    if (fam === 'stream') {
      const r = here.map(x => x.streamOverPlain)
      rows.push({ scenario, what: 'stream items/s ÷ plain replies/s (same size, one socket)', cmp: '>=', bound: 0.8, ...rangeOf(r), met: median(r) >= 0.8 })
    }
    if (fam === 'presence') {
      for (const [mode, label] of [['quiet', 'presence, events off'], ['events', 'presence, $join/$leave on']]) {
        const r = ratios(here, 'cpuMs', 'presence-plain', `presence-${mode}`)
        if (r.length > 0) rows.push({ scenario, what: `${label} ÷ plain topic, CPU of the storm`, ...rangeOf(r), met: true })
      }
      for (const field of ['convergedMs', 'framesPerSubscriber']) {
        const v = here.filter(x => x.impl === 'presence-events').map(x => x[field])
        if (v.length > 0) rows.push({ scenario, what: `events on: ${field}`, ...rangeOf(v), absolute: true, met: true })
      }
    }
  }
  return rows
}

export function summarize (records) {
  const scenarios = [...new Set(records.map(r => r.scenario))]
  const lines = []
  for (const scenario of scenarios) {
    const rows = records.filter(r => r.scenario === scenario)
    for (const [field, label, decimals] of METRICS[family(scenario)] ?? []) {
      const line = { scenario, field, label, values: {}, ratios: {} }
      for (const impl of IMPLS) {
        const v = rows.filter(r => r.impl === impl).map(r => r[field])
        if (v.length > 0) line.values[impl] = spread(v, decimals)
      }
      for (const other of RATIO_TO) {
        const r = ratios(rows, field, other)
        if (r.length > 0) line.ratios[other] = { text: spread(r, 2), median: median(r), min: Math.min(...r), max: Math.max(...r) }
      }
      lines.push(line)
    }
  }
  const targets = []
  for (const scenario of scenarios) {
    for (const [fam, field, other, cmp, bound] of TARGETS) {
      if (family(scenario) !== fam) continue
      const r = ratios(records.filter(x => x.scenario === scenario), field, other)
      if (r.length === 0) continue
      const m = median(r)
      targets.push({ scenario, field, other, cmp, bound, median: m, min: Math.min(...r), max: Math.max(...r), met: cmp === '>=' ? m >= bound : m <= bound })
    }
  }
  return { lines, targets, wave: secondWave(records, scenarios) }
}

function markdownTable ({ lines }) {
  const out = []
  out.push('| scenario | metric | ' + IMPLS.map(i => NAMES[i]).join(' | ') + ' | drizzle / bare | drizzle / Socket.IO | drizzle / nes |')
  out.push('| --- | --- | ' + IMPLS.map(() => '---:').join(' | ') + ' | ---: | ---: | ---: |')
  for (const l of lines) {
    out.push(`| ${l.scenario} | ${l.label} | ` + IMPLS.map(i => l.values[i] ?? 'n/a').join(' | ') + ' | ' +
      RATIO_TO.map(o => l.ratios[o]?.text ?? 'n/a').join(' | ') + ' |')
  }
  return out.join('\n')
}

function targetTable ({ targets }) {
  const out = ['| scenario | ratio | target | median (min–max) | met |', '| --- | --- | --- | ---: | --- |']
  for (const t of targets) {
    out.push(`| ${t.scenario} | ${t.field} drizzle / ${t.other} | ${t.cmp} ${t.bound} | ${fmt(t.median, 2)} (${fmt(t.min, 2)}–${fmt(t.max, 2)}) | ${t.met ? 'yes' : '**no**'} |`)
  }
  return out.join('\n')
}

const boundText = (w) => w.cmp === undefined ? (w.absolute ? 'figure' : 'reported') : `${w.cmp} ${fmt(w.bound, 2)}`

function waveTable ({ wave }) {
  const out = ['| scenario | ratio | target | median (min–max) | met |', '| --- | --- | --- | ---: | --- |']
  for (const w of wave) {
    const d = w.absolute ? 0 : 2
    out.push(`| ${w.scenario} | ${w.what} | ${boundText(w)} | ${fmt(w.median, d)} (${fmt(w.min, d)}–${fmt(w.max, d)}) | ${w.cmp === undefined ? '' : w.met ? 'yes' : '**no**'} |`)
  }
  return out.join('\n')
}

function plainTable ({ lines }) {
  const header = ['scenario', 'metric', ...IMPLS, 'd/bare', 'd/sio', 'd/nes']
  const rows = lines.map(l => [l.scenario, l.label, ...IMPLS.map(i => l.values[i] ?? 'n/a'), ...RATIO_TO.map(o => l.ratios[o]?.text ?? 'n/a')])
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map(r => r[i].length)))
  const fmtRow = (r) => r.map((c, i) => c.padEnd(widths[i])).join('  ')
  return [fmtRow(header), widths.map(w => '-'.repeat(w)).join('  '), ...rows.map(fmtRow)].join('\n')
}

export function machine () {
  let model = cpus()[0]?.model ?? 'unknown'
  try {
    const m = readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.+)$/m)
    if (m) model = m[1]
  } catch { /* not Linux */ }
  return { nproc: cpus().length, cpu: model, memoryGiB: Math.round(totalmem() / 2 ** 30 * 10) / 10, node: process.version }
}

export function report (records, { quick, seconds, resultsFile, write }) {
  const summary = summarize(records)
  const m = machine()
  console.log('\n' + plainTable(summary))
  console.log('\nTargets (ratios of medians paired per repetition):')
  for (const t of summary.targets) {
    console.log(`  ${t.met ? 'ok  ' : 'MISS'} ${t.scenario} ${t.field} drizzle/${t.other} = ${fmt(t.median, 2)} (${fmt(t.min, 2)}–${fmt(t.max, 2)}), target ${t.cmp} ${t.bound}`)
  }
  if (summary.wave.length > 0) {
    console.log('\nSecond wave, side by side:')
    for (const w of summary.wave) {
      const d = w.absolute ? 0 : 2
      console.log(`  ${w.cmp === undefined ? '    ' : w.met ? 'ok  ' : 'MISS'} ${w.scenario} ${w.what} = ${fmt(w.median, d)} (${fmt(w.min, d)}–${fmt(w.max, d)}), ${boundText(w)}`)
    }
  }
  const misses = summary.targets.filter(t => !t.met).length + summary.wave.filter(w => !w.met).length
  console.log(`\n${quick ? 'quick' : 'full'} run: ${fmt(seconds, 0)} s on ${m.nproc} × ${m.cpu}, Node ${m.node}; ${misses} target(s) missed; ${relative(root, resultsFile)}`)
  if (!write) return
  writeFileSync(join(root, 'bench', 'ratios.svg'), svgChart(summary, { title: `fastify-drizzle vs bare @fastify/websocket, Socket.IO 4 and @hapi/nes (${m.nproc} × ${m.cpu}, Node ${m.node})` }))
  const generated = [
    '<!-- results:start (generated by `npm run bench`; edit outside the markers) -->',
    `Run of ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, ${fmt(seconds, 0)} s, raw records in \`${relative(root, resultsFile)}\`.`,
    '',
    `Machine: ${m.nproc} × ${m.cpu} (nproc ${m.nproc}), ${m.memoryGiB} GiB RAM, Node ${m.node}, Linux. Each cell: median of ${Math.max(...records.map(r => r.rep)) + 1} repetitions (min–max); ratios are drizzle ÷ other, paired per repetition.`,
    '',
    markdownTable(summary),
    '',
    '### Targets',
    '',
    targetTable(summary),
    '',
    '### The second wave, side by side in the same run',
    '',
    'Each variant of fastify-drizzle ran in the same rotation as plain fastify-drizzle; ratios are variant ÷ plain, paired per repetition. Streams and the presence storm have their own baselines (plain replies over the same socket; a plain topic in the same storm).',
    '',
    waveTable(summary),
    '',
    '![ratios](bench/ratios.svg)',
    '<!-- results:end -->'
  ].join('\n')
  const path = join(root, 'BENCHMARKS.md')
  let doc = existsSync(path) ? readFileSync(path, 'utf8') : '# Benchmarks\n\n<!-- results:start -->\n<!-- results:end -->\n'
  const start = doc.indexOf('<!-- results:start')
  const end = doc.indexOf('<!-- results:end -->')
  doc = start === -1 || end === -1 ? doc + '\n' + generated + '\n' : doc.slice(0, start) + generated + doc.slice(end + '<!-- results:end -->'.length)
  writeFileSync(path, doc)
  console.log('wrote BENCHMARKS.md and bench/ratios.svg')
}

// Re-render a past run: node bench/report.js <results.jsonl> [--write]
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const file = process.argv[2]
  const records = readFileSync(file, 'utf8').trim().split('\n').map(l => JSON.parse(l))
  report(records, { quick: file.includes('quick'), seconds: NaN, resultsFile: file, write: process.argv.includes('--write') })
}
