import type { BrokerHistory, HistoryEntry, HistoryPolicy, HistoryRead, Position, PublishOptions } from './types.js'
import { decodeBrokerMessage } from './wire.js'

// Topic history on Redis (README "History and recovery"): a library of Redis functions (Redis >= 7)
// assigns each publication its offset, appends it to a capped stream and publishes it, in one atomic
// step, so every instance and every outside publisher (`FCALL drizzle_publish 1 <channel> <message>`)
// agrees on positions. Per topic, beside the channel `<prefix><topic>`:
//   `<prefix><topic>:~meta`    hash: epoch, offset (the last assigned), size, ttl
//   `<prefix><topic>:~stream`  stream of the last `size` publications, entry id `0-<offset>`
// Both expire `ttl` ms after the last publication; the epoch changes whenever the hash is gone
// (expired, evicted, Redis restarted without persistence).

export const LIBRARY = `#!lua name=drizzle

local DEFAULT_SIZE = 100
local DEFAULT_TTL = 300000

-- A new epoch from the server's clock: a topic whose history was lost never gets its old epoch back.
local function new_epoch()
  local now = redis.call('TIME')
  return string.format('%x%06x', tonumber(now[1]), tonumber(now[2]))
end

local function bounded(value, fallback)
  local n = tonumber(value)
  if n == nil or n < 1 then return fallback end
  return math.floor(n)
end

-- The topic's history state, created (new epoch, offset 0) when missing; a policy given is kept for
-- publishers that give none.
local function state(channel, size, ttl)
  local meta = channel .. ':~meta'
  local stream = channel .. ':~stream'
  local got = redis.call('HMGET', meta, 'epoch', 'offset', 'size', 'ttl')
  local epoch, offset = got[1], tonumber(got[2])
  size = bounded(size, bounded(got[3], DEFAULT_SIZE))
  ttl = bounded(ttl, bounded(got[4], DEFAULT_TTL))
  if not epoch then
    epoch = new_epoch()
    offset = 0
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'offset', 0, 'size', size, 'ttl', ttl)
    redis.call('PEXPIRE', meta, ttl)
  elseif got[3] ~= tostring(size) or got[4] ~= tostring(ttl) then
    redis.call('HSET', meta, 'size', size, 'ttl', ttl)
  end
  return meta, stream, epoch, offset, size, ttl
end

-- FCALL drizzle_publish 1 <channel> <message> [size ttl]: the message is the JSON object a PUBLISH
-- would carry; it is published with its position appended.
local function publish(keys, args)
  local message = args[1]
  if type(message) ~= 'string' or not string.find(message, '^%s*{') or not string.find(message, '}%s*$') or string.find(message, '^%s*{%s*}%s*$') then
    return redis.error_reply('ERR drizzle_publish: the message must be a JSON object such as {"data": ...}')
  end
  local meta, stream, epoch, offset, size, ttl = state(keys[1], args[2], args[3])
  offset = redis.call('HINCRBY', meta, 'offset', 1)
  local body = (string.gsub(message, '}%s*$', '', 1)) .. ',"offset":' .. string.format('%d', offset) .. ',"epoch":"' .. epoch .. '"}'
  redis.call('XADD', stream, 'MAXLEN', size, '0-' .. string.format('%d', offset), 'm', body)
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PEXPIRE', stream, ttl)
  redis.call('PUBLISH', keys[1], body)
  return { offset, epoch }
end

-- FCALL drizzle_position 1 <channel> [size ttl]: { offset, epoch }
local function position(keys, args)
  local meta, stream, epoch, offset = state(keys[1], args[1], args[2])
  return { offset, epoch }
end

-- FCALL drizzle_read 1 <channel> <after> [size ttl]: { epoch, offset, message... } of the offsets after <after>
local function read(keys, args)
  local after = bounded(args[1], 0)
  local meta, stream, epoch, offset = state(keys[1], args[2], args[3])
  local reply = { epoch, offset }
  if offset > after then
    local entries = redis.call('XRANGE', stream, '(0-' .. string.format('%d', after), '+')
    for _, entry in ipairs(entries) do reply[#reply + 1] = entry[2][2] end
  end
  return reply
end

redis.register_function('drizzle_publish', publish)
redis.register_function('drizzle_position', position)
redis.register_function('drizzle_read', read)
`

/** How the history reaches Redis: one function call on a ready connection, within the broker's timeout. */
export type CallFunction = (name: string, topic: string, args: ReadonlyArray<string | Buffer>) => Promise<unknown>

export class RedisHistory implements BrokerHistory {
  constructor (
    private readonly call: CallFunction,
    /** The broker message of a publication (no origin: it must come back to its own instance). */
    private readonly encode: (data: unknown, event: string | undefined, traceparent: string | undefined) => Buffer,
    private readonly maxMessageBytes: number
  ) {}

  async publish (topic: string, data: unknown, options: PublishOptions | undefined, policy: HistoryPolicy): Promise<Position> {
    const body = this.encode(data, options?.event, options?.traceparent)
    return toPosition(await this.call('drizzle_publish', topic, [body, String(policy.size), String(policy.ttl)]))
  }

  async position (topic: string, policy: HistoryPolicy): Promise<Position> {
    return toPosition(await this.call('drizzle_position', topic, [String(policy.size), String(policy.ttl)]))
  }

  async read (topic: string, after: number, policy: HistoryPolicy): Promise<HistoryRead> {
    const reply = await this.call('drizzle_read', topic, [String(after), String(policy.size), String(policy.ttl)]) as unknown[]
    const entries: HistoryEntry[] = []
    for (const raw of reply.slice(2)) {
      const message = decodeBrokerMessage(raw as Buffer, this.maxMessageBytes)
      // Only what drizzle_publish wrote is in the stream; anything else is skipped (a gap, then).
      if (typeof message === 'string' || message.offset === undefined) continue
      entries.push(message.event === undefined ? { offset: message.offset, data: message.data } : { offset: message.offset, data: message.data, event: message.event })
    }
    return { epoch: String(reply[0]), offset: Number(reply[1]), entries }
  }
}

function toPosition (reply: unknown): Position {
  const [offset, epoch] = reply as [number, Buffer | string]
  return { offset: Number(offset), epoch: String(epoch) }
}
