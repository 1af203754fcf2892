local h = KEYS[1]
local m = redis.call('HMGET', h, 'moved', 'o')
if redis.call('DEL', h) == 0 then return {'0'} end
if m[1] then return {'2', m[1]} end
return {'1', m[2] or ''}
