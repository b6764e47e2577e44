-- mailgate: check and count one message against every window of an account and of the server
-- cap, atomically, in one round trip (src/limits/redis.rs). The window math is the same as
-- src/limits/window.rs: BUCKETS buckets of length ceil(W / (BUCKETS - 1)); a decision counts
-- every bucket that intersects [now - W, now].
--
-- KEYS: account window hashes..., server window hashes..., the account's lock key, and the
--       call's token key: a call repeated after a failover (the first answer lost with the
--       old master's connection) returns the first answer instead of counting twice.
-- ARGV: now (0 = Redis TIME), recipients, count_refusal (0/1), exempt (0/1), lock_after,
--       number of account windows, number of server windows,
--       then per window: seconds, max messages (-1 = none), max recipients (-1 = none),
--       observe (0/1: only watch; over it the message still goes),
--       then how long the call's token lives (seconds: as long as a repeat can come).
-- A window hash maps ring slot -> "bucket:messages:recipients:refused", plus "alert" -> time
-- before which no alert mail is due. Every key expires when its window has passed unused.
local B = 20
local now = tonumber(ARGV[1])
if now == 0 then
  now = tonumber(redis.call('TIME')[1])
end
local rcpts = tonumber(ARGV[2])
local count_refusal = ARGV[3] == '1'
local exempt = ARGV[4] == '1'
local lock_after = tonumber(ARGV[5])
local na = tonumber(ARGV[6])
local nw = na + tonumber(ARGV[7])
local lockkey = KEYS[nw + 1]
local oncekey = KEYS[nw + 2]
local once_ttl = tonumber(ARGV[7 + nw * 4 + 1]) or 600

local function decide()

local windows = {}
for i = 1, nw do
  local a = 7 + (i - 1) * 4
  local w = {key = KEYS[i], secs = tonumber(ARGV[a + 1]), maxm = tonumber(ARGV[a + 2]),
             maxr = tonumber(ARGV[a + 3]), observe = ARGV[a + 4] == '1', slots = {}, alert = 0}
  w.len = math.max(1, math.ceil(w.secs / (B - 1)))
  w.cur = math.floor(now / w.len)
  w.first = math.max(math.floor((now - w.secs) / w.len), w.cur - B + 1)
  local h = redis.call('HGETALL', w.key)
  for j = 1, #h, 2 do
    if h[j] == 'alert' then
      w.alert = tonumber(h[j + 1])
    else
      local idx, m, r, f = string.match(h[j + 1], '^(%-?%d+):(%d+):(%d+):(%d+)$')
      if idx then
        w.slots[tonumber(h[j])] = {tonumber(idx), tonumber(m), tonumber(r), tonumber(f)}
      end
    end
  end
  w.m, w.r, w.f = 0, 0, 0
  for _, s in pairs(w.slots) do
    if s[1] >= w.first and s[1] <= w.cur then
      w.m = w.m + s[2]; w.r = w.r + s[3]; w.f = w.f + s[4]
    end
  end
  windows[i] = w
end

local function bump(w, dm, dr, df)
  local slot = w.cur % B
  local s = w.slots[slot]
  if not s or s[1] ~= w.cur then
    s = {w.cur, 0, 0, 0}
  end
  s[2] = s[2] + dm; s[3] = s[3] + dr; s[4] = s[4] + df
  w.slots[slot] = s
  w.m = w.m + dm; w.r = w.r + dr; w.f = w.f + df
  redis.call('HSET', w.key, tostring(slot), s[1] .. ':' .. s[2] .. ':' .. s[3] .. ':' .. s[4])
  redis.call('EXPIRE', w.key, w.secs + 2 * w.len)
end

local function dump(w)
  local out = {w.alert}
  for _, s in pairs(w.slots) do
    out[#out + 1] = s[1]; out[#out + 1] = s[2]; out[#out + 1] = s[3]; out[#out + 1] = s[4]
  end
  return out
end

local lock = redis.call('GET', lockkey)
if lock then
  if count_refusal then
    for i = 1, na do bump(windows[i], 0, 0, 1) end
  end
  return {2, now, lock}
end

local exceeded = {}
local observed = {}
if not exempt then
  for i = 1, nw do
    local w = windows[i]
    local over = nil
    if w.maxm >= 0 and w.m + 1 > w.maxm then
      over = 'messages'
    elseif w.maxr >= 0 and w.r + rcpts > w.maxr then
      over = 'recipients'
    end
    if over then
      local list = exceeded
      if w.observe then list = observed end
      list[#list + 1] = i; list[#list + 1] = over
    end
  end
end

-- The windows named in `list` (index, what pairs) that have not alerted in this window yet
-- do now: 1 when any did.
local function alert_due(list)
  local due = 0
  for k = 1, #list, 2 do
    local w = windows[list[k]]
    if w.alert <= now then
      w.alert = now + w.secs
      redis.call('HSET', w.key, 'alert', w.alert)
      due = 1
    end
  end
  return due
end

if #exceeded == 0 then
  -- Observe-mode windows it went over: the first time in each window, an alert is due.
  local alert = alert_due(observed)
  for i = 1, nw do bump(windows[i], 1, rcpts, 0) end
  if #observed == 0 then
    return {1, now}
  end
  local reply = {1, now, alert, '', observed}
  for i = 1, nw do reply[#reply + 1] = dump(windows[i]) end
  return reply
end
if not count_refusal then
  return {3, now}
end

for i = 1, nw do bump(windows[i], 0, 0, 1) end
local alert = alert_due(exceeded)
local locked = ''
if lock_after > 0 then
  local tried = 0
  for i = 1, na do tried = math.max(tried, windows[i].f) end
  if tried >= lock_after then
    locked = tried .. ' refused or held attempts within a window (lock_after = ' .. lock_after .. ')'
    redis.call('SET', lockkey, now .. '|' .. locked)
  end
end
local reply = {0, now, alert, locked, exceeded}
for i = 1, nw do reply[#reply + 1] = dump(windows[i]) end
return reply
end

if oncekey then
  local first = redis.call('GET', oncekey)
  if first then
    return cjson.decode(first)
  end
end
local reply = decide()
if oncekey then
  redis.call('SET', oncekey, cjson.encode(reply), 'EX', once_ttl)
end
return reply
