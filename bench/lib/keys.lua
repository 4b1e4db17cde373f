-- wrk script: use every key of BENCH_KEYS_FILE once (in file order), then stop the run.
-- Run with -t1 (one Lua state walks the list). Connections share the list: once the list is
-- used up, requests repeat the last key, so with -cN up to N-1 of the counted responses may be
-- such repeats (cache hits) and as many first uses may still be in flight when the run stops.
-- When `n` responses are in, the thread stops; wrk's main thread sleeps for the whole -d, so
-- the script also sends wrk a SIGINT, which ends the run. duration_us in the BENCH line is the
-- wall time from the first request to the n-th response (LuaJIT FFI clock_gettime).
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local path = os.getenv("BENCH_KEYS_FILE")
local route = os.getenv("BENCH_PATH") or "/api/v1/tools/tool-42/deploy"
local body = '{"environment":"staging","replicas":2,"wait":false}'
local keys, n, next_i = {}, 0, 0
completed, non200, stopped = 0, 0, false
first_us, last_us = 0, 0 -- wall time of the first request and of the n-th response
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(path) do
    if #line > 0 then
      n = n + 1
      keys[n] = line
    end
  end
end

local function make(k)
  return wrk.format("POST", route,
    { ["X-API-Key"] = k, ["Content-Type"] = "application/json" }, body)
end

-- wrk calls request() once before the run to check the script (script_verify_request, on the
-- first thread): that call must not use up a key.
local verified = false

function request()
  if not verified then
    verified = true
    return make(keys[1])
  end
  next_i = next_i + 1
  if next_i == 1 then first_us = now_us() end
  return make(keys[next_i] or keys[n])
end

function response(status, headers, body)
  completed = completed + 1
  if status ~= 200 then non200 = non200 + 1 end
  if completed >= n and not stopped then
    stopped = true
    last_us = now_us()
    -- system() ignores SIGINT while it waits for its child, so the kill is sent from a
    -- background subshell a moment after os.execute has returned ($PPID is still wrk's pid).
    wrk.thread:stop()
    os.execute("(sleep 0.02; kill -INT $PPID) >/dev/null 2>&1 &")
  end
end

function done(summary, latency, requests)
  local bad, span = 0, 0
  for _, t in ipairs(threads) do
    bad = bad + (t:get("non200") or 0)
    span = math.max(span, (t:get("last_us") or 0) - (t:get("first_us") or 0))
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d mean_us=%.1f p50_us=%d p99_us=%d max_us=%d " ..
    "status_errors=%d non200=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, span > 0 and span or summary.duration, latency.mean,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.status, bad, e.connect, e.read, e.write, e.timeout))
end
