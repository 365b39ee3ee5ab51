//! One progress line at a steady interval during long work: objects and bytes done
//! of what is known, rate, ETA.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::info;

#[derive(Debug, Default)]
pub struct Counters {
    pub total_objects: AtomicU64,
    pub total_bytes: AtomicU64,
    /// Set once the totals are final (the listing is complete).
    pub totals_known: AtomicBool,
    pub done_objects: AtomicU64,
    pub done_bytes: AtomicU64,
}

/// Progress of one phase; dropping it stops its reporter.
pub struct Progress {
    pub counters: Arc<Counters>,
    reporter: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Reports `task` every `interval`, inside the caller's span (the run's backup id
    /// and phase are on every progress line).
    pub fn start(task: &'static str, interval: Duration) -> Self {
        let counters = Arc::new(Counters::default());
        let shared = counters.clone();
        let started = Instant::now();
        let reporter = tokio::spawn(tracing::Instrument::in_current_span(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                report(task, &shared, started.elapsed());
            }
        }));
        Progress { counters, reporter }
    }

    pub fn add_total(&self, objects: u64, bytes: u64) {
        self.counters.total_objects.fetch_add(objects, Ordering::Relaxed);
        self.counters.total_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn totals_known(&self) {
        self.counters.totals_known.store(true, Ordering::Relaxed);
    }

    pub fn add_done(&self, objects: u64, bytes: u64) {
        self.counters.done_objects.fetch_add(objects, Ordering::Relaxed);
        self.counters.done_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.reporter.abort();
    }
}

fn report(task: &str, c: &Counters, elapsed: Duration) {
    let done_bytes = c.done_bytes.load(Ordering::Relaxed);
    let total_bytes = c.total_bytes.load(Ordering::Relaxed);
    let rate = done_bytes as f64 / elapsed.as_secs_f64().max(0.001);
    let eta = if c.totals_known.load(Ordering::Relaxed) && rate > 0.0 {
        format!("{}s", ((total_bytes.saturating_sub(done_bytes)) as f64 / rate).round())
    } else {
        "unknown (still listing)".to_string()
    };
    info!(
        progress = task,
        objects_done = c.done_objects.load(Ordering::Relaxed),
        objects_total = c.total_objects.load(Ordering::Relaxed),
        bytes_done = done_bytes,
        bytes_total = total_bytes,
        rate_bytes_per_second = rate.round() as u64,
        eta = %eta,
        "progress: {} of {} objects, {} of {} ({}/s), ETA {}",
        c.done_objects.load(Ordering::Relaxed),
        c.total_objects.load(Ordering::Relaxed),
        human_bytes(done_bytes),
        human_bytes(total_bytes),
        human_bytes(rate as u64),
        eta
    );
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_are_human() {
        assert_eq!(super::human_bytes(12), "12 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
