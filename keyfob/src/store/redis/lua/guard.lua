if redis.call('HGET', KEYS[1], 'moved') == ARGV[1] then return 1 end
return 0
