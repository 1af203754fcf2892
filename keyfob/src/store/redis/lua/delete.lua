local h = KEYS[1]
local m = redis.call('HMGET', h, 'moved', 'o')
if m[1] then return {'0'} end
if redis.call('DEL', h) == 0 then return {'0'} end
return {'1', m[2] or ''}
