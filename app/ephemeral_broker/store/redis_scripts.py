"""The Lua scripts of the Redis store: every store operation is exactly one of these.

Each script runs atomically inside Redis, so an operation never reads state in one round trip
and writes it in another, and two brokers calling at the same moment are simply ordered by
Redis. The scripts are registered once per client and run with EVALSHA.

Layout of a namespace (P = "eb:{NS}:", one hash tag so all of it lives in one cluster slot;
the scripts are routed by KEYS[1] = P.."meta" and derive the other names from P):

  meta     hash: epoch (random id of this incarnation of the namespace), limits (JSON)
  ver, tok counters: versions of values, fencing tokens of leases
  st       hash of counters: bytes, expired, lexpired, cb/ca (compression bytes before/after),
           cc/cp (values stored compressed/plain)
  k:KEY    hash per key: d data, c compressed (0/1), s size of the JSON, v version,
           e expires_at (ms), t ttl (ms), f footprint (approximate bytes)
  idx      sorted set, all scores 0, members the key names: ZRANGEBYLEX lists by prefix in
           byte order, which for UTF-8 is code-point order
  exp      sorted set key -> expires_at: what is due is a range at the bottom
  p:POOL   hash: n (every value below n was handed out once), w:WORKER -> "value token exp ttl"
  pv:POOL  sorted set worker -> value (the holders, listed by value)
  pf:POOL  sorted set of the free values below n: the lowest free value is its first member
  pq:POOL  sorted set waiter id -> arrival number: the FIFO queue of lease waiters
  w:WORKER hash pool -> token (release of all of a worker's leases)
  lexp     sorted set token -> expires_at of every live lease
  lt       hash token -> "POOL WORKER" (names never contain whitespace)
  pools    sorted set (scores 0) of pools with live holders
  wt       hash waiter id -> "WORKER SIZE TTL DEADLINE" (DEADLINE in Redis time)
  gr       hash waiter id -> "value token exp ttl created": a value handed to a waiter
  ev       the pub/sub channel: "k"..KEY after a write of KEY, "w"..ID after a hand-over

Time: NOW is Redis's own clock (TIME), the one clock of all brokers, unless the caller passes
a time (only tests do, with a fake clock). Every key gets a safety TTL (SAFETY ms, longer than
any TTL a value or lease can have) refreshed by writes and by each broker's sweep, so a
namespace whose brokers all died disappears by itself.

Numbers: Lua numbers are doubles, exact up to 2^53; versions and tokens are seeded near
now_ms * 1000 (about 1.8e15, see INIT) and are written with %d, never tostring (which would
print 1.8e+15). Integer arithmetic of `incr` is done by Redis's INCRBY on a scratch key, which
is exact over the whole signed 64-bit range and refuses to overflow.
"""

from __future__ import annotations

from typing import Final

# Argument layout shared by every script but INIT: ARGV[1..7] below, the operation's own
# arguments from ARGV[8] on.
PRELUDE: Final = r"""
local P = ARGV[1]
if redis.call('HGET', P .. 'meta', 'epoch') ~= ARGV[2] then
  return redis.error_reply('EBEPOCH the namespace was reset')
end
local function realnow()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local NOW
if ARGV[3] ~= '' then NOW = tonumber(ARGV[3]) else NOW = realnow() end
local SAFETY = tonumber(ARGV[4])
local MAX_ITEMS = tonumber(ARGV[5])
local MAX_LEASES = tonumber(ARGV[6])
local BATCH = tonumber(ARGV[7])
local IDX, EXP, ST, VER, TOK = P .. 'idx', P .. 'exp', P .. 'st', P .. 'ver', P .. 'tok'
local LEXP, LT, POOLS, WT, GR = P .. 'lexp', P .. 'lt', P .. 'pools', P .. 'wt', P .. 'gr'
local QSEQ, CH = P .. 'qseq', P .. 'ev'
-- A waiter's broker gives up at its deadline; one that is still queued this long after it
-- belongs to a broker that died, and is dropped instead of being handed a value.
local GRACE = 5000
local CLAIM_MS = 3000

-- Waiter ids are BROKER.N; a broker with queued waiters keeps P..'b:'..BROKER alive (a
-- short TTL it refreshes). A waiter whose broker key is gone belongs to a broker that died
-- (SIGKILL, a lost host): it is never handed a value.
local function broker_alive(id)
  local owner = string.match(id, '^([^.]+)%.')
  return owner ~= nil and redis.call('EXISTS', P .. 'b:' .. owner) == 1
end

local function s(n) return string.format('%d', n) end

local function ik(key) return P .. 'k:' .. key end

local function drop(key)
  local h = ik(key)
  local f = redis.call('HGET', h, 'f')
  redis.call('DEL', h)
  redis.call('ZREM', IDX, key)
  redis.call('ZREM', EXP, key)
  if f then redis.call('HINCRBY', ST, 'bytes', -tonumber(f)) end
end

local function expire_items(limit)
  local due = redis.call('ZRANGEBYSCORE', EXP, '-inf', NOW, 'LIMIT', 0, limit)
  for _, key in ipairs(due) do drop(key) end
  if #due > 0 then redis.call('HINCRBY', ST, 'expired', #due) end
  return #due
end

local function live(key)
  local r = redis.call('HMGET', ik(key), 'v', 'e', 't')
  if not r[1] then return nil end
  local e = tonumber(r[2])
  if e <= NOW then
    drop(key)
    redis.call('HINCRBY', ST, 'expired', 1)
    return nil
  end
  return {v = r[1], e = e, t = tonumber(r[3])}
end

local function matches(cond, ver)
  if not ver then return false end
  if cond == '*' then return true end
  for part in string.gmatch(cond, '[^,]+') do
    if part == ver then return true end
  end
  return false
end

local function precondition(im, inm, ver)
  if im ~= '' and not matches(im, ver) then return {'pf', 'match', ver or ''} end
  if inm ~= '' and matches(inm, ver) then return {'pf', 'none', ver or ''} end
  return nil
end

local function room()
  if MAX_ITEMS > 0 then
    local n = redis.call('ZCARD', IDX)
    if n >= MAX_ITEMS then
      -- Due entries may still be counted: reclaim them before refusing a live key.
      expire_items(n)
      n = redis.call('ZCARD', IDX)
      if n >= MAX_ITEMS then return n end
    end
  end
  return nil
end

local function write(key, cur, data, comp, size, foot, ttl, exp)
  local ver = redis.call('INCR', VER)
  local h = ik(key)
  local oldf = 0
  if cur then
    oldf = tonumber(redis.call('HGET', h, 'f') or '0')
  else
    redis.call('ZADD', IDX, 0, key)
  end
  redis.call('HSET', h, 'd', data, 'c', comp, 's', size, 'v', s(ver), 'e', s(exp), 't', s(ttl),
    'f', foot)
  redis.call('PEXPIRE', h, SAFETY)
  redis.call('ZADD', EXP, exp, key)
  redis.call('HINCRBY', ST, 'bytes', tonumber(foot) - oldf)
  redis.call('PUBLISH', CH, 'k' .. key)
  return ver
end

-- ---- leases ----------------------------------------------------------------------------

local function ph(pool) return P .. 'p:' .. pool end
local function pv(pool) return P .. 'pv:' .. pool end
local function pf(pool) return P .. 'pf:' .. pool end
local function pq(pool) return P .. 'pq:' .. pool end
local function wk(worker) return P .. 'w:' .. worker end

local function parse(rec)
  local v, t, e, l = string.match(rec, '^(%d+) (%d+) (%d+) (%d+)$')
  return {value = tonumber(v), token = t, exp = tonumber(e), ttl = tonumber(l)}
end
local function fmt(l) return s(l.value) .. ' ' .. l.token .. ' ' .. s(l.exp) .. ' ' .. s(l.ttl) end

local function held(pool, worker)
  local r = redis.call('HGET', ph(pool), 'w:' .. worker)
  if r then return parse(r) end
  return nil
end

local function lowest_free(pool)
  local f = redis.call('ZRANGE', pf(pool), 0, 0, 'WITHSCORES')
  if #f > 0 then return tonumber(f[2]) end
  return tonumber(redis.call('HGET', ph(pool), 'n') or '0')
end

local function take_lowest(pool)
  local f = redis.call('ZPOPMIN', pf(pool))
  if #f > 0 then return tonumber(f[2]) end
  return redis.call('HINCRBY', ph(pool), 'n', 1) - 1
end

local function keep(pool, worker)
  redis.call('PEXPIRE', ph(pool), SAFETY)
  redis.call('PEXPIRE', pv(pool), SAFETY)
  redis.call('PEXPIRE', wk(worker), SAFETY)
end

local function grant(pool, worker, ttl)
  local token = s(redis.call('INCR', TOK))
  local l = {value = take_lowest(pool), token = token, exp = NOW + ttl, ttl = ttl}
  redis.call('HSET', ph(pool), 'w:' .. worker, fmt(l))
  redis.call('ZADD', pv(pool), l.value, worker)
  redis.call('HSET', LT, token, pool .. ' ' .. worker)
  redis.call('ZADD', LEXP, l.exp, token)
  redis.call('HSET', wk(worker), pool, token)
  redis.call('ZADD', POOLS, 0, pool)
  keep(pool, worker)
  return l
end

local function extend(pool, worker, l, ttl)
  l.exp = NOW + ttl
  l.ttl = ttl
  redis.call('HSET', ph(pool), 'w:' .. worker, fmt(l))
  redis.call('ZADD', LEXP, l.exp, l.token)
  keep(pool, worker)
end

local function reply(l, created) return {'ok', l.value, l.token, l.exp, l.ttl, created} end

local function forget_if_unused(pool)
  if redis.call('ZCARD', pv(pool)) == 0 then
    redis.call('ZREM', POOLS, pool)
    if redis.call('ZCARD', pq(pool)) == 0 then
      -- Nobody holds or waits: the free values and the counter start over with the next grant.
      redis.call('DEL', ph(pool), pv(pool), pf(pool), pq(pool))
    end
  end
end

-- Hand free values to waiters, first come first served among those whose size admits the
-- lowest free value, in the same script that freed it: a newcomer never takes it first.
local function serve(pool)
  local q = pq(pool)
  while true do
    if MAX_LEASES > 0 and redis.call('HLEN', LT) >= MAX_LEASES then return end
    local lowest = lowest_free(pool)
    local ids = redis.call('ZRANGE', q, 0, -1)
    local rnow = realnow()
    local chosen, worker, ttl
    for _, id in ipairs(ids) do
      local w = redis.call('HGET', WT, id)
      if not w then
        redis.call('ZREM', q, id)
      else
        local wworker, wsize, wttl, wdeadline = string.match(w, '^(%S+) (%d+) (%d+) (%d+)$')
        if tonumber(wdeadline) + GRACE < rnow or not broker_alive(id) then
          redis.call('ZREM', q, id)
          redis.call('HDEL', WT, id)
        elseif lowest < tonumber(wsize) then
          chosen, worker, ttl = id, wworker, tonumber(wttl)
          break
        end
      end
    end
    if not chosen then return end
    redis.call('ZREM', q, chosen)
    redis.call('HDEL', WT, chosen)
    local l = held(pool, worker)
    local created = 0
    if l then
      extend(pool, worker, l, ttl)
    else
      -- Held only for CLAIM_MS until the waiter's broker claims it (within milliseconds,
      -- woken by the message below); a broker that died meanwhile never does, and the value
      -- goes on to the next waiter instead of staying held for the lease's whole TTL.
      l = grant(pool, worker, math.min(ttl, CLAIM_MS))
      created = 1
    end
    redis.call('HSET', GR, chosen, fmt(l) .. ' ' .. created .. ' ' .. s(ttl))
    redis.call('PEXPIRE', GR, SAFETY)
    redis.call('PUBLISH', CH, 'w' .. chosen)
  end
end

local function end_lease(pool, worker, l)
  redis.call('HDEL', ph(pool), 'w:' .. worker)
  redis.call('ZREM', pv(pool), worker)
  redis.call('HDEL', LT, l.token)
  redis.call('ZREM', LEXP, l.token)
  redis.call('HDEL', wk(worker), pool)
  redis.call('ZADD', pf(pool), l.value, s(l.value))
  redis.call('PEXPIRE', pf(pool), SAFETY)
  if redis.call('ZCARD', pq(pool)) > 0 then serve(pool) end
  forget_if_unused(pool)
end

local function expire_leases(limit)
  local due = redis.call('ZRANGEBYSCORE', LEXP, '-inf', NOW, 'LIMIT', 0, limit)
  local n = 0
  for _, token in ipairs(due) do
    local owner = redis.call('HGET', LT, token)
    local l = nil
    local pool, worker
    if owner then
      pool, worker = string.match(owner, '^(%S+) (%S+)$')
      l = held(pool, worker)
    end
    if l and l.token == token then
      end_lease(pool, worker, l)
      n = n + 1
    else
      redis.call('ZREM', LEXP, token)
      redis.call('HDEL', LT, token)
    end
  end
  if n > 0 then redis.call('HINCRBY', ST, 'lexpired', n) end
  return n
end

-- The lease `worker` holds in `pool`, or nil; one that is due is ended here, whether or not a
-- sweep has reached it.
local function live_lease(pool, worker)
  local l = held(pool, worker)
  if l and l.exp <= NOW then
    end_lease(pool, worker, l)
    redis.call('HINCRBY', ST, 'lexpired', 1)
    return nil
  end
  return l
end

local function earliest_lease()
  local first = redis.call('ZRANGE', LEXP, 0, 0, 'WITHSCORES')
  return first[2] or ''
end
"""

SET: Final = r"""
local key, data, comp, size, foot = ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local ttl = tonumber(ARGV[13])
local im, inm = ARGV[14], ARGV[15]
local cb, ca = tonumber(ARGV[16]), tonumber(ARGV[17])
local cur = live(key)
local bad = precondition(im, inm, cur and cur.v or nil)
if bad then return bad end
if not cur then
  local full = room()
  if full then return {'full', full} end
end
local exp = NOW + ttl
local v = write(key, cur, data, comp, size, foot, ttl, exp)
if comp == '1' then
  redis.call('HINCRBY', ST, 'cb', cb)
  redis.call('HINCRBY', ST, 'ca', ca)
  redis.call('HINCRBY', ST, 'cc', 1)
else
  redis.call('HINCRBY', ST, 'cp', 1)
end
if cur then return {'ok', 0, v, exp} end
return {'ok', 1, v, exp}
"""

GET: Final = r"""
local key, refresh = ARGV[8], ARGV[9]
local cur = live(key)
if not cur then return {} end
local h = ik(key)
local exp = cur.e
if refresh == '1' then
  exp = NOW + cur.t
  redis.call('HSET', h, 'e', s(exp))
  redis.call('ZADD', EXP, exp, key)
  redis.call('PEXPIRE', h, SAFETY)
end
local r = redis.call('HMGET', h, 'd', 'c')
return {r[1], r[2], cur.v, exp}
"""

DELETE: Final = r"""
local key, im, inm = ARGV[8], ARGV[9], ARGV[10]
local cur = live(key)
local bad = precondition(im, inm, cur and cur.v or nil)
if bad then return bad end
if not cur then return {'ok', 0} end
drop(key)
return {'ok', 1}
"""

LIST: Final = r"""
local prefix, limit = ARGV[8], tonumber(ARGV[9])
local lo, hi = '-', '+'
if prefix ~= '' then
  -- UTF-8 never contains the byte 0xFF, so every key starting with the prefix sorts below
  -- the prefix followed by it.
  lo = '[' .. prefix
  hi = '(' .. prefix .. '\255'
end
local out = {}
local offset, found = 0, 0
while found < limit do
  local batch = redis.call('ZRANGEBYLEX', IDX, lo, hi, 'LIMIT', offset, limit - found)
  if #batch == 0 then break end
  offset = offset + #batch
  for _, key in ipairs(batch) do
    local r = redis.call('HMGET', ik(key), 'v', 'e', 's')
    if r[1] and tonumber(r[2]) > NOW then
      out[#out + 1] = key
      out[#out + 1] = r[1]
      out[#out + 1] = r[2]
      out[#out + 1] = r[3]
      found = found + 1
    end
  end
end
return out
"""

INCR: Final = r"""
local key, by, ttl_arg, required = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local default_ttl, fbase = tonumber(ARGV[12]), tonumber(ARGV[13])
local cur = live(key)
local ttl, exp, current
if not cur then
  if ttl_arg == '' then
    if required == '1' then return {'ttl_required'} end
    ttl = default_ttl
  else
    ttl = tonumber(ttl_arg)
  end
  exp = NOW + ttl
  current = '0'
else
  local r = redis.call('HMGET', ik(key), 'd', 'c')
  -- Stored values are canonical JSON: an integer is exactly an optional minus and digits.
  -- Integers are never stored compressed (zlib cannot shrink 20 bytes).
  if r[2] == '1' or not string.match(r[1], '^%-?%d+$') then return {'nan', r[1], r[2]} end
  current = r[1]
  if current == '-0' then current = '0' end
  if ttl_arg == '' then
    ttl, exp = cur.t, cur.e
  else
    ttl = tonumber(ttl_arg)
    exp = NOW + ttl
  end
end
local tmp = P .. 'tmp'
redis.call('SET', tmp, current)
local done = redis.pcall('INCRBY', tmp, by)
local result = redis.call('GET', tmp)
redis.call('DEL', tmp)
if type(done) == 'table' and done.err then return {'overflow'} end
if not cur then
  local full = room()
  if full then return {'full', full} end
end
local v = write(key, cur, result, '0', #result, s(fbase + #result), ttl, exp)
redis.call('HINCRBY', ST, 'cp', 1)
return {'ok', result, v, exp}
"""

TOUCH: Final = r"""
local key, ttl = ARGV[8], tonumber(ARGV[9])
local cur = live(key)
if not cur then return {'nf'} end
local exp = NOW + ttl
local h = ik(key)
redis.call('HSET', h, 'e', s(exp), 't', s(ttl))
redis.call('ZADD', EXP, exp, key)
redis.call('PEXPIRE', h, SAFETY)
return {'ok', cur.v, exp}
"""

ACQUIRE: Final = r"""
local pool, worker, ttl, size = ARGV[8], ARGV[9], tonumber(ARGV[10]), ARGV[11]
local wait_ms, wid, owner, alive_ms = tonumber(ARGV[12]), ARGV[13], ARGV[14], ARGV[15]
expire_leases(BATCH)
local l = live_lease(pool, worker)
if l then
  extend(pool, worker, l, ttl)
  return reply(l, 0)
end
if size ~= '' and lowest_free(pool) >= tonumber(size) then
  if wait_ms == 0 then return {'exhausted'} end
  redis.call('SET', P .. 'b:' .. owner, 1, 'PX', alive_ms)
  local seq = redis.call('INCR', QSEQ)
  redis.call('ZADD', pq(pool), seq, wid)
  local deadline = s(realnow() + wait_ms)
  redis.call('HSET', WT, wid, worker .. ' ' .. size .. ' ' .. s(ttl) .. ' ' .. deadline)
  redis.call('PEXPIRE', pq(pool), SAFETY)
  redis.call('PEXPIRE', WT, SAFETY)
  return {'queued', earliest_lease(), NOW}
end
if MAX_LEASES > 0 then
  local n = redis.call('HLEN', LT)
  if n >= MAX_LEASES then return {'full', n} end
end
return reply(grant(pool, worker, ttl), 1)
"""

# A waiter looks for the value handed to it (after a wake-up or at its deadline); with
# ARGV[11] = '1' a waiter that found nothing also leaves the queue (it gives up). A value
# handed over is held for CLAIM_MS only; claiming it starts the lease's real TTL. 'lost' when
# the claim came too late (the value expired and moved on): the caller asks again.
CLAIM: Final = r"""
local pool, worker, wid, leave = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local g = redis.call('HGET', GR, wid)
if g then
  redis.call('HDEL', GR, wid)
  local v, t, e, l, created, ttl = string.match(g, '^(%d+) (%d+) (%d+) (%d+) (%d) (%d+)$')
  local h = held(pool, worker)
  if not h or h.token ~= t or h.exp <= NOW then return {'lost'} end
  if created == '1' then extend(pool, worker, h, tonumber(ttl)) end
  return {'granted', fmt(h) .. ' ' .. created}
end
if leave == '1' then
  redis.call('ZREM', pq(pool), wid)
  redis.call('HDEL', WT, wid)
  forget_if_unused(pool)
end
return {'none', earliest_lease(), NOW}
"""

# A waiting request was cancelled (its client went away): nothing of it may stay behind, not
# even a lease handed to it that it can no longer report.
ABANDON: Final = r"""
local pool, worker, wid = ARGV[8], ARGV[9], ARGV[10]
local g = redis.call('HGET', GR, wid)
if g then
  redis.call('HDEL', GR, wid)
  local v, t, e, l, created = string.match(g, '^(%d+) (%d+) (%d+) (%d+) (%d) %d+$')
  local h = held(pool, worker)
  if created == '1' and h and h.token == t then end_lease(pool, worker, h) end
  return 1
end
redis.call('ZREM', pq(pool), wid)
redis.call('HDEL', WT, wid)
forget_if_unused(pool)
return 0
"""

RENEW: Final = r"""
local pool, worker, ttl = ARGV[8], ARGV[9], tonumber(ARGV[10])
expire_leases(BATCH)
local l = live_lease(pool, worker)
if not l then return {'lnf'} end
extend(pool, worker, l, ttl)
return reply(l, 0)
"""

RELEASE: Final = r"""
local pool, worker, token = ARGV[8], ARGV[9], ARGV[10]
expire_leases(BATCH)
local l = live_lease(pool, worker)
if token ~= '' and (not l or l.token ~= token) then
  if l then return {'pf', l.token} end
  return {'pf', ''}
end
if not l then return {'ok', 0} end
end_lease(pool, worker, l)
return {'ok', 1}
"""

RELEASE_WORKER: Final = r"""
local worker = ARGV[8]
expire_leases(BATCH)
local all = redis.call('HGETALL', wk(worker))
local n = 0
for i = 1, #all, 2 do
  local pool, token = all[i], all[i + 1]
  local l = live_lease(pool, worker)
  if l and l.token == token then
    end_lease(pool, worker, l)
    n = n + 1
  end
end
-- No DEL of the worker's index: a value freed here may have been handed straight back to
-- this worker's own queued request (in the same pool), a lease it now holds.
return n
"""

LIST_POOLS: Final = r"""
local only = ARGV[8]
expire_leases(BATCH)
local pools
if only ~= '' then pools = {only} else pools = redis.call('ZRANGE', POOLS, 0, -1) end
local out = {}
for _, pool in ipairs(pools) do
  local holders = redis.call('ZRANGE', pv(pool), 0, -1)
  local leases = {}
  for _, worker in ipairs(holders) do
    local l = held(pool, worker)
    if l and l.exp > NOW then
      leases[#leases + 1] = {worker, l.value, l.token, l.exp}
    end
  end
  out[#out + 1] = {pool, leases}
end
return out
"""

# ARGV[8], ARGV[9]: this broker's id and, when it has queued lease waiters, how long its
# liveness key lasts ('' otherwise).
SWEEP: Final = r"""
if ARGV[9] ~= '' then redis.call('SET', P .. 'b:' .. ARGV[8], 1, 'PX', ARGV[9]) end
local n = expire_items(BATCH)
local m = expire_leases(BATCH)
for _, k in ipairs({P .. 'meta', VER, TOK, ST, IDX, EXP, LEXP, LT, POOLS, WT, GR, QSEQ}) do
  redis.call('PEXPIRE', k, SAFETY)
end
return {n, m, earliest_lease(), NOW}
"""

STATS: Final = r"""
expire_items(redis.call('ZCARD', EXP))
expire_leases(redis.call('ZCARD', LEXP))
return {redis.call('ZCARD', IDX), redis.call('HGETALL', ST), redis.call('HLEN', LT),
  redis.call('ZCARD', POOLS)}
"""

# Create the namespace, or join it; and after Redis lost it, create it again. Not behind the
# epoch check. ARGV: P, epoch for a new namespace, limits (JSON), SAFETY, highest version and
# token this broker has seen. Counters start at now_ms * 1000 (Redis time): versions and
# tokens handed out before a loss stayed below that unless the namespace averaged over a
# million writes per second, and never below what this broker saw.
INIT: Final = r"""
local P = ARGV[1]
local META = P .. 'meta'
local SAFETY = tonumber(ARGV[4])
local function s(n) return string.format('%d', n) end
local epoch = redis.call('HGET', META, 'epoch')
local created = 0
local t = redis.call('TIME')
local seed = (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) * 1000
local floors = {[P .. 'ver'] = tonumber(ARGV[5]), [P .. 'tok'] = tonumber(ARGV[6])}
if not epoch then
  epoch = ARGV[2]
  created = 1
  redis.call('HSET', META, 'epoch', epoch, 'limits', ARGV[3])
end
for counter, seen in pairs(floors) do
  local cur = tonumber(redis.call('GET', counter) or '0')
  local want = math.max(cur, seen)
  if created == 1 then want = math.max(want, seed) end
  if want > cur then redis.call('SET', counter, s(want)) end
  redis.call('PEXPIRE', counter, SAFETY)
end
redis.call('PEXPIRE', META, SAFETY)
return {epoch, redis.call('HGET', META, 'limits'), created}
"""
