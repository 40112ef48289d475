//! Coordinators: one per mode. Each joins what the domain actors report with what was applied to
//! JumpCloud, runs the pure planner, commits (watermark move + planned operations) in one store
//! transaction and hands the operations to the API actor.

pub mod expected;
pub mod import;
pub mod sync;
pub mod to_ad;
