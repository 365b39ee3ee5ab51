//! Azure Blob requests object_store does not make: a copy between two containers of
//! one account by the service itself ([`Copier`], for [`crate::server_copy`]).
//!
//! object_store copies only within one container, and its SharedKey signer is its own;
//! what it does expose is SAS signing ([`Signer::signed_url`]: a service SAS with the
//! account key, a user-delegation SAS with a token). So the copy is a PUT to the
//! destination blob's SAS URL (write permission) naming the source blob's SAS URL
//! (read permission) as `x-ms-copy-source`: no key of ours signs anything.
//!
//! The copy is Copy Blob From URL with `x-ms-requires-sync: true`, answered when done
//! (sources up to 256 MiB; Pachyderm's chunks are at most 20 MB). Put Blob From URL
//! would do as well on Azure, but Azurite (the emulator the tests prove this on)
//! answers it 501, and the asynchronous Copy Blob can leave a copy pending. Neither
//! gives a SHA-256 of what it wrote: such copies are recorded pending
//! (docs/FORMAT.md).

use std::time::Duration;

use object_store::azure::{AzureConfigKey, MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::client::{HttpClient, HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector};
use object_store::path::Path;
use object_store::signer::Signer;

use crate::config::StoreSettings;
use crate::s3::{ErrorAnswer, under};

/// The largest source Copy Blob From URL takes.
pub const MAX_SYNC_COPY: u64 = 256 * 1024 * 1024;

/// How long a copy's SAS URLs are valid: one request's time.
const SAS_LIFETIME: Duration = Duration::from_secs(3600);

/// The Blob service version the copy speaks (the one object_store's SAS are signed for).
const VERSION: &str = "2023-11-03";

/// A container's builder, with every option of the bucket and its HTTP client's.
pub fn builder(settings: &StoreSettings) -> MicrosoftAzureBuilder {
    settings
        .keyed::<AzureConfigKey>()
        .fold(MicrosoftAzureBuilder::new().with_url(settings.url.as_str()), |b, (k, v)| b.with_config(k, v))
        .with_client_options(settings.client_options::<AzureConfigKey>())
}

/// What the service answered a copy.
pub struct Answer {
    pub status: http::StatusCode,
    /// The copy's ETag (quotes trimmed), when it was made.
    pub etag: Option<String>,
    /// `x-ms-copy-status`: `success` for a copy made synchronously.
    pub copy_status: Option<String>,
    pub error: ErrorAnswer,
}

/// Copies blobs from one container to another of the same account.
pub struct Copier {
    source: MicrosoftAzure,
    target: MicrosoftAzure,
    source_settings: StoreSettings,
    target_settings: StoreSettings,
    client: HttpClient,
}

impl Copier {
    pub fn new(source: &StoreSettings, target: &StoreSettings) -> Result<Copier, String> {
        Ok(Copier {
            source: builder(source).build().map_err(|e| e.to_string())?,
            target: builder(target).build().map_err(|e| e.to_string())?,
            source_settings: source.clone(),
            target_settings: target.clone(),
            client: ReqwestConnector::default().connect(&target.client_options::<AzureConfigKey>()).map_err(|e| e.to_string())?,
        })
    }

    /// Copies `from_key` of the source to `to_key` of the target (keys under their URL's
    /// prefix), only if the source still has `etag` when given.
    pub async fn copy(&self, from_key: &str, to_key: &str, etag: Option<&str>) -> Result<Answer, String> {
        let from = Path::from(under(&self.source_settings, from_key));
        let to = Path::from(under(&self.target_settings, to_key));
        let read = self.source.signed_url(http::Method::GET, &from, SAS_LIFETIME).await.map_err(|e| format!("cannot sign the source's URL: {e}"))?;
        let write = self.target.signed_url(http::Method::PUT, &to, SAS_LIFETIME).await.map_err(|e| format!("cannot sign the copy's URL: {e}"))?;
        let mut builder = http::Request::builder()
            .method(http::Method::PUT)
            .uri(write.as_str())
            .header("x-ms-version", VERSION)
            .header("x-ms-copy-source", read.as_str())
            .header("x-ms-requires-sync", "true")
            .header(http::header::CONTENT_LENGTH, "0");
        if let Some(etag) = etag {
            builder = builder.header("x-ms-source-if-match", etag);
        }
        let request: HttpRequest = builder.body(HttpRequestBody::empty()).map_err(|e| format!("cannot build the request: {e}"))?;
        let response = self.client.execute(request).await.map_err(|e| crate::error_chain(&e))?;
        let status = response.status();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim_matches('"').to_string());
        let (etag, copy_status) = (header("etag"), header("x-ms-copy-status"));
        let body = response.into_body().bytes().await.map_err(|e| crate::error_chain(&e))?;
        Ok(Answer { status, etag, copy_status, error: ErrorAnswer::read(&String::from_utf8_lossy(&body)) })
    }
}
