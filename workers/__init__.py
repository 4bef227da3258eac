"""What every pool's replicas share, below the pools and above kvstore and the engine.

The layering, top down (the request's path: router -> cluster's dispatcher -> a pool's
replica -> its engine, the KV moving through kvstore): ``cluster`` composes everything and
dispatches; the pools (``prefill_workers``, ``decode_workers``, ``attention_offload``) each
implement a role; ``workers`` holds what they and the dispatcher share: the messages across
Ray (messages.py), a replica's spec and bring-up (spec.py), the engine worker base
(base.py), the Ray actor base (actor.py), the worker side of the output streams
(output_channels.py) and the KV event pump (kv_event_pump.py). It imports only kvstore and
engine.
"""
