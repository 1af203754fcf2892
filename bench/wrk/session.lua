-- wrk script for scripts/bench. Env: COOKIES (file of session IDs, one a line;
-- empty = send no cookie), METHOD (GET or POST). Every route goes through this
-- same request() so the load generator does the same work for each.
local cookies = {}
local file = os.getenv("COOKIES")
if file and file ~= "" then
  for line in io.lines(file) do
    if line ~= "" then cookies[#cookies + 1] = "id=" .. line end
  end
end
local method = os.getenv("METHOD") or "GET"
local n = #cookies

-- Every request is built once, in init (before wrk starts its clock), and
-- request() only picks one. Built per request (wrk.format, a headers table),
-- wrk spent 12.9-14.4 us of CPU per /read request and 10.5-11.8 us per /bare
-- sent a cookie; built once, 10.7-11.3 and 9.8-10.4 (2026-12-03, memory
-- store, 60-97k req/s). wrk and the server each have one of the machine's two
-- cores and both run near 90 %, so the cheaper the load generator, the more
-- of the server the figures measure.
local prepared = {}

function init(args)
  math.randomseed(os.time())
  if n > 0 then
    for i = 1, n do
      prepared[i] = wrk.format(method, nil, { Cookie = cookies[i] })
    end
  else
    prepared[1] = wrk.format(method, nil, nil)
  end
end

function request()
  return prepared[math.random(#prepared)]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT rps=%.1f p99_us=%d requests=%d non2xx=%d errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(99),
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout))
end
