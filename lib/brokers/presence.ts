// Presence as a broker keeps it (README "Presence"): who is subscribed to a presence topic, on every
// instance. The plugin tracks its own connections and tells the broker when one joins or leaves;
// the broker keeps the shared member list and carries `$join`/`$leave` to the other processes.

/** One member of a presence topic: a connection, and the user `identify` named for it (or null). */
export interface PresenceMember {
  connection: string
  user: string | null
}

/** The event names of presence frames: `{"topic", "event": "$join" | "$leave", "data": <member>}`. */
export const JOIN_EVENT = '$join'
export const LEAVE_EVENT = '$leave'

/**
 * The presence side of a broker (`Broker.presence`), present when `features` has 'presence'.
 * The plugin calls join/leave once per subscription of a connection of this process, in order.
 */
export interface BrokerPresence {
  /**
   * Adds a member. With `announce`, the other processes receive a `$join` publication of it (this
   * process delivers its own locally). Resolves once the member is listed everywhere.
   */
  join (topic: string, member: PresenceMember, announce: boolean): Promise<void>
  /** Removes a member; with `announce`, the other processes receive its `$leave`. */
  leave (topic: string, member: PresenceMember, announce: boolean): Promise<void>
  /** The members of a topic on every live instance. */
  members (topic: string): Promise<PresenceMember[]>
}

/**
 * Presence of a single process (the memory broker): the members of each topic in a Map, a topic
 * dropped with its last member, so memory follows the live subscriptions.
 */
export function localPresence (): BrokerPresence {
  const topics = new Map<string, Map<string, PresenceMember>>()
  return {
    async join (topic, member) {
      let members = topics.get(topic)
      if (members === undefined) {
        members = new Map()
        topics.set(topic, members)
      }
      members.set(member.connection, member)
    },
    async leave (topic, member) {
      const members = topics.get(topic)
      if (members === undefined || !members.delete(member.connection)) return
      if (members.size === 0) topics.delete(topic)
    },
    async members (topic) {
      return [...(topics.get(topic)?.values() ?? [])]
    }
  }
}
