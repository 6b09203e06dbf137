"""Where alerts go and how people read them: the alert sinks (socket, file, journald,
console), the human and JSON forms of events and alerts, Prometheus metrics."""
