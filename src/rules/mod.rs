//! Rules on live readings (issue 12): a rule watches one metric of one device, or of every device in
//! its area with that metric, and maps the value to the national four warning levels or to a stale
//! alarm about the sensor. [`spec`] is the rule as people write it and its validation; [`eval`] the
//! semantics, pure and clock-free; [`record`] rules as records, their projection and authority rule;
//! `routes.rs` the API.

pub mod eval;
pub mod live;
pub mod record;
mod routes;
pub mod spec;

pub use record::{KIND, RuleError, RuleProjection, RuleView};
pub use routes::routes;
