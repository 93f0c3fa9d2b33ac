// Puts two runs side by side: for every scenario and metric, the median of fastify-drizzle's value
// divided by the bare baseline's of the same repetition, before and after. Absolute numbers differ
// from run to run with the machine's load; ratios to a baseline measured in the same run do not.
// `node bench/compare.js bench/results/<before>.jsonl bench/results/<after>.jsonl` prints markdown.
import { readFileSync } from 'node:fs'
import { basename } from 'node:path'
import { median } from './common.js'

const FIELDS = {
  rt: ['reqPerSec', 'p99Ms', 'cpuUsPerReq'],
  fanout: ['deliveriesPerSec', 'cpuUsPerDelivery'],
  memory: ['heapPerConn', 'rssPerConn'],
  redis: ['deliveriesPerSec', 'allReceivedP99Ms', 'cpuUsPerDelivery']
}

function load (file) {
  return readFileSync(file, 'utf8').split('\n').filter(Boolean).map(line => JSON.parse(line))
}

/** Median over repetitions of drizzle/bare, paired by repetition; the spread shows the noise. */
function pairedRatio (rows, scenario, field) {
  const values = []
  for (const d of rows) {
    if (d.scenario !== scenario || d.impl !== 'drizzle') continue
    const b = rows.find(r => r.scenario === scenario && r.impl === 'bare' && r.rep === d.rep)
    if (b !== undefined && Number.isFinite(d[field]) && Number.isFinite(b[field]) && b[field] !== 0) values.push(d[field] / b[field])
  }
  if (values.length === 0) return undefined
  return { median: median(values), min: Math.min(...values), max: Math.max(...values) }
}

function show (r) {
  if (r === undefined) return '–'
  return `${r.median.toFixed(2)}x (${r.min.toFixed(2)}–${r.max.toFixed(2)})`
}

function drizzleMedian (rows, scenario, field) {
  const v = rows.filter(r => r.scenario === scenario && r.impl === 'drizzle' && Number.isFinite(r[field])).map(r => r[field])
  return v.length === 0 ? '–' : median(v).toFixed(field.endsWith('PerSec') ? 0 : 2)
}

const [beforeFile, afterFile] = process.argv.slice(2)
if (afterFile === undefined) {
  console.error('usage: node bench/compare.js <before.jsonl> <after.jsonl>')
  process.exit(2)
}
const before = load(beforeFile)
const after = load(afterFile)
const scenarios = [...new Set([...before, ...after].map(r => r.scenario))]

console.log(`| scenario | metric | drizzle/bare before (${basename(beforeFile)}) | drizzle/bare after (${basename(afterFile)}) | drizzle before | drizzle after |`)
console.log('|---|---|---|---|---|---|')
for (const scenario of scenarios) {
  for (const field of FIELDS[scenario.split('-')[0]] ?? []) {
    console.log(`| ${scenario} | ${field} | ${show(pairedRatio(before, scenario, field))} | ${show(pairedRatio(after, scenario, field))} | ${drizzleMedian(before, scenario, field)} | ${drizzleMedian(after, scenario, field)} |`)
  }
}
