//! Retention policy (restic's semantics) and garbage collection of the blob pool.
//!
//! The decisions are pure functions, tested exhaustively; `apply` does the I/O under
//! the run's Lease: read and verify every kept listing first, then delete dropped
//! backups (manifest first), remove the folders of runs that died before their
//! manifest, and sweep unreferenced blobs. Damaged folders are never deleted, and
//! while one exists nothing is swept.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use tracing::{info, warn};

use crate::catalog::{self, Catalog, CatalogError};
use crate::object_lock::ObjectLock;

/// `KEEP_*` and `MIN_KEEP`. Zero disables a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: usize,
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
    pub yearly: usize,
    pub within: Option<Duration>,
    pub min_keep: usize,
}

impl Policy {
    /// No rule at all: keep everything (restic refuses such a policy; we keep and say so).
    pub fn keeps_everything(&self) -> bool {
        self.last == 0 && self.hourly == 0 && self.daily == 0 && self.weekly == 0 && self.monthly == 0 && self.yearly == 0 && self.within.is_none()
    }
}

/// Why a backup is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    Within,
    /// The newest complete backup, whatever the policy says.
    Newest,
    /// Kept to honour `MIN_KEEP`.
    MinKeep,
    /// The policy has no rule.
    NoPolicy,
    /// Dropped by the policy, but the bucket's Object Lock still protects it: a delete
    /// would only hide it. Retried on a later run.
    ObjectLock,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Reason::Last => "keep-last",
            Reason::Hourly => "keep-hourly",
            Reason::Daily => "keep-daily",
            Reason::Weekly => "keep-weekly",
            Reason::Monthly => "keep-monthly",
            Reason::Yearly => "keep-yearly",
            Reason::Within => "keep-within",
            Reason::Newest => "newest",
            Reason::MinKeep => "min-keep",
            Reason::NoPolicy => "no-policy",
            Reason::ObjectLock => "object-lock",
        };
        f.write_str(s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: String,
    pub time: DateTime<Utc>,
    pub reasons: Vec<Reason>,
}

impl Decision {
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// Decides, for complete backups only, which to keep. Returns the decisions newest
/// first. Deterministic: ties in time are broken by id.
pub fn plan(backups: &[(String, DateTime<Utc>)], policy: &Policy) -> Vec<Decision> {
    let mut sorted: Vec<(String, DateTime<Utc>)> = backups.to_vec();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    sorted.dedup_by(|a, b| a.0 == b.0);

    type Bucket = fn(&DateTime<Utc>) -> i64;
    let rules: [(usize, Reason, Bucket); 5] = [
        (policy.hourly, Reason::Hourly, |t| t.timestamp().div_euclid(3600)),
        (policy.daily, Reason::Daily, |t| i64::from(t.year()) * 1000 + i64::from(t.ordinal())),
        (policy.weekly, Reason::Weekly, |t| {
            let w = t.iso_week();
            i64::from(w.year()) * 100 + i64::from(w.week())
        }),
        (policy.monthly, Reason::Monthly, |t| i64::from(t.year()) * 100 + i64::from(t.month())),
        (policy.yearly, Reason::Yearly, |t| i64::from(t.year())),
    ];
    let mut remaining: Vec<usize> = rules.iter().map(|r| r.0).collect();
    let mut last_bucket: Vec<Option<i64>> = vec![None; rules.len()];
    let newest_time = sorted.first().map(|b| b.1);

    let mut decisions: Vec<Decision> = sorted
        .iter()
        .enumerate()
        .map(|(nr, (id, time))| {
            let mut reasons = Vec::new();
            if policy.keeps_everything() {
                reasons.push(Reason::NoPolicy);
            }
            if nr == 0 {
                reasons.push(Reason::Newest);
            }
            if nr < policy.last {
                reasons.push(Reason::Last);
            }
            if let (Some(within), Some(newest)) = (policy.within, newest_time) {
                let window = chrono::Duration::from_std(within).unwrap_or(chrono::Duration::MAX);
                if newest.signed_duration_since(*time) <= window {
                    reasons.push(Reason::Within);
                }
            }
            for (i, (_, reason, bucket)) in rules.iter().enumerate() {
                if remaining[i] == 0 {
                    continue;
                }
                let b = bucket(time);
                if last_bucket[i] != Some(b) {
                    last_bucket[i] = Some(b);
                    remaining[i] -= 1;
                    reasons.push(*reason);
                }
            }
            Decision { id: id.clone(), time: *time, reasons }
        })
        .collect();

    let mut kept = decisions.iter().filter(|d| d.keep()).count();
    for d in decisions.iter_mut() {
        if kept >= policy.min_keep {
            break;
        }
        if !d.keep() {
            d.reasons.push(Reason::MinKeep);
            kept += 1;
        }
    }
    for d in decisions.iter_mut() {
        d.reasons.sort();
    }
    decisions
}

/// A blob key reduced to 64 bits: the mark phase keeps one of these per referenced
/// blob instead of the key itself (8 bytes an object: 80 MB for 10 million). A
/// collision can only keep a blob that could have gone, never delete one that is
/// needed (10 million referenced and as many unreferenced: about one chance in 200,000 that one unneeded blob is kept).
pub fn blob_fingerprint(key: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// The fingerprints of every referenced blob, sorted: 8 bytes a blob, no per-entry
/// overhead (a hash set would take twice that and more).
#[derive(Debug, Default)]
pub struct Referenced(Vec<u64>);

impl Referenced {
    pub fn contains(&self, blob_key: &str) -> bool {
        self.0.binary_search(&blob_fingerprint(blob_key)).is_ok()
    }
}

impl FromIterator<u64> for Referenced {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        let mut all: Vec<u64> = iter.into_iter().collect();
        all.sort_unstable();
        all.dedup();
        Referenced(all)
    }
}

/// Whether the sweep deletes a pool blob: unreferenced by every kept manifest and
/// older than the grace period (a run that died mid-copy may still be writing it, and a
/// running backup may reference it in a manifest not yet written).
pub fn sweep_deletes(referenced: &Referenced, blob_key: &str, last_modified: DateTime<Utc>, now: DateTime<Utc>, grace: Duration) -> bool {
    let old_enough = now.signed_duration_since(last_modified) >= chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    old_enough && !referenced.contains(blob_key)
}

/// What `apply` did, for the log, the metrics and `retention --dry-run`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Outcome {
    pub retained: usize,
    pub pruned: usize,
    pub blobs_deleted: usize,
    pub bytes_freed: u64,
    pub leftovers_removed: usize,
    pub decisions: Vec<Decision>,
    /// Folders whose manifest or listing cannot be trusted: kept, reported, and while
    /// any exists the pool is not swept (what they reference is unknown).
    pub damaged: Vec<(String, String)>,
    /// Whether the sweep ran (false while a backup is damaged).
    pub swept: bool,
    /// What the bucket's Object Lock still protects, left for a later run: backups the
    /// policy drops (id, locked until), unfinished folders, unreferenced blobs.
    pub locked: Vec<(String, DateTime<Utc>)>,
    pub locked_leftovers: usize,
    pub locked_blobs: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(
        "TARGET_URL holds backups of more than one cluster ({}): retention would prune each other's backups and sweep their blobs; nothing was deleted. Give each cluster a prefix of its own",
        .0.join(", ")
    )]
    SharedPrefix(Vec<String>),
    #[error(
        "retention stopped: {what} failed in the backup bucket ({source}); nothing referenced by a kept backup was deleted, run `pachyderm-backup retention` again"
    )]
    Store {
        what: String,
        #[source]
        source: object_store::Error,
    },
}

/// Holds the backups the policy drops while the bucket's Object Lock protects them
/// (from their manifest, written last), and returns them with the lock's end.
pub fn hold_locked(decisions: &mut [Decision], finished: &[(String, DateTime<Utc>)], lock: &ObjectLock, now: DateTime<Utc>) -> Vec<(String, DateTime<Utc>)> {
    let mut held = Vec::new();
    for d in decisions.iter_mut().filter(|d| !d.keep()) {
        if let Some(until) = finished.iter().find(|(id, _)| *id == d.id).and_then(|(_, t)| lock.protects(*t, now)) {
            d.reasons.push(Reason::ObjectLock);
            held.push((d.id.clone(), until));
        }
    }
    held
}

/// The kept set, every kept listing read and verified, and the damaged folders.
struct Marked {
    decisions: Vec<Decision>,
    referenced: Referenced,
    damaged: Vec<(String, String)>,
    locked: Vec<(String, DateTime<Utc>)>,
}

/// Decides and marks before anything is deleted. A kept backup whose listing does not
/// verify is damaged: it leaves the plan (kept, never deleted) and the plan is made
/// again over the rest, so the newest backup that verifies is always kept.
async fn mark(catalog: &Catalog, entries: &[catalog::Entry], policy: &Policy, now: DateTime<Utc>) -> Result<Marked, RetentionError> {
    let mut damaged: Vec<(String, String)> = entries.iter().filter_map(|e| e.damaged.clone().map(|why| (e.id.clone(), why))).collect();
    // Sized once from the manifests: growing it by doubling would hold twice as much.
    let mut referenced: Vec<u64> = Vec::with_capacity(entries.iter().filter_map(|e| e.manifest.as_ref()).map(|m| m.objects.counts.count as usize).sum());
    let mut verified: HashSet<String> = HashSet::new();
    loop {
        let complete: Vec<(String, DateTime<Utc>)> = entries
            .iter()
            .filter(|e| !damaged.iter().any(|(id, _)| *id == e.id))
            .filter_map(|e| e.manifest.as_ref().map(|m| (e.id.clone(), m.started_at)))
            .collect();
        let mut decisions = plan(&complete, policy);
        let finished: Vec<(String, DateTime<Utc>)> = entries.iter().filter_map(|e| e.manifest.as_ref().map(|m| (e.id.clone(), m.finished_at))).collect();
        let locked = hold_locked(&mut decisions, &finished, catalog.object_lock(), now);
        let mut newly_damaged = false;
        let unverified: Vec<&Decision> = decisions.iter().filter(|d| d.keep() && !verified.contains(&d.id)).collect();
        for d in unverified {
            let Some(manifest) = entries.iter().find(|e| e.id == d.id).and_then(|e| e.manifest.as_ref()) else { continue };
            let before = referenced.len();
            match catalog.read_verified_listing(manifest, |r| referenced.push(blob_fingerprint(&r.blob))).await {
                Ok(()) => {
                    verified.insert(d.id.clone());
                }
                Err(e) if e.is_damage() => {
                    referenced.truncate(before);
                    warn!(folder = %catalog.folder(&d.id), problem = %e, "damaged backup: {}", catalog::DAMAGED_ADVICE);
                    damaged.push((d.id.clone(), e.to_string()));
                    newly_damaged = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !newly_damaged {
            return Ok(Marked { decisions, referenced: referenced.into_iter().collect(), damaged, locked });
        }
    }
}

/// Whether [`apply`] deletes what it decides to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Delete,
    /// `retention --dry-run`: decides and counts, deletes nothing.
    DryRun,
}

/// Applies the policy: decide and mark (every kept listing read and verified), then
/// delete dropped backups (manifest first), remove dead runs' folders, and sweep
/// unreferenced blobs. Nothing is deleted before everything kept has been read, and
/// nothing is swept while any folder is damaged. [`Mode::DryRun`] decides and counts only.
pub async fn apply(catalog: &Catalog, policy: &Policy, grace: Duration, now: DateTime<Utc>, mode: Mode) -> Result<Outcome, RetentionError> {
    let dry_run = mode == Mode::DryRun;
    let entries = catalog.entries().await?;
    let clusters: std::collections::BTreeSet<&str> = entries.iter().filter_map(|e| e.manifest.as_ref()).map(|m| m.cluster.as_str()).collect();
    if clusters.len() > 1 {
        return Err(RetentionError::SharedPrefix(clusters.into_iter().map(str::to_string).collect()));
    }
    if policy.keeps_everything() {
        info!("retention: no KEEP_* rule is set, every backup is kept");
    }
    let Marked { decisions, referenced, damaged, locked } = mark(catalog, &entries, policy, now).await?;
    let lock = catalog.object_lock();
    for (id, until) in &locked {
        info!(backup = %id, locked_until = %until, "retention: the policy drops this backup, but the bucket's Object Lock protects it until then; a later run deletes it");
    }
    let mut outcome = Outcome { retained: decisions.iter().filter(|d| d.keep()).count(), damaged, locked, ..Default::default() };
    for d in &decisions {
        let reasons: Vec<String> = d.reasons.iter().map(|r| r.to_string()).collect();
        info!(backup = %d.id, keep = d.keep(), reasons = %reasons.join(","), "retention decision");
    }
    let grace_chrono = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);

    for d in decisions.iter().filter(|d| !d.keep()) {
        outcome.pruned += 1;
        if !dry_run {
            catalog.delete_backup(&d.id).await?;
        }
    }
    // Folders without a manifest: dead runs. Young ones may belong to a run in progress.
    for e in entries.iter().filter(|e| e.is_partial()) {
        let young = e.newest_modified.is_some_and(|t| now.signed_duration_since(t) < grace_chrono);
        if young {
            continue;
        }
        if e.newest_modified.is_some_and(|t| lock.protects(t, now).is_some()) {
            outcome.locked_leftovers += 1;
            continue;
        }
        outcome.leftovers_removed += 1;
        if !dry_run {
            catalog.delete_backup(&e.id).await?;
        }
    }

    if !outcome.damaged.is_empty() {
        let folders: Vec<&str> = outcome.damaged.iter().map(|(id, _)| id.as_str()).collect();
        warn!(damaged = %folders.join(","), "the blob pool is not swept while a backup is damaged: what it references is unknown");
        outcome.decisions = decisions;
        return Ok(outcome);
    }
    outcome.swept = true;
    // Sweep, batched deletes through object_store's bulk API.
    let pool = catalog.pool();
    let mut locked_blobs = 0;
    let doomed = pool.list().map_err(|source| RetentionError::Store { what: "listing the blob pool".into(), source }).try_filter_map(|meta| {
        let mut delete = sweep_deletes(&referenced, meta.location.as_ref(), meta.last_modified, now, grace);
        if delete && lock.protects(meta.last_modified, now).is_some() {
            locked_blobs += 1;
            delete = false;
        }
        futures::future::ready(Ok(delete.then_some(meta)))
    });
    futures::pin_mut!(doomed);
    let mut batch = Vec::new();
    loop {
        let next = doomed.try_next().await?;
        let done = next.is_none();
        if let Some(meta) = next {
            outcome.blobs_deleted += 1;
            outcome.bytes_freed += meta.size;
            batch.push(meta.location);
        }
        if (batch.len() >= 1000 || done) && !batch.is_empty() {
            if !dry_run {
                pool.delete(std::mem::take(&mut batch)).await.map_err(|source| RetentionError::Store { what: "deleting unreferenced blobs".into(), source })?;
            }
            batch.clear();
        }
        if done {
            break;
        }
    }
    outcome.locked_blobs = locked_blobs;
    if outcome.locked_blobs > 0 {
        info!(blobs = outcome.locked_blobs, "retention: unreferenced blobs still under the bucket's Object Lock are left for a later run");
    }
    if outcome.blobs_deleted > 0 && dry_run {
        warn!(blobs = outcome.blobs_deleted, "dry run: nothing was deleted");
    }
    outcome.decisions = decisions;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("test time").with_timezone(&Utc)
    }

    fn kept(decisions: &[Decision]) -> Vec<String> {
        let mut k: Vec<String> = decisions.iter().filter(|d| d.keep()).map(|d| d.id.clone()).collect();
        k.sort();
        k
    }

    /// restic's documentation example: snapshots every day at 11:00 for two months
    /// (here Jan 1 – Feb 28 2016 style, shifted to 2026), `--keep-daily 7
    /// --keep-weekly 2 --keep-monthly 3` style assertions.
    fn daily_history(days: i64) -> Vec<(String, DateTime<Utc>)> {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 11, 0, 0).single().expect("valid");
        (0..days)
            .map(|d| {
                let time = start + chrono::Duration::days(d);
                (time.format("%Y%m%dT%H%M%SZ").to_string(), time)
            })
            .collect()
    }

    /// restic's documentation (doc/060_forget.rst): one backup every Sunday for 12
    /// weeks; `--keep-daily 4` keeps the last four Sundays.
    #[test]
    fn object_lock_holds_what_it_protects_and_nothing_else() {
        let backups = daily_history(5);
        let policy = Policy { last: 1, min_keep: 1, ..Default::default() };
        let now = backups.last().expect("history").1 + chrono::Duration::hours(1);
        let day = Duration::from_secs(86_400);
        let cases: &[(ObjectLock, usize)] = &[
            (ObjectLock::Off, 0),
            (ObjectLock::Unknown("403".into()), 0),
            (ObjectLock::On { mode: None, retention: None }, 0),
            // The newest is kept by the policy; the next two are 1 and 2 days old, within
            // 2 days of retention and a day's margin.
            (ObjectLock::On { mode: Some("GOVERNANCE".into()), retention: Some(2 * day) }, 2),
            (ObjectLock::On { mode: Some("COMPLIANCE".into()), retention: Some(30 * day) }, 4),
        ];
        for (lock, held) in cases {
            let mut decisions = plan(&backups, &policy);
            let locked = hold_locked(&mut decisions, &backups, lock, now);
            assert_eq!(locked.len(), *held, "{lock}");
            assert_eq!(decisions.iter().filter(|d| d.keep()).count(), 1 + held, "{lock}");
            for (id, until) in &locked {
                assert!(*until > now, "{lock}: {id} held past its lock");
                let d = decisions.iter().find(|d| d.id == *id).expect("decision");
                assert_eq!(d.reasons, vec![Reason::ObjectLock], "{lock}");
            }
        }
    }

    #[test]
    fn restic_documented_twelve_sundays_keep_daily_4() {
        let sundays: Vec<(String, DateTime<Utc>)> = [
            "2019-09-01",
            "2019-09-08",
            "2019-09-15",
            "2019-09-22",
            "2019-09-29",
            "2019-10-06",
            "2019-10-13",
            "2019-10-20",
            "2019-10-27",
            "2019-11-03",
            "2019-11-10",
            "2019-11-17",
        ]
        .iter()
        .map(|d| (d.to_string(), t(&format!("{d}T11:00:00Z"))))
        .collect();
        let d = plan(&sundays, &Policy { daily: 4, ..Default::default() });
        assert_eq!(kept(&d), vec!["2019-10-27", "2019-11-03", "2019-11-10", "2019-11-17"]);
        assert!(d.iter().filter(|x| x.keep()).all(|x| x.reasons.contains(&Reason::Daily)));
    }

    /// restic's documentation: a backup every day for 100 years with `--keep-daily 7
    /// --keep-weekly 5 --keep-monthly 12 --keep-yearly 75` keeps 7 dailies, 4 more
    /// end-of-week ones, 12 or 11 end-of-month ones and 75 or 74 end-of-year ones.
    #[test]
    fn restic_documented_hundred_years_of_dailies() {
        // A calendar for which the documentation's counts are exact: ending on a Sunday
        // (the 7 dailies are one ISO week; ending on a weekday they span two) whose four
        // previous Sundays are no month's last day (else a weekly is also a monthly), in
        // December (else the 12th monthly is the previous 31 December, also a yearly).
        let last = Utc.with_ymd_and_hms(2024, 12, 29, 2, 0, 0).single().expect("valid");
        assert_eq!(last.weekday(), chrono::Weekday::Sun);
        let days: Vec<(String, DateTime<Utc>)> = (0..36525).map(|i| (format!("{i:05}"), last - chrono::Duration::days(i))).collect();
        let p = Policy { daily: 7, weekly: 5, monthly: 12, yearly: 75, ..Default::default() };
        let d = plan(&days, &p);
        let count = |r: Reason| d.iter().filter(|x| x.reasons.contains(&r)).count();
        assert_eq!((count(Reason::Daily), count(Reason::Weekly), count(Reason::Monthly), count(Reason::Yearly)), (7, 5, 12, 75));
        // restic counts each rule's selections beyond those of the rules before it.
        let beyond = |r: Reason, before: &[Reason]| d.iter().filter(|x| x.reasons.contains(&r) && !before.iter().any(|b| x.reasons.contains(b))).count();
        assert_eq!(beyond(Reason::Weekly, &[Reason::Daily]), 4, "the 7 dailies already include one weekly");
        assert_eq!(beyond(Reason::Monthly, &[Reason::Daily, Reason::Weekly]), 11, "12 or 11: here the newest is also a monthly");
        assert_eq!(beyond(Reason::Yearly, &[Reason::Daily, Reason::Weekly, Reason::Monthly]), 74, "75 or 74: here the newest is also a yearly");
        assert_eq!(d.iter().filter(|x| x.keep()).count(), 7 + 4 + 11 + 74);
    }

    #[test]
    fn keep_daily_keeps_the_last_n_days() {
        let p = Policy { daily: 7, ..Default::default() };
        let d = plan(&daily_history(30), &p);
        assert_eq!(kept(&d), (24..=30).map(|day| format!("202601{day:02}T110000Z")).collect::<Vec<_>>());
    }

    #[test]
    fn keep_weekly_keeps_the_newest_of_each_iso_week() {
        // 2026-01-01 is a Thursday; ISO weeks start on Monday. Newest backups of the
        // last 3 weeks in a 30-day history ending Jan 30 (Friday): Jan 30, Jan 25 (Sun),
        // Jan 18 (Sun).
        let p = Policy { weekly: 3, ..Default::default() };
        let d = plan(&daily_history(30), &p);
        assert_eq!(kept(&d), vec!["20260118T110000Z", "20260125T110000Z", "20260130T110000Z"]);
    }

    #[test]
    fn keep_monthly_keeps_the_newest_of_each_month() {
        let p = Policy { monthly: 3, ..Default::default() };
        let d = plan(&daily_history(75), &p);
        // Jan 31, Feb 28, and the newest: Mar 16.
        assert_eq!(kept(&d), vec!["20260131T110000Z", "20260228T110000Z", "20260316T110000Z"]);
    }

    #[test]
    fn rules_combine_with_or_and_reasons_are_reported() {
        let p = Policy { last: 2, daily: 3, weekly: 1, ..Default::default() };
        let d = plan(&daily_history(10), &p);
        assert_eq!(kept(&d), vec!["20260108T110000Z", "20260109T110000Z", "20260110T110000Z"]);
        let newest = &d[0];
        assert_eq!(newest.reasons, vec![Reason::Last, Reason::Daily, Reason::Weekly, Reason::Newest]);
    }

    #[test]
    fn only_periods_with_backups_count() {
        // Backups on days 1, 2 and 20: keep-daily 3 keeps all three though they span 20 days.
        let h = daily_history(20);
        let sparse = vec![h[0].clone(), h[1].clone(), h[19].clone()];
        let d = plan(&sparse, &Policy { daily: 3, ..Default::default() });
        assert_eq!(kept(&d).len(), 3);
    }

    #[test]
    fn keep_within_is_relative_to_the_newest_backup() {
        let p = Policy { within: Some(Duration::from_secs(3 * 86400)), ..Default::default() };
        let d = plan(&daily_history(10), &p);
        assert_eq!(kept(&d), vec!["20260107T110000Z", "20260108T110000Z", "20260109T110000Z", "20260110T110000Z"]);
    }

    #[test]
    fn min_keep_is_a_floor_and_an_empty_policy_keeps_everything() {
        let d = plan(&daily_history(10), &Policy { last: 1, min_keep: 4, ..Default::default() });
        assert_eq!(kept(&d).len(), 4);
        assert!(d.iter().filter(|d| d.keep()).any(|d| d.reasons == vec![Reason::MinKeep]));
        let d = plan(&daily_history(10), &Policy::default());
        assert_eq!(kept(&d).len(), 10);
    }

    #[test]
    fn a_blob_inside_the_grace_period_survives_even_unreferenced() {
        let now = t("2026-11-21T02:00:00Z");
        let none = Referenced::default();
        assert!(!sweep_deletes(&none, "blobs/a@1", t("2026-11-20T03:00:00Z"), now, Duration::from_secs(86400)));
        assert!(sweep_deletes(&none, "blobs/a@1", t("2026-11-20T01:00:00Z"), now, Duration::from_secs(86400)));
        let referenced: Referenced = [blob_fingerprint("blobs/a@1")].into_iter().collect();
        assert!(!sweep_deletes(&referenced, "blobs/a@1", t("2020-01-01T00:00:00Z"), now, Duration::from_secs(86400)));
    }

    fn arb_history() -> impl Strategy<Value = Vec<(String, DateTime<Utc>)>> {
        proptest::collection::vec(0i64..(3 * 365 * 24 * 3600), 0..60).prop_map(|offsets| {
            let base = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).single().expect("valid");
            offsets.into_iter().enumerate().map(|(i, o)| (format!("b{i:03}"), base + chrono::Duration::seconds(o))).collect()
        })
    }

    fn arb_policy() -> impl Strategy<Value = Policy> {
        (0usize..4, 0usize..5, 0usize..10, 0usize..6, 0usize..8, 0usize..3, proptest::option::of(0u64..(90 * 86400)), 0usize..6).prop_map(
            |(last, hourly, daily, weekly, monthly, yearly, within, min_keep)| Policy {
                last,
                hourly,
                daily,
                weekly,
                monthly,
                yearly,
                within: within.map(Duration::from_secs),
                min_keep,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn plan_invariants(history in arb_history(), policy in arb_policy()) {
            let d = plan(&history, &policy);
            let ids: HashSet<&String> = history.iter().map(|b| &b.0).collect();
            prop_assert_eq!(d.len(), ids.len());
            if let Some(newest) = history.iter().max_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0))) {
                let decision = d.iter().find(|x| x.id == newest.0).expect("decided");
                prop_assert!(decision.keep(), "newest backup dropped");
            }
            let kept = d.iter().filter(|x| x.keep()).count();
            prop_assert!(kept >= policy.min_keep.min(ids.len()), "fewer than MIN_KEEP kept");
            // Every backup a rule selects on its own (without MIN_KEEP) is kept with MIN_KEEP.
            let without_floor = plan(&history, &Policy { min_keep: 0, ..policy.clone() });
            for x in without_floor.iter().filter(|x| x.keep()) {
                prop_assert!(d.iter().any(|y| y.id == x.id && y.keep()));
            }
            // keep-last N: the N newest are kept.
            for x in d.iter().take(policy.last) {
                prop_assert!(x.keep());
            }
            // Deterministic, whatever the input order.
            let mut reversed = history.clone();
            reversed.reverse();
            prop_assert_eq!(plan(&reversed, &policy), d);
        }

        #[test]
        fn sweep_never_deletes_a_referenced_blob(keys in proptest::collection::vec("[a-z0-9/._~-]{1,40}", 1..50), age in 0u64..(10 * 86400), grace in 0u64..(3 * 86400)) {
            let now = Utc.with_ymd_and_hms(2026, 11, 21, 2, 0, 0).single().expect("valid");
            let referenced: Referenced = keys.iter().step_by(2).map(|k| blob_fingerprint(k)).collect();
            for (i, k) in keys.iter().enumerate() {
                let modified = now - chrono::Duration::seconds(age as i64);
                let deletes = sweep_deletes(&referenced, k, modified, now, Duration::from_secs(grace));
                if i % 2 == 0 {
                    prop_assert!(!deletes, "referenced blob {} would be deleted", k);
                }
                if age < grace {
                    prop_assert!(!deletes, "young blob {} would be deleted", k);
                }
            }
        }
    }
}
