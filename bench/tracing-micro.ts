// In-process cost of tracing one action with an SDK whose sampler records nothing (issue #18):
// CPU ns per startAction(+runAction)+endAction against calling the handler directly, and the SDK's
// own part (startSpan of a root span: two random ids, sampler, a non-recording span).
//   node --import tsx bench/tracing-micro.ts          no context manager (as bench/server.js drizzle+otel-off)
//   MICRO_CM=1 node --import tsx bench/tracing-micro.ts   with an AsyncLocalStorage context manager
import { context, trace, ROOT_CONTEXT, SpanKind } from '@opentelemetry/api'
import { AlwaysOffSampler, BasicTracerProvider } from '@opentelemetry/sdk-trace-base'
import * as api from '@opentelemetry/api'
import { Tracing } from '../lib/tracing.js'
import { kSpan } from '../lib/context.js'

import { AsyncLocalStorage } from 'node:async_hooks'

trace.setGlobalTracerProvider(new BasicTracerProvider({ sampler: new AlwaysOffSampler() }))
if (process.env.MICRO_CM === '1') {
  // A context manager as @opentelemetry/context-async-hooks makes one (AsyncLocalStorage), reduced.
  const als = new AsyncLocalStorage<api.Context>()
  context.setGlobalContextManager({
    active: () => als.getStore() ?? ROOT_CONTEXT,
    with: (ctx, fn, thisArg, ...args) => als.run(ctx, () => fn.call(thisArg, ...args)),
    bind: (_ctx, target) => target,
    enable () { return this },
    disable () { return this }
  } as api.ContextManager)
}
const tracing = new Tracing(api)
tracing.probe()
if (!tracing.active) throw new Error('no SDK found')
console.log('context manager:', tracing.activates)

const N = Number(process.env.N ?? 1_000_000)
const request = { headers: {} }
tracing.captureUpgrade(request)
const action = { resource: 'bench', action: 'echo' }
const handler = async (): Promise<number> => 1
function invocation () {
  return { action, message: { request_id: 17 }, ctx: { [kSpan]: undefined as object | undefined, request } }
}

async function time (name: string, fn: () => Promise<unknown> | unknown): Promise<number> {
  for (let i = 0; i < N / 10; i++) await fn()
  // CPU time, not wall time: on a shared machine other processes' share is not ours.
  const c0 = process.cpuUsage()
  for (let i = 0; i < N; i++) await fn()
  const c = process.cpuUsage(c0)
  const ns = (c.user + c.system) * 1000 / N
  console.log(`${name.padEnd(40)} ${ns.toFixed(0).padStart(6)} ns`)
  return ns
}

const tracer = trace.getTracer('x')
const opts = { kind: SpanKind.SERVER }
for (let round = 0; round < 3; round++) {
  const base = await time('plain handler', () => handler())
  const full = await time('start+run+end', async () => {
    const inv = invocation()
    const span = tracing.startAction(inv)
    if (tracing.activates) await tracing.runAction(span, () => handler())
    else await handler()
    tracing.endAction(span, 200, undefined)
  })
  const inv0 = await time('plain handler + invocation object', () => { invocation(); return handler() })
  await time('startAction+endAction (no run)', () => {
    const inv = invocation()
    const span = tracing.startAction(inv)
    tracing.endAction(span, 200, undefined)
    return handler()
  })
  await time('sdk startSpan(ROOT) alone', () => { tracer.startSpan('bench/echo', opts, ROOT_CONTEXT); return handler() })
  await time('setSpan+with', () => context.with(trace.setSpan(context.active(), trace.wrapSpanContext(api.INVALID_SPAN_CONTEXT)), handler))
  console.log(`=> tracing adds ${(full - inv0).toFixed(0)} ns per action (plain ${base.toFixed(0)})\n`)
}
