-- wrk script for paid-request benchmarks: sends each pre-signed x402 payment exactly once.
--
--   wrk -t T -c C -d D -s bench/payments.lua URL -- PAYMENTS_FILE T [HEADER]
--
-- PAYMENTS_FILE has one base64 PAYMENT-SIGNATURE value per line (bench-payments). Thread k of T
-- takes lines k, k+T, k+2T, ... so no two requests carry the same authorization (the verifier's
-- replay guard accepts each once). When a thread runs out it sends the request without a payment
-- (answered 402, so it shows up as a non-2xx response) and counts it; `done` prints
-- "bench: used N exhausted M" for bench/run.py.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

local payments = {}
local next_index = 1
local header_name = "PAYMENT-SIGNATURE"
used = 0
exhausted = 0

function init(args)
   local file, nthreads = args[1], tonumber(args[2])
   if args[3] then
      header_name = args[3]
   end
   local f = assert(io.open(file, "r"), "cannot open " .. tostring(file))
   local i = 0
   for line in f:lines() do
      if i % nthreads == id and #line > 0 then
         payments[#payments + 1] = line
      end
      i = i + 1
   end
   f:close()
end

function request()
   local headers = {}
   for k, v in pairs(wrk.headers) do
      headers[k] = v
   end
   local payment = payments[next_index]
   if payment then
      headers[header_name] = payment
      payments[next_index] = nil
      next_index = next_index + 1
      used = used + 1
   else
      exhausted = exhausted + 1
   end
   return wrk.format("GET", wrk.path, headers)
end

function done(summary, latency, requests)
   local total_used, total_exhausted = 0, 0
   for _, thread in ipairs(threads) do
      total_used = total_used + (thread:get("used") or 0)
      total_exhausted = total_exhausted + (thread:get("exhausted") or 0)
   end
   io.write(string.format("bench: used %d exhausted %d\n", total_used, total_exhausted))
end
