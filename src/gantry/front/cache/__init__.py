"""The front's HTTP cache (RFC 9111, shared cache): its decisions as pure functions
(``policy``), the entries on disk (``store``) and the handler in the chain (``handler``)."""
