import type { Broker, BrokerFeature } from './types.js'
import { localPresence } from './presence.js'
import { BrokerClosedError } from '../errors.js'
import { MemoryHistory } from './memory-history.js'

const FEATURES: ReadonlySet<BrokerFeature> = new Set(['history', 'presence'])

/**
 * The default broker: a single process needs nothing to cross, since the plugin delivers its own
 * publications locally. It exists so the plugin always talks to a broker the same way. It keeps the
 * history of history topics in memory (lib/brokers/memory-history.ts).
 */
export function memoryBroker (): Broker {
  let closed = false
  const history = new MemoryHistory()
  return {
    name: 'memory',
    features: FEATURES,
    presence: localPresence(),
    history,
    async attach (sink) { history.sink = sink },
    async subscribe () {},
    async unsubscribe () {},
    async publish () {
      if (closed) throw new BrokerClosedError('memory')
    },
    async close () {
      closed = true
      history.clear()
    }
  }
}
