-- wrk prints p50..p99 only; this adds p99.9 (microseconds) for bench/run.py.
done = function(summary, latency, requests)
  io.write(string.format("P999_US %d\n", latency:percentile(99.9)))
end
