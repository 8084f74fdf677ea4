-- Managed by Ansible (koinonia.platform, role nginx). Local changes are overwritten.
--
-- Active health checks and peer selection for the app servers' upstream, on what Debian
-- ships: libnginx-mod-http-lua + lua-resty-core (ngx.balancer) + lua-cjson.
--
-- Why hand-written: Debian bookworm packages no lua-resty-upstream-healthcheck, and that
-- library needs lua-upstream-nginx-module (ngx.upstream) to mark peers down, which Debian
-- does not ship either; nginx-full has no check module. So the checker keeps peer state in
-- a lua_shared_dict and balancer_by_lua picks the peer itself.
--
--   configure(json)  init_by_lua:          parse and validate the settings (nginx -t runs it,
--                                          so a bad value fails validation, not the reload)
--   init_worker()    init_worker_by_lua:   worker 0 probes every peer every `interval` s
--   access()         access_by_lua:        503 JSON at once when no peer is in rotation
--   balance()        balancer_by_lua:      least connections over the peers in rotation, retries
--   log()            log_by_lua:           release the in-flight counts, record passive failures
--   status()         content_by_lua:       the /upstream_status JSON
--   drain()          content_by_lua:       /upstream_peers/<name>/drain: PUT takes a peer out of
--                                          rotation (requests in flight finish), DELETE puts it back
--
-- Peer state in the shared dict (key suffix = peer id "name:port"):
--   down:<id>   true while the active checker has the peer down (absent = up)
--   fails:<id>  consecutive failed probes      oks:<id>  consecutive good probes
--   last:<id>   time of the last probe         result:<id>  its status code or error
--   answering:<id> true when the last probe got an HTTP status line (whatever the code),
--               false when it could not connect, timed out or read no status line
--   since:<id>  time of the last up/down change
--   pfail:<id>  passive failures (errors/timeouts of real requests), expire after fail_timeout
--   drained:<id> set by an operator (rolling deploys): no new requests, whatever the checks say;
--               kept across reloads (shared memory) until deleted
--   inflight:<id> requests in flight to the peer, over all workers (a drain waits for 0)
--   panic       time panic routing started, while it lasts (set by the checker, for the log
--               and the status page; the routing itself is decided per request)
--
-- Panic routing (Envoy calls it the panic threshold; here the threshold is "no peer up"):
-- the readiness probe fails on every app server at once when a dependency they all share
-- (PostgreSQL, Redis) is down. Ejecting all of them would answer every request with the
-- balancer's own 503 and keep answering it for `rise` probes after the dependency is back.
-- So when no peer that is not drained is up, the requests go to the peers that are down by
-- the checks but still answer them (panic_when_all_down): the app answers its own 503 with
-- Retry-After while the dependency is down, and serves the first request after it returns.
-- A peer whose last probe got no HTTP answer (connection refused, timeout) stays out: a dead
-- or hung process cannot serve, and trying it only adds a failed try or a long wait. Drained
-- peers stay out too: a drain is an operator's decision.

local cjson = require "cjson.safe"
local balancer = require "ngx.balancer"

local ngx = ngx
local log = ngx.log
local ERR, WARN = ngx.ERR, ngx.WARN

local _M = { _VERSION = "1.0" }

local conf          -- settings from configure()
local peers = {}    -- array of { id, name, host, port, weight }
local dict          -- the lua_shared_dict
local active = {}   -- per worker: requests in flight per peer address (as nginx least_conn without zone)
local current = {}  -- per worker: smooth weighted round-robin state per peer id (tie-break)
local checking = false

local by_addr = {}  -- peer by its $upstream_addr form

local function positive_number(value, name)
    if type(value) ~= "number" or value <= 0 then
        error("koinonia upstream: " .. name .. " must be a positive number, got " .. tostring(value))
    end
    return value
end

-- Parse and validate the settings; raises on a bad value so `nginx -t` fails.
function _M.configure(json)
    local c, err = cjson.decode(json)
    if not c then
        error("koinonia upstream: settings are not valid JSON: " .. tostring(err))
    end
    dict = ngx.shared[c.shared_dict]
    if not dict then
        error("koinonia upstream: lua_shared_dict " .. tostring(c.shared_dict) .. " is not defined")
    end
    positive_number(c.interval, "interval")
    positive_number(c.timeout, "timeout")
    positive_number(c.rise, "rise")
    positive_number(c.fall, "fall")
    positive_number(c.tries, "tries")
    positive_number(c.max_fails, "max_fails")
    positive_number(c.fail_timeout, "fail_timeout")
    if type(c.panic_when_all_down) ~= "boolean" then
        error("koinonia upstream: panic_when_all_down must be true or false, got "
            .. tostring(c.panic_when_all_down))
    end
    if type(c.host_header) ~= "string" or c.host_header == "" then
        c.host_header = nil  -- JSON null (cjson.null) or empty: the peer's name
    end
    if type(c.path) ~= "string" or c.path:sub(1, 1) ~= "/" then
        error("koinonia upstream: check path must start with /")
    end
    if type(c.peers) ~= "table" or #c.peers == 0 then
        error("koinonia upstream: no peers (is the app servers group empty?)")
    end
    local seen = {}
    peers, by_addr = {}, {}
    for i, p in ipairs(c.peers) do
        if type(p.host) ~= "string" or not (p.host:match("^%d+%.%d+%.%d+%.%d+$") or p.host:find(":", 1, true)) then
            error("koinonia upstream: peer " .. tostring(p.name) .. " needs an IP address, got " .. tostring(p.host))
        end
        local port = positive_number(p.port, "port of peer " .. tostring(p.name))
        local weight = positive_number(p.weight, "weight of peer " .. tostring(p.name))
        local id = p.name .. ":" .. port
        if seen[id] then
            error("koinonia upstream: peer " .. id .. " is listed twice")
        end
        seen[id] = true
        -- addr is how $upstream_addr names the peer (the log phase releases counts by it).
        local addr = (p.host:find(":", 1, true) and ("[" .. p.host .. "]") or p.host) .. ":" .. port
        peers[i] = { id = id, name = p.name, host = p.host, port = port, weight = weight, addr = addr }
        by_addr[addr] = peers[i]
    end
    conf = c
end

----------------------------------------------------------------------------------------
-- Active checks
----------------------------------------------------------------------------------------

-- One probe: GET <path> over HTTP/1.0; returns the status code, or nil and an error.
local function probe(peer)
    local sock = ngx.socket.tcp()
    sock:settimeout(conf.timeout * 1000)
    local ok, err = sock:connect(peer.host, peer.port)
    if not ok then
        return nil, "connect: " .. tostring(err)
    end
    local req = "GET " .. conf.path .. " HTTP/1.0\r\nHost: " .. (conf.host_header or peer.name)
        .. "\r\nUser-Agent: koinonia-nginx-healthcheck\r\nConnection: close\r\n\r\n"
    ok, err = sock:send(req)
    if not ok then
        sock:close()
        return nil, "send: " .. tostring(err)
    end
    local line
    line, err = sock:receive("*l")
    sock:close()
    if not line then
        return nil, "receive: " .. tostring(err)
    end
    local status = tonumber(line:match("^HTTP/%d%.%d (%d%d%d)"))
    if not status then
        return nil, "bad status line"
    end
    return status
end

local function record(peer, status, err)
    local id = peer.id
    local now = ngx.now()
    local healthy = status and status >= 200 and status < 300
    dict:set("last:" .. id, now)
    dict:set("result:" .. id, status and tostring(status) or err)
    dict:set("answering:" .. id, status ~= nil)
    if healthy then
        dict:set("fails:" .. id, 0)
        local oks = dict:incr("oks:" .. id, 1, 0)
        if dict:get("down:" .. id) and oks >= conf.rise then
            dict:delete("down:" .. id)
            -- The active checks have proved the peer healthy again: forget the passive marks
            -- left by the requests that failed while it was away, or it would stay skipped
            -- until they expire (fail_timeout) although it is up.
            dict:delete("pfail:" .. id)
            dict:set("since:" .. id, now)
            log(WARN, "koinonia upstream: peer ", id, " is UP after ", oks, " good checks")
        end
    else
        dict:set("oks:" .. id, 0)
        local fails = dict:incr("fails:" .. id, 1, 0)
        if not dict:get("down:" .. id) and fails >= conf.fall then
            dict:set("down:" .. id, true)
            dict:set("since:" .. id, now)
            log(WARN, "koinonia upstream: peer ", id, " is DOWN after ", fails,
                " failed checks, last: ", status or err)
        end
    end
end

local rotation  -- defined with the peer selection below

-- Logs when panic routing starts and ends (as seen once per round; requests decide for
-- themselves), and keeps its start time for the status page.
local function note_panic()
    local list, panic = rotation()
    local since = dict:get("panic")
    if panic and not since then
        dict:set("panic", ngx.now())
        log(WARN, "koinonia upstream: PANIC: no peer is up; routing to the ", #list,
            " down peers that still answer their checks")
    elseif not panic and since then
        dict:delete("panic")
        log(WARN, "koinonia upstream: panic over: ", #list, " peers in rotation")
    end
end

local function check_one(peer)
    -- Never let an error kill the thread: the round must always finish.
    local ok, status, err = pcall(probe, peer)
    if not ok then
        status, err = nil, "probe error: " .. tostring(status)
    end
    ok, err = pcall(record, peer, status, err)
    if not ok then
        log(ERR, "koinonia upstream: cannot record the check of ", peer.id, ": ", tostring(err))
    end
end

local function run_round()
    local threads = {}
    for i, peer in ipairs(peers) do
        local thread, err = ngx.thread.spawn(check_one, peer)
        if not thread then
            log(ERR, "koinonia upstream: cannot start the check of ", peer.id, ": ", err)
        end
        threads[i] = thread
    end
    for i = 1, #peers do
        if threads[i] then
            local ok, err = ngx.thread.wait(threads[i])
            if not ok then
                log(ERR, "koinonia upstream: check of ", peers[i].id, " failed: ", tostring(err))
            end
        end
    end
end

local function check_all(premature)
    if premature or checking then
        return
    end
    -- One round per interval over all workers and over a reload's old and new workers:
    -- whoever adds the lock runs the round; it expires just before the next one.
    if not dict:add("lock:round", ngx.worker.pid(), conf.interval * 0.9) then
        return
    end
    checking = true
    local ok, err = pcall(run_round)
    checking = false
    if not ok then
        log(ERR, "koinonia upstream: health check round failed: ", tostring(err))
    end
    ok, err = pcall(note_panic)
    if not ok then
        log(ERR, "koinonia upstream: cannot record the panic state: ", tostring(err))
    end
end

function _M.init_worker()
    -- Only worker 0 probes (nil in single-process mode: probe there too); the other
    -- workers read the shared dict.
    local id = ngx.worker.id()
    if id ~= nil and id ~= 0 then
        return
    end
    local ok, err = ngx.timer.at(0, check_all)
    if ok then
        ok, err = ngx.timer.every(conf.interval, check_all)
    end
    if not ok then
        log(ERR, "koinonia upstream: cannot start the health checker: ", err)
    end
end

----------------------------------------------------------------------------------------
-- Peer selection
----------------------------------------------------------------------------------------

local function is_up(peer)
    return not dict:get("down:" .. peer.id)
end

local function is_drained(peer)
    return dict:get("drained:" .. peer.id) and true or false
end

-- Its last probe got an HTTP answer: the process runs and can answer requests itself.
local function is_answering(peer)
    return dict:get("answering:" .. peer.id) ~= false
end

-- The peers that may get new requests, and whether that is panic routing: the available
-- peers; with none, and panic_when_all_down, the peers that are down by the checks but
-- answer them and are not drained (see the top of this file).
function rotation()
    local available, panic = {}, {}
    for _, peer in ipairs(peers) do
        if not is_drained(peer) then
            if is_up(peer) then
                available[#available + 1] = peer
            elseif conf.panic_when_all_down and is_answering(peer) then
                panic[#panic + 1] = peer
            end
        end
    end
    if #available > 0 then
        return available, false
    end
    return panic, #panic > 0
end

local function passively_failed(peer)
    return (dict:get("pfail:" .. peer.id) or 0) >= conf.max_fails
end

-- Candidates: in rotation, not tried yet by this request, not failing real requests (unless
-- every one in rotation is, as nginx does with max_fails: then the passive marks are
-- ignored). In panic the passive marks work the same way: a peer that stops answering
-- between two probes is skipped as soon as its requests fail. Also returns whether this is
-- panic routing.
local function candidates(tried)
    local open, healthy = {}, {}
    local routed, panic = rotation()
    for _, peer in ipairs(routed) do
        if not tried[peer.id] then
            open[#open + 1] = peer
            if not passively_failed(peer) then
                healthy[#healthy + 1] = peer
            end
        end
    end
    if #healthy > 0 then
        return healthy, panic
    end
    return open, panic
end

-- The peers for a try that should not go to an untried one: prefer a peer that answered this
-- request (503: alive, a clean answer), then one whose try did not fail at connect or time
-- out (a broken cached keepalive connection), then any; a peer that died since its last
-- probe would only turn the answer into a 502.
local function fallback(outcome)
    local any, answered, not_failed = candidates({}), {}, {}
    for _, peer in ipairs(any) do
        local status = outcome[peer.id]
        if status == 503 then
            answered[#answered + 1] = peer
        elseif status ~= 502 and status ~= 504 then
            not_failed[#not_failed + 1] = peer
        end
    end
    if #answered > 0 then
        return answered
    end
    if #not_failed > 0 then
        return not_failed
    end
    return any
end

-- Least connections weighted (active/weight), ties by smooth weighted round-robin.
local function pick(list)
    local best_score, ties = nil, {}
    for _, peer in ipairs(list) do
        local score = (active[peer.addr] or 0) / peer.weight
        if best_score == nil or score < best_score then
            best_score, ties = score, { peer }
        elseif score == best_score then
            ties[#ties + 1] = peer
        end
    end
    if #ties == 1 then
        return ties[1]
    end
    local total, chosen = 0, nil
    for _, peer in ipairs(ties) do
        local cw = (current[peer.id] or 0) + peer.weight
        current[peer.id] = cw
        total = total + peer.weight
        if chosen == nil or cw > current[chosen.id] then
            chosen = peer
        end
    end
    current[chosen.id] = current[chosen.id] - total
    return chosen
end

local function json_error(status, code, message, retry_after)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    if retry_after then
        ngx.header["Retry-After"] = tostring(retry_after)
    end
    -- cjson encodes an empty table as an object: "details": {}
    ngx.say(cjson.encode({ error = { code = code, message = message, details = {} } }))
    -- The response is out: end the request (200 here means "done", not the status sent).
    return ngx.exit(ngx.HTTP_OK)
end

-- Access phase: with no peer in rotation (none up or all drained, and none to panic-route
-- to), answer 503 at once instead of trying them.
function _M.access()
    if #rotation() == 0 then
        return json_error(503, "service_unavailable",
            "No application server is available; try again shortly.", conf.interval)
    end
end

function _M.balance()
    local ctx = ngx.ctx
    local tried = ctx.koinonia_tried
    if not tried then
        -- Keys: the ids of the peers tried, n (tries so far), last (the peer of the previous
        -- try) and outcome (peer id -> the status its try ended with).
        tried = { n = 0, outcome = {} }
        ctx.koinonia_tried = tried
    end
    if tried.last then
        -- The previous try failed (or this would not run): 503 = the peer answered
        -- (proxy_next_upstream http_503), 502/504 = connection error/timeout, 0 = a cached
        -- keepalive connection broke.
        local _, status = balancer.get_last_failure()
        tried.outcome[tried.last] = tonumber(status) or 0
    end

    local list, panic = candidates(tried)
    if panic and tried.last and tried.outcome[tried.last] == 503 then
        -- In panic every peer in rotation fails its readiness: an untried one is no likelier
        -- to serve than the one that just answered 503, and one that died since its last
        -- probe would turn that clean 503 into the balancer's 502. Ask one that answered.
        list = fallback(tried.outcome)
    elseif #list == 0 and tried.n > 0 then
        -- Every peer in rotation was tried, and NGINX still allows this try: it grants one
        -- more when a cached keepalive connection broke (closed while idle, or the peer died).
        list = fallback(tried.outcome)
    end
    local peer = #list > 0 and pick(list)
    if not peer then
        log(ERR, "koinonia upstream: no peer is in rotation")
        return ngx.exit(ngx.ERROR)
    end

    if tried.n == 0 then
        local more = math.min(conf.tries, #rotation()) - 1
        if more > 0 then
            balancer.set_more_tries(more)
        end
    end
    tried.n = tried.n + 1
    tried[peer.id] = true
    tried.last = peer.id

    local ok, err = balancer.set_current_peer(peer.host, peer.port)
    if not ok then
        log(ERR, "koinonia upstream: cannot use peer ", peer.id, ": ", err)
        return ngx.exit(ngx.ERROR)
    end
    active[peer.addr] = (active[peer.addr] or 0) + 1
    dict:incr("inflight:" .. peer.id, 1, 0)
end

-- Passive check: a try that ended in a connection error (NGINX records 502) or a timeout
-- (504) counts against its peer for fail_timeout seconds.
local function passive_failure(peer)
    local n = dict:incr("pfail:" .. peer.id, 1, 0, conf.fail_timeout)
    if n == conf.max_fails then
        log(WARN, "koinonia upstream: peer ", peer.id, " failed ", n,
            " requests, skipped for up to ", conf.fail_timeout, "s")
    end
end

-- Works from $upstream_addr / $upstream_status ("a:3000, b:3000" and " : " after an
-- internal redirect), not from ngx.ctx: an error_page redirect clears ngx.ctx but keeps
-- the upstream states. Releases the in-flight counts and records passive failures.
function _M.log()
    local addrs = ngx.var.upstream_addr
    if not addrs or addrs == "" then
        return
    end
    local statuses = {}
    for status in (ngx.var.upstream_status or ""):gmatch("[^%s,:]+") do
        statuses[#statuses + 1] = status
    end
    local i = 0
    for addr in addrs:gmatch("[^%s,]+") do
        if addr ~= ":" then
            i = i + 1
            local n = active[addr]
            if n then
                active[addr] = n > 1 and n - 1 or 0
            end
            local peer = by_addr[addr]
            if peer and n and n > 0 then
                dict:incr("inflight:" .. peer.id, -1, 0)
            end
            if peer and (statuses[i] == "502" or statuses[i] == "504") then
                passive_failure(peer)
            end
        end
    end
end

----------------------------------------------------------------------------------------
-- Status
----------------------------------------------------------------------------------------

local function iso(t)
    if not t then
        return cjson.null
    end
    return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end

local function in_flight(peer)
    return math.max(dict:get("inflight:" .. peer.id) or 0, 0)
end

function _M.status()
    local list, up, available = {}, 0, 0
    local routed, panic = rotation()
    local in_rotation = {}
    for _, peer in ipairs(routed) do
        in_rotation[peer.id] = true
    end
    for i, peer in ipairs(peers) do
        local id = peer.id
        local down = dict:get("down:" .. id) and true or false
        if not down then
            up = up + 1
            if not is_drained(peer) then
                available = available + 1
            end
        end
        list[i] = {
            name = peer.name,
            address = peer.host .. ":" .. peer.port,
            weight = peer.weight,
            status = down and "down" or "up",
            drained = is_drained(peer),
            in_rotation = in_rotation[id] or false,
            answering = is_answering(peer),
            in_flight = in_flight(peer),
            consecutive_failures = dict:get("fails:" .. id) or 0,
            consecutive_successes = dict:get("oks:" .. id) or 0,
            last_check = iso(dict:get("last:" .. id)),
            last_result = dict:get("result:" .. id) or cjson.null,
            status_since = iso(dict:get("since:" .. id)),
            passive_failures = dict:get("pfail:" .. id) or 0,
            active_requests_this_worker = active[peer.addr] or 0,
        }
    end
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Cache-Control"] = "no-store"
    ngx.say(cjson.encode({
        upstream = conf.upstream,
        algorithm = "least_conn",
        peers_up = up,
        peers_available = available,
        peers_total = #peers,
        -- Panic routing: no peer up, requests go to the down peers that answer (in_rotation).
        panic = panic,
        panic_since = iso(dict:get("panic")),
        panic_when_all_down = conf.panic_when_all_down,
        checker = {
            path = conf.path,
            interval = conf.interval,
            timeout = conf.timeout,
            rise = conf.rise,
            fall = conf.fall,
        },
        peers = list,
    }))
end

----------------------------------------------------------------------------------------
-- Drain (rolling deploys): /upstream_peers/<name or name:port>/drain on the status port
----------------------------------------------------------------------------------------

-- PUT: no new requests go to the peer (the requests in flight finish); DELETE: back in
-- rotation (it still has to pass the active checks); GET: its state. The answer says how
-- many requests are still in flight, so a deploy can wait for 0 before stopping the app.
function _M.drain()
    local wanted = ngx.var.koinonia_peer
    local matched = {}
    for _, peer in ipairs(peers) do
        if peer.name == wanted or peer.id == wanted then
            matched[#matched + 1] = peer
        end
    end
    if #matched == 0 then
        return json_error(404, "unknown_peer", "No upstream peer is named " .. tostring(wanted) .. ".")
    end
    local method = ngx.req.get_method()
    for _, peer in ipairs(matched) do
        if method == "PUT" or method == "POST" then
            if not is_drained(peer) then
                dict:set("drained:" .. peer.id, ngx.now())
                log(WARN, "koinonia upstream: peer ", peer.id, " DRAINED by an operator")
            end
        elseif method == "DELETE" then
            if is_drained(peer) then
                dict:delete("drained:" .. peer.id)
                log(WARN, "koinonia upstream: peer ", peer.id, " back in rotation (drain removed)")
            end
        elseif method ~= "GET" and method ~= "HEAD" then
            ngx.header["Allow"] = "GET, PUT, DELETE"
            return json_error(405, "method_not_allowed", "Use GET, PUT (drain) or DELETE (undrain).")
        end
    end
    local out = {}
    for i, peer in ipairs(matched) do
        out[i] = {
            name = peer.name,
            address = peer.host .. ":" .. peer.port,
            status = is_up(peer) and "up" or "down",
            drained = is_drained(peer),
            drained_since = iso(dict:get("drained:" .. peer.id)),
            in_flight = in_flight(peer),
        }
    end
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Cache-Control"] = "no-store"
    ngx.say(cjson.encode({ peers = out }))
end

return _M
