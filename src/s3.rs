//! S3 requests object_store does not make, sent with object_store's own signer,
//! credentials and HTTP client options ([`S3Endpoint`]): a bucket's configuration
//! (Object Lock), a copy between two buckets (CopyObject, [`crate::server_copy`]), and
//! the copy's single-part PUT ([`Put`]).
//!
//! The PUT is ours because object_store's cannot say what the copy already knows, nor
//! stream: the source's MD5 (its ETag), sent as `Content-MD5` so that the store checks
//! the body itself and the copy need not hash MD5 (the larger part of its CPU: measured
//! 45 %); the object's length from the listing, so that its body streams from the GET
//! into the PUT instead of being read whole first; and, for a body held whole, its
//! SHA-256, which the copy computes for its listing anyway and which signs the request
//! (object_store hashes every body a second time to sign it). Streamed bodies are sent
//! through a reqwest client made from the same client options (object_store's takes
//! whole bodies only).

use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use object_store::PutPayload;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::{ClientOptions, HttpClient, HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector};
use serde::Deserialize;
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::config::StoreSettings;
use crate::object_lock::ObjectLock;

/// Where a bucket's own requests go (the bucket's URL, path or virtual-hosted style,
/// at its endpoint) and how they are signed, as object_store would resolve them: for
/// the requests object_store does not make.
pub struct S3Endpoint {
    /// The bucket's URL, without a trailing slash: a key or a query follows.
    pub base: String,
    region: String,
    /// None when the bucket is read unsigned (`AWS_SKIP_SIGNATURE`).
    credentials: Option<object_store::aws::AwsCredentialProvider>,
    pub client: HttpClient,
}

impl S3Endpoint {
    pub fn new(settings: &StoreSettings) -> Result<S3Endpoint, String> {
        let builder = s3_builder(settings);
        let get = |key: AmazonS3ConfigKey| builder.get_config_value(&key);
        let bucket = settings.url.host_str().unwrap_or_default().to_string();
        let region = get(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
        let virtual_hosted = get(AmazonS3ConfigKey::VirtualHostedStyleRequest).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let base = match get(AmazonS3ConfigKey::Endpoint) {
            Some(e) if virtual_hosted => e.trim_end_matches('/').to_string(),
            Some(e) => format!("{}/{bucket}", e.trim_end_matches('/')),
            None if virtual_hosted => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            None => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        let skip_signature = get(AmazonS3ConfigKey::SkipSignature).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let credentials = if skip_signature { None } else { Some(builder.build().map_err(|e| e.to_string())?.credentials().clone()) };
        let client = ReqwestConnector::default().connect(&client_options(settings)).map_err(|e| e.to_string())?;
        Ok(S3Endpoint { base, region, credentials, client })
    }

    /// Signs `request` (SigV4) with the bucket's credentials.
    pub async fn sign(&self, request: &mut HttpRequest, payload: Payload<'_>) -> Result<(), String> {
        let Some(credentials) = &self.credentials else { return Ok(()) };
        let credential = credentials.get_credential().await.map_err(|e| format!("no credentials: {e}"))?;
        let (signed, digest) = match payload {
            Payload::Hashed => (true, None),
            Payload::Digest(d) => (true, Some(d.as_slice())),
            Payload::Unsigned => (false, None),
        };
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .with_sign_payload(signed)
            .try_authorize(request, digest)
            .map_err(|e| format!("cannot sign the request: {e}"))
    }
}

/// What a signature says of the body.
pub enum Payload<'a> {
    /// The body's SHA-256, hashed by the signer (small bodies: a query, nothing).
    Hashed,
    /// Its SHA-256, known already.
    Digest(&'a [u8; 32]),
    /// `UNSIGNED-PAYLOAD`: a streamed body, protected by TLS or by its MD5 in the signed
    /// headers.
    Unsigned,
}

/// The S3 builder for a bucket's URL and options, as object_store's `parse_url_opts`
/// would make it, its HTTP client trusting the bucket's CA bundle too.
pub fn s3_builder(settings: &StoreSettings) -> AmazonS3Builder {
    settings
        .keyed::<AmazonS3ConfigKey>()
        .fold(AmazonS3Builder::new().with_url(settings.url.as_str()), |b, (k, v)| b.with_config(k, v))
        .with_client_options(client_options(settings))
}

/// The HTTP client options among a bucket's S3 options, and its CA bundle.
pub fn client_options(settings: &StoreSettings) -> ClientOptions {
    settings.client_options::<AmazonS3ConfigKey>()
}

/// A key percent-encoded as object_store encodes a path (and as SigV4 signs it for S3):
/// all but unreserved characters and '/'.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A key under a bucket URL's prefix.
pub fn under(settings: &StoreSettings, key: &str) -> String {
    match settings.url.path().trim_matches('/') {
        "" => key.to_string(),
        prefix => format!("{prefix}/{key}"),
    }
}

/// A bucket option by object_store's canonical name, under any of its names.
fn option<'a>(settings: &'a StoreSettings, canonical: &str) -> Option<&'a str> {
    settings.options.iter().find(|(k, _)| AmazonS3ConfigKey::from_str(k).is_ok_and(|key| key.as_ref() == canonical)).map(|(_, v)| v.expose())
}

/// The SSE-KMS headers object_store's PUTs carry for this bucket: the writes made here
/// are encrypted as object_store's are.
pub fn encryption_headers(settings: &StoreSettings) -> Result<http::HeaderMap, String> {
    let mut headers = http::HeaderMap::new();
    for (name, header) in [
        ("aws_server_side_encryption", "x-amz-server-side-encryption"),
        ("aws_sse_kms_key_id", "x-amz-server-side-encryption-aws-kms-key-id"),
        ("aws_sse_bucket_key_enabled", "x-amz-server-side-encryption-bucket-key-enabled"),
    ] {
        if let Some(v) = option(settings, name) {
            headers.insert(header, http::HeaderValue::from_str(v).map_err(|e| format!("{name}: {e}"))?);
        }
    }
    Ok(headers)
}

/// The error S3 puts in an answer's body.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorAnswer {
    pub code: Option<String>,
    pub message: Option<String>,
}

impl ErrorAnswer {
    pub fn read(body: &str) -> ErrorAnswer {
        quick_xml::de::from_str(body).unwrap_or_default()
    }

    /// `403 AccessDenied Access Denied`: the status and what the store said.
    pub fn said(&self, status: http::StatusCode) -> String {
        format!("{status} {} {}", self.code.as_deref().unwrap_or_default(), self.message.as_deref().unwrap_or_default()).trim_end().to_string()
    }
}

/// Why a PUT failed.
#[derive(Debug)]
pub enum PutFailure {
    /// The store received other bytes than the digests sent with them (BadDigest,
    /// InvalidDigest, XAmzContentSHA256Mismatch): damaged on the way, or the source's
    /// ETag is not the MD5 of its content (SSE-KMS, SSE-C). S3 stores nothing of such a
    /// body (s3s-fs stores it first; the copy's retry replaces it).
    Digest(String),
    Store {
        error: object_store::Error,
        /// The connection's failure, the store's own (5xx), or a throttle (408, 429).
        transient: bool,
    },
}

/// What the backup bucket does with a PUT's digests, found out once a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    /// The store refuses a body whose MD5 is not the `Content-MD5` sent (S3 documents
    /// it, s3s-fs does; moto does not).
    pub content_md5: bool,
    /// The PUT must carry `x-amz-checksum-sha256` (Object Lock, or `AWS_CHECKSUM_ALGORITHM`).
    sha256_header: bool,
}

/// PUT attempts on a failure of the connection or the store (5xx, 408, 429): the body
/// is in memory, so a PUT is sent again without reading the source again.
const PUT_ATTEMPTS: u32 = 3;

/// Objects up to this size are sent in one PUT, streamed when they can be; larger ones
/// in parts (object_store's multipart upload: parts retried one by one, several at once).
/// Above every Pachyderm chunk (≤ 20 MB); rclone's cut-off is 200 MiB.
pub const SINGLE_PUT_MAX: u64 = 64 * 1024 * 1024;

/// The copy's single-part PUTs into one S3 bucket.
pub struct Put {
    endpoint: S3Endpoint,
    settings: StoreSettings,
    encryption: http::HeaderMap,
    checks: OnceCell<Checks>,
    /// For streamed bodies; None when it cannot be made as object_store's is (logged).
    streaming: Option<reqwest::Client>,
    /// AWS_UNSIGNED_PAYLOAD as set (or set for TLS by the configuration): true, any body
    /// may stream; false, none does (the operator wants every body signed); unset
    /// (plain HTTP), a body streams with a digest (MD5, SHA-256) in the signed headers.
    unsigned: Option<bool>,
    /// AWS_CHECKSUM_ALGORITHM is set: every write carries its SHA-256.
    sha256_chosen: bool,
}

impl Put {
    /// For an S3 bucket whose writes need nothing this PUT does not send: not with SSE-C
    /// (a key on every request) nor requester-pays buckets, which object_store's PUTs
    /// serve.
    pub fn open(settings: &StoreSettings) -> Option<Put> {
        if !matches!(settings.url.scheme(), "s3" | "s3a")
            || option(settings, "aws_sse_customer_key_base64").is_some()
            || option(settings, "aws_request_payer").is_some()
        {
            return None;
        }
        let made = encryption_headers(settings).and_then(|encryption| Ok((encryption, S3Endpoint::new(settings)?)));
        let (encryption, endpoint) = match made {
            Ok(made) => made,
            Err(why) => {
                warn!(variable = settings.variable, "objects are written through object_store: {why}");
                return None;
            }
        };
        let streaming = match streaming_client(settings) {
            Ok(client) => Some(client),
            Err(why) => {
                warn!(variable = settings.variable, "objects are read whole before they are written: no client for streamed writes ({why})");
                None
            }
        };
        let unsigned = option(settings, "aws_unsigned_payload").and_then(crate::config::parse_store_bool);
        let sha256_chosen = option(settings, "aws_checksum_algorithm").is_some();
        Some(Put { endpoint, settings: settings.clone(), encryption, checks: OnceCell::new(), streaming, unsigned, sha256_chosen })
    }

    /// Whether a body of `length` streams: one PUT, and a body protected on the way by
    /// TLS (its payload unsigned by the bucket's settings) or by a digest known before
    /// it is read (the source's MD5, a restored blob's recorded SHA-256) in the signed
    /// headers, which a bucket under Object Lock takes as its checksum header too. A
    /// bucket whose writes must carry their SHA-256 (`AWS_CHECKSUM_ALGORITHM`) streams
    /// only a body whose SHA-256 is known first. Otherwise a body is read whole first
    /// (its SHA-256 signs it).
    pub fn streams(&self, length: u64, md5_known: bool, sha256_known: bool, checks: Checks) -> bool {
        let digest_known = md5_known || sha256_known;
        let protected = match self.unsigned {
            Some(false) => false,
            Some(true) => digest_known || !checks.sha256_header,
            None => digest_known,
        };
        let checksum = !self.sha256_chosen || sha256_known;
        self.streaming.is_some() && length <= SINGLE_PUT_MAX && protected && checksum
    }

    /// Finds out, once, whether the bucket checks Content-MD5, with a probe written at
    /// `key` (the run's preflight probe: a key written and deleted every run, which
    /// on a bucket under Object Lock keeps its versions as that probe's do). `lock` is
    /// the bucket's Object Lock, as the caller read it.
    pub async fn probe(&self, key: &str, lock: &ObjectLock) -> Checks {
        *self.checks.get_or_init(|| self.find_checks(Some((key, lock)))).await
    }

    /// What the bucket checks; without a [`Put::probe`] first, Content-MD5 is taken as
    /// unchecked, and the copy checks the MD5 itself.
    pub async fn checks(&self) -> Checks {
        *self.checks.get_or_init(|| self.find_checks(None)).await
    }

    async fn find_checks(&self, probe: Option<(&str, &ObjectLock)>) -> Checks {
        let (content_md5, locked) = match probe {
            Some((key, lock)) => (self.refuses_a_wrong_md5(key).await, lock.needs_checksums()),
            None => (false, crate::object_lock::detect(&self.settings).await.map_or(true, |lock| lock.needs_checksums())),
        };
        let sha256_header = locked || self.sha256_chosen;
        match (probe, content_md5) {
            (Some(_), true) => {
                info!(variable = self.settings.variable, "the bucket checks Content-MD5: writes carry the source's MD5, the store checks each body against it")
            }
            (Some(_), false) => {
                info!(variable = self.settings.variable, "the bucket does not check Content-MD5: the copy checks each body against the source's MD5 itself")
            }
            (None, _) => {}
        }
        Checks { content_md5, sha256_header }
    }

    /// Sends a body with a Content-MD5 that is not its MD5: a store that checks refuses
    /// it. What a store that does not check (or checks after storing, as s3s-fs does)
    /// kept of the probe is deleted at once.
    async fn refuses_a_wrong_md5(&self, key: &str) -> bool {
        let body = Bytes::from_static(b"content-md5 probe");
        let wrong: [u8; 16] = <md5::Md5 as md5::Digest>::digest(b"another body").into();
        let sha256: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&body).into();
        let answer = self.send(key, PutPayload::from(body), &sha256, Some(&wrong), false).await;
        if let Err(e) = self.delete(key).await {
            warn!(key, error = %e, "could not delete the Content-MD5 probe");
        }
        match answer {
            Err(PutFailure::Digest(_)) => true,
            Ok(()) => false,
            Err(PutFailure::Store { error: e, .. }) => {
                warn!(variable = self.settings.variable, error = %e, "cannot tell whether the bucket checks Content-MD5: the copy checks every body itself");
                false
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        let url = format!("{}/{}", self.endpoint.base, encode_key(&under(&self.settings, key)));
        let mut request: HttpRequest =
            http::Request::builder().method(http::Method::DELETE).uri(url).body(HttpRequestBody::empty()).map_err(|e| e.to_string())?;
        self.endpoint.sign(&mut request, Payload::Hashed).await?;
        let response = self.endpoint.client.execute(request).await.map_err(|e| crate::error_chain(&e))?;
        match response.status() {
            s if s.is_success() || s == http::StatusCode::NOT_FOUND => Ok(()),
            s => Err(s.to_string()),
        }
    }

    /// PUTs `parts` (`sha256` their digest, `md5` the source's MD5 when known) at `key`
    /// of the bucket (under its URL's prefix).
    pub async fn put(&self, key: &str, parts: Vec<Bytes>, sha256: &[u8; 32], md5: Option<&[u8; 16]>) -> Result<(), PutFailure> {
        let checks = self.checks().await;
        let payload: PutPayload = parts.into_iter().collect();
        let mut attempt = 1;
        loop {
            match self.send(key, payload.clone(), sha256, md5, checks.sha256_header).await {
                Err(PutFailure::Store { error, transient: true }) if attempt < PUT_ATTEMPTS => {
                    tracing::debug!(key, attempt, %error, "PUT failed, sending it again");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    async fn send(&self, key: &str, payload: PutPayload, sha256: &[u8; 32], md5: Option<&[u8; 16]>, sha256_header: bool) -> Result<(), PutFailure> {
        let path = under(&self.settings, key);
        let length = payload.content_length() as u64;
        let request = self.signed_put(&path, length, md5, sha256_header.then_some(sha256), HttpRequestBody::from(payload), Payload::Digest(sha256)).await?;
        let response = self.endpoint.client.execute(request).await.map_err(|e| failed(&path, crate::error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.into_body().bytes().await.unwrap_or_default();
        Err(failure(status, &body, path))
    }

    /// PUTs a body of `length` bytes as it comes (`streams` said it may), signed
    /// headers only, with what it must hash to when known (`Content-MD5`,
    /// `x-amz-checksum-sha256`: a store that checks them refuses other bytes). A body
    /// that ends in an error is cut short of its Content-Length, and the store keeps
    /// nothing of it.
    pub async fn put_streamed<S>(&self, key: &str, length: u64, md5: Option<&[u8; 16]>, sha256: Option<&[u8; 32]>, body: S) -> Result<(), PutFailure>
    where
        S: futures::TryStream<Ok = Bytes> + Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = under(&self.settings, key);
        let Some(client) = &self.streaming else { return Err(failed(&path, "no client for streamed writes".into())) };
        let request = self.signed_put(&path, length, md5, sha256, HttpRequestBody::empty(), Payload::Unsigned).await?;
        let (parts, _) = request.into_parts();
        let response = client
            .put(parts.uri.to_string())
            .headers(parts.headers)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(|e| failed(&path, crate::error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.bytes().await.unwrap_or_default();
        Err(failure(status, &body, path))
    }

    /// A PUT of `path` (under the bucket's prefix) with its length, the digests it
    /// must hash to, the bucket's SSE-KMS headers, signed.
    async fn signed_put(
        &self,
        path: &str,
        length: u64,
        md5: Option<&[u8; 16]>,
        sha256: Option<&[u8; 32]>,
        body: HttpRequestBody,
        payload: Payload<'_>,
    ) -> Result<HttpRequest, PutFailure> {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut builder = http::Request::builder()
            .method(http::Method::PUT)
            .uri(format!("{}/{}", self.endpoint.base, encode_key(path)))
            .header(http::header::CONTENT_LENGTH, length);
        if let Some(md5) = md5 {
            builder = builder.header("content-md5", b64(md5));
        }
        if let Some(sha256) = sha256 {
            builder = builder.header("x-amz-sdk-checksum-algorithm", "SHA256").header("x-amz-checksum-sha256", b64(sha256));
        }
        let mut request: HttpRequest = builder.body(body).map_err(|e| failed(path, format!("cannot build the request: {e}")))?;
        request.headers_mut().extend(self.encryption.clone());
        self.endpoint.sign(&mut request, payload).await.map_err(|e| failed(path, e))?;
        Ok(request)
    }
}

/// A PUT that did not reach an answer: the connection's failure, or the request's.
fn failed(path: &str, detail: String) -> PutFailure {
    PutFailure::Store { error: object_store::Error::Generic { store: "S3", source: format!("PUT {path}: {detail}").into() }, transient: true }
}

/// A refused PUT, from the store's answer.
fn failure(status: http::StatusCode, body: &[u8], path: String) -> PutFailure {
    let answer = ErrorAnswer::read(&String::from_utf8_lossy(body));
    let said = answer.said(status);
    let source = format!("PUT {path}: {said}").into();
    let code = status.as_u16();
    let transient = code >= 500 || code == 408 || code == 429;
    let error = match code {
        401 => object_store::Error::Unauthenticated { path, source },
        403 => object_store::Error::PermissionDenied { path, source },
        404 => object_store::Error::NotFound { path, source },
        _ => object_store::Error::Generic { store: "S3", source },
    };
    match answer.code.as_deref() {
        Some("BadDigest" | "InvalidDigest" | "XAmzContentSHA256Mismatch") => PutFailure::Digest(said),
        _ => PutFailure::Store { error, transient },
    }
}

/// The HTTP client of streamed PUTs, from the bucket's client options as object_store
/// makes its own (`ClientOptions::client`, which it does not expose): proxy, CA
/// bundle, certificate checks, plain HTTP, timeouts, connection pool, HTTP version,
/// user agent. The HTTP/2 keep-alive and address-shuffling options, which tune
/// connections, are object_store's only.
fn streaming_client(settings: &StoreSettings) -> Result<reqwest::Client, String> {
    use object_store::ClientConfigKey as K;
    let mut builder = reqwest::ClientBuilder::new().user_agent(concat!("pachyderm-backup/", env!("CARGO_PKG_VERSION")));
    let (mut https_only, mut system_certificates) = (true, true);
    let (mut proxy, mut proxy_ca, mut proxy_excludes) = (None, None, None);
    let duration = |k: &str, v: &str| humantime::parse_duration(v).map_err(|e| format!("{k}: {e}"));
    let flag = |k: &str, v: &str| crate::config::parse_store_bool(v).ok_or_else(|| format!("{k}: {v:?} is not a boolean"));
    for (k, v) in &settings.options {
        let Ok(AmazonS3ConfigKey::Client(key)) = AmazonS3ConfigKey::from_str(k) else { continue };
        let v = v.expose();
        builder = match key {
            K::AllowHttp => {
                https_only = !flag(k, v)?;
                builder
            }
            K::AllowInvalidCertificates => builder.tls_danger_accept_invalid_certs(flag(k, v)?),
            K::NoSystemCertificates => {
                system_certificates = !flag(k, v)?;
                builder
            }
            K::ConnectTimeout => builder.connect_timeout(duration(k, v)?),
            K::Timeout => builder.timeout(duration(k, v)?),
            K::ReadTimeout => builder.read_timeout(duration(k, v)?),
            K::PoolIdleTimeout => builder.pool_idle_timeout(duration(k, v)?),
            K::PoolMaxIdlePerHost => builder.pool_max_idle_per_host(v.parse().map_err(|e| format!("{k}: {e}"))?),
            K::Http1Only if flag(k, v)? => builder.http1_only(),
            K::Http2Only if flag(k, v)? => builder.http2_prior_knowledge(),
            K::ProxyUrl => {
                proxy = Some(v);
                builder
            }
            K::ProxyCaCertificate => {
                proxy_ca = Some(v);
                builder
            }
            K::ProxyExcludes => {
                proxy_excludes = Some(v);
                builder
            }
            K::UserAgent => builder.user_agent(v),
            _ => builder,
        };
    }
    if let Some(url) = proxy {
        let mut p = reqwest::Proxy::all(url).map_err(|e| format!("proxy_url: {e}"))?;
        if let Some(excludes) = proxy_excludes {
            p = p.no_proxy(reqwest::NoProxy::from_string(excludes));
        }
        builder = builder.proxy(p);
        if let Some(pem) = proxy_ca {
            builder = builder.tls_certs_merge([reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| format!("proxy_ca_certificate: {e}"))?]);
        }
    }
    let mut certificates = Vec::new();
    if let Some(bundle) = &settings.ca_bundle {
        let pem = std::fs::read(&bundle.path).map_err(|e| format!("{}: {e}", bundle.path.display()))?;
        certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("{}: {e}", bundle.path.display()))?;
    }
    builder = if system_certificates { builder.tls_certs_merge(certificates) } else { builder.tls_certs_only(certificates) };
    builder.no_gzip().no_brotli().no_zstd().no_deflate().https_only(https_only).build().map_err(|e| e.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Secret;

    /// A bucket's settings as the configuration makes them.
    pub(crate) fn bucket(url: &str, options: &[(&str, &str)]) -> StoreSettings {
        StoreSettings {
            variable: "TEST_URL",
            url: url.parse().expect("a URL"),
            options: options.iter().map(|(k, v)| (k.to_string(), Secret::new(*v))).collect(),
            ca_bundle: None,
        }
    }

    #[test]
    fn keys_are_encoded_as_object_store_signs_them() {
        assert_eq!(encode_key("pool/chunk/ab.00000000000000a1"), "pool/chunk/ab.00000000000000a1");
        assert_eq!(encode_key("a b+c%/é~"), "a%20b%2Bc%25/%C3%A9~");
        assert_eq!(under(&bucket("s3://b/some/prefix/", &[]), "k"), "some/prefix/k");
        assert_eq!(under(&bucket("s3://b", &[]), "k"), "k");
    }

    #[test]
    fn the_copy_writes_its_own_puts_only_where_they_carry_what_object_store_would() {
        let keys = [("aws_access_key_id", "AK"), ("aws_secret_access_key", "SK"), ("aws_region", "eu-west-1")];
        assert!(Put::open(&bucket("s3://b/p", &keys)).is_some());
        assert!(Put::open(&bucket("s3a://b", &[&keys[..], &[("aws_server_side_encryption", "aws:kms")]].concat())).is_some());
        assert!(Put::open(&bucket("s3://b", &[&keys[..], &[("aws_sse_customer_key_base64", "K")]].concat())).is_none(), "SSE-C");
        assert!(Put::open(&bucket("s3://b", &[&keys[..], &[("request_payer", "true")]].concat())).is_none(), "requester pays");
        assert!(Put::open(&bucket("gs://b", &[])).is_none());
        assert!(Put::open(&bucket("file:///b", &[])).is_none());
    }

    #[test]
    fn a_body_streams_only_when_it_is_protected_on_the_way() {
        let keys = [("aws_access_key_id", "AK"), ("aws_secret_access_key", "SK"), ("aws_endpoint", "http://s3.local"), ("aws_allow_http", "true")];
        let put = |unsigned: Option<&'static str>, chosen: bool| {
            let mut options = keys.to_vec();
            options.extend(unsigned.map(|v| ("aws_unsigned_payload", v)));
            options.extend(chosen.then_some(("aws_checksum_algorithm", "sha256")));
            Put::open(&bucket("s3://b", &options)).expect("an S3 bucket")
        };
        let free = Checks { content_md5: true, sha256_header: false };
        let locked = Checks { content_md5: false, sha256_header: true };
        const MIB: u64 = 1024 * 1024;
        #[rustfmt::skip]
        let cases = [
            // AWS_UNSIGNED_PAYLOAD, AWS_CHECKSUM_ALGORITHM set, MD5 known, SHA-256 known, what the bucket needs, length: streams
            (None, false, true, false, free, MIB, true),
            (None, false, false, true, free, MIB, true),
            // Plain HTTP, nothing signed protects the body: read whole, its SHA-256 signs it.
            (None, false, false, false, free, MIB, false),
            (Some("true"), false, false, false, free, MIB, true),
            // Object Lock wants a checksum header: Content-MD5, or a SHA-256 known first.
            (Some("true"), false, false, false, locked, MIB, false),
            (Some("true"), false, true, false, locked, MIB, true),
            (None, false, true, false, locked, MIB, true),
            // Every write must carry its SHA-256: only one known first streams.
            (Some("true"), true, true, false, locked, MIB, false),
            (Some("true"), true, false, true, locked, MIB, true),
            // The operator wants every body signed.
            (Some("false"), false, true, true, free, MIB, false),
            (None, false, true, false, free, SINGLE_PUT_MAX, true),
            (None, false, true, false, free, SINGLE_PUT_MAX + 1, false),
        ];
        for (unsigned, chosen, md5, sha256, checks, length, want) in cases {
            assert_eq!(
                put(unsigned, chosen).streams(length, md5, sha256, checks),
                want,
                "{unsigned:?} chosen {chosen} md5 {md5} sha256 {sha256} {checks:?} {length}"
            );
        }
    }

    #[test]
    fn errors_are_read_from_the_answer() {
        let answer = ErrorAnswer::read(
            "<?xml version=\"1.0\"?><Error><Code>BadDigest</Code><Message>The Content-MD5 you specified did not match what we received.</Message></Error>",
        );
        assert_eq!(answer.code.as_deref(), Some("BadDigest"));
        assert_eq!(answer.said(http::StatusCode::BAD_REQUEST), "400 Bad Request BadDigest The Content-MD5 you specified did not match what we received.");
        assert_eq!(ErrorAnswer::read("not xml").said(http::StatusCode::BAD_GATEWAY), "502 Bad Gateway");
    }
}
