-- ratekeeper: one decision over several (limit set, key) items, atomically, in one round trip.
--
-- This is the second home of src/ratekeeper/algorithms.py: every step below mirrors its Python
-- twin operation for operation (same order of float operations, Python's float modulo,
-- int() truncation), so both give bit-identical results; tests/test_store_redis_lua.py checks it.
-- Numbers travel and rest as little-endian IEEE doubles (struct): exact both ways, and far
-- cheaper than formatting and parsing text (Redis would truncate Lua numbers in a reply).
--
-- KEYS: one state key per item; in cluster mode (pend = 1) followed by one pending key per
--       item (a sorted set of the reservations of cross-slot decisions, see cluster.py), then
--       one commit-mark key per item (a sorted set of the tokens committed, never scanned).
-- ARGV[1]: header "<c1 B B H d d d": op, peek, pend, n_items, cost, lease_ms, now (NaN: the
--       server clock, TIME; otherwise the caller's clock, for tests only);
--   op  'd' decide (charge unless peek), 'r' reserve (check, record cost as pending),
--       'c' commit (charge reserved cost, drop reservation), 'a' abort (drop reservation).
-- ARGV[2]: the reservation token ('-': none).
-- ARGV[1 + 2i]: item i's plan "<d B" ttl_ms, n_limits, then per limit "<c1 d d d d d":
--       algorithm code, amount, period, burst, interval, capacity (as limit.py derived them);
-- ARGV[2 + 2i]: item i's state format, e.g. "<ddd" (2 numbers per fixed window, 3 per sliding
--       window, 1 per GCRA, in the order of the limits).
-- State value: the struct of all limits' numbers in that format; no key means every limit is
-- fresh (a decision charges all limits of an item or none, so there is no partial state).
-- Reply for 'd'/'r': "<d d" allowed, now, then per limit "<d d d d" allowed, remaining,
--       reset_at, retry_after; for 'c': "1" when every reservation was still held, else "0";
--       for 'a': "1".

local EPS = 1e-6
local MIN_RETRY = 1e-6
local INF = math.huge
local spack = struct.pack
local sunpack = struct.unpack
local call = redis.call

local op, peek, pend, n_items, cost, lease_ms, now = sunpack('<c1BBHddd', ARGV[1])
peek = peek == 1
pend = pend == 1
local token = ARGV[2]

local server_ms
if now ~= now or pend then
  local t = call('TIME')
  server_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now ~= now then
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
end

-- Python's float.__mod__ (Objects/floatobject.c): fmod, moved to the divisor's sign.
local function pymod(a, b)
  local mod = math.fmod(a, b)
  if mod ~= 0 then
    if (b < 0) ~= (mod < 0) then
      mod = mod + b
    end
    return mod
  end
  return 0.0
end

local function trunc(x)
  if x >= 0 then
    return math.floor(x)
  end
  return math.ceil(x)
end

-- Every step takes the limit's stored numbers (s1, s2, s3; nil when fresh, unused ones
-- ignored), the time, the limit and the cost, and returns allowed, the new numbers (as
-- charged; even on rejection when force is true, for commits), remaining, reset_at,
-- retry_after. Plain values, not tables: a decision allocates next to nothing.

local function window_charge(start, count, t, amount, period, c, force)
  local reset_at = start + period
  if force or count + c <= amount then
    count = count + c
    return true, start, count, nil, amount - count, reset_at, 0.0
  end
  local retry = INF
  if c <= amount then
    retry = reset_at - t
  end
  return false, nil, nil, nil, amount - count, reset_at, retry
end

local function fixed_window(s1, s2, _, t, amount, period, _, _, _, c, force)
  local start = t - pymod(t, period)
  local count = 0.0
  if s1 ~= nil and s1 >= start then
    start = s1
    count = s2
    if t < start then
      t = start
    end
  end
  return window_charge(start, count, t, amount, period, c, force)
end

local function first_hit_window(s1, s2, _, t, amount, period, _, _, _, c, force)
  local start = t
  local count = 0.0
  if s1 ~= nil and t < s1 + period then
    start = s1
    count = s2
    if t < start then
      t = start
    end
  end
  return window_charge(start, count, t, amount, period, c, force)
end

-- sliding_window's reset_at (see algorithms.py): when the quota is back, never more than
-- one period after the time asked about.
local function sliding_reset(start, prev, cur, t, elapsed, asked, amount, period, remaining)
  local reset_at
  if remaining >= 1 then
    reset_at = start + period
    if cur ~= 0 then
      reset_at = start + 2 * period
    end
  else
    local room = amount - 1 - cur
    if room >= 0 then
      reset_at = t + (period - elapsed - room * period / prev)
    else
      reset_at = t + (period - elapsed + period * (1.0 - (amount - 1) / cur))
    end
  end
  local latest = asked + period
  if reset_at < latest then
    return reset_at
  end
  return latest
end

local function sliding_window(s1, s2, s3, t, amount, period, _, _, _, c, force)
  local asked = t
  local start = t - pymod(t, period)
  local prev = 0.0
  local cur = 0.0
  if s1 ~= nil then
    if s1 >= start then
      start = s1
      prev = s2
      cur = s3
      if t < start then
        t = start
      end
    elseif start - s1 < 1.5 * period then
      prev = s3
    end
  end
  local elapsed = t - start
  local estimate = prev * (period - elapsed) / period + cur
  if force or estimate + c <= amount + EPS then
    cur = cur + c
    local remaining = trunc(amount - estimate - c + EPS)
    local reset_at = sliding_reset(start, prev, cur, t, elapsed, asked, amount, period, remaining)
    return true, start, prev, cur, remaining, reset_at, 0.0
  end
  local remaining = math.max(trunc(amount - estimate + EPS), 0)
  local reset_at = sliding_reset(start, prev, cur, t, elapsed, asked, amount, period, remaining)
  if c > amount then
    return false, nil, nil, nil, remaining, reset_at, INF
  end
  local room = amount - c - cur
  local retry
  if room >= 0 then
    retry = period - elapsed - room * period / prev
  else
    retry = period - elapsed + period * (1.0 - (amount - c) / cur)
  end
  return false, nil, nil, nil, remaining, reset_at, math.max(retry, MIN_RETRY)
end

local function gcra(s1, _, _, t, _, _, burst, interval, capacity, c, force)
  local tat = t
  if s1 ~= nil and s1 > t then
    tat = s1
  end
  local new_tat = tat + c * interval
  if force or new_tat - t <= capacity + EPS then
    local remaining = trunc((capacity - (new_tat - t) + EPS) / interval)
    return true, new_tat, nil, nil, remaining, new_tat, 0.0
  end
  local remaining = math.max(trunc((capacity - (tat - t) + EPS) / interval), 0)
  if c > burst then
    return false, nil, nil, nil, remaining, tat, INF
  end
  return false, nil, nil, nil, remaining, tat, math.max(new_tat - capacity - t, MIN_RETRY)
end

local STEPS = { f = fixed_window, h = first_hit_window, s = sliding_window, g = gcra }
local WIDTH = { f = 2, h = 2, s = 3, g = 1 }

-- A pending key holds the reservations ("cost:token", scored by the end of their lease, an
-- epoch in ms) and their total units as the score of the member TOTAL: a key every request
-- touches (a global limit) holds as many reservations as decisions in flight, and a decision
-- reads the total, not each of them. Scores above LEASES are leases; TOTAL's never is.
local TOTAL = '#'
local LEASES = '(100000000000'

-- Pending (reserved, not yet committed) units of an item; drops expired reservations.
local function pending_units(pkey)
  if call('EXISTS', pkey) == 0 then
    return 0
  end
  local expired = call('ZRANGEBYSCORE', pkey, LEASES, server_ms)
  if #expired > 0 then
    local gone = 0
    for _, entry in ipairs(expired) do
      gone = gone + tonumber(string.match(entry, '^(%d+):'))
    end
    call('ZREMRANGEBYSCORE', pkey, LEASES, server_ms)
    call('ZINCRBY', pkey, -gone, TOTAL)
  end
  return math.max(tonumber(call('ZSCORE', pkey, TOTAL) or '0'), 0)
end

local member = cost .. ':' .. token

-- Drops this decision's reservation from a pending key; whether it was there.
local function release(pkey)
  if call('ZREM', pkey, member) == 0 then
    return false
  end
  call('ZINCRBY', pkey, -cost, TOTAL)
  return true
end

if op == 'a' then
  for i = 1, n_items do
    release(KEYS[n_items + i])
  end
  return '1'
end

-- Steps every limit of item i on its stored state with cost c (plus extra pending units for
-- the verdict), appends the reply to out, and returns whether all allowed and the new state.
local function step_item(i, c, extra, force, out)
  local plan = ARGV[1 + 2 * i]
  local fmt = ARGV[2 + 2 * i]
  local raw = call('GET', KEYS[i])
  local state = {}
  if raw then
    state = { sunpack(fmt, raw) }
  end
  local ttl_ms, n_limits, pos = sunpack('<dB', plan)
  local at = 0
  local new = {}
  local all_ok = true
  for _ = 1, n_limits do
    local code, amount, period, burst, interval, capacity
    code, amount, period, burst, interval, capacity, pos = sunpack('<c1ddddd', plan, pos)
    local step = STEPS[code]
    local s1, s2, s3 = state[at + 1], state[at + 2], state[at + 3]
    local ok, n1, n2, n3, remaining, reset_at, retry =
      step(s1, s2, s3, now, amount, period, burst, interval, capacity, c + extra, force)
    if extra > 0 then
      if ok then
        -- The verdict counts the pending units; the state is charged with this cost only.
        ok, n1, n2, n3 = step(s1, s2, s3, now, amount, period, burst, interval, capacity, c)
      elseif retry == INF then
        -- Only the pending units make it impossible; they settle within a round trip.
        local plain_ok, _, _, _, _, _, plain_retry =
          step(s1, s2, s3, now, amount, period, burst, interval, capacity, c)
        if plain_ok or plain_retry ~= INF then
          retry = math.max(plain_retry, 0.001)
        end
      end
    end
    local width = WIDTH[code]
    at = at + width
    if ok then
      new[#new + 1] = n1
      if width > 1 then
        new[#new + 1] = n2
        if width > 2 then
          new[#new + 1] = n3
        end
      end
    else
      all_ok = false
    end
    if out then
      out[#out + 1] = spack('<dddd', ok and 1 or 0, remaining, reset_at, retry)
    end
  end
  if all_ok then
    return true, spack(fmt, unpack(new)), ttl_ms
  end
  return false
end

if op == 'c' then
  -- The first commit of a reservation leaves a mark saying whether it was still held. A later
  -- one with the same token (the client's cluster library retrying after a lost reply, or an
  -- item repeated in one decision) finds the mark and charges nothing twice.
  local held = true
  local held_mark = '+' .. token
  local lost_mark = '-' .. token
  for i = 1, n_items do
    local pkey = KEYS[n_items + i]
    -- Marks live apart from the reservations, so that counting pending units never reads
    -- the marks of every decision of the last lease.
    local mkey = KEYS[2 * n_items + i]
    if call('ZSCORE', mkey, lost_mark) then
      held = false
    elseif not call('ZSCORE', mkey, held_mark) then
      local mark = held_mark
      if not release(pkey) then
        held = false
        mark = lost_mark
      end
      -- Charge even a lost reservation: over-counting is the safe side.
      local _, value, ttl_ms = step_item(i, cost, 0, true, nil)
      call('SET', KEYS[i], value, 'PX', ttl_ms)
      call('ZREMRANGEBYSCORE', mkey, '-inf', server_ms)
      call('ZADD', mkey, server_ms + lease_ms, mark)
      call('PEXPIRE', mkey, lease_ms)
    end
  end
  if held then
    return '1'
  end
  return '0'
end

-- 'd' and 'r': every verdict on the old states, then charge all or nothing.
local out = {}
local allowed = true
local values = {}
local ttls = {}
for i = 1, n_items do
  local extra = 0
  if pend then
    extra = pending_units(KEYS[n_items + i])
  end
  local ok, value, ttl_ms = step_item(i, cost, extra, false, out)
  if ok then
    values[i] = value
    ttls[i] = ttl_ms
  else
    allowed = false
  end
end

if allowed and not peek then
  if op == 'd' then
    for i = 1, n_items do
      call('SET', KEYS[i], values[i], 'PX', ttls[i])
    end
  else
    for i = 1, n_items do
      local pkey = KEYS[n_items + i]
      -- An item repeated in one decision reserves once (one member): count it once.
      if call('ZADD', pkey, server_ms + lease_ms, member) == 1 then
        call('ZINCRBY', pkey, cost, TOTAL)
      end
      call('PEXPIRE', pkey, lease_ms)
    end
  end
end

return spack('<dd', allowed and 1 or 0, now) .. table.concat(out)
