local h = KEYS[1]
local m = redis.call('HMGET', h, 'v', 'i', 'a', 'moved')
if m[4] then return 0 end
if m[1] then
  local e = deadline(m[2], m[3])
  if not e or tonumber(ARGV[1]) < e then return 0 end
end
redis.call('DEL', h)
many('HSET', h, ARGV, 4)
if ARGV[2] ~= '' then redis.call('EXPIREAT', h, drop_at(tonumber(ARGV[2]))) end
-- Tracked again after the write (see update.lua).
if ARGV[3] == '1' then redis.call('EXISTS', h) end
return 1
