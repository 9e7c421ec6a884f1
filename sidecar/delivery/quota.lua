-- The limiter's rule (sidecar.delivery.limiter.QuotaState.apply) in Lua, run
-- atomically inside Redis on Redis's clock. Keep the two in step: tests run one
-- table of cases against both (tests/test_shared_limiter.py).
--
-- KEYS: quota hash, alive set. ARGV: op, rate, burst, min_fraction, recovery_step,
-- retry_after, told rate, told burst, told remaining (-1: not given), member, ttl, alive seconds.
-- Returns strings (Redis would truncate Lua numbers to integers): wait, rate, source, tokens, burst; then N.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local op = ARGV[1]
local cfg_rate, cfg_burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local min_fraction, step = tonumber(ARGV[4]), tonumber(ARGV[5])
local retry_after = tonumber(ARGV[6])
local told_rate, told_burst, remaining = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local h = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'learned_rate', 'learned_burst', 'calm_at')
local tat = tonumber(h[1]) or now
local learned_rate, learned_burst = tonumber(h[3]), tonumber(h[4])
local calm_at = tonumber(h[5]) or 0
local told = op == 'success' or op == 'limited'
if told and told_rate > 0 then learned_rate = told_rate end
if told and told_burst >= 1 then learned_burst = told_burst end
local ceiling = cfg_rate
if learned_rate and learned_rate < ceiling then ceiling = learned_rate end
local burst = cfg_burst
if learned_burst then burst = math.max(1, math.min(cfg_burst, learned_burst)) end
local rate = ceiling
if tonumber(h[2]) and tonumber(h[2]) < ceiling then rate = tonumber(h[2]) end
local wait = 0
if op == 'reserve' then
  wait = math.max(0, math.max(tat, now) - now + (1 - burst) / rate)
  tat = math.max(tat, now) + 1 / rate
elseif op == 'success' then
  if rate < ceiling then rate = math.min(ceiling, rate + cfg_rate * step) end
elseif op == 'limited' then
  local pause = retry_after
  if now >= calm_at then
    rate = math.min(ceiling, math.max(cfg_rate * min_fraction, rate / 2))
    local calm = pause
    if calm < 0 then calm = 1 / rate end
    calm_at = now + math.max(1, calm)
  end
  if pause < 0 then pause = 1 / rate end
  tat = math.max(tat, now + pause + (burst - 1) / rate)
end
if told and remaining >= 0 then tat = math.max(tat, now + (burst - remaining) / rate) end
local fields = {'tat', string.format('%.6f', tat), 'calm_at', string.format('%.6f', calm_at)}
if learned_rate then table.insert(fields, 'learned_rate'); table.insert(fields, tostring(learned_rate)) end
if learned_burst then table.insert(fields, 'learned_burst'); table.insert(fields, tostring(learned_burst)) end
redis.call('HSET', KEYS[1], unpack(fields))
if rate < ceiling then redis.call('HSET', KEYS[1], 'rate', tostring(rate)) else redis.call('HDEL', KEYS[1], 'rate') end
local ttl = tonumber(ARGV[11])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now, ARGV[10])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[12]))
redis.call('EXPIRE', KEYS[2], ttl)
local source = 'configured'
if rate < ceiling then source = 'backed off'
elseif learned_rate and learned_rate <= cfg_rate then source = 'learned' end
local tokens = math.min(burst, burst - (tat - now) * rate)
return {tostring(wait), tostring(rate), source, tostring(tokens), tostring(burst), redis.call('ZCARD', KEYS[2])}
