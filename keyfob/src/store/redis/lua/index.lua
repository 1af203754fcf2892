local k = KEYS[1]
redis.call('ZADD', k, 'GT', ARGV[2] == 'inf' and '+inf' or ARGV[2], ARGV[1])
local top = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
if top[2] == 'inf' then redis.call('PERSIST', k)
else redis.call('EXPIREAT', k, top[2]) end
return 1
