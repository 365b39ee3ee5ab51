//! pachyderm-backup: one pause → backup → resume cycle of a Pachyderm cluster per run,
//! with retention, restore, verification and metrics. `docs/ARCHITECTURE.md` maps
//! the modules; `docs/FORMAT.md` specifies the backup bucket's layout.

pub mod catalog;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod cycle;
pub mod database;
pub mod demo;
pub mod metrics;
pub mod object_lock;
pub mod objects;
pub mod progress;
pub mod restore;
pub mod retention;
pub mod schedule;
