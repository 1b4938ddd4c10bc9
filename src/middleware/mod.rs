//! What stands between a request and its handler, and is not about who the caller is:
//! load shedding and the request deadline ([`limits`]), the per-key rate limit
//! ([`rate_limit`]) and the queue partner cohort imports wait in ([`import_gate`]).
//! Nothing here knows the handlers or the shared state; the state holds these.

pub mod import_gate;
pub mod limits;
pub mod rate_limit;
