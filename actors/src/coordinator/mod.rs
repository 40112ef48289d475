//! Coordinators: one per mode. Each joins what the domain actors report with what was applied to
//! JumpCloud, runs the pure planner, commits (watermark move + planned operations) in one store
//! transaction and hands the operations to the API actor.

pub mod expected;
pub mod import;
pub mod sync;
pub mod to_ad;

/// The mass-removal guard's operator override: `echo N > <file>` approves N removals once.
pub mod approval {
    use std::path::Path;

    /// How many removals the approval file allows (0 when absent or unreadable).
    pub fn approved(file: Option<&Path>) -> u32 {
        file.and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Deletes the approval once it has been used.
    pub fn consume(file: Option<&Path>) {
        if let Some(p) = file {
            let _ = std::fs::remove_file(p);
            tracing::warn!(file = %p.display(), "approved removals used; approval consumed");
        }
    }
}
