-- wrk script: GET of the URL given on the command line, then one machine-readable line
-- (the same as the peer harness's post.lua):
-- RESULT requests=<n> duration_s=<s> rps=<r> p50_ms=<> p90_ms=<> p99_ms=<> max_ms=<> errors=<sum> (connect/read/write/status/timeout)
wrk.method = "GET"

function done(summary, latency, requests)
  local e = summary.errors
  local errs = e.connect + e.read + e.write + e.status + e.timeout
  local dur = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d duration_s=%.3f rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f errors=%d (c%d/r%d/w%d/s%d/t%d)\n",
    summary.requests, dur, summary.requests / dur,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    errs, e.connect, e.read, e.write, e.status, e.timeout))
end
