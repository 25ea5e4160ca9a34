"""Request-rate and concurrency limits (nginx's limit_req, limit_conn) and automatic
bans, shared by the workers of a front."""
