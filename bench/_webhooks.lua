-- wrk script for webhook_ingest.py: replays pre-signed Stripe events from a file.
-- Each line of the file is "<Stripe-Signature header>\t<JSON body>". With T threads, thread t sends
-- lines t, t+T, t+2T, ... in order (wrapping around at the end). done() writes a JSON summary to $WRK_OUT.
-- Usage: wrk -t T -c C -d 15s -s bench/_webhooks.lua URL -- PAYLOAD_FILE T

local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end

function init(args)
  local path = args[1]
  local nthreads = tonumber(args[2])
  items = {}
  local i = 0
  for line in io.lines(path) do
    if i % nthreads == tid then
      local tab = line:find("\t", 1, true)
      items[#items + 1] = wrk.format("POST", wrk.path, {
        ["Content-Type"] = "application/json",
        ["Stripe-Signature"] = line:sub(1, tab - 1),
      }, line:sub(tab + 1))
    end
    i = i + 1
  end
  idx = 0
end

function request()
  idx = idx + 1
  if idx > #items then idx = 1 end
  return items[idx]
end

function done(summary, latency, requests)
  local f = io.open(os.getenv("WRK_OUT"), "w")
  local e = summary.errors
  f:write(string.format(
    '{"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
  f:close()
end
