-- asyncingest RedisBudget: every window of one API's budget, checked and recorded atomically.
-- Time is Redis TIME in microseconds (never a worker's clock). See limits/redis_budget.py.
--
-- KEYS: alive, pause, held, then per window i: log_i, count_i
-- ARGV: op, known_epoch, lease_id, arg_us, lease_us, nwin, (limit, length_us, bucket_us) * nwin,
--       then (op 'renew') the lease ids to extend
-- op: 'acquire' | 'release' | 'give_back' | 'pause' | 'renew' | 'peek'
-- Reply: {granted, wait_us, epoch, lost, held, pause_left_us, used_1..n, stored_1..n}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local op, known, id = ARGV[1], ARGV[2], ARGV[3]
local arg, lease, nwin = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local alive_key, pause_key, held_key = KEYS[1], KEYS[2], KEYS[3]
local limits, lengths, buckets, counts = {}, {}, {}, {}
local longest = 0
for i = 1, nwin do
  limits[i] = tonumber(ARGV[4 + 3 * i])
  lengths[i] = tonumber(ARGV[5 + 3 * i])
  buckets[i] = tonumber(ARGV[6 + 3 * i])
  if lengths[i] > longest then longest = lengths[i] end
end
-- Every key lives a longest window plus a lease after its last write: by then nothing in it
-- counts any more (releases have expired, leases have run out).
local keep_ms = math.ceil((longest + lease) / 1000) + 1000

local function fmt(n) return string.format('%d', n) end

-- A release at `at` (or `n` of them) counts in window i until a window length later. Entries are
-- "expiry:count", oldest first; a bucketed window rounds the release up to its bucket's end.
-- An entry is never added before a later one: it joins the last entry instead (a later expiry:
-- only ever stricter), so the list stays in order even if TIME steps back.
local function push(i, at, n)
  local b = buckets[i]
  if b > 0 then at = math.ceil(at / b) * b end
  local expiry = at + lengths[i]
  local log = KEYS[2 + 2 * i]
  local last = redis.call('LINDEX', log, -1)
  local joined = false
  if last then
    local e, c = string.match(last, '(%d+):(%d+)')
    if tonumber(e) >= expiry then
      redis.call('LSET', log, -1, e .. ':' .. fmt(tonumber(c) + n))
      joined = true
    end
  end
  if not joined then redis.call('RPUSH', log, fmt(expiry) .. ':' .. fmt(n)) end
  counts[i] = counts[i] + n
  redis.call('SET', KEYS[3 + 2 * i], fmt(counts[i]), 'PX', keep_ms)
  redis.call('PEXPIRE', log, keep_ms)
end

-- The history: present, first use, or lost (Redis restarted empty, flushed) while this client
-- was talking to it. Lost: presume every window full for its whole length from now. A client
-- that knew another epoch than the one found lost it too: a newcomer (a fresh worker, a
-- `status`) may have been first to find Redis empty, and must not hide the loss from the
-- workers that were sending before it (each of them makes every window full again once).
local epoch = redis.call('GET', alive_key)
local lost = 0
if not epoch then
  epoch = fmt(now)
  redis.call('DEL', held_key)
  for i = 1, nwin do redis.call('DEL', KEYS[2 + 2 * i], KEYS[3 + 2 * i]) end
  if known ~= '' then lost = 1 end
elseif known ~= '' and known ~= epoch then
  lost = 1
end
redis.call('SET', alive_key, epoch, 'PX', keep_ms)

-- Expired releases leave each window.
for i = 1, nwin do
  local log = KEYS[2 + 2 * i]
  local n = tonumber(redis.call('GET', KEYS[3 + 2 * i]) or '0')
  local dropped = 0
  while true do
    local head = redis.call('LINDEX', log, 0)
    if not head then break end
    local e, c = string.match(head, '(%d+):(%d+)')
    if tonumber(e) > now then break end
    redis.call('LPOP', log)
    dropped = dropped + tonumber(c)
  end
  counts[i] = math.max(0, n - dropped)
  if dropped > 0 then redis.call('SET', KEYS[3 + 2 * i], fmt(counts[i]), 'PX', keep_ms) end
end
if lost == 1 then
  for i = 1, nwin do push(i, now, limits[i]) end
end

-- Leases of crashed holders run out: their slots count as released now (later than the truth).
local expired = redis.call('ZRANGEBYSCORE', held_key, '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', held_key, '-inf', now)
  for i = 1, nwin do push(i, now, #expired) end
end

if op == 'release' then
  if redis.call('ZREM', held_key, id) == 1 then
    for i = 1, nwin do push(i, now, 1) end
  end
elseif op == 'give_back' then
  redis.call('ZREM', held_key, id)
elseif op == 'pause' then
  local untl = now + arg
  if untl > tonumber(redis.call('GET', pause_key) or '0') then
    redis.call('SET', pause_key, fmt(untl), 'PX', math.ceil(arg / 1000) + 1000)
  end
elseif op == 'renew' then
  for j = 7 + 3 * nwin, #ARGV do
    redis.call('ZADD', held_key, 'XX', now + lease, ARGV[j])
  end
  redis.call('PEXPIRE', held_key, keep_ms)
end

-- How long until a grant: the pause, and for each full window its oldest release's expiry (a
-- lower bound: a slot in flight frees nothing before a whole window from now).
local held = redis.call('ZCARD', held_key)
local paused = tonumber(redis.call('GET', pause_key) or '0') - now
if paused < 0 then paused = 0 end
local wait = paused
for i = 1, nwin do
  if held + counts[i] >= limits[i] then
    local w = lengths[i]
    local head = redis.call('LINDEX', KEYS[2 + 2 * i], 0)
    if head then
      local e = tonumber(string.match(head, '(%d+):'))
      if e - now < w then w = e - now end
    end
    if w > wait then wait = w end
  end
end

local granted = 0
if op == 'acquire' and wait <= 0 then
  redis.call('ZADD', held_key, now + lease, id)
  redis.call('PEXPIRE', held_key, keep_ms)
  held = held + 1
  granted = 1
end

local reply = {granted, wait, epoch, lost, held, paused}
for i = 1, nwin do reply[#reply + 1] = held + counts[i] end
for i = 1, nwin do reply[#reply + 1] = redis.call('LLEN', KEYS[2 + 2 * i]) end
return reply
