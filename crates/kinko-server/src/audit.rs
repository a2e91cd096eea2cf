//! The audit trail at the edges (L2, L4–L6): the audit key file, the sink every action is written to, the
//! HTTP layer that records each request before its handler runs, the log inspector's views and the
//! periodic inspection report. The chain itself is `kinko_core::audit`; storage is `kinko_store::audit`.
//!
//! **Where the audit key lives.** Not in the database: whoever can write the database could otherwise
//! re-sign a forged chain. `kinko init` creates `audit-key.json` in the data directory (mode 0600, created
//! atomically, never overwritten) and prints its public key for the auditor to keep outside the system;
//! the first entry of the chain (the genesis) pins the same key, and `kinko audit verify --public-key`
//! checks against the copy the auditor kept. The file is plain (not wrapped by the KEK): `kinko serve`
//! must sign entries unattended and never holds the KEK, which stays in the signer process. So the limit
//! is: someone who can read the data directory of a server host can forge entries; someone who can only
//! write the database cannot. Dev mode creates the file on first use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kinko_core::audit::{ActorKind, AuditKey, Finding, Record, RequestFacts, SignedEntry, clip};
use kinko_store::Store;
use kinko_store::audit::{AuditFilter, AuditReportRow, AuditRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use zeroize::Zeroizing;

use crate::AppState;
use crate::api::ops_auth::Operator;
use crate::api::ops_requests::require_endpoint;
use crate::api::problem::Problem;
use crate::clock::now_ms;

/// The audit key's file name in the data directory.
pub const AUDIT_KEY_FILE: &str = "audit-key.json";
const KEY_FILE_VERSION: u32 = 1;
/// Default interval of the periodic inspection report: daily.
pub const INSPECTION_INTERVAL_DEFAULT_MS: u64 = 24 * 3_600_000;
/// Bound on operator requests and key access log rows one inspection looks at.
pub const INSPECTION_ROWS_MAX: i64 = 1_000;

/// `[audit]`: where the audit key lives and how often the inspection report runs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The audit key file; default `data_dir/audit-key.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The audit public key (hex) the auditor expects; `kinko serve` refuses to start and `kinko audit
    /// verify` fails when the chain pins another one. Unset: only the command-line flag pins it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Milliseconds between inspection reports written by `kinko serve`; 0 turns them off.
    #[serde(default = "default_interval")]
    pub inspection_interval_ms: u64,
    /// Who the report's webhook notice is addressed to (sent only when `notices.webhook_url` is set).
    #[serde(default = "default_report_recipient")]
    pub report_recipient: String,
}

fn default_report_recipient() -> String {
    "ops".into()
}

fn default_interval() -> u64 {
    INSPECTION_INTERVAL_DEFAULT_MS
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            key_file: None,
            public_key: None,
            inspection_interval_ms: INSPECTION_INTERVAL_DEFAULT_MS,
            report_recipient: default_report_recipient(),
        }
    }
}

/// The configured audit key file.
pub fn key_path(config: &crate::Config) -> PathBuf {
    config.audit.key_file.clone().unwrap_or_else(|| config.data_dir.join(AUDIT_KEY_FILE))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    public_key: String,
    secret_key: Zeroizing<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> AuditKeyError {
    AuditKeyError::File { path: path.to_path_buf(), reason: reason.to_string() }
}

/// Reads the audit key; refuses a file group or others may read, or whose public key does not match.
pub fn read_key_file(path: &Path) -> Result<AuditKey, AuditKeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(|e| file_error(path, e))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(file_error(path, format!("mode {:o} lets group or others read it; chmod 600", mode & 0o777)));
        }
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| file_error(path, e))?);
    let file: KeyFile = serde_json::from_str(&text).map_err(|_| file_error(path, "not an audit key file"))?;
    if file.version != KEY_FILE_VERSION {
        return Err(file_error(path, format!("unsupported version {}", file.version)));
    }
    let mut secret = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(file.secret_key.as_str(), &mut secret[..])
        .map_err(|_| file_error(path, "secret_key is not 32 bytes of hex"))?;
    let key = AuditKey::from_secret_bytes(&secret);
    if key.public_key_hex() != file.public_key {
        return Err(file_error(path, "public_key does not belong to secret_key"));
    }
    Ok(key)
}

/// Creates the audit key file (mode 0600) unless it exists, and returns the key in it and whether it was
/// created. Written to a temporary file and linked into place, so two processes starting at once end up
/// with one key and nobody reads a half-written file.
pub fn ensure_key_file(path: &Path) -> Result<(AuditKey, bool), AuditKeyError> {
    if path.exists() {
        return Ok((read_key_file(path)?, false));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| file_error(path, e))?;
    }
    let mut secret = Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret[..]);
    let key = AuditKey::from_secret_bytes(&secret);
    let file = KeyFile {
        version: KEY_FILE_VERSION,
        public_key: key.public_key_hex(),
        secret_key: Zeroizing::new(hex::encode(&secret[..])),
    };
    let text = Zeroizing::new(serde_json::to_string_pretty(&file).map_err(|e| file_error(path, e))?);
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    let written = write().and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok((key, true)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok((read_key_file(path)?, false)),
        Err(e) => Err(file_error(path, e)),
    }
}

/// The audit log could not be written: the action it records must not happen.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit log unavailable: {0}")]
pub struct AuditUnavailable(pub String);

/// Where every action is recorded. Cheap to clone. Holds the key or the reason there is none, so a
/// missing or unreadable key fails each action (closed) with that reason.
#[derive(Clone)]
pub struct AuditSink {
    store: Store,
    key: Result<Arc<AuditKey>, String>,
    /// The instance name, the terminal of system actions.
    instance: String,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink").field("key", &self.key).field("instance", &self.instance).finish()
    }
}

impl AuditSink {
    pub fn new(store: Store, key: Arc<AuditKey>, instance: &str) -> AuditSink {
        AuditSink { store, key: Ok(key), instance: instance.into() }
    }

    /// The sink for `config`: reads the key file (dev mode creates it when missing).
    pub fn from_config(store: Store, config: &crate::Config) -> AuditSink {
        let path = key_path(config);
        let key = if config.dev { ensure_key_file(&path).map(|(k, _)| k) } else { read_key_file(&path) };
        let key = key.map(Arc::new).map_err(|e| {
            tracing::error!(error = %e, "no usable audit key: every audited action will be refused");
            e.to_string()
        });
        AuditSink { store, key, instance: config.instance_id.clone() }
    }

    fn key(&self) -> Result<&AuditKey, AuditUnavailable> {
        self.key.as_deref().map_err(|e| AuditUnavailable(e.clone()))
    }

    /// Whether the key is there and matches the one the chain pins (and `expected`, when configured).
    pub async fn check(&self, expected: Option<&str>) -> Result<String, AuditUnavailable> {
        let mine = self.key()?.public_key_hex();
        if let Some(e) = expected
            && !e.trim().eq_ignore_ascii_case(&mine)
        {
            return Err(AuditUnavailable(format!("the audit key file holds {mine}, but [audit] public_key is {e}")));
        }
        let head = self.store.audit_head().await.map_err(|e| AuditUnavailable(e.to_string()))?;
        if !head.public_key.is_empty() && head.public_key != mine {
            return Err(AuditUnavailable(format!(
                "the audit log is pinned to audit key {}, but this instance holds {mine}",
                head.public_key
            )));
        }
        Ok(mine)
    }

    /// Appends an entry in its own transaction; durable when this returns.
    pub async fn append(&self, record: Record) -> Result<SignedEntry, AuditUnavailable> {
        let key = self.key()?;
        self.store.audit_append(key, record, now_ms()).await.map_err(|e| {
            tracing::error!(error = %e, "audit log write failed");
            AuditUnavailable(e.to_string())
        })
    }

    /// Appends an entry inside the caller's write transaction, so it commits with the change it records.
    pub async fn append_tx(&self, tx: &mut kinko_store::Tx, record: Record) -> Result<SignedEntry, AuditUnavailable> {
        let key = self.key()?;
        self.store.audit_append_tx(tx, key, record, now_ms()).await.map_err(|e| AuditUnavailable(e.to_string()))
    }

    /// A system action: `component` (e.g. `pipeline`) acting on `object`; `digest` is what the action is
    /// about (e.g. the sha256 of the payload about to be signed).
    pub async fn system(
        &self,
        component: &str,
        action: &str,
        object: &str,
        digest: [u8; 32],
        outcome: &str,
    ) -> Result<SignedEntry, AuditUnavailable> {
        self.append(system_record(component, &self.instance, action, object, digest, outcome)).await
    }
}

/// A system action's record.
pub fn system_record(
    component: &str,
    instance: &str,
    action: &str,
    object: &str,
    digest: [u8; 32],
    outcome: &str,
) -> Record {
    Record {
        actor_kind: ActorKind::System,
        actor_id: clip(component),
        role: "system".into(),
        terminal: clip(instance),
        action: clip(action),
        object: clip(object),
        request_digest: digest,
        outcome: clip(outcome),
    }
}

/// Records the deposit watcher's credits and reversals (`(action, deposit id)`), removing each once it is
/// recorded. Returns whether all are; the watcher scans no further until they are.
pub async fn record_deposits(sink: &AuditSink, pending: &mut Vec<(&'static str, String)>) -> bool {
    while let Some((action, id)) = pending.first() {
        let object = format!("deposit:{id}");
        match sink.system("deposit-watcher", action, &object, Record::digest(id.as_bytes()), "committed").await {
            Ok(_) => {
                pending.remove(0);
            }
            Err(e) => {
                tracing::error!(error = %e, deposit = %id, "deposit watcher paused: its credits cannot be recorded");
                return false;
            }
        }
    }
    true
}

/// `kinko init`: creates the audit key file when missing and writes the genesis (and an `init` entry).
/// Returns the public key, for the auditor to keep.
pub async fn init(store: &Store, config: &crate::Config) -> Result<(String, bool), AuditUnavailable> {
    let (key, created) = ensure_key_file(&key_path(config)).map_err(|e| AuditUnavailable(e.to_string()))?;
    let sink = AuditSink::new(store.clone(), Arc::new(key), &config.instance_id);
    let public = sink.check(config.audit.public_key.as_deref()).await?;
    sink.system("kinko-init", "system.init", "custody", Record::digest(b""), "ok").await?;
    Ok((public, created))
}

/// Why a stored chain did not verify.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("{0}")]
    Bad(#[from] kinko_core::audit::VerifyError),
    #[error("first bad entry: seq {seq} (position {position}): the row cannot be decoded: {reason}")]
    Undecodable { seq: i64, position: u64, reason: String },
    #[error("store: {0}")]
    Store(#[from] kinko_store::StoreError),
}

/// Verifies the stored chain page by page (`kinko audit verify`, and a restored backup): against `pinned`
/// when given, and reaching at least `min_seq` and the head row's seq. `progress` gets each entry count.
pub async fn verify_store(
    store: &Store,
    pinned: Option<ed25519_dalek::VerifyingKey>,
    min_seq: u64,
    mut progress: impl FnMut(u64),
) -> Result<kinko_core::audit::Verified, ChainError> {
    let head = store.audit_head().await?;
    let mut v = kinko_core::audit::Verifier::new(pinned);
    let mut after = 0_i64;
    let mut position = 0_u64;
    loop {
        let rows = store.audit_rows(after, kinko_store::audit::AUDIT_PAGE_MAX).await?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        for r in &rows {
            position += 1;
            let entry = r.to_signed().map_err(|reason| ChainError::Undecodable { seq: r.seq, position, reason })?;
            v.push(&entry)?;
            progress(position);
        }
    }
    // The head row is in the same database, so it only catches a careless cut; `min_seq` from a head kept
    // elsewhere catches a careful one.
    let floor = min_seq.max(u64::try_from(head.seq).unwrap_or(0));
    Ok(v.finish_at_least(floor)?)
}

// ---------------------------------------------------------------------------------------------------
// The HTTP layer.

/// State of the HTTP audit layer.
#[derive(Clone)]
pub struct AuditLayer {
    sink: AuditSink,
    state: AppState,
}

impl AuditLayer {
    pub fn new(state: &AppState) -> AuditLayer {
        AuditLayer { sink: AuditSink::from_config(state.store.clone(), &state.config), state: state.clone() }
    }
}

/// Which requests are recorded: everything that may change something (every method but GET, HEAD and
/// OPTIONS: customer actions, logins, operator actions) and every operator API call, reads included.
fn audited(method: &Method, path: &str) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) || path.starts_with("/v1/ops/")
}

/// `METHOD /route/{template}` for a path, so the inspector can search by action; the path itself is the
/// object. Unknown routes keep their path.
fn action_of(method: &Method, path: &str) -> String {
    let segments: Vec<&str> = path.split('/').collect();
    let m = method.as_str().to_ascii_lowercase();
    let template = crate::api::ROUTES.iter().find(|(rm, template)| {
        let t: Vec<&str> = template.split('/').collect();
        *rm == m
            && t.len() == segments.len()
            && t.iter().zip(&segments).all(|(a, b)| a == b || (a.starts_with('{') && a.ends_with('}')))
    });
    format!("{} {}", method.as_str(), template.map(|(_, t)| *t).unwrap_or(path))
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| token.to_ascii_lowercase())
}

/// Who is calling: the holder of the bearer token (an operator with their current roles, or a customer),
/// else anonymous — naming the account a login claims, which is how failed logins stay attributable (L5).
async fn actor(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
    body: &[u8],
) -> Result<(ActorKind, String, String), AuditUnavailable> {
    let db = |e: kinko_store::StoreError| AuditUnavailable(e.to_string());
    // A web console request (#8) carries the same session token in its cookie (the operator console's in
    // its own cookie).
    let cookie_token = || crate::web::session_token(headers).or_else(|| crate::web::ops::session_token(headers));
    if let Some(token) = bearer(headers).or_else(cookie_token) {
        let hash = crate::api::ops_auth::sha256_hex(&token);
        if let Some(s) = state.store.operator_session(&hash).await.map_err(db)? {
            let now = now_ms();
            let roles = match crate::api::ops_registry::load_registry(state, now).await {
                Ok(r) => r
                    .operator(&s.operator_id)
                    .filter(|o| !o.revoked)
                    .map(|o| o.active_roles(now).iter().map(|r| r.as_str()).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                Err(_) => "unknown (registry does not verify)".into(),
            };
            return Ok((ActorKind::Operator, s.operator_id, roles));
        }
        if let Some(row) = state.store.session_with_step_up(&crate::api::auth::token_hash(&token)).await.map_err(db)? {
            return Ok((ActorKind::Customer, row.session.customer_id, "customer".into()));
        }
    }
    let claimed = if path == "/v1/sessions" || path == "/v1/ops/sessions" || path == "/v1/ops/enrolments" {
        serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|v| {
            ["operator_id", "email"].iter().find_map(|f| v.get(*f).and_then(|x| x.as_str()).map(str::to_string))
        })
    } else if path == "/login" {
        crate::web::claimed_email(body)
    } else {
        None
    };
    Ok((ActorKind::Anonymous, claimed.unwrap_or_default(), "anonymous".into()))
}

fn unavailable(e: &AuditUnavailable) -> Response {
    tracing::error!(error = %e, "refusing a request: its audit entry could not be written");
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "audit-unavailable", "audit log unavailable")
        .detail("the action was not performed because its audit entry could not be written; try again later")
        .into_response()
}

/// The layer: records the request (actor, role, terminal, action, object, sha256 of the body) BEFORE the
/// handler runs — if that fails the handler does not run and the answer is 503 — and its outcome after.
pub async fn record_request(State(layer): State<AuditLayer>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if !audited(req.method(), &path) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let limit = crate::api::extract::BODY_LIMIT_BYTES;
    let (bytes, too_large) = match axum::body::to_bytes(body, limit).await {
        Ok(b) => (b, false),
        Err(_) => (axum::body::Bytes::new(), true),
    };
    let (kind, actor_id, role) = match actor(&layer.state, &parts.headers, &path, &bytes).await {
        Ok(a) => a,
        Err(e) => return unavailable(&e),
    };
    let terminal = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let object = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let mut record = Record {
        actor_kind: kind,
        actor_id: clip(&actor_id),
        role: clip(&role),
        terminal: clip(&terminal),
        action: clip(&action_of(&parts.method, &path)),
        object: clip(&object),
        request_digest: Record::digest(&bytes),
        outcome: if too_large { "refused: body too large".into() } else { "attempt".into() },
    };
    let attempt = match layer.sink.append(record.clone()).await {
        Ok(e) => e.entry.seq,
        Err(e) => return unavailable(&e),
    };
    if too_large {
        return Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", "request body too large")
            .detail(format!("request bodies are limited to {limit} bytes"))
            .into_response();
    }
    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    record.outcome = format!("{} (attempt {attempt})", response.status().as_u16());
    if let Err(e) = layer.sink.append(record).await {
        // The action has happened; answering 503 now would invite a retry of something already done.
        tracing::error!(error = %e, attempt, "the outcome of an audited request could not be recorded");
    }
    response
}

// ---------------------------------------------------------------------------------------------------
// The log inspector's views.

#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// Entries after this seq.
    pub after: Option<i64>,
    /// Exact actor id.
    pub actor: Option<String>,
    /// Action prefix, e.g. `POST /v1/withdrawals` or `system.`.
    pub action: Option<String>,
    /// At most this many (default and maximum 1000).
    pub limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditEntryView {
    pub seq: i64,
    pub at_ms: i64,
    pub actor_kind: String,
    pub actor_id: String,
    pub role: String,
    pub terminal: String,
    pub action: String,
    pub object: String,
    pub request_digest: String,
    pub outcome: String,
    pub prev_hash: String,
    pub hash: String,
    pub signature: String,
}

impl From<AuditRow> for AuditEntryView {
    fn from(r: AuditRow) -> Self {
        AuditEntryView {
            seq: r.seq,
            at_ms: r.at_ms,
            actor_kind: r.actor_kind,
            actor_id: r.actor_id,
            role: r.role,
            terminal: r.terminal,
            action: r.action,
            object: r.object,
            request_digest: r.request_digest,
            outcome: r.outcome,
            prev_hash: r.prev_hash,
            hash: r.hash,
            signature: r.signature,
        }
    }
}

/// Searches the audit trail (log inspectors and administrators).
#[utoipa::path(
    get, path = "/v1/ops/audit", tag = "operators", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = [AuditEntryView]))
)]
pub async fn search(
    State(state): State<AppState>,
    op: Operator,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntryView>>, Problem> {
    require_endpoint(&op, "get", "/v1/ops/audit")?;
    let filter = AuditFilter {
        after_seq: q.after.unwrap_or(0),
        actor_id: q.actor.unwrap_or_default(),
        action_prefix: q.action.unwrap_or_default(),
    };
    let rows = state.store.audit_search(&filter, q.limit.unwrap_or(kinko_store::audit::AUDIT_PAGE_MAX)).await?;
    Ok(Json(rows.into_iter().map(AuditEntryView::from).collect()))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct KeyAccessQuery {
    /// One key's log; all keys when absent.
    pub key_id: Option<String>,
    /// Rows after this time (ms since the epoch).
    pub after: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyAccessView {
    pub id: String,
    pub at_ms: i64,
    pub key_id: String,
    pub operation: String,
    pub payload_sha256: String,
    pub intent_hash: String,
    pub actor: String,
    pub terminal: String,
    #[schema(value_type = Object)]
    pub approvers: serde_json::Value,
    /// For a signature: whether an approved intent (withdrawal or operator request) stands behind it (L2).
    pub approved_intent: Option<bool>,
}

/// The key access log, searchable, each signature cross-checked against the approved intents (L2).
#[utoipa::path(
    get, path = "/v1/ops/key-access-log", tag = "operators", security(("bearer" = [])), params(KeyAccessQuery),
    responses((status = 200, body = [KeyAccessView]))
)]
pub async fn key_access_log(
    State(state): State<AppState>,
    op: Operator,
    Query(q): Query<KeyAccessQuery>,
) -> Result<Json<Vec<KeyAccessView>>, Problem> {
    require_endpoint(&op, "get", "/v1/ops/key-access-log")?;
    let rows = state
        .store
        .key_access_search(q.key_id.as_deref().unwrap_or(""), q.after.unwrap_or(i64::MIN), INSPECTION_ROWS_MAX)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let approved_intent =
            if r.operation == "sign" { Some(state.store.approved_intent_exists(&r.intent_hash).await?) } else { None };
        out.push(KeyAccessView {
            approvers: serde_json::from_str(&r.approvers_json).unwrap_or(serde_json::Value::Null),
            id: r.id,
            at_ms: r.at_ms,
            key_id: r.key_id,
            operation: r.operation,
            payload_sha256: r.payload_sha256,
            intent_hash: r.intent_hash,
            actor: r.actor,
            terminal: r.terminal,
            approved_intent,
        });
    }
    Ok(Json(out))
}

#[derive(Serialize, Deserialize, ToSchema, Clone, Debug)]
pub struct FindingView {
    pub code: String,
    pub subject: String,
    pub detail: String,
}

impl From<Finding> for FindingView {
    fn from(f: Finding) -> Self {
        FindingView { code: f.code.into(), subject: f.subject, detail: f.detail }
    }
}

#[derive(Serialize, Deserialize, ToSchema, Clone, Debug)]
pub struct RequestInspectionView {
    pub id: String,
    pub process: String,
    pub kind: String,
    pub state: String,
    pub requester: String,
    pub required: i64,
    pub approvers: Vec<String>,
    pub executor: Option<String>,
    pub executed_at_ms: Option<i64>,
    pub findings: Vec<FindingView>,
}

#[derive(Serialize, Deserialize, ToSchema, Clone, Debug)]
pub struct InspectionReport {
    pub at_ms: i64,
    /// The audit chain's head at the time: keep it outside the system to detect entries cut off later.
    pub audit_head_seq: i64,
    pub audit_head_hash: String,
    /// Operator requests, approvals set beside execution, per process.
    pub requests: Vec<RequestInspectionView>,
    /// Key access log signatures checked against approved intents.
    pub signatures_checked: usize,
    /// Every mismatch found (also those listed under the requests).
    pub findings: Vec<FindingView>,
}

/// Builds the inspection: each operator request's approvals beside its execution, and every signature in
/// the key access log against an approved intent.
pub async fn inspect(store: &Store) -> Result<InspectionReport, kinko_store::StoreError> {
    let at_ms = now_ms();
    let mut revoked_at = std::collections::BTreeMap::<String, i64>::new();
    for row in store.registry_log().await? {
        use kinko_core::operator_registry::{RegistryChange, RegistryChangeKind};
        let Ok(change) = serde_json::from_str::<RegistryChange>(&row.change_json) else { continue };
        if let RegistryChangeKind::RevokeOperator { operator_id }
        | RegistryChangeKind::RevokeGrant { operator_id, .. } = change.change
        {
            let at = revoked_at.entry(operator_id).or_insert(row.applied_at_ms);
            *at = (*at).min(row.applied_at_ms);
        }
    }
    let mut findings = Vec::new();
    let mut requests = Vec::new();
    for r in store.ops_requests(None, INSPECTION_ROWS_MAX).await? {
        let approvers: Vec<String> = store
            .ops_approvals(&r.id)
            .await?
            .into_iter()
            .filter(|a| a.decision == "approve")
            .map(|a| a.operator_id)
            .collect();
        let facts = RequestFacts {
            id: r.id.clone(),
            required: r.required,
            requester: r.requester.clone(),
            executor: r.executor.clone(),
            executed_at_ms: r.executed_at_ms,
            approvers: approvers.clone(),
        };
        let found: Vec<FindingView> =
            kinko_core::audit::inspect_request(&facts, &revoked_at).into_iter().map(FindingView::from).collect();
        findings.extend(found.iter().cloned());
        requests.push(RequestInspectionView {
            id: r.id,
            process: r.process,
            kind: r.kind,
            state: r.state,
            requester: r.requester,
            required: r.required,
            approvers,
            executor: r.executor,
            executed_at_ms: r.executed_at_ms,
            findings: found,
        });
    }
    let mut signatures_checked = 0;
    for k in store.key_access_search("", i64::MIN, INSPECTION_ROWS_MAX).await? {
        if k.operation != "sign" {
            continue;
        }
        signatures_checked += 1;
        if !store.approved_intent_exists(&k.intent_hash).await? {
            findings.push(FindingView {
                code: "signature_without_approved_intent".into(),
                subject: format!("key access log {}", k.id),
                detail: format!(
                    "key {} signed payload {} for intent {} with no approved withdrawal or request behind it",
                    k.key_id, k.payload_sha256, k.intent_hash
                ),
            });
        }
    }
    let head = store.audit_head().await?;
    Ok(InspectionReport {
        at_ms,
        audit_head_seq: head.seq,
        audit_head_hash: head.hash,
        requests,
        signatures_checked,
        findings,
    })
}

/// The inspection view: approvals beside executions per process, and the signature cross-check.
#[utoipa::path(
    get, path = "/v1/ops/audit/inspection", tag = "operators", security(("bearer" = [])),
    responses((status = 200, body = InspectionReport))
)]
pub async fn inspection(State(state): State<AppState>, op: Operator) -> Result<Json<InspectionReport>, Problem> {
    require_endpoint(&op, "get", "/v1/ops/audit/inspection")?;
    Ok(Json(inspect(&state.store).await?))
}

/// Writes one inspection report: stored, recorded in the audit trail and as an ops event (and so reaches
/// the ops webhook where one is configured through the outbox).
pub async fn write_report(
    store: &Store,
    sink: &AuditSink,
    webhook_recipient: Option<&str>,
) -> Result<AuditReportRow, AuditUnavailable> {
    let db = |e: kinko_store::StoreError| AuditUnavailable(e.to_string());
    let report = inspect(store).await.map_err(db)?;
    let json = serde_json::to_string(&report).map_err(|e| AuditUnavailable(e.to_string()))?;
    let id = uuid::Uuid::now_v7().to_string();
    let outcome = format!("{} findings", report.findings.len());
    sink.system(
        "audit-inspector",
        "system.inspection_report",
        &format!("audit_report:{id}"),
        Record::digest(json.as_bytes()),
        &outcome,
    )
    .await?;
    let row = AuditReportRow {
        id: id.clone(),
        at_ms: report.at_ms,
        head_seq: report.audit_head_seq,
        head_hash: report.audit_head_hash.clone(),
        findings: report.findings.len() as i64,
        report_json: json,
    };
    store.insert_audit_report(&row).await.map_err(db)?;
    let detail = serde_json::json!({
        "report_id": id,
        "findings": report.findings.len(),
        "audit_head_seq": report.audit_head_seq,
        "audit_head_hash": report.audit_head_hash,
    });
    store
        .append_ops_event(&kinko_store::ops_requests::NewOpsEvent {
            operator_id: kinko_core::operators::SYSTEM_EXECUTOR.into(),
            terminal: "system".into(),
            event: "inspection_report".into(),
            request_id: None,
            detail_json: detail.to_string(),
            at_ms: report.at_ms,
        })
        .await
        .map_err(db)?;
    if let Some(recipient) = webhook_recipient {
        // The notice carries the chain's head out of the system: a later cut of the chain's end shows
        // against it (`kinko audit verify --min-seq`).
        let severity = if report.findings.is_empty() { "inspection report" } else { "INSPECTION FINDINGS" };
        let notice = kinko_store::notices::NewNotice::webhook(
            None,
            recipient,
            "inspection_report",
            id.clone(),
            format!("{severity}: {} findings", report.findings.len()),
            format!(
                "Audit inspection report {id}: {} findings; audit head seq {} hash {}.",
                report.findings.len(),
                report.audit_head_seq,
                report.audit_head_hash
            ),
            report.at_ms,
        )
        .with_payload(detail);
        store.enqueue_notice(&notice).await.map_err(db)?;
    }
    if !report.findings.is_empty() {
        tracing::warn!(report = %id, findings = report.findings.len(), "inspection report has findings");
    }
    Ok(row)
}

/// `kinko serve`: an inspection report every `interval_ms` (the first one after one interval).
pub async fn run_reports(
    store: Store,
    sink: AuditSink,
    interval_ms: u64,
    webhook_recipient: Option<String>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if interval_ms == 0 {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(interval_ms)) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        match write_report(&store, &sink, webhook_recipient.as_deref()).await {
            Ok(r) => tracing::info!(report = %r.id, findings = r.findings, "inspection report written"),
            Err(e) => tracing::error!(error = %e, "inspection report failed"),
        }
    }
}
