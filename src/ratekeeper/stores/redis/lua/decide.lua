-- ratekeeper: one decision over several (limit set, key) items, atomically, in one round trip.
--
-- This is the second home of src/ratekeeper/algorithms.py: every step below mirrors its Python
-- twin operation for operation (same order of float operations, Python's float modulo,
-- int() truncation), so both give bit-identical results; tests/test_store_redis_lua.py checks it.
-- Numbers travel and rest as little-endian IEEE doubles (struct): exact both ways, and far
-- cheaper than formatting and parsing text (Redis would truncate Lua numbers in a reply).
--
-- KEYS: one state key per item; for 'u', then one undo-mark key.
-- ARGV[1]: header "<c1 B B H d d d": op, peek, undoable, n_items, cost, mark_ms, now (NaN: the
--       server clock, TIME; otherwise the caller's clock, for tests only);
--   op  'd' decide (charge unless peek), 'u' undo an optimistic charge of a cross-slot
--       decision that another slot refused (see cluster.py).
-- ARGV[2]: for 'u', the states the charge wrote (its reply's tail); otherwise '-'.
-- ARGV[1 + 2i]: item i's plan "<d B" ttl_ms, n_limits, then per limit "<c1 d d d d d":
--       algorithm code, amount, period, burst, interval, capacity (as limit.py derived them);
-- ARGV[2 + 2i]: item i's state format, e.g. "<ddd" (2 numbers per fixed window, 3 per sliding
--       window, 1 per GCRA, in the order of the limits).
-- State value: the struct of all limits' numbers in that format; no key means every limit is
-- fresh (a decision charges all limits of an item or none, so there is no partial state).
-- Reply for 'd': "<d d" allowed, now, then per limit "<d d d d" allowed, remaining, reset_at,
--       retry_after; when undoable and charged, then every item's new state (what 'u' needs).
--       For 'u': "1", or "0" when that undo was done already (a replayed call).

local EPS = 1e-6
local MIN_RETRY = 1e-6
local INF = math.huge
local spack = struct.pack
local sunpack = struct.unpack
local call = redis.call

local op, peek, undoable, n_items, cost, mark_ms, now = sunpack('<c1BBHddd', ARGV[1])
peek = peek == 1
undoable = undoable == 1

if now ~= now then
  local t = call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
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
-- charged), remaining, reset_at, retry_after. Plain values, not tables: a decision allocates
-- next to nothing.

local function window_charge(start, count, t, amount, period, c)
  local reset_at = start + period
  if count + c <= amount then
    count = count + c
    return true, start, count, nil, amount - count, reset_at, 0.0
  end
  local retry = INF
  if c <= amount then
    retry = reset_at - t
  end
  return false, nil, nil, nil, amount - count, reset_at, retry
end

local function fixed_window(s1, s2, _, t, amount, period, _, _, _, c)
  local start = t - pymod(t, period)
  local count = 0.0
  if s1 ~= nil and s1 >= start then
    start = s1
    count = s2
    if t < start then
      t = start
    end
  end
  return window_charge(start, count, t, amount, period, c)
end

local function first_hit_window(s1, s2, _, t, amount, period, _, _, _, c)
  local start = t
  local count = 0.0
  if s1 ~= nil and t < s1 + period then
    start = s1
    count = s2
    if t < start then
      t = start
    end
  end
  return window_charge(start, count, t, amount, period, c)
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

local function sliding_window(s1, s2, s3, t, amount, period, _, _, _, c)
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
  if estimate + c <= amount + EPS then
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

local function gcra(s1, _, _, t, _, _, burst, interval, capacity, c)
  local tat = t
  if s1 ~= nil and s1 > t then
    tat = s1
  end
  local new_tat = tat + c * interval
  if new_tat - t <= capacity + EPS then
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

-- Undoes one limit's optimistic charge of `cost` on its stored numbers s (from s[at + 1]);
-- w: the numbers the charge wrote; the undo happens at `now`. Windows take the units back from
-- the window that holds them, if it still counts. GCRA gives back the part of the emission
-- interval still to come: the part already past may have let others in.
local function undo_limit(code, s, at, w, period, interval)
  local s1, w1 = s[at + 1], w[at + 1]
  if code == 'g' then
    local give = w1 - math.max(w1 - cost * interval, now)
    if give > 0 then
      s[at + 1] = s1 - give
    end
  elseif code == 's' then
    if s1 == w1 then
      s[at + 3] = math.max(s[at + 3] - cost, 0)
    elseif s1 > w1 and s1 - w1 < 1.5 * period then
      s[at + 2] = math.max(s[at + 2] - cost, 0)
    end
  elseif s1 == w1 then
    local left = math.max(s[at + 2] - cost, 0)
    s[at + 2] = left
    if code == 'h' and w[at + 2] == cost then
      -- A first-hit window this charge opened: with nothing left in it, it never opened; with
      -- later charges' units, it opens no earlier than the undo (they all came before it).
      if left == 0 then
        s[at + 1] = -INF
      elseif now > s1 then
        s[at + 1] = now
      end
    end
  end
end

if op == 'u' then
  if not call('SET', KEYS[n_items + 1], '1', 'NX', 'PX', mark_ms) then
    return '0'
  end
  local written = ARGV[2]
  local wpos = 1
  local seen = {}
  for i = 1, n_items do
    local plan = ARGV[1 + 2 * i]
    local fmt = ARGV[2 + 2 * i]
    local w = { sunpack(fmt, written, wpos) }
    wpos = w[#w]
    local raw = not seen[KEYS[i]] and call('GET', KEYS[i])
    seen[KEYS[i]] = true
    if raw then
      local s = { sunpack(fmt, raw) }
      s[#s] = nil
      local _, n_limits, pos = sunpack('<dB', plan)
      local at = 0
      for _ = 1, n_limits do
        local code, _, period, _, interval
        code, _, period, _, interval, _, pos = sunpack('<c1ddddd', plan, pos)
        undo_limit(code, s, at, w, period, interval)
        at = at + WIDTH[code]
      end
      call('SET', KEYS[i], spack(fmt, unpack(s)), 'KEEPTTL')
    end
  end
  return '1'
end

-- Steps every limit of item i on its stored state with cost c, appends the replies to out,
-- and returns whether all allowed and the new state.
local function step_item(i, c, out)
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
    local ok, n1, n2, n3, remaining, reset_at, retry = STEPS[code](
      state[at + 1], state[at + 2], state[at + 3], now, amount, period, burst, interval,
      capacity, c)
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
    out[#out + 1] = spack('<dddd', ok and 1 or 0, remaining, reset_at, retry)
  end
  if all_ok then
    return true, spack(fmt, unpack(new)), ttl_ms
  end
  return false
end

-- 'd': every verdict on the old states, then charge all or nothing.
local out = {}
local allowed = true
local values = {}
local ttls = {}
for i = 1, n_items do
  local ok, value, ttl_ms = step_item(i, cost, out)
  if ok then
    values[i] = value
    ttls[i] = ttl_ms
  else
    allowed = false
  end
end

local reply = spack('<dd', allowed and 1 or 0, now) .. table.concat(out)
if allowed and not peek then
  for i = 1, n_items do
    call('SET', KEYS[i], values[i], 'PX', ttls[i])
  end
  if undoable then
    return reply .. table.concat(values)
  end
end
return reply
