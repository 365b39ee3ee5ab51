//! S3 Object Lock on the backup bucket: reading the bucket's configuration, and what a
//! lock still protects.
//!
//! A locked bucket is versioned, and a DELETE there never fails: it only stacks a
//! delete marker on a version the lock keeps anyway. Retention would "delete" a backup
//! that stays stored and billed, and hide it from `list` and `restore`. So retention
//! must know the bucket's default retention and leave alone what it still protects.
//! object_store does not read bucket configurations: this module sends one GET signed
//! with object_store's own signer ([`crate::s3::S3Endpoint`]).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::aws::AmazonS3ConfigKey;
use object_store::client::{HttpRequest, HttpRequestBody};
use serde::Deserialize;

use crate::config::StoreSettings;
use crate::s3::{Payload, S3Endpoint, client_options, s3_builder};

/// What Object Lock protects in a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectLock {
    /// No Object Lock (or not an S3 bucket).
    Off,
    /// Object Lock is on; `retention` is the bucket's default retention, when it has one
    /// (without one, new objects are not locked).
    On { mode: Option<String>, retention: Option<Duration> },
    /// The configuration could not be read (the reason): writes still carry the headers
    /// a locked bucket requires, but retention cannot tell what is locked.
    Unknown(String),
}

impl ObjectLock {
    /// Whether writes must carry a checksum header (S3 refuses a PUT to a bucket with
    /// default retention without Content-MD5 or an x-amz-checksum header).
    pub fn needs_checksums(&self) -> bool {
        !matches!(self, ObjectLock::Off)
    }

    /// Until when the default retention protects an object written at `written`, if it
    /// still does at `now`, with a day's margin: `written` may be our clock's (a
    /// manifest's `finished_at`, set just before it is written) where S3 counts from its
    /// own, and deleting a day late is harmless. A retention too long to add is forever.
    pub fn protects(&self, written: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let ObjectLock::On { retention: Some(period), .. } = self else { return None };
        let until =
            chrono::Duration::from_std(period.saturating_add(MARGIN)).ok().and_then(|p| written.checked_add_signed(p)).unwrap_or(DateTime::<Utc>::MAX_UTC);
        (until > now).then_some(until)
    }
}

impl std::fmt::Display for ObjectLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectLock::Off => write!(f, "off"),
            ObjectLock::On { mode, retention: Some(p) } => {
                write!(f, "on, default retention {} {}", mode.as_deref().unwrap_or("?"), humantime::format_duration(*p))
            }
            ObjectLock::On { retention: None, .. } => write!(f, "on, no default retention"),
            ObjectLock::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read the Object Lock configuration of {variable} ({url}): {detail}")]
    Read { variable: &'static str, url: String, detail: String },
    /// The endpoint's certificate is not trusted: no retry can help, so this is said at
    /// once, naming the variable that fixes it (object_store's own error, after its
    /// retries, names none).
    #[error(
        "{variable} ({url}): the bucket's endpoint presents a TLS certificate that is not trusted ({detail}); if it is signed by a private CA, give that CA's certificate as a PEM file in {ca_variable}{given}"
    )]
    Untrusted { variable: &'static str, url: String, detail: String, ca_variable: String, given: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Configuration {
    object_lock_enabled: Option<String>,
    rule: Option<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Rule {
    default_retention: Option<DefaultRetention>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DefaultRetention {
    mode: Option<String>,
    days: Option<u64>,
    years: Option<u64>,
}

/// Added to every retention period (see `ObjectLock::protects`).
const MARGIN: Duration = Duration::from_secs(86_400);

/// A year of retention, counted long: waiting a day too long to delete is harmless,
/// deleting a day early only stacks a delete marker on a locked version.
const YEAR: Duration = Duration::from_secs(366 * 86_400);

/// Reads a `GetObjectLockConfiguration` response body.
pub fn parse_configuration(xml: &str) -> Result<ObjectLock, String> {
    let c: Configuration = quick_xml::de::from_str(xml).map_err(|e| format!("unreadable ObjectLockConfiguration: {e}"))?;
    if c.object_lock_enabled.as_deref() != Some("Enabled") {
        return Ok(ObjectLock::Off);
    }
    let Some(d) = c.rule.and_then(|r| r.default_retention) else { return Ok(ObjectLock::On { mode: None, retention: None }) };
    let retention = match (d.days, d.years) {
        (Some(days), _) => Some(Duration::from_secs(days.saturating_mul(86_400))),
        (None, Some(years)) => Some(YEAR.saturating_mul(u32::try_from(years).unwrap_or(u32::MAX))),
        (None, None) => None,
    };
    Ok(ObjectLock::On { mode: d.mode, retention })
}

/// The bucket's Object Lock, read once per command. Only S3 buckets have one here
/// (GCS retention policies and Azure immutability are not read).
pub async fn detect(settings: &StoreSettings) -> Result<ObjectLock, LockError> {
    if !matches!(settings.url.scheme(), "s3" | "s3a") {
        return Ok(ObjectLock::Off);
    }
    let err = |detail: String| LockError::Read { variable: settings.variable, url: settings.url.to_string(), detail };
    let endpoint = S3Endpoint::new(settings).map_err(err)?;
    let mut request: HttpRequest = http::Request::builder()
        .method(http::Method::GET)
        .uri(format!("{}/?object-lock", endpoint.base))
        .body(HttpRequestBody::empty())
        .map_err(|e| err(format!("cannot build the request: {e}")))?;
    endpoint.sign(&mut request, Payload::Hashed).await.map_err(err)?;
    let client = endpoint.client;
    // A bucket that cannot be reached is the preflight probe's to report, in
    // object_store's words and with its retries.
    let unreached = |e: object_store::client::HttpError| {
        tracing::debug!(error = %e, "the Object Lock configuration could not be read");
        ObjectLock::Off
    };
    let response = match client.execute(request).await {
        Ok(r) => r,
        Err(e) => {
            let detail = crate::error_chain(&e);
            // rustls' words for a certificate it does not accept.
            if detail.contains("invalid peer certificate") {
                let side = settings.variable.strip_suffix("URL").unwrap_or_default();
                let given = match &settings.ca_bundle {
                    Some(b) => format!(" (now {}, from {})", b.path.display(), b.variable),
                    None => String::new(),
                };
                return Err(LockError::Untrusted {
                    variable: settings.variable,
                    url: settings.url.to_string(),
                    detail,
                    ca_variable: format!("{side}AWS_CA_BUNDLE"),
                    given,
                });
            }
            return Ok(unreached(e));
        }
    };
    let status = response.status();
    let body = match response.into_body().bytes().await {
        Ok(b) => b,
        Err(e) => return Ok(unreached(e)),
    };
    let text = String::from_utf8_lossy(&body);
    match status.as_u16() {
        200 => parse_configuration(&text).map_err(err),
        403 => Ok(ObjectLock::Unknown("s3:GetBucketObjectLockConfiguration is not granted".into())),
        // No configuration (404), a store without Object Lock (400, 405, 501), or a
        // bucket that is missing or elsewhere: the preflight's probe says which, in
        // object_store's words; a locked bucket refuses the probe's write.
        code => {
            tracing::debug!(code, answer = %text.chars().take(300).collect::<String>(), "no Object Lock configuration read");
            Ok(ObjectLock::Off)
        }
    }
}

/// The bucket opened for a locked bucket's rules: SHA-256 checksums on every upload
/// (unless another algorithm is chosen), with the header naming the algorithm that S3
/// and moto look for. Rooted at the URL's prefix, like [`crate::objects::open`].
pub fn open_locked(settings: &StoreSettings) -> Result<std::sync::Arc<dyn object_store::ObjectStore>, String> {
    let chosen = settings.options.iter().find(|(k, _)| AmazonS3ConfigKey::from_str(k).is_ok_and(|key| key == AmazonS3ConfigKey::Checksum));
    let algorithm = chosen.map(|(_, v)| v.expose().to_ascii_uppercase()).unwrap_or_else(|| "SHA256".into());
    let mut headers = http::HeaderMap::new();
    headers.insert("x-amz-sdk-checksum-algorithm", http::HeaderValue::from_str(&algorithm).map_err(|e| e.to_string())?);
    let mut builder = s3_builder(settings).with_client_options(client_options(settings).with_default_headers(headers));
    if chosen.is_none() {
        builder = builder.with_checksum_algorithm(object_store::aws::Checksum::SHA256);
    }
    let store = builder.build().map_err(|e| e.to_string())?;
    let prefix = object_store::path::Path::from_url_path(settings.url.path()).map_err(|e| e.to_string())?;
    Ok(if prefix.as_ref().is_empty() { std::sync::Arc::new(store) } else { std::sync::Arc::new(object_store::prefix::PrefixStore::new(store, prefix)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_read() {
        let xml = |inner: &str| format!("<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{inner}</ObjectLockConfiguration>");
        let cases: &[(&str, ObjectLock)] = &[
            ("", ObjectLock::Off),
            ("<ObjectLockEnabled>Enabled</ObjectLockEnabled>", ObjectLock::On { mode: None, retention: None }),
            (
                "<ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>GOVERNANCE</Mode><Days>30</Days></DefaultRetention></Rule>",
                ObjectLock::On { mode: Some("GOVERNANCE".into()), retention: Some(Duration::from_secs(30 * 86_400)) },
            ),
            (
                "<ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>COMPLIANCE</Mode><Years>1</Years></DefaultRetention></Rule>",
                ObjectLock::On { mode: Some("COMPLIANCE".into()), retention: Some(YEAR) },
            ),
        ];
        for (inner, want) in cases {
            assert_eq!(parse_configuration(&xml(inner)).as_ref(), Ok(want), "{inner}");
        }
        assert!(parse_configuration("not xml <").is_err());
    }

    #[test]
    fn protection_ends_with_the_default_retention() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let lock = ObjectLock::On { mode: Some("GOVERNANCE".into()), retention: Some(Duration::from_secs(86_400)) };
        let written = t("2026-12-01T02:00:00Z");
        // A day of retention, and a day's margin.
        assert_eq!(lock.protects(written, t("2026-12-03T01:59:59Z")), Some(t("2026-12-03T02:00:00Z")));
        assert_eq!(lock.protects(written, t("2026-12-03T02:00:00Z")), None);
        // A retention no date can hold (a server's answer) is forever, never a panic.
        let forever = parse_configuration("<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>COMPLIANCE</Mode><Years>4294967295</Years></DefaultRetention></Rule></ObjectLockConfiguration>").expect("parsed");
        assert_eq!(forever.protects(written, t("2999-01-01T00:00:00Z")), Some(DateTime::<Utc>::MAX_UTC));
        for unlocked in [ObjectLock::Off, ObjectLock::On { mode: None, retention: None }, ObjectLock::Unknown("x".into())] {
            assert_eq!(unlocked.protects(written, written), None, "{unlocked}");
        }
    }
}
