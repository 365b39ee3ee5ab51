//! pachyderm-backup: one pause → backup → resume cycle of a Pachyderm cluster per run,
//! with retention, restore, verification and metrics. `docs/ARCHITECTURE.md` maps
//! the modules; `docs/FORMAT.md` specifies the backup bucket's layout.

pub mod azure;
pub mod catalog;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod cycle;
pub mod database;
pub mod demo;
pub mod exit;
pub mod gcs;
pub mod metrics;
pub mod object_lock;
pub mod objects;
pub mod progress;
pub mod restore;
pub mod retention;
pub mod s3;
pub mod scan;
pub mod schedule;
pub mod server_copy;
pub mod shards;
pub mod verify;

/// An error with its causes, on one line (each cause once).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

/// Resolves once `lost` turns true: a lock (the Lease, the bucket lock) its renewer
/// gave up. A renewer that ended without saying so leaves it pending.
pub(crate) async fn until_lost(lost: &mut tokio::sync::watch::Receiver<bool>) {
    while !*lost.borrow() {
        if lost.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
