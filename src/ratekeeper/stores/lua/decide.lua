-- ratekeeper: one decision over several (limit set, key) items, atomically, in one round trip.
--
-- This is the second home of src/ratekeeper/algorithms.py: every step below mirrors its Python
-- twin operation for operation (same order of float operations, Python's float modulo,
-- int() truncation), so both give bit-identical results; tests/test_store_redis_lua.py checks it.
-- Numbers leave the script as "%.17g" strings: Redis would truncate Lua numbers to integers.
--
-- KEYS: one state key per item; in cluster mode (pend = '1') followed by one pending key
--       per item (a sorted set of reservations of cross-slot decisions, see redis.py).
-- ARGV[1]: "op cost peek pend lease_ms n_items now token" (now '-': the server clock, TIME;
--       otherwise the caller's clock, for tests only; token '-': none);
--   op  'd' decide (charge unless peek), 'r' reserve (check, record cost as pending),
--       'c' commit (charge reserved cost, drop reservation), 'a' abort (drop reservation).
-- ARGV[1 + i]: item i's limits, "ttl_ms" then per limit " <algorithm><amount>/<period>/<burst>".
-- Reply for 'd'/'r': "<allowed> <now> { <allowed> <remaining> <reset_at> <retry_after> }",
--       for 'c': "1" when every reservation was still held, else "0"; for 'a': "1".
-- State value: one segment per limit, each ended by ';', numbers separated by spaces; an empty
-- segment is a fresh limit.

local EPS = 1e-6
local MIN_RETRY = 1e-6
local INF = math.huge

-- Few, long arguments: redis-py encodes every argument separately, at a cost per argument.
local header = {}
for word in string.gmatch(ARGV[1], '%S+') do
  header[#header + 1] = word
end
local op = header[1]
local cost = tonumber(header[2])
local peek = header[3] == '1'
local pend = header[4] == '1'
local lease_ms = tonumber(header[5])
local n_items = tonumber(header[6])
local clock = header[7]
local token = header[8]

local server_ms
local now
if clock == '-' or pend then
  local t = redis.call('TIME')
  server_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
if clock ~= '-' then
  now = tonumber(clock)
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

-- Each step returns allowed, new_state (the state as charged; set even when rejected if
-- force is true, for commits), remaining, reset_at, retry_after.

local function fixed_window(state, t, lim, c, force)
  local period = lim.period
  local start = t - pymod(t, period)
  local count = 0.0
  if state ~= nil and state[1] >= start then
    start = state[1]
    count = state[2]
    if t < start then
      t = start
    end
  end
  local amount = lim.amount
  local reset_at = start + period
  if force or count + c <= amount then
    count = count + c
    return true, { start, count }, amount - count, reset_at, 0.0
  end
  local retry = INF
  if c <= amount then
    retry = reset_at - t
  end
  return false, state, amount - count, reset_at, retry
end

local function first_hit_window(state, t, lim, c, force)
  local period = lim.period
  local start
  local count
  if state == nil or t >= state[1] + period then
    start = t
    count = 0.0
  else
    start = state[1]
    count = state[2]
    if t < start then
      t = start
    end
  end
  local amount = lim.amount
  local reset_at = start + period
  if force or count + c <= amount then
    count = count + c
    return true, { start, count }, amount - count, reset_at, 0.0
  end
  local retry = INF
  if c <= amount then
    retry = reset_at - t
  end
  return false, state, amount - count, reset_at, retry
end

local function sliding_window(state, t, lim, c, force)
  local period = lim.period
  local start = t - pymod(t, period)
  local prev = 0.0
  local cur = 0.0
  if state ~= nil then
    local stored = state[1]
    if stored >= start then
      start = stored
      prev = state[2]
      cur = state[3]
      if t < start then
        t = start
      end
    elseif start - stored < 1.5 * period then
      prev = state[3]
    end
  end
  local amount = lim.amount
  local elapsed = t - start
  local estimate = prev * (period - elapsed) / period + cur
  if force or estimate + c <= amount + EPS then
    cur = cur + c
    local reset_at = start + period
    if cur ~= 0 then
      reset_at = start + 2 * period
    end
    local remaining = trunc(amount - estimate - c + EPS)
    return true, { start, prev, cur }, remaining, reset_at, 0.0
  end
  local reset_at = start + period
  if cur ~= 0 then
    reset_at = start + 2 * period
  end
  local remaining = math.max(trunc(amount - estimate + EPS), 0)
  if c > amount then
    return false, state, remaining, reset_at, INF
  end
  local room = amount - c - cur
  local retry
  if room >= 0 then
    retry = period - elapsed - room * period / prev
  else
    retry = period - elapsed + period * (1.0 - (amount - c) / cur)
  end
  return false, state, remaining, reset_at, math.max(retry, MIN_RETRY)
end

local function gcra(state, t, lim, c, force)
  local interval = lim.interval
  local capacity = lim.capacity
  local tat = t
  if state ~= nil then
    tat = state[1]
  end
  if tat < t then
    tat = t
  end
  local new_tat = tat + c * interval
  if force or new_tat - t <= capacity + EPS then
    local remaining = trunc((capacity - (new_tat - t) + EPS) / interval)
    return true, { new_tat }, remaining, new_tat, 0.0
  end
  local remaining = math.max(trunc((capacity - (tat - t) + EPS) / interval), 0)
  if c > lim.burst then
    return false, state, remaining, tat, INF
  end
  return false, state, remaining, tat, math.max(new_tat - capacity - t, MIN_RETRY)
end

local STEPS = { f = fixed_window, h = first_hit_window, s = sliding_window, g = gcra }

local function num(x)
  if x == INF then
    return 'inf'
  end
  -- Whole numbers (counts, aligned window starts) print faster as integers, and exactly.
  if x == math.floor(x) and x > -1e15 and x < 1e15 then
    return string.format('%d', x)
  end
  return string.format('%.17g', x)
end

local function parse_state(raw)
  local states = {}
  if raw then
    local i = 0
    for segment in string.gmatch(raw, '([^;]*);') do
      i = i + 1
      if segment ~= '' then
        local values = {}
        for v in string.gmatch(segment, '%S+') do
          values[#values + 1] = tonumber(v)
        end
        states[i] = values
      end
    end
  end
  return states
end

local function format_state(states, n)
  local out = {}
  for i = 1, n do
    local st = states[i]
    if st then
      local parts = {}
      for j = 1, #st do
        parts[j] = num(st[j])
      end
      out[i] = table.concat(parts, ' ') .. ';'
    else
      out[i] = ';'
    end
  end
  return table.concat(out)
end

-- Pending (reserved, not yet committed) units of an item; drops expired reservations.
local function pending_units(pkey)
  if redis.call('EXISTS', pkey) == 0 then
    return 0
  end
  redis.call('ZREMRANGEBYSCORE', pkey, '-inf', server_ms)
  local total = 0
  for _, member in ipairs(redis.call('ZRANGE', pkey, 0, -1)) do
    total = total + tonumber(string.match(member, '^(%d+):'))
  end
  return total
end

-- Read the items' limits from ARGV once. interval and capacity are derived exactly as
-- limit.py derives them (one IEEE division, one product), so they need not travel.
local items = {}
for i = 1, n_items do
  local plan = ARGV[1 + i]
  local ttl_ms, rest = string.match(plan, '^(%d+)(.*)$')
  local item = { ttl_ms = tonumber(ttl_ms), limits = {} }
  for code, amount, period, burst in string.gmatch(rest, ' (%a)(%d+)/(%S+)/(%d+)') do
    local lim = {
      step = STEPS[code],
      amount = tonumber(amount),
      period = tonumber(period),
      burst = tonumber(burst),
    }
    lim.interval = lim.period / lim.amount
    lim.capacity = lim.burst * lim.interval
    item.limits[#item.limits + 1] = lim
  end
  items[i] = item
end

local member = cost .. ':' .. token

if op == 'a' then
  for i = 1, n_items do
    redis.call('ZREM', KEYS[n_items + i], member)
  end
  return '1'
end

if op == 'c' then
  -- A reservation can appear twice when an item is repeated in one decision: charge it once.
  local held = true
  local done = {}
  for i = 1, n_items do
    local key = KEYS[i]
    if not done[key] then
      done[key] = true
      if redis.call('ZREM', KEYS[n_items + i], member) == 0 then
        held = false
      end
      -- Charge even a lost reservation: over-counting is the safe side.
      local states = parse_state(redis.call('GET', key))
      local limits = items[i].limits
      local new_states = {}
      for j = 1, #limits do
        local _, charged = limits[j].step(states[j], now, limits[j], cost, true)
        new_states[j] = charged
      end
      redis.call('SET', key, format_state(new_states, #limits), 'PX', items[i].ttl_ms)
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
local entries = {}
for i = 1, n_items do
  local states = parse_state(redis.call('GET', KEYS[i]))
  local extra = 0
  if pend then
    extra = pending_units(KEYS[n_items + i])
  end
  local limits = items[i].limits
  local new_states = {}
  for j = 1, #limits do
    local lim = limits[j]
    local ok, new_state, remaining, reset_at, retry = lim.step(states[j], now, lim, cost + extra)
    if extra > 0 then
      if ok then
        -- The verdict counts the pending units; the state is charged with this cost only.
        local _, charged = lim.step(states[j], now, lim, cost)
        new_state = charged
      elseif retry == INF then
        -- Only the pending units make it impossible; they settle within a round trip.
        local plain_ok, _, _, _, plain_retry = lim.step(states[j], now, lim, cost)
        if plain_ok or plain_retry ~= INF then
          retry = math.max(plain_retry, 0.001)
        end
      end
    end
    if ok then
      out[#out + 1] = '1'
      new_states[j] = new_state
    else
      out[#out + 1] = '0'
      allowed = false
    end
    out[#out + 1] = num(remaining)
    out[#out + 1] = num(reset_at)
    out[#out + 1] = num(retry)
  end
  entries[i] = new_states
end

if allowed and not peek then
  if op == 'd' then
    for i = 1, n_items do
      local n = #items[i].limits
      redis.call('SET', KEYS[i], format_state(entries[i], n), 'PX', items[i].ttl_ms)
    end
  else
    for i = 1, n_items do
      local pkey = KEYS[n_items + i]
      redis.call('ZADD', pkey, server_ms + lease_ms, member)
      redis.call('PEXPIRE', pkey, lease_ms)
    end
  end
end

local head = '0 '
if allowed then
  head = '1 '
end
return head .. num(now) .. ' ' .. table.concat(out, ' ')
