"""Scale-out: `loraops serve --ray` runs the engine as Ray Serve replicas behind an HTTP ingress.

app.py (the application and its driver), ingress.py (the FastAPI app over the replicas), client.py
(the engine interface the routes use, over the deployment handle), replica.py (one engine per
replica, adapter-affinity routing through Ray Serve model multiplexing), shared.py (global limits
and run-time adapters, in one replica), metrics.py (/metrics for every replica). Needs the
`cluster` extra (ray[serve]); nothing here is imported by the single-process server.
Design and operations: docs/scale-out.md.
"""
