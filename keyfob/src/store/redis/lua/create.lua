local h = KEYS[1]
local m = redis.call('HMGET', h, 'v', 'i', 'a', 'moved')
if m[4] then return 0 end
if m[1] then
  local e = deadline(m[2], m[3])
  if not e or tonumber(ARGV[1]) < e then return 0 end
end
redis.call('DEL', h)
for n = 3, #ARGV, 2 do redis.call('HSET', h, ARGV[n], ARGV[n + 1]) end
if ARGV[2] ~= '' then redis.call('EXPIREAT', h, ARGV[2]) end
return 1
