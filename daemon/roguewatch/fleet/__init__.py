"""roguewatch across a fleet of hosts, through NATS JetStream.

Host side: ``spool`` (the durable queue between the evaluator and the server), ``records``
(what an alert or a session summary becomes on the wire), ``forwarder`` (publishes the spool in
order, at least once, de-duplicated by the server; heartbeats; ``kvwatch``: fleet policies and
rules; ``remote``: signed remote actions). Fleet side: ``client`` (tail, hosts, policies, kill).

Imports core, policy, stream, detect.ruleset, respond and outputs; nothing below may import it.
"""
