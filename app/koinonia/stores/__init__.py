"""Everything the service keeps in Redis, one adapter per concern.

* ``client``: the redis-py client factory (pooled, short timeouts);
* ``sessions``: sessions and each user's session index (Lua scripts);
* ``session_cache``: sessions answered in-process, evicted by pub/sub;
* ``cache``: versioned cache-aside pages, with a per-process copy of the hottest;
* ``events``: church events fanned out to WebSockets over pub/sub;
* ``locks``: distributed locks for cron work;
* ``replay_claims``: one-time claims of signed provider callbacks.

Named ``stores`` so that nothing here can be mistaken for redis-py's own ``redis`` package.
"""
