"""The checklist's load profiles (smoke, load, spike, soak, conversation) with Locust.

`bench/load_profiles.py` runs them; `driver.py` is the Locust side (its own process: Locust
monkey-patches the standard library with gevent on import), `profiles.py` the shapes and
`stats.py` the figures, both free of Locust so the orchestrator can use them.
"""
