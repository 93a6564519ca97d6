"""The HTTP API's routers: OpenAI routes, admin routes, operations (health, readiness, metrics)."""
