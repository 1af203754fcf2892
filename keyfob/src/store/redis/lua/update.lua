local h = KEYS[1]
local now = tonumber(ARGV[1])
local m = redis.call('HMGET', h, 'v', 'i', 'a', 'moved', 'o', 'x', 'c', 's')
if m[4] then return {'0'} end
if not m[1] then
  if redis.call('EXISTS', h) == 0 then return {'0'} end
  return {'-1'}
end
-- Metadata the loader would refuse: the record reads as no session, so it
-- is not updated either. (Data values are checked only when loaded.)
for _, n in ipairs({1, 7, 8}) do if not tonumber(m[n]) then return {'-1'} end end
if (m[2] and not tonumber(m[2])) or (m[3] and not tonumber(m[3])) then return {'-1'} end
local e = deadline(m[2], m[3])
if e and now >= e then redis.call('DEL', h) return {'0'} end
if ARGV[6] == '1' then
  for _, k in ipairs(redis.call('HKEYS', h)) do
    if string.sub(k, 1, 2) == 'd:' then redis.call('HDEL', h, k) end
  end
end
for n = 10, #ARGV, 2 do
  if ARGV[n + 1] == '' then redis.call('HDEL', h, 'd:' .. ARGV[n])
  else redis.call('HSET', h, 'd:' .. ARGV[n], ARGV[n + 1]) end
end
redis.call('HSET', h, 's', ARGV[2])
if ARGV[3] == '' then redis.call('HDEL', h, 'i') else redis.call('HSET', h, 'i', ARGV[3]) end
local owner = m[5]
if ARGV[4] == '-' then redis.call('HDEL', h, 'o') owner = nil
elseif string.sub(ARGV[4], 1, 1) == '=' then
  owner = string.sub(ARGV[4], 2)
  if owner ~= m[5] then redis.call('HDEL', h, 'x') m[6] = nil end
  redis.call('HSET', h, 'o', owner)
end
if ARGV[5] == '-' then redis.call('HDEL', h, 'e')
elseif string.sub(ARGV[5], 1, 1) == '=' then redis.call('HSET', h, 'e', string.sub(ARGV[5], 2)) end
redis.call('HINCRBY', h, 'v', 1)
e = deadline(ARGV[3] ~= '' and ARGV[3] or nil, m[3])
-- The owner set must outlive its sessions: ask the caller to push its TTL
-- when this deadline passes the watermark last pushed.
local mark = ''
if owner then
  if not e then
    if m[6] ~= 'inf' then mark = 'inf' end
  elseif m[6] ~= 'inf' and (not tonumber(m[6]) or e > tonumber(m[6])) then
    mark = tostring(e + tonumber(ARGV[8]))
  end
  if mark ~= '' then redis.call('HSET', h, 'x', mark) end
end
if ARGV[7] ~= '' then
  local all = redis.call('HGETALL', h)
  redis.call('DEL', h)
  redis.call('HSET', h, 'moved', ARGV[7])
  redis.call('PEXPIRE', h, ARGV[9])
  local out = {'2', owner or '', e and tostring(e) or '', mark}
  for n = 1, #all do out[#out + 1] = all[n] end
  return out
end
if e then redis.call('EXPIREAT', h, e) else redis.call('PERSIST', h) end
return {'1', owner or '', mark}
