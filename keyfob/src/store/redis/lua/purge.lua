local h = KEYS[1]
local m = redis.call('HMGET', h, 'v', 'i', 'a', 'moved', 'o')
if m[4] or not m[1] then return {'0'} end
local e = deadline(m[2], m[3])
if e and tonumber(ARGV[1]) >= e then
  redis.call('DEL', h)
  return {'1', m[5] or ''}
end
return {'2', e and tostring(e) or ''}
