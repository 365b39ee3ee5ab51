//! The run's Lease: runs are exclusive, so each holds a coordination.k8s.io Lease,
//! renews it in the background and gives up once it cannot renew before another run
//! could take it over.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::Api;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Cluster, ClusterError, api_err, is_status, post_params};

/// The state of a Lease at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    Free,
    Mine,
    Held { holder: String, until: DateTime<Utc> },
}

fn micro_time(t: DateTime<Utc>) -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::from_microsecond(t.timestamp_micros()).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH))
}

fn from_micro_time(t: &MicroTime) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.0.as_microsecond()).unwrap_or_default()
}

pub fn lease_state(spec: Option<&LeaseSpec>, me: &str, now: DateTime<Utc>) -> LeaseState {
    let Some(spec) = spec else { return LeaseState::Free };
    let Some(holder) = spec.holder_identity.as_deref().filter(|h| !h.is_empty()) else { return LeaseState::Free };
    if holder == me {
        return LeaseState::Mine;
    }
    let since = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(from_micro_time);
    let duration = chrono::Duration::seconds(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    match since {
        Some(t) if t + duration > now => LeaseState::Held { holder: holder.to_string(), until: t + duration },
        _ => LeaseState::Free,
    }
}

impl Cluster {
    /// Takes the run's Lease, or says who holds it. Renewed in the background until the
    /// guard is released; `lost` turns true if a renewal fails.
    pub async fn acquire_lease(&self, holder: &str) -> Result<LeaseGuard, ClusterError> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = self.settings.lease_name.clone();
        let seconds = self.settings.lease_duration.as_secs().max(3) as i32;
        let now = Utc::now();
        let spec = LeaseSpec {
            holder_identity: Some(holder.to_string()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(micro_time(now)),
            renew_time: Some(micro_time(now)),
            ..Default::default()
        };
        match api.get_opt(&name).await.map_err(api_err(format!("reading Lease {name}")))? {
            None => {
                let lease = Lease { metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() }, spec: Some(spec) };
                match api.create(&post_params(), &lease).await {
                    Ok(_) => {}
                    Err(e) if is_status(&e, 409) => return Err(self.held_by(&api, &name, holder).await),
                    Err(e) => return Err(api_err(format!("creating Lease {name}"))(e)),
                }
            }
            Some(existing) => match lease_state(existing.spec.as_ref(), holder, now) {
                LeaseState::Held { holder, until } => return Err(ClusterError::LeaseHeld { name, holder, until }),
                LeaseState::Free | LeaseState::Mine => {
                    if let Some(old) = existing.spec.as_ref().and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty()) {
                        warn!(lease = %name, previous_holder = %old, "taking over an expired Lease: its run died");
                    }
                    let mut lease = existing.clone();
                    let transitions = existing.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0);
                    lease.spec = Some(LeaseSpec { lease_transitions: Some(transitions + 1), ..spec });
                    match api.replace(&name, &post_params(), &lease).await {
                        Ok(_) => {}
                        Err(e) if is_status(&e, 409) => return Err(self.held_by(&api, &name, holder).await),
                        Err(e) => return Err(api_err(format!("taking over Lease {name}"))(e)),
                    }
                }
            },
        }
        info!(lease = %name, holder, "lease acquired");
        let (lost_tx, lost_rx) = watch::channel(false);
        let renew_api = api.clone();
        let renew_name = name.clone();
        let me = holder.to_string();
        let renewer = tokio::spawn(tracing::Instrument::in_current_span(async move {
            let duration = Duration::from_secs(seconds as u64);
            let every = Duration::from_secs((seconds / 3).max(1) as u64);
            let mut renewed = tokio::time::Instant::now();
            let mut wait = every;
            let mut failing = false;
            loop {
                tokio::time::sleep(wait).await;
                // An attempt that hangs (a connection silently dropped) must not outlive
                // the renew deadline: past it, the Lease is given up, not assumed held.
                let left = (duration * 2 / 3).saturating_sub(renewed.elapsed()).max(Duration::from_millis(100));
                let attempt = match tokio::time::timeout(left, renew(&renew_api, &renew_name, &me)).await {
                    Ok(r) => r,
                    Err(_) => Err(ClusterError::Timeout { what: "renewing the Lease".into(), timeout: left }),
                };
                match attempt {
                    Ok(()) => {
                        renewed = tokio::time::Instant::now();
                        wait = every;
                        failing = false;
                    }
                    Err(e) => match renewal_retry(renewed.elapsed(), duration, failing.then_some(wait), every) {
                        Some(next) if !matches!(e, ClusterError::LeaseLost(_)) => {
                            warn!(lease = %renew_name, error = %e, retry_in = %humantime::format_duration(next), "could not renew the Lease; retrying while it is still valid");
                            wait = next;
                            failing = true;
                        }
                        _ => {
                            warn!(lease = %renew_name, error = %e, "could not renew the Lease");
                            let _ = lost_tx.send(true);
                            return;
                        }
                    },
                }
            }
        }));
        Ok(LeaseGuard { api, name, holder: holder.to_string(), renewer, lost: lost_rx })
    }

    async fn held_by(&self, api: &Api<Lease>, name: &str, me: &str) -> ClusterError {
        match api.get_opt(name).await {
            Ok(Some(l)) => match lease_state(l.spec.as_ref(), me, Utc::now()) {
                LeaseState::Held { holder, until } => ClusterError::LeaseHeld { name: name.into(), holder, until },
                _ => ClusterError::LeaseHeld { name: name.into(), holder: "unknown (it changed while we took it)".into(), until: Utc::now() },
            },
            _ => ClusterError::LeaseHeld { name: name.into(), holder: "unknown".into(), until: Utc::now() },
        }
    }

    /// The Lease's state as seen by someone who does not hold it (for `resume --if-stale`).
    pub async fn lease_holder(&self) -> Result<LeaseState, ClusterError> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let lease = api.get_opt(&self.settings.lease_name).await.map_err(api_err("reading the Lease"))?;
        Ok(lease_state(lease.and_then(|l| l.spec).as_ref(), "", Utc::now()))
    }
}

/// After a failed renewal, `since` the last good one: when to try again, or `None` when
/// the Lease must be given up. As client-go's leader election: retry (1 s after the
/// first failure, then doubling from `previous`, the wait before this attempt, never
/// slower than the renewal period) until the renew deadline, two thirds of the Lease's
/// duration, so a holder stops before another could take the Lease.
pub fn renewal_retry(since: Duration, duration: Duration, previous: Option<Duration>, every: Duration) -> Option<Duration> {
    let next = previous.map_or(Duration::from_secs(1), |p| (p * 2).min(every));
    let deadline = duration * 2 / 3;
    (since < deadline).then(|| next.min(deadline - since))
}

async fn renew(api: &Api<Lease>, name: &str, me: &str) -> Result<(), ClusterError> {
    let mut lease = api.get(name).await.map_err(api_err("reading the Lease to renew it"))?;
    if lease_state(lease.spec.as_ref(), me, Utc::now()) != LeaseState::Mine {
        return Err(ClusterError::LeaseLost(name.to_string()));
    }
    if let Some(spec) = lease.spec.as_mut() {
        spec.renew_time = Some(micro_time(Utc::now()));
    }
    api.replace(name, &post_params(), &lease).await.map_err(api_err("renewing the Lease"))?;
    Ok(())
}

/// Holds the Lease; `release` gives it up at the end of the run.
pub struct LeaseGuard {
    api: Api<Lease>,
    name: String,
    holder: String,
    renewer: tokio::task::JoinHandle<()>,
    pub lost: watch::Receiver<bool>,
}

impl LeaseGuard {
    /// Resolves when the Lease is lost.
    pub async fn lost(&mut self) {
        crate::until_lost(&mut self.lost).await
    }

    pub async fn release(self) {
        self.renewer.abort();
        let result: Result<(), kube::Error> = async {
            let mut lease = self.api.get(&self.name).await?;
            if lease_state(lease.spec.as_ref(), &self.holder, Utc::now()) == LeaseState::Mine {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = None;
                    spec.renew_time = None;
                }
                self.api.replace(&self.name, &post_params(), &lease).await?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => info!(lease = %self.name, "lease released"),
            Err(e) => warn!(lease = %self.name, error = %e, "could not release the Lease; it expires by itself"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_renewal_is_retried_until_the_renew_deadline() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // Lease of 15 s, renewed every 5 s: the deadline is 10 s after the last renewal.
        let cases: &[(Duration, Option<Duration>, Option<Duration>)] = &[
            (s(5), None, Some(s(1))),       // the first failure: 1 s
            (s(6), Some(s(1)), Some(s(2))), // then backing off
            (s(8), Some(s(2)), Some(s(2))), // never past the deadline
            (ms(9_500), Some(s(2)), Some(ms(500))),
            (s(10), Some(s(2)), None), // the deadline: given up, 5 s of validity left
            (s(30), Some(s(4)), None),
        ];
        for (since, previous, want) in cases {
            assert_eq!(renewal_retry(*since, s(15), *previous, s(5)), *want, "since {since:?}, previous {previous:?}");
        }
        // Backoff never exceeds the renewal period.
        assert_eq!(renewal_retry(s(1), s(600), Some(s(150)), s(200)), Some(s(200)));
        // Once at the renewal period it stays there, no sawtooth back to 1 s.
        assert_eq!(renewal_retry(s(10), s(600), Some(s(200)), s(200)), Some(s(200)));
    }

    fn spec(holder: &str, renewed_secs_ago: i64, duration: i32, now: DateTime<Utc>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(micro_time(now - chrono::Duration::seconds(renewed_secs_ago))),
            lease_duration_seconds: Some(duration),
            ..Default::default()
        }
    }

    #[test]
    fn lease_states() {
        let now = Utc::now();
        assert_eq!(lease_state(None, "me", now), LeaseState::Free);
        assert_eq!(lease_state(Some(&spec("me", 1, 60, now)), "me", now), LeaseState::Mine);
        assert!(matches!(lease_state(Some(&spec("other", 10, 60, now)), "me", now), LeaseState::Held { .. }));
        assert_eq!(lease_state(Some(&spec("other", 61, 60, now)), "me", now), LeaseState::Free);
        assert_eq!(lease_state(Some(&LeaseSpec { holder_identity: Some(String::new()), ..Default::default() }), "me", now), LeaseState::Free);
    }
}
