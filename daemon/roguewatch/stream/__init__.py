"""The event stream: decoding and enriching kernel records into events (`enrich`,
`collector`), their vocabulary (`events`), the ZeroMQ bus that carries them (`bus`),
recordings of it, and the collector's control socket (`control`)."""
