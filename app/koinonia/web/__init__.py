"""The web edge: what stands between an HTTP request and the services.

* ``tenancy``: authentication (session cookie or bearer token), the church a request acts
  for, and the role guards every route declares (``require_permission`` ...);
* ``csrf``: which cookie-authenticated requests are accepted;
* ``state``: the per-process resources (database, Redis, caches, queue, locks, event hub),
  opened in the app's lifespan and held in one typed ``AppState``;
* ``resources``: the messaging half's resources in that state, and accessors for routes.

Routes (``koinonia.routes``) use these; services (``koinonia.services``) never import them.
"""
