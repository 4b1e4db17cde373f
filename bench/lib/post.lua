-- wrk script: the load mix. One small JSON POST to a {param} route, with the bench key.
-- Env: BENCH_KEY (the API key), BENCH_PATH (default /api/v1/tools/tool-42/deploy).
-- done() prints one machine-readable line, "BENCH k=v ...", read by bench/run.
wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/api/v1/tools/tool-42/deploy"
wrk.body = '{"environment":"staging","replicas":2,"wait":false}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = os.getenv("BENCH_KEY") or ""

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d mean_us=%.1f p50_us=%d p99_us=%d max_us=%d " ..
    "status_errors=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, latency.mean,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
