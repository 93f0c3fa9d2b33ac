import { amqpBroker } from '../lib/brokers/amqp.js'
const log = { error: console.error, warn: console.warn, info: console.info, debug () {} } as any
const a = amqpBroker({ exchange: 'smoke-x', log })
const b = amqpBroker({ exchange: 'smoke-x', log })
const got: any[] = []
await a.attach({ deliver: (t, d, e) => got.push(['a', t, d, e]), log })
await b.attach({ deliver: (t, d, e) => got.push(['b', t, d, e]), log })
await a.subscribe('todos'); await b.subscribe('todos')
console.time('pub')
await a.publish('todos', { id: 1 }, { event: 'created' })
console.timeEnd('pub')
await new Promise(r => setTimeout(r, 100))
console.log(got)
await a.close(); await b.close(); await a.close()
await a.publish('x', 1).catch(e => console.log(e.code))
const s = amqpBroker({ url: 'amqp://guest:guest@127.0.0.1:1', log })
await s.publish('x', 1).catch(e => console.log(e.code, e.message))
await s.close()
console.log('done')
