//! GCS requests object_store does not make: a copy between two buckets of one project
//! by the service itself ([`Copier`], for [`crate::server_copy`]).
//!
//! object_store copies only within one bucket. The copy is the JSON API's `rewrite`,
//! authorised with object_store's own credentials (`GoogleCloudStorage::credentials`,
//! the bearer token object_store sends itself), repeated with its `rewriteToken` until
//! the service says it is done (a large or cross-location copy takes several calls). Its
//! answer gives the copy's MD5 (`md5Hash`) and CRC32C, no SHA-256: such copies are
//! recorded pending (docs/FORMAT.md), their MD5 what their bytes are checked against.

use base64::Engine;
use object_store::client::{HttpClient, HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector};
use object_store::gcp::{GcpCredentialProvider, GoogleCloudStorageBuilder, GoogleConfigKey};
use serde::Deserialize;

use crate::config::StoreSettings;
use crate::s3::under;

/// object_store's default endpoint, where the JSON API lives too.
const DEFAULT_BASE_URL: &str = "https://storage.googleapis.com";

/// Rewrite calls one copy may take before it is given up (and streamed).
const MAX_ROUNDS: usize = 100;

/// A bucket's builder, with every option of the bucket and its HTTP client's.
pub fn builder(settings: &StoreSettings) -> GoogleCloudStorageBuilder {
    settings
        .keyed::<GoogleConfigKey>()
        .fold(GoogleCloudStorageBuilder::new().with_url(settings.url.as_str()), |b, (k, v)| b.with_config(k, v))
        .with_client_options(settings.client_options::<GoogleConfigKey>())
}

/// What the service answered a copy.
pub struct Answer {
    pub status: http::StatusCode,
    /// The copy's MD5 in hex, once done.
    pub md5: Option<String>,
    /// The service's error: its `reason` (`notFound`, `forbidden`…) and message.
    pub reason: Option<String>,
    pub message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RewriteResponse {
    done: bool,
    rewrite_token: Option<String>,
    resource: Option<Resource>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Resource {
    md5_hash: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize, Default)]
struct ErrorDetail {
    message: Option<String>,
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    reason: Option<String>,
}

/// A key as one path segment of the JSON API: every byte but unreserved ones encoded,
/// `/` included.
fn segment(key: &str) -> String {
    key.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { char::from(b).to_string() } else { format!("%{b:02X}") }).collect()
}

/// Copies objects from one bucket to another of the same project.
pub struct Copier {
    base: String,
    credentials: GcpCredentialProvider,
    client: HttpClient,
    source: StoreSettings,
    target: StoreSettings,
}

impl Copier {
    pub fn new(source: &StoreSettings, target: &StoreSettings) -> Result<Copier, String> {
        let builder = builder(target);
        let base = builder.get_config_value(&GoogleConfigKey::BaseUrl).unwrap_or_else(|| DEFAULT_BASE_URL.into()).trim_end_matches('/').to_string();
        let credentials = builder.build().map_err(|e| e.to_string())?.credentials().clone();
        let client = ReqwestConnector::default().connect(&target.client_options::<GoogleConfigKey>()).map_err(|e| e.to_string())?;
        Ok(Copier { base, credentials, client, source: source.clone(), target: target.clone() })
    }

    /// Copies `from_key` of the source to `to_key` of the target (keys under their URL's
    /// prefix).
    pub async fn copy(&self, from_key: &str, to_key: &str) -> Result<Answer, String> {
        let url = format!(
            "{}/storage/v1/b/{}/o/{}/rewriteTo/b/{}/o/{}",
            self.base,
            segment(self.source.url.host_str().unwrap_or_default()),
            segment(&under(&self.source, from_key)),
            segment(self.target.url.host_str().unwrap_or_default()),
            segment(&under(&self.target, to_key)),
        );
        let mut token: Option<String> = None;
        for _ in 0..MAX_ROUNDS {
            let credential = self.credentials.get_credential().await.map_err(|e| format!("no credentials: {e}"))?;
            let uri = match &token {
                Some(t) => format!("{url}?rewriteToken={}", segment(t)),
                None => url.clone(),
            };
            let mut builder = http::Request::builder().method(http::Method::POST).uri(uri).header(http::header::CONTENT_LENGTH, "0");
            if !credential.bearer.is_empty() {
                builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {}", credential.bearer));
            }
            let request: HttpRequest = builder.body(HttpRequestBody::empty()).map_err(|e| format!("cannot build the request: {e}"))?;
            let response = self.client.execute(request).await.map_err(|e| crate::error_chain(&e))?;
            let status = response.status();
            let body = response.into_body().bytes().await.map_err(|e| crate::error_chain(&e))?;
            if !status.is_success() {
                let error = serde_json::from_slice::<ErrorBody>(&body).unwrap_or_default().error;
                let message = error.message.or_else(|| Some(String::from_utf8_lossy(&body).trim().to_string()).filter(|m| !m.is_empty()));
                return Ok(Answer { status, md5: None, reason: error.errors.into_iter().find_map(|e| e.reason), message });
            }
            let rewrite: RewriteResponse = serde_json::from_slice(&body).map_err(|e| format!("an answer that does not parse: {e}"))?;
            if rewrite.done {
                let md5 =
                    rewrite.resource.and_then(|r| r.md5_hash).and_then(|m| base64::engine::general_purpose::STANDARD.decode(m.trim()).ok()).map(hex::encode);
                return Ok(Answer { status, md5, reason: None, message: None });
            }
            token = Some(rewrite.rewrite_token.ok_or("a rewrite not done, without a token to go on")?);
        }
        Err(format!("the rewrite was not done after {MAX_ROUNDS} calls"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_one_path_segment() {
        assert_eq!(segment("chunk/ab.0000000000000001"), "chunk%2Fab.0000000000000001");
        assert_eq!(segment("a b+c%/é"), "a%20b%2Bc%25%2F%C3%A9");
    }
}
