"""Bringing a cluster up and finding it again.

- local_cluster.py: from a config to a running cluster: Ray, Redis (a private one:
  kvstore/redis_server.py), the pools' actors, the dispatcher (``Cluster``);
- ray_connect.py, ray_auth.py: finding and joining the Ray a cluster runs in (markers,
  token authentication);
- registry.py: the small named actor that describes a running cluster, so ``tierserve submit``
  finds it by name.

It sits above the dispatcher's modules (cluster/dispatcher.py, cluster_view.py, pool_handles.py)
and config.py, and below the commands (serve_cli.py, demo.py) and batch submission (cluster/batch/).
"""
