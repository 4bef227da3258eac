"""Lua scripts for the index, leases and host tier: each runs atomically in Redis.

LRU scores come from a logical clock (``<p>:clock``), lease expiries from Redis' own
TIME, so clients' clocks never matter. Scripts that evict derive payload / loc / pin
key names from the prefix (fine on a single Redis; Redis Cluster would need hash tags).
"""

from __future__ import annotations

_NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

_IS_PINNED = """
local function is_pinned(pin_key, now)
  redis.call('ZREMRANGEBYSCORE', pin_key, '-inf', now)
  return redis.call('EXISTS', pin_key) == 1
end
"""

# Later blocks of one call get older scores: eviction takes chains from the tail.
_STAMP = """
local function stamp(lru, clock, members)
  local n = #members
  local top = redis.call('INCRBY', clock, n)
  for i, member in ipairs(members) do
    redis.call('ZADD', lru, top - i + 1, member)
  end
end
"""

# KEYS: lru, clock, loc_1..loc_n   ARGV: field, key_1..key_n, slot_1..slot_n
ADD = _STAMP + """
local n = (#ARGV - 1) / 2
local members = {}
for i = 1, n do
  redis.call('HSET', KEYS[2 + i], ARGV[1], ARGV[1 + n + i])
  members[i] = ARGV[1 + i]
end
stamp(KEYS[1], KEYS[2], members)
return n
"""

# KEYS: lru, loc_1..loc_n   ARGV: field, key_1..key_n
REMOVE = """
local removed = 0
for i = 2, #KEYS do
  removed = removed + redis.call('HDEL', KEYS[i], ARGV[1])
  redis.call('ZREM', KEYS[1], ARGV[i])
end
return removed
"""

# KEYS: lru, clock   ARGV: key_1..key_n (only keys the holder has are touched)
TOUCH = _STAMP + """
local members = {}
for _, key in ipairs(ARGV) do
  if redis.call('ZSCORE', KEYS[1], key) then table.insert(members, key) end
end
stamp(KEYS[1], KEYS[2], members)
return #members
"""

# KEYS: loc_1..loc_n, pin_1..pin_n   ARGV: lease_id, ttl_ms
# Pins the longest leading run of blocks that someone holds; returns its length.
ACQUIRE = _NOW_MS + """
local now, ttl, n = now_ms(), tonumber(ARGV[2]), #KEYS / 2
local pinned = 0
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 0 then break end
  local pin = KEYS[n + i]
  redis.call('ZREMRANGEBYSCORE', pin, '-inf', now)
  redis.call('ZADD', pin, now + ttl, ARGV[1])
  if redis.call('PTTL', pin) < ttl then redis.call('PEXPIRE', pin, ttl) end
  pinned = i
end
return pinned
"""

# KEYS: pin_1..pin_n   ARGV: lease_id
RELEASE = """
local released = 0
for _, pin in ipairs(KEYS) do released = released + redis.call('ZREM', pin, ARGV[1]) end
return released
"""

# KEYS: pin   -> live leases on the block
PIN_COUNT = _NOW_MS + _IS_PINNED + """
is_pinned(KEYS[1], now_ms())
return redis.call('ZCARD', KEYS[1])
"""

# KEYS: host_used, host_lru   ARGV: need_bytes, capacity_bytes, prefix, holder_field
# Evicts unpinned host blocks, least recently used first, until need_bytes fit; then
# reserves them. Returns {1 or 0 (reserved or not), evicted key, ...}.
RESERVE = _NOW_MS + _IS_PINNED + """
local need, cap, p, field = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local now = now_ms()
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local result, skipped = {0}, 0
while used + need > cap do
  local batch = redis.call('ZRANGE', KEYS[2], skipped, skipped + 63)
  if #batch == 0 then break end
  for _, key in ipairs(batch) do
    if used + need <= cap then break end
    if is_pinned(p .. ':pin:' .. key, now) then
      skipped = skipped + 1
    else
      used = used - redis.call('HSTRLEN', p .. ':blk:' .. key, 'd')
      redis.call('DEL', p .. ':blk:' .. key)
      redis.call('HDEL', p .. ':loc:' .. key, field)
      redis.call('ZREM', KEYS[2], key)
      table.insert(result, key)
    end
  end
end
if used + need <= cap then
  result[1] = 1
  used = used + need
end
redis.call('SET', KEYS[1], used)
return result
"""
