"""The processes roguewatch runs as and how they are started: the service and its
supervision, the collector and evaluator processes, `roguewatch run` and the session launcher,
scheduling priority and the readiness handshake.

The only stage that wires the others together."""
