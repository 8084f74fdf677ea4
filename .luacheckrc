-- luacheck (make lint) over the Lua NGINX runs in the request path: OpenResty's globals.
std = "ngx_lua"
