//! Server-side copy: the source's objects copied into the pool by the store itself
//! (S3 CopyObject, and UploadPartCopy above 5 GiB; Azure Copy Blob From URL:
//! [`crate::azure`]; GCS rewrite: [`crate::gcs`]), so their bytes never cross this
//! process's network, when one set of credentials reaches both buckets on one service.
//!
//! object_store copies only within one bucket, so the S3 requests are signed here with
//! object_store's own credentials, signer and client options ([`S3Endpoint`]). The
//! store is asked for each copy's SHA-256 (`x-amz-checksum-algorithm: SHA256`); a
//! copy without one (Azure, GCS, s3s-fs, some S3-compatible servers, any copy in parts)
//! has its record marked pending, with the copy's ETag, until `verify --deep` reads the
//! blob once. A store that refuses the copy, or fails it, has that object streamed
//! instead.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreScheme;
use object_store::aws::AmazonS3ConfigKey;
use object_store::azure::AzureConfigKey;
use object_store::client::{HttpRequest, HttpRequestBody};
use object_store::gcp::GoogleConfigKey;
use serde::Deserialize;
use tracing::{info, warn};

use crate::config::{CopyMode, StoreSettings};
use crate::s3::{ErrorAnswer, Payload, S3Endpoint, encode_key, encryption_headers, under};

/// CopyObject's limit: larger objects are copied in parts (UploadPartCopy), which
/// gives no full-object SHA-256 (Pachyderm's chunks are at most 20 MB).
pub const MAX_SERVER_COPY: u64 = 5 * 1024 * 1024 * 1024;

/// The smallest part of a copy in parts; S3 allows 10,000 parts of at most 5 GiB.
const COPY_PART: u64 = 512 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;

/// Parts copied at once for one object.
const PARTS_AT_ONCE: usize = 4;

/// The part size of a copy in parts of an object of `size`: 512 MiB, or more for an
/// object of more than 10,000 of those (S3's largest, 5 TiB, takes parts of 525 MiB).
pub fn copy_part_size(size: u64) -> u64 {
    COPY_PART.max(size.div_ceil(MAX_PARTS).next_multiple_of(1024 * 1024))
}

/// The byte ranges (first, last, inclusive: S3's `x-amz-copy-source-range`) of the
/// parts of `size` bytes copied `part` at a time.
pub fn copy_parts(size: u64, part: u64) -> Vec<(u64, u64)> {
    (0..size.div_ceil(part)).map(|i| (i * part, ((i + 1) * part).min(size) - 1)).collect()
}

/// How the objects of a run reach the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Server,
    /// Streamed through this process, and why.
    Stream(String),
}

/// Options that shape the writes to one bucket, not who reads or where: they may
/// differ between the source and the pool of one account.
const WRITE_SIDE: &[&str] = &[
    "aws_checksum_algorithm",
    "aws_conditional_put",
    "aws_copy_if_not_exists",
    "aws_disable_tagging",
    "aws_disable_bulk_delete",
    "aws_unsigned_payload",
    "aws_server_side_encryption",
    "aws_sse_kms_key_id",
    "aws_sse_bucket_key_enabled",
];

const SSE_C: &str = "aws_sse_customer_key_base64";

/// The services that copy server-side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    S3,
    Azure,
    Gcs,
}

impl Service {
    fn of(settings: &StoreSettings) -> Option<Service> {
        match ObjectStoreScheme::parse(&settings.url).ok()?.0 {
            ObjectStoreScheme::AmazonS3 => Some(Service::S3),
            ObjectStoreScheme::MicrosoftAzure => Some(Service::Azure),
            ObjectStoreScheme::GoogleCloudStorage => Some(Service::Gcs),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Service::S3 => "an S3 bucket",
            Service::Azure => "an Azure container",
            Service::Gcs => "a GCS bucket",
        }
    }
}

/// A bucket's identity on its service: its options by object_store's canonical name
/// (credentials, region, endpoint, account…), without the client's, the bucket's name
/// and the write-side ones.
fn identity(settings: &StoreSettings, service: Service) -> BTreeMap<String, &str> {
    settings
        .options
        .iter()
        .filter_map(|(k, v)| match service {
            Service::S3 => match AmazonS3ConfigKey::from_str(k) {
                Ok(AmazonS3ConfigKey::Client(_)) | Ok(AmazonS3ConfigKey::Bucket) | Err(_) => None,
                Ok(key) => Some((key.as_ref().to_string(), v.expose())),
            },
            Service::Azure => match AzureConfigKey::from_str(k) {
                Ok(AzureConfigKey::Client(_)) | Ok(AzureConfigKey::ContainerName) | Err(_) => None,
                Ok(key) => Some((key.as_ref().to_string(), v.expose())),
            },
            Service::Gcs => match GoogleConfigKey::from_str(k) {
                Ok(GoogleConfigKey::Client(_)) | Ok(GoogleConfigKey::Bucket) | Err(_) => None,
                Ok(key) => Some((key.as_ref().to_string(), v.expose())),
            },
        })
        .filter(|(k, _)| !WRITE_SIDE.contains(&k.as_str()))
        .collect()
}

/// Whether the run copies server-side (pure). `auto`: when both buckets are S3's, both
/// Azure's or both GCS', with the same identity (endpoint, account, credentials: the pool's
/// credentials must read the source); `server`: whenever both are on one such service;
/// never with SSE-C, whose copies need the source's key sent along.
pub fn route(mode: CopyMode, source: &StoreSettings, target: &StoreSettings) -> Route {
    if mode == CopyMode::Stream {
        return Route::Stream("COPY_MODE=stream".into());
    }
    let mut services = Vec::new();
    for s in [source, target] {
        let Some(service) = Service::of(s) else {
            return Route::Stream(format!("{} is not an S3 bucket (s3://), an Azure container (az://) or a GCS bucket (gs://)", s.variable));
        };
        if identity(s, service).contains_key(SSE_C) {
            return Route::Stream(format!("{} is encrypted with SSE-C", s.variable));
        }
        services.push(service);
    }
    let service = services[0];
    if services[1] != service {
        return Route::Stream(format!(
            "{} is {} and {} {}: one service copies server-side",
            source.variable,
            service.name(),
            target.variable,
            services[1].name()
        ));
    }
    if mode == CopyMode::Server {
        return Route::Server;
    }
    let (a, b) = (identity(source, service), identity(target, service));
    let differing: Vec<&str> =
        a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).map(String::as_str).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    if differing.is_empty() {
        Route::Server
    } else {
        Route::Stream(format!(
            "{} and {} differ in {} (one set of credentials on one endpoint copies server-side)",
            source.variable,
            target.variable,
            differing.join(", ")
        ))
    }
}

/// Why an object is streamed after all.
#[derive(Debug)]
pub enum Fallback {
    /// The store will not copy server-side at all (NotImplemented): the rest of the run
    /// streams.
    Unsupported(String),
    /// The store refused this copy (AccessDenied: the pool's credentials cannot read
    /// the source, a KMS key not granted…).
    Refused(String),
    /// The copy failed on the way, or its result does not match the listing: streaming
    /// checks the bytes themselves.
    Failed(String),
}

/// What a server-side copy made.
#[derive(Debug)]
pub enum Copied {
    Done {
        /// The store's SHA-256 of the copy, in hex; None: the store gave none.
        sha256: Option<String>,
        /// The copy's ETag, as the answer gives it (quotes trimmed).
        etag: Option<String>,
    },
    /// The source has no such object (S3's NoSuchKey).
    Missing,
}

#[derive(Deserialize)]
struct CopyObjectResult {
    #[serde(rename = "ChecksumSHA256")]
    checksum_sha256: Option<String>,
    #[serde(rename = "ETag")]
    etag: Option<String>,
}

/// The copy's ETag in a CopyObject answer.
pub fn copied_etag(xml: &str) -> Option<String> {
    let result: CopyObjectResult = quick_xml::de::from_str(xml).ok()?;
    result.etag.map(|e| e.trim().trim_matches('"').to_string())
}

/// The SHA-256 (hex) in a CopyObject answer, if it is a full-object one: a composite
/// checksum of parts (`…-N`) is not the content's.
pub fn full_object_sha256(xml: &str) -> Option<String> {
    let result: CopyObjectResult = quick_xml::de::from_str(xml).ok()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(result.checksum_sha256?.trim()).ok()?;
    (bytes.len() == 32).then(|| hex::encode(bytes))
}

/// The server-side copier of one run: copies requested from the pool's service with
/// the pool's credentials.
pub struct ServerCopy {
    backend: Backend,
    off: AtomicBool,
    /// A copy came back without a SHA-256: the store gives none.
    no_sha256: AtomicBool,
    refusal_logged: AtomicBool,
    failure_logged: AtomicBool,
}

enum Backend {
    S3(S3Copier),
    Azure(crate::azure::Copier),
    Gcs(crate::gcs::Copier),
}

/// S3 copies into the pool: requests to the pool's endpoint, signed with its credentials.
struct S3Copier {
    target: S3Endpoint,
    source: StoreSettings,
    target_settings: StoreSettings,
    /// The pool's SSE-KMS headers: a copy is encrypted as object_store's PUTs are.
    encryption: http::HeaderMap,
}

/// An S3 answer: its status and body.
struct S3Answer {
    status: http::StatusCode,
    text: String,
    error: ErrorAnswer,
}

impl S3Copier {
    /// The `x-amz-copy-source` of a source key.
    fn copy_source(&self, from_key: &str) -> String {
        format!("/{}/{}", self.source.url.host_str().unwrap_or_default(), encode_key(&under(&self.source, from_key)))
    }

    /// Sends one request about pool key `to_key` (`query` after its `?`), signed; with
    /// the pool's SSE-KMS headers if it `writes` an object (CopyObject,
    /// CreateMultipartUpload: S3 refuses them on the other requests).
    async fn send(&self, method: http::Method, to_key: &str, query: &str, headers: &[(&str, String)], body: Bytes, writes: bool) -> Result<S3Answer, String> {
        let mut uri = format!("{}/{}", self.target.base, encode_key(&under(&self.target_settings, to_key)));
        if !query.is_empty() {
            uri = format!("{uri}?{query}");
        }
        let builder =
            headers.iter().fold(http::Request::builder().method(method).uri(uri).header(http::header::CONTENT_LENGTH, body.len().to_string()), |b, (k, v)| {
                b.header(*k, v.as_str())
            });
        let mut request: HttpRequest = builder.body(HttpRequestBody::from(body)).map_err(|e| format!("cannot build the request: {e}"))?;
        if writes {
            request.headers_mut().extend(self.encryption.clone());
        }
        self.target.sign(&mut request, Payload::Hashed).await?;
        let response = self.target.client.execute(request).await.map_err(|e| crate::error_chain(&e))?;
        let status = response.status();
        let body = response.into_body().bytes().await.map_err(|e| crate::error_chain(&e))?;
        let text = String::from_utf8_lossy(&body).into_owned();
        let error = ErrorAnswer::read(&text);
        Ok(S3Answer { status, text, error })
    }
}

#[derive(Deserialize)]
struct InitiateMultipartUploadResult {
    #[serde(rename = "UploadId")]
    upload_id: String,
}

#[derive(Deserialize)]
struct EtagResult {
    #[serde(rename = "ETag")]
    etag: Option<String>,
}

fn etag_in(xml: &str) -> Option<String> {
    quick_xml::de::from_str::<EtagResult>(xml).ok()?.etag.map(|e| e.trim().trim_matches('"').to_string())
}

impl ServerCopy {
    pub fn new(source: &StoreSettings, target: &StoreSettings) -> Result<ServerCopy, String> {
        let backend = match Service::of(target) {
            Some(Service::Azure) => Backend::Azure(crate::azure::Copier::new(source, target)?),
            Some(Service::Gcs) => Backend::Gcs(crate::gcs::Copier::new(source, target)?),
            _ => Backend::S3(S3Copier {
                encryption: encryption_headers(target)?,
                target: S3Endpoint::new(target)?,
                source: source.clone(),
                target_settings: target.clone(),
            }),
        };
        Ok(ServerCopy {
            backend,
            off: AtomicBool::new(false),
            no_sha256: AtomicBool::new(false),
            refusal_logged: AtomicBool::new(false),
            failure_logged: AtomicBool::new(false),
        })
    }

    /// The request that copies, as the logs name it.
    pub fn request(&self) -> &'static str {
        match self.backend {
            Backend::S3(_) => "S3 CopyObject",
            Backend::Azure(_) => "Azure Copy Blob From URL",
            Backend::Gcs(_) => "GCS rewrite",
        }
    }

    /// Notes that a copy came back without a SHA-256 (said once): a restore then streams
    /// the blobs whose SHA-256 is recorded, since the store's copies cannot be checked
    /// against it.
    pub fn note_no_sha256(&self) {
        if !self.no_sha256.swap(true, Ordering::Relaxed) {
            warn!("the store gives no SHA-256 of its copies: blobs whose SHA-256 is recorded are streamed, and checked, for the rest of the restore");
        }
    }

    /// Whether a copy came back without a SHA-256.
    pub fn gave_no_sha256(&self) -> bool {
        self.no_sha256.load(Ordering::Relaxed)
    }

    /// Whether an object of `size` is to be copied server-side.
    pub fn takes(&self, size: u64) -> bool {
        let most = match self.backend {
            Backend::Azure(_) => crate::azure::MAX_SYNC_COPY,
            // Copied in parts, or in as many rewrite calls as the object needs.
            Backend::S3(_) | Backend::Gcs(_) => u64::MAX,
        };
        size <= most && !self.off.load(Ordering::Relaxed)
    }

    /// Copies `from_key` of the source (`size` bytes) to `to_key` of the pool (keys
    /// under their bucket URL's prefix), only if the source still has the ETag it was
    /// listed with. The caller checks the copy's size.
    pub async fn copy(&self, from_key: &str, to_key: &str, etag: Option<&str>, size: u64) -> Result<Copied, Fallback> {
        match &self.backend {
            Backend::S3(_) if size > MAX_SERVER_COPY => self.copy_in_parts(from_key, to_key, etag, size, copy_part_size(size)).await,
            Backend::S3(s3) => self.copy_s3(s3, from_key, to_key, etag).await,
            Backend::Azure(copier) => {
                let answer = copier.copy(from_key, to_key, etag).await.map_err(|e| self.failed(e))?;
                let code = answer.error.code.clone().unwrap_or_default();
                let said = || answer.error.said(answer.status);
                match (answer.status.as_u16(), code.as_str()) {
                    (200..=202, _) if answer.copy_status.as_deref() == Some("success") => Ok(Copied::Done { sha256: None, etag: answer.etag }),
                    (200..=299, _) => Err(self.failed(format!("the copy is {} rather than done", answer.copy_status.as_deref().unwrap_or("of no status")))),
                    (404, "BlobNotFound") => Ok(Copied::Missing),
                    (501, _) | (_, "NotImplemented" | "APINotImplemented") => {
                        Err(self.unsupported(format!("the store does not implement Copy Blob From URL ({})", said())))
                    }
                    (412, _) => Err(Fallback::Failed(format!("the source no longer has the ETag it was listed with ({})", said()))),
                    (400..=499, _) => Err(self.refused(said())),
                    _ => Err(self.failed(said())),
                }
            }
            // A rewrite cannot be made conditional on the listed ETag (only on a
            // generation, which listings do not give): the copy's MD5, compared with the
            // listed one by the caller, says whether it is the listed object.
            Backend::Gcs(copier) => {
                let answer = copier.copy(from_key, to_key).await.map_err(|e| self.failed(e))?;
                let said = || {
                    format!("{} {} {}", answer.status, answer.reason.as_deref().unwrap_or_default(), answer.message.as_deref().unwrap_or_default())
                        .trim_end()
                        .to_string()
                };
                match answer.status.as_u16() {
                    200..=299 => Ok(Copied::Done { sha256: None, etag: answer.md5 }),
                    404 => Ok(Copied::Missing),
                    501 => Err(self.unsupported(format!("the store does not implement rewrite ({})", said()))),
                    400..=499 => Err(self.refused(said())),
                    _ => Err(self.failed(said())),
                }
            }
        }
    }

    /// One CopyObject, asking for the copy's SHA-256.
    async fn copy_s3(&self, s3: &S3Copier, from_key: &str, to_key: &str, etag: Option<&str>) -> Result<Copied, Fallback> {
        let mut headers = vec![("x-amz-copy-source", s3.copy_source(from_key)), ("x-amz-checksum-algorithm", "SHA256".to_string())];
        headers.extend(etag.map(|e| ("x-amz-copy-source-if-match", e.to_string())));
        let answer = s3.send(http::Method::PUT, to_key, "", &headers, Bytes::new(), true).await.map_err(|e| self.failed(e))?;
        match self.s3_verdict(&answer, "CopyObject") {
            Ok(()) => Ok(Copied::Done { sha256: full_object_sha256(&answer.text), etag: copied_etag(&answer.text) }),
            Err(verdict) => verdict,
        }
    }

    /// Copies an object in parts of `part` bytes (UploadPartCopy, `PARTS_AT_ONCE` at a
    /// time, each only if the source still has `etag`): what CopyObject cannot do above
    /// 5 GiB. Its checksum would be one of parts: the record is pending. An upload that
    /// fails is aborted, leaving nothing.
    pub async fn copy_in_parts(&self, from_key: &str, to_key: &str, etag: Option<&str>, size: u64, part: u64) -> Result<Copied, Fallback> {
        let Backend::S3(s3) = &self.backend else { return Err(Fallback::Unsupported("a copy in parts is S3's".into())) };
        let created = s3.send(http::Method::POST, to_key, "uploads", &[], Bytes::new(), true).await.map_err(|e| self.failed(e))?;
        if let Err(verdict) = self.s3_verdict(&created, "CreateMultipartUpload") {
            return verdict;
        }
        let upload_id = quick_xml::de::from_str::<InitiateMultipartUploadResult>(&created.text)
            .map_err(|e| self.failed(format!("CreateMultipartUpload answered no upload id ({e})")))?
            .upload_id;
        let upload = encode_key(&upload_id);
        let copied = async {
            let source = s3.copy_source(from_key);
            let parts = futures::stream::iter(copy_parts(size, part).into_iter().enumerate())
                .map(|(i, (first, last))| {
                    let mut headers = vec![("x-amz-copy-source", source.clone()), ("x-amz-copy-source-range", format!("bytes={first}-{last}"))];
                    headers.extend(etag.map(|e| ("x-amz-copy-source-if-match", e.to_string())));
                    let query = format!("partNumber={}&uploadId={upload}", i + 1);
                    async move {
                        let answer = s3.send(http::Method::PUT, to_key, &query, &headers, Bytes::new(), false).await.map_err(|e| Err(self.failed(e)))?;
                        self.s3_verdict(&answer, "UploadPartCopy")?;
                        etag_in(&answer.text).ok_or_else(|| Err(self.failed("UploadPartCopy answered no ETag".into())))
                    }
                })
                .buffered(PARTS_AT_ONCE);
            let etags: Vec<String> = parts.try_collect().await?;
            let body: String = etags.iter().enumerate().map(|(i, e)| format!("<Part><PartNumber>{}</PartNumber><ETag>\"{e}\"</ETag></Part>", i + 1)).collect();
            let body = Bytes::from(format!("<CompleteMultipartUpload>{body}</CompleteMultipartUpload>"));
            let done = s3.send(http::Method::POST, to_key, &format!("uploadId={upload}"), &[], body, false).await.map_err(|e| Err(self.failed(e)))?;
            self.s3_verdict(&done, "CompleteMultipartUpload")?;
            Ok(Copied::Done { sha256: None, etag: etag_in(&done.text) })
        };
        let copied: Result<Copied, Result<Copied, Fallback>> = copied.await;
        match copied {
            Ok(done) => Ok(done),
            Err(verdict) => {
                if let Err(e) = s3.send(http::Method::DELETE, to_key, &format!("uploadId={upload}"), &[], Bytes::new(), false).await {
                    warn!(key = to_key, error = %e, "could not abort a copy in parts: the bucket's lifecycle rule for incomplete uploads removes it");
                }
                verdict
            }
        }
    }

    /// What an S3 answer to `request` means: Ok for a success (S3 may answer 200 with an
    /// error in the body once a copy has begun), else what the caller returns.
    fn s3_verdict(&self, answer: &S3Answer, request: &str) -> Result<(), Result<Copied, Fallback>> {
        let code = answer.error.code.clone().unwrap_or_default();
        let said = || answer.error.said(answer.status);
        match (answer.status.as_u16(), code.as_str()) {
            (200, "") => Ok(()),
            (404, "NoSuchKey") => Err(Ok(Copied::Missing)),
            (501, _) | (_, "NotImplemented") => Err(Err(self.unsupported(format!("the store does not implement {request} ({})", said())))),
            (412, _) => Err(Err(Fallback::Failed(format!("the source no longer has the ETag it was listed with ({})", said())))),
            (400..=499, _) => Err(Err(self.refused(said()))),
            _ => Err(Err(self.failed(said()))),
        }
    }

    fn unsupported(&self, why: String) -> Fallback {
        if !self.off.swap(true, Ordering::Relaxed) {
            warn!("server-side copy is off for the rest of the run, every object is streamed: {why}");
        }
        Fallback::Unsupported(why)
    }

    fn refused(&self, why: String) -> Fallback {
        if !self.refusal_logged.swap(true, Ordering::Relaxed) {
            let grant = match self.backend {
                Backend::S3(_) => "s3:GetObject",
                Backend::Azure(_) => "read (a SAS of the account key, or Storage Blob Data Reader)",
                Backend::Gcs(_) => "storage.objects.get",
            };
            warn!(
                "the store refused a server-side copy ({why}): such objects are streamed (grant the backup bucket's credentials {grant} on the source, or set COPY_MODE=stream)"
            );
        }
        Fallback::Refused(why)
    }

    fn failed(&self, why: String) -> Fallback {
        if !self.failure_logged.swap(true, Ordering::Relaxed) {
            warn!("a server-side copy failed ({why}): the object is streamed instead (said once a run)");
        }
        Fallback::Failed(why)
    }
}

/// The route of a restore's copies from the backup bucket: as a run's, but only on S3,
/// which gives the SHA-256 of its copies: Azure's and GCS' copies carry none to check
/// a restored blob against.
pub fn restore_route(mode: CopyMode, backup: &StoreSettings, destination: &StoreSettings) -> Route {
    match (route(mode, backup, destination), Service::of(backup)) {
        (Route::Server, Some(service @ (Service::Azure | Service::Gcs))) => {
            Route::Stream(format!("{}'s copies carry no SHA-256 to check a restored blob against, so each is streamed and checked", service.name()))
        }
        (route, _) => route,
    }
}

/// The copier of a run (or restore) whose route is `route` (logged either way).
pub fn open(route: Route, source: &StoreSettings, target: &StoreSettings) -> Option<ServerCopy> {
    match route {
        Route::Server => match ServerCopy::new(source, target) {
            Ok(copier) => {
                info!("objects are copied server-side ({}): their bytes do not pass through this process", copier.request());
                Some(copier)
            }
            Err(why) => {
                warn!("objects are streamed: the server-side copy cannot be set up ({why})");
                None
            }
        },
        Route::Stream(why) => {
            info!("objects are streamed through this process: {why}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::tests::bucket;

    #[test]
    fn the_route_is_server_side_only_for_one_identity_or_when_forced() {
        let keys = [("aws_access_key_id", "AK"), ("aws_secret_access_key", "SK"), ("aws_region", "eu-west-1"), ("aws_endpoint", "http://s3.local")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut o: Vec<(&str, &str)> = keys.to_vec();
            o.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
            o.extend_from_slice(extra);
            o
        };
        let same = with(&[]);
        let azure = [("azure_storage_account_name", "acct"), ("azure_storage_account_key", "KEY")];
        let server = || Route::Server;
        let stream = |why: &str| Route::Stream(why.to_string());
        #[rustfmt::skip]
        let cases: Vec<(CopyMode, StoreSettings, StoreSettings, Route)> = vec![
            (CopyMode::Auto, bucket("s3://src", &same), bucket("s3://dst/p", &same), server()),
            // Client options and write-side options do not change who reads where.
            (CopyMode::Auto, bucket("s3://src", &with(&[("timeout", "300s")])), bucket("s3a://dst", &with(&[("aws_server_side_encryption", "aws:kms"), ("aws_checksum_algorithm", "sha256")])), server()),
            // Short and long names of one key are one key.
            (CopyMode::Auto, bucket("s3://src", &with(&[("region", "eu-west-1")])), bucket("s3://dst", &same), server()),
            (CopyMode::Auto, bucket("s3://src", &with(&[("aws_access_key_id", "OTHER")])), bucket("s3://dst", &same), stream("SOURCE_URL and TARGET_URL differ in aws_access_key_id (one set of credentials on one endpoint copies server-side)")),
            (CopyMode::Auto, bucket("s3://src", &same), bucket("s3://dst", &with(&[("aws_endpoint", "http://minio.local")])), stream("SOURCE_URL and TARGET_URL differ in aws_endpoint (one set of credentials on one endpoint copies server-side)")),
            (CopyMode::Auto, bucket("s3://src", &same), bucket("s3://dst", &with(&[("aws_region", "us-east-1"), ("aws_session_token", "T")])), stream("SOURCE_URL and TARGET_URL differ in aws_region, aws_session_token (one set of credentials on one endpoint copies server-side)")),
            (CopyMode::Auto, bucket("gs://src", &[]), bucket("s3://dst", &same), stream("SOURCE_URL is a GCS bucket and TARGET_URL an S3 bucket: one service copies server-side")),
            (CopyMode::Auto, bucket("s3://src", &same), bucket("file:///backup", &[]), stream("TARGET_URL is not an S3 bucket (s3://), an Azure container (az://) or a GCS bucket (gs://)")),
            // GCS: two buckets reached with one service account.
            (CopyMode::Auto, bucket("gs://src", &[("google_service_account_key", "{}")]), bucket("gs://dst/p", &[("service_account_key", "{}"), ("timeout", "9s")]), server()),
            (CopyMode::Auto, bucket("gs://src", &[("google_service_account_key", "{}")]), bucket("gs://dst", &[("google_service_account_key", "{\"other\":1}")]), stream("SOURCE_URL and TARGET_URL differ in google_service_account_key (one set of credentials on one endpoint copies server-side)")),
            // Azure: two containers of one account, with one key.
            (CopyMode::Auto, bucket("az://src", &azure), bucket("az://dst/p", &azure), server()),
            (CopyMode::Auto, bucket("az://src", &azure), bucket("azure://dst", &[("account_name", "acct"), ("azure_storage_account_key", "OTHER"), ("timeout", "9s")]), stream("SOURCE_URL and TARGET_URL differ in azure_storage_account_key (one set of credentials on one endpoint copies server-side)")),
            (CopyMode::Auto, bucket("s3://src", &with(&[("aws_sse_customer_key_base64", "K")])), bucket("s3://dst", &with(&[("aws_sse_customer_key_base64", "K")])), stream("SOURCE_URL is encrypted with SSE-C")),
            // Forced: whatever the identities, as long as both are S3's.
            (CopyMode::Server, bucket("s3://src", &with(&[("aws_access_key_id", "OTHER")])), bucket("s3://dst", &same), server()),
            (CopyMode::Server, bucket("az://src", &[]), bucket("s3://dst", &same), stream("SOURCE_URL is an Azure container and TARGET_URL an S3 bucket: one service copies server-side")),
            (CopyMode::Stream, bucket("s3://src", &same), bucket("s3://dst", &same), stream("COPY_MODE=stream")),
        ];
        for (mode, source, target, want) in cases {
            let (source, target) = (StoreSettings { variable: "SOURCE_URL", ..source }, StoreSettings { variable: "TARGET_URL", ..target });
            assert_eq!(route(mode, &source, &target), want, "{mode:?} {} {:?} → {} {:?}", source.url, source.options.keys(), target.url, target.options.keys());
        }
        // A restore copies server-side only where the store checks the copy's SHA-256.
        let (backup, restored) = (bucket("az://backups", &azure), bucket("az://restored", &azure));
        assert!(matches!(restore_route(CopyMode::Auto, &backup, &restored), Route::Stream(why) if why.contains("no SHA-256")));
        assert!(
            matches!(restore_route(CopyMode::Auto, &bucket("gs://backups", &[]), &bucket("gs://restored", &[])), Route::Stream(why) if why.contains("no SHA-256"))
        );
        assert_eq!(restore_route(CopyMode::Auto, &bucket("s3://backups", &same), &bucket("s3://restored", &same)), server());
    }

    #[test]
    fn only_a_full_object_sha256_is_taken_from_the_answer() {
        let answer = |checksum: &str| {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><CopyObjectResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><ETag>\"5eb63bbbe01eeed093cb22bb8f5acdc3\"</ETag><LastModified>2026-12-03T20:05:04.000Z</LastModified>{checksum}</CopyObjectResult>"
            )
        };
        assert_eq!(
            full_object_sha256(&answer("<ChecksumSHA256>uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=</ChecksumSHA256>")).as_deref(),
            Some("b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9")
        );
        assert_eq!(full_object_sha256(&answer("")), None);
        assert_eq!(full_object_sha256(&answer("<ChecksumSHA256>uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=-3</ChecksumSHA256>")), None);
        assert_eq!(full_object_sha256("<Error><Code>InternalError</Code></Error>"), None);
        assert_eq!(copied_etag(&answer("")).as_deref(), Some("5eb63bbbe01eeed093cb22bb8f5acdc3"));
    }

    #[test]
    fn a_copy_in_parts_covers_the_object_in_at_most_10000_parts_s3_takes() {
        const MIB: u64 = 1024 * 1024;
        const GIB: u64 = 1024 * MIB;
        for size in [MAX_SERVER_COPY + 1, 6 * GIB, 100 * GIB, 5 * 1024 * GIB, 12 * MIB + 3] {
            let part = copy_part_size(size);
            assert!((512 * MIB..=MAX_SERVER_COPY).contains(&part), "{size}: part {part}");
            let parts = copy_parts(size, part);
            assert!(parts.len() as u64 <= MAX_PARTS, "{size}: {} parts", parts.len());
            assert_eq!(parts.first().map(|p| p.0), Some(0));
            assert_eq!(parts.last().map(|p| p.1), Some(size - 1), "{size}: the last byte");
            assert!(parts.windows(2).all(|w| w[1].0 == w[0].1 + 1), "{size}: contiguous");
            // Every part but the last is whole (S3: at least 5 MiB).
            assert!(parts[..parts.len() - 1].iter().all(|(a, b)| b - a + 1 == part), "{size}");
        }
        assert_eq!(copy_parts(12 * MIB + 3, 5 * MIB), vec![(0, 5 * MIB - 1), (5 * MIB, 10 * MIB - 1), (10 * MIB, 12 * MIB + 2)]);
        assert_eq!(copy_part_size(5 * 1024 * GIB), 525 * MIB);
    }
}
