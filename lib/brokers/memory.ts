import type { Broker, BrokerFeature } from './types.js'
import { localPresence } from './presence.js'
import { BrokerClosedError } from '../errors.js'

/**
 * The default broker: a single process needs nothing to cross, since the plugin delivers its own
 * publications locally. It exists so the plugin always talks to a broker the same way.
 */
export function memoryBroker (): Broker {
  let closed = false
  return {
    name: 'memory',
    features: new Set<BrokerFeature>(['presence']),
    presence: localPresence(),
    async attach () {},
    async subscribe () {},
    async unsubscribe () {},
    async publish () {
      if (closed) throw new BrokerClosedError('memory')
    },
    async close () { closed = true }
  }
}
