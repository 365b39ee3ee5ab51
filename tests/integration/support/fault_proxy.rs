//! A fault-injecting HTTP reverse proxy in front of an S3 server (moto): the wire
//! between pachyderm-backup and its buckets, made hostile on demand. It forwards
//! every request as it came (method, path, query, headers including Host: moto does
//! not check SigV4 signatures) and streams bodies both ways; the rules (`Faults`) say
//! which requests are answered with S3 errors, which connections are reset mid-body,
//! which object bodies arrive truncated or with a flipped byte, and how listings are
//! paged and cut. Randomness is deterministic: drawn from the seed and a request
//! counter (and from the key, for flips). Every request is recorded with the fault
//! applied to it.
//!
//! A "reset" sets SO_LINGER to zero on the client's connection before it is closed,
//! so the client sees a TCP RST; a "truncation" closes it normally (FIN) after fewer
//! bytes than the Content-Length announced.

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// The rules. `Faults::default()` forwards everything untouched.
#[derive(Clone, Default, Debug)]
pub struct Faults {
    pub seed: u64,
    /// Share of requests answered at once with 500 InternalError or 503 SlowDown (S3 XML
    /// error body, alternating), never forwarded (the request body is read first).
    pub error_rate: f64,
    /// Share of object GETs whose response body is cut after about half its bytes by a
    /// connection reset.
    pub reset_get_rate: f64,
    /// Share of object PUTs (UploadPart included, CopyObject not) whose request body is
    /// read and then answered by a connection reset: never forwarded, no response.
    pub reset_put_rate: f64,
    /// Share of object GETs whose body is truncated: Content-Length kept, about half the
    /// bytes sent, then the connection closed (FIN, not RST).
    pub truncate_get_rate: f64,
    /// Share of objects (chosen per key from the seed) whose first GET body (the first
    /// one answered 200/206 since the rules were set) has its middle byte flipped (xor
    /// 0xff); later GETs of the key are clean. Status and headers unchanged (the ETag
    /// is still the original MD5).
    pub flip_first_get_rate: f64,
    /// Extra latency before each response.
    pub latency: Duration,
    /// Rewrites `max-keys` of ListObjectsV2 requests (`list-type=2`) to this value, so
    /// listings come in many small pages.
    pub max_keys: Option<u32>,
    /// Which ListObjectsV2 requests (1-based count of those seen since the rules were
    /// set, among the ones the rules apply to) get their body cut half-way by a reset.
    pub reset_list_pages: Vec<usize>,
    /// Only requests whose path starts with this are faulted (e.g. "/pach-data": the
    /// source bucket only); None: all.
    pub only_path_prefix: Option<String>,
    /// Only requests of this method (e.g. "GET": a file read back, not its upload) are
    /// faulted; None: all.
    pub only_method: Option<&'static str>,
    /// Answer every CopyObject (a PUT with `x-amz-copy-source`) with 403 AccessDenied,
    /// never forwarded: a store whose copier may not read the source.
    pub refuse_copy: bool,
}

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The query as forwarded (after a `max-keys` rewrite).
    pub query: String,
    /// The status sent (injected or upstream's); 0 when the connection was reset
    /// before any response.
    pub status: u16,
    /// `error500`, `error503`, `reset_put`, `reset_get`, `truncate_get`, `flip`,
    /// `reset_list`, `refuse_copy`, or None for a request forwarded untouched.
    pub fault: Option<String>,
    /// Response body bytes sent to the client.
    pub body_bytes_out: u64,
    /// A CopyObject: the request named a source (`x-amz-copy-source`).
    pub copy_source: bool,
    /// The request carried `Content-MD5`.
    pub content_md5: bool,
    /// The request's `x-amz-content-sha256` was `UNSIGNED-PAYLOAD` (headers signed only).
    pub unsigned_payload: bool,
    /// The request's announced `Content-Length`.
    pub content_length: Option<u64>,
}

impl Recorded {
    pub fn is_object_get(&self) -> bool {
        self.method == "GET" && Kind::classify(&self.method, &self.path, &self.query, false) == Kind::ObjectGet
    }

    pub fn is_list(&self) -> bool {
        self.method == "GET" && has_param(&self.query, "list-type")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ObjectGet,
    ObjectPut,
    ListV2,
    Other,
}

/// Query parameters that make a GET or PUT on a key something else than the object's
/// bytes (ACLs, tags, multipart listings…).
const SUBRESOURCES: &[&str] =
    &["list-type", "uploads", "uploadId", "location", "acl", "tagging", "versioning", "versions", "retention", "legal-hold", "attributes"];

fn has_param(query: &str, name: &str) -> bool {
    query.split('&').any(|p| p.split('=').next() == Some(name))
}

impl Kind {
    fn classify(method: &str, path: &str, query: &str, copy_source: bool) -> Kind {
        let has_key = path.trim_start_matches('/').split_once('/').is_some_and(|(_, key)| !key.is_empty());
        match method {
            "GET" if query.split('&').any(|p| p == "list-type=2") => Kind::ListV2,
            "GET" if has_key && !SUBRESOURCES.iter().any(|s| has_param(query, s)) => Kind::ObjectGet,
            // UploadPart carries partNumber and uploadId: it is an object PUT.
            "PUT" if has_key && !copy_source && !SUBRESOURCES.iter().filter(|s| **s != "uploadId").any(|s| has_param(query, s)) => Kind::ObjectPut,
            _ => Kind::Other,
        }
    }
}

/// What the rules decided for one request before it is forwarded.
#[derive(Default)]
struct Decision {
    applies: bool,
    latency: Duration,
    error: Option<(u16, &'static str, &'static str)>,
    reset_put: bool,
    cut_list: bool,
    get_fault: Option<&'static str>,
    forwarded_query: String,
}

#[derive(Default)]
struct Rules {
    faults: Faults,
    requests: u64,
    lists: usize,
    errors: u64,
    flipped: HashSet<String>,
}

struct Slot {
    id: u64,
    recorded: Recorded,
    bytes: Arc<AtomicU64>,
}

struct Shared {
    upstream: u16,
    client: Client<HttpConnector, Body>,
    rules: Mutex<Rules>,
    log: Mutex<Vec<Slot>>,
    next_id: AtomicU64,
}

pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on 127.0.0.1 (a free port) forwarding to 127.0.0.1:`upstream_port`.
    pub async fn start(upstream_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fault proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(5)).build_http();
        let shared =
            Arc::new(Shared { upstream: upstream_port, client, rules: Mutex::new(Rules::default()), log: Mutex::new(Vec::new()), next_id: AtomicU64::new(0) });
        let accept = tokio::spawn({
            let shared = shared.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let reset = Arc::new(AtomicBool::new(false));
                        let io = TokioIo::new(Sock { stream, reset: reset.clone() });
                        let service = hyper::service::service_fn(move |req| handle(shared.clone(), reset.clone(), req));
                        let _ = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(io, service).await;
                    });
                }
            }
        });
        FaultProxy { port, shared, accept }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Replaces the rules; the request and LIST counters and the set of keys already
    /// flipped start again.
    pub fn set(&self, faults: Faults) {
        *self.shared.rules.lock().expect("rules") = Rules { faults, ..Rules::default() };
    }

    /// Every request seen (since the last `clear_requests`), in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.log.lock().expect("log").iter().map(|s| Recorded { body_bytes_out: s.bytes.load(Ordering::Relaxed), ..s.recorded.clone() }).collect()
    }

    /// The requests a fault was applied to.
    pub fn faulted(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.fault.is_some()).collect()
    }

    pub fn clear_requests(&self) {
        self.shared.log.lock().expect("log").clear();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The client's connection: resets (RST) instead of closing when `reset` is set.
struct Sock {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for Sock {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for Sock {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Sock {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A number in [0, 1) from the seed, a counter and a salt (one per kind of fault).
fn draw(seed: u64, n: u64, salt: u64) -> f64 {
    let x = splitmix(seed ^ splitmix(n ^ splitmix(salt)));
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn key_draw(seed: u64, key: &str) -> f64 {
    // FNV-1a of the key, then mixed with the seed.
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    draw(seed, h, 0xF11F)
}

fn decide(rules: &mut Rules, method: &str, path: &str, query: &str, kind: Kind) -> Decision {
    let f = &rules.faults;
    let applies = f.only_path_prefix.as_deref().is_none_or(|p| path.starts_with(p)) && f.only_method.is_none_or(|m| m == method);
    let mut d = Decision { applies, forwarded_query: query.to_string(), ..Decision::default() };
    if !applies {
        return d;
    }
    rules.requests += 1;
    let (seed, n) = (f.seed, rules.requests);
    d.latency = f.latency;
    if kind == Kind::ListV2 {
        rules.lists += 1;
        if let Some(max) = f.max_keys {
            let mut params: Vec<String> = query.split('&').filter(|p| !p.is_empty() && p.split('=').next() != Some("max-keys")).map(str::to_string).collect();
            params.push(format!("max-keys={max}"));
            d.forwarded_query = params.join("&");
        }
    }
    if draw(seed, n, 1) < f.error_rate {
        rules.errors += 1;
        d.error = Some(if rules.errors % 2 == 1 {
            (500, "InternalError", "We encountered an internal error. Please try again.")
        } else {
            (503, "SlowDown", "Please reduce your request rate.")
        });
        return d;
    }
    match kind {
        Kind::ObjectPut => d.reset_put = draw(seed, n, 2) < f.reset_put_rate,
        Kind::ListV2 => d.cut_list = f.reset_list_pages.contains(&rules.lists),
        Kind::ObjectGet => {
            d.get_fault = if draw(seed, n, 3) < f.reset_get_rate {
                Some("reset_get")
            } else if draw(seed, n, 4) < f.truncate_get_rate {
                Some("truncate_get")
            } else if key_draw(seed, path) < f.flip_first_get_rate && !rules.flipped.contains(path) {
                // Taken now, so that two first GETs at once flip one body only.
                rules.flipped.insert(path.to_string());
                Some("flip")
            } else {
                None
            };
        }
        Kind::Other => {}
    }
    d
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers a `Connection` header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .filter_map(|s| HeaderName::from_bytes(s.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in ["connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"] {
        headers.remove(name);
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// About `keep` bytes of `bytes`, then the body fails: hyper aborts the connection,
/// with a reset when `reset` is given (a normal close otherwise).
fn cut_body(bytes: Bytes, keep: usize, reset: Option<Arc<AtomicBool>>, sent: Arc<AtomicU64>, what: &'static str) -> Body {
    let head = bytes.slice(..keep.min(bytes.len()));
    sent.fetch_add(head.len() as u64, Ordering::Relaxed);
    let first = futures::stream::iter([Ok::<_, BoxError>(Frame::data(head))]);
    let last = futures::stream::once(async move {
        // Let the first half leave before the connection goes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(flag) = reset {
            flag.store(true, Ordering::SeqCst);
        }
        Err::<Frame<Bytes>, BoxError>(format!("fault proxy: {what}").into())
    });
    BodyExt::boxed(StreamBody::new(first.chain(last)))
}

async fn handle(shared: Arc<Shared>, conn_reset: Arc<AtomicBool>, req: Request<Incoming>) -> Result<Response<Body>, BoxError> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let copy_source = req.headers().contains_key("x-amz-copy-source") || req.headers().contains_key("x-ms-copy-source");
    let content_md5 = req.headers().contains_key("content-md5");
    let unsigned_payload = req.headers().get("x-amz-content-sha256").is_some_and(|v| v == "UNSIGNED-PAYLOAD");
    let content_length = req.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse().ok());
    let kind = Kind::classify(&method, &path, &query, copy_source);
    let d = decide(&mut shared.rules.lock().expect("rules"), &method, &path, &query, kind);
    let refuse_copy = d.applies && copy_source && method == "PUT" && shared.rules.lock().expect("rules").faults.refuse_copy;

    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let sent = Arc::new(AtomicU64::new(0));
    shared.log.lock().expect("log").push(Slot {
        id,
        recorded: Recorded {
            method: method.clone(),
            path: path.clone(),
            query: d.forwarded_query.clone(),
            status: 0,
            fault: None,
            body_bytes_out: 0,
            copy_source,
            content_md5,
            unsigned_payload,
            content_length,
        },
        bytes: sent.clone(),
    });
    let record = |status: u16, fault: Option<&str>| {
        let mut log = shared.log.lock().expect("log");
        if let Some(slot) = log.iter_mut().rev().find(|s| s.id == id) {
            slot.recorded.status = status;
            slot.recorded.fault = fault.map(str::to_string);
        }
    };

    if d.applies && !d.latency.is_zero() {
        tokio::time::sleep(d.latency).await;
    }

    let error = match refuse_copy {
        true => Some((403, "AccessDenied", "Access Denied")),
        false => d.error,
    };
    if let Some((status, code, message)) = error {
        // Read the request first: the client gets the error, not a broken pipe.
        let _ = req.into_body().collect().await;
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><Resource>{path}</Resource><RequestId>fault-proxy-{id}</RequestId></Error>"
        );
        record(
            status,
            Some(match status {
                403 => "refuse_copy",
                500 => "error500",
                _ => "error503",
            }),
        );
        sent.fetch_add(body.len() as u64, Ordering::Relaxed);
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/xml")
            .header("content-length", body.len())
            .header("x-amz-request-id", format!("fault-proxy-{id}"))
            .body(full(body))?;
        return Ok(response);
    }

    if d.reset_put {
        let _ = req.into_body().collect().await;
        record(0, Some("reset_put"));
        conn_reset.store(true, Ordering::SeqCst);
        return Err("fault proxy: PUT dropped by a connection reset".into());
    }

    let (mut parts, body) = req.into_parts();
    let target = if d.forwarded_query.is_empty() {
        format!("http://127.0.0.1:{}{path}", shared.upstream)
    } else {
        format!("http://127.0.0.1:{}{path}?{}", shared.upstream, d.forwarded_query)
    };
    parts.uri = target.parse()?;
    strip_hop_by_hop(&mut parts.headers);
    let upstream_request = Request::from_parts(parts, body.map_err(|e| Box::new(e) as BoxError).boxed());
    let response = match shared.client.request(upstream_request).await {
        Ok(r) => r,
        Err(e) => {
            let body = format!("fault proxy: upstream failed: {e}");
            record(502, None);
            sent.fetch_add(body.len() as u64, Ordering::Relaxed);
            return Ok(Response::builder().status(StatusCode::BAD_GATEWAY).header("content-length", body.len()).body(full(body))?);
        }
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let status = parts.status.as_u16();
    let success = parts.status.is_success();

    let fault = match (d.cut_list, d.get_fault) {
        (true, _) if success => Some("reset_list"),
        (false, Some(f)) if success => Some(f),
        _ => None,
    };
    if d.get_fault == Some("flip") && fault.is_none() {
        // Not answered with a body: the key's first GET is still to come.
        shared.rules.lock().expect("rules").flipped.remove(&path);
    }
    let Some(fault) = fault else {
        record(status, None);
        let counter = sent.clone();
        let body = body
            .map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                frame
            })
            .map_err(|e| Box::new(e) as BoxError)
            .boxed();
        return Ok(Response::from_parts(parts, body));
    };

    let bytes = body.collect().await?.to_bytes();
    record(status, Some(fault));
    let (total, half) = (bytes.len() as u64, bytes.len() / 2);
    let body = match fault {
        "reset_list" | "reset_get" => cut_body(bytes, half, Some(conn_reset), sent, fault),
        "truncate_get" => cut_body(bytes, half, None, sent, fault),
        _ => {
            let mut flipped = bytes.to_vec();
            if let Some(b) = flipped.get_mut(half) {
                *b ^= 0xff;
            }
            sent.fetch_add(flipped.len() as u64, Ordering::Relaxed);
            full(flipped)
        }
    };
    // The whole length is announced (as upstream did): a cut body must be noticed.
    parts.headers.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(total));
    Ok(Response::from_parts(parts, body))
}
