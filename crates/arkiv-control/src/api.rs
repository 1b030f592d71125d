//! The HTTP API under `/v1`, with bearer tokens and roles, plus
//! `/metrics`, `/healthz` and `/readyz`.
//!
//! Every `/v1` route but the OpenAPI document needs a token; what a token
//! may do is its role (viewer < operator < admin). Mutating calls are
//! written to the audit log with the token's name. A client address that
//! fails authentication too often in a minute is refused for the rest of
//! that minute, so tokens cannot be guessed at network speed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{OpenApi, ToSchema};

use crate::audit::{self, AuditEntry};
use crate::catalog::{RepositoryState, Run, RunFilter, RunStatus, SnapshotSeen, TokenRecord};
use crate::config::{Role, ScheduleConfig};
use crate::daemon::{Daemon, DaemonError};
use crate::jobs::{JobDef, JobKind};

pub struct Api {
    pub daemon: Arc<Daemon>,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    started: Instant,
}

type AppState = Arc<Api>;

/// An error as the API returns it: a status and one line.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(ErrorBody { error: self.1 })).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static header"));
        }
        r
    }
}

impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> Self {
        let status = match &e {
            DaemonError::NotFound(_) => StatusCode::NOT_FOUND,
            DaemonError::Conflict(_) => StatusCode::CONFLICT,
            DaemonError::Invalid(_) => StatusCode::BAD_REQUEST,
            DaemonError::Catalog(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("API: {e}");
        }
        ApiError(status, e.to_string())
    }
}

impl From<crate::catalog::CatalogError> for ApiError {
    fn from(e: crate::catalog::CatalogError) -> Self {
        DaemonError::from(e).into()
    }
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Api {
    pub fn new(daemon: Arc<Daemon>) -> Arc<Api> {
        Arc::new(Api { daemon, failures: Mutex::new(HashMap::new()), started: Instant::now() })
    }

    /// Checks the bearer token and that its role reaches `needed`.
    fn authorize(&self, headers: &HeaderMap, peer: SocketAddr, needed: Role) -> Result<Caller, ApiError> {
        let ip = peer.ip();
        let limit = self.daemon.config.daemon.auth_failures_per_minute;
        if limit > 0 {
            let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((since, n)) = f.get(&ip) {
                if since.elapsed().as_secs() >= 60 {
                    f.remove(&ip);
                } else if *n >= limit {
                    return Err(ApiError(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!("too many failed authentications from {ip}; try again within a minute"),
                    ));
                }
            }
        }
        let fail = |why: &str| {
            self.daemon.metrics.auth_failures.inc();
            let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            // Addresses whose minute is over are forgotten, so addresses
            // that fail once each cannot grow the map without bound.
            if f.len() >= 4096 {
                f.retain(|_, (since, _)| since.elapsed().as_secs() < 60);
            }
            let e = f.entry(ip).or_insert((Instant::now(), 0));
            e.1 += 1;
            tracing::warn!(client = %ip, "API authentication failed: {why}");
            ApiError(StatusCode::UNAUTHORIZED, why.to_string())
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(fail("missing bearer token (Authorization: Bearer TOKEN)"));
        };
        let Some(token) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim) else {
            return Err(fail("the Authorization header is not 'Bearer TOKEN'"));
        };
        let found = self.daemon.catalog.token_by_hash(&crate::token::hash(token), self.daemon.now())?;
        let Some((name, role)) = found else {
            return Err(fail("unknown or revoked token"));
        };
        let role = Role::parse(&role).unwrap_or(Role::Viewer);
        if role < needed {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("token '{name}' has role {}; this needs {}", role.as_str(), needed.as_str()),
            ));
        }
        Ok(Caller { name, role })
    }

    fn audit(&self, who: &Caller, action: &str, target: &str, detail: serde_json::Value) {
        if let Err(e) = audit::append(&self.daemon.catalog, &who.name, action, target, &detail) {
            tracing::error!("audit log: {e}");
        }
    }
}

/// A caller whose token has at least the role `LEVEL` (0 viewer, 1
/// operator, 2 admin). As an extractor it runs before the body is read, so
/// an unauthenticated request never gets its body parsed.
pub struct Auth<const LEVEL: u8>(pub Caller);

impl<const LEVEL: u8> axum::extract::FromRequestParts<AppState> for Auth<LEVEL> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, api: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let needed = match LEVEL {
            0 => Role::Viewer,
            1 => Role::Operator,
            _ => Role::Admin,
        };
        api.authorize(&parts.headers, peer, needed).map(Auth)
    }
}

pub type Viewer = Auth<0>;
pub type Operator = Auth<1>;
pub type Admin = Auth<2>;

fn parse_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
    serde_json::from_slice(&bytes).map_err(|e| bad_request(format!("malformed request body: {e}")))
}

// ---- response types

#[derive(Serialize, ToSchema)]
pub struct SourceStatus {
    pub name: String,
    /// files, postgres, mysql, sqlite, redis, command, bucket or pitr.
    pub kind: String,
    pub repository: String,
    /// The schedule as configured (`cron 0 * * * *`, `every 1h`), if any.
    pub schedule: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
    pub last_run: Option<Run>,
    pub last_success: Option<DateTime<Utc>>,
    /// Seconds since the newest successful backup ended.
    pub age_seconds: Option<f64>,
    pub rpo_seconds: Option<f64>,
    /// False when the newest backup is older than the RPO (or there is none).
    pub rpo_met: Option<bool>,
    pub running: bool,
}

#[derive(Serialize, ToSchema)]
pub struct RepositoryStatus {
    pub name: String,
    /// The location, without credentials or query.
    pub location: String,
    pub replicas: Vec<String>,
    pub state: RepositoryState,
    pub last_check: Option<Run>,
    pub last_retention: Option<Run>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// A job's name: `backup:SOURCE`, `retention:REPO`, `check:REPO`,
    /// `check-data:REPO`, `replicate:REPO:REPLICA`, `verify:SOURCE`.
    pub job: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub repository: String,
    /// `latest`, an id or a unique prefix.
    pub snapshot: String,
    /// A directory, file or database URL, as `arkiv restore --target`.
    pub target: String,
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub schemas: Vec<String>,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub overwrite: bool,
    #[serde(default)]
    pub clean: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub source: String,
    /// Default: the source's latest snapshot.
    #[serde(default)]
    pub snapshot: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    #[schema(value_type = String, example = "viewer")]
    pub role: Role,
}

#[derive(Serialize, ToSchema)]
pub struct NewToken {
    pub name: String,
    pub role: String,
    /// Shown once; only its hash is kept.
    pub token: String,
}

#[derive(Serialize, ToSchema)]
pub struct AuditVerification {
    pub entries: u64,
    pub head: String,
    pub ok: bool,
    pub problem: Option<String>,
}

#[derive(Deserialize)]
pub struct JobsQuery {
    job: Option<String>,
    kind: Option<String>,
    target: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    before: Option<i64>,
}

#[derive(Deserialize)]
pub struct SnapshotsQuery {
    repository: Option<String>,
    source: Option<String>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
pub struct AuditQuery {
    after: Option<i64>,
    limit: Option<usize>,
}

fn describe(s: &Option<ScheduleConfig>) -> Option<String> {
    let s = s.as_ref()?;
    match (&s.cron, s.every) {
        (Some(c), _) => Some(format!("cron {c}")),
        (None, Some(e)) => Some(format!("every {}", humantime::format_duration(e))),
        _ => None,
    }
}

fn source_status(d: &Daemon, name: &str) -> Result<SourceStatus, ApiError> {
    let s = d
        .config
        .sources
        .get(name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no source named '{name}'")))?;
    let job = JobDef::name_of(JobKind::Backup, name);
    let kind = if s.pitr.is_some() {
        "pitr".to_string()
    } else if let Some(url) = &s.url {
        arkiv_source::spec::kind_of(url).unwrap_or("bucket").to_string()
    } else {
        "files".to_string()
    };
    let repository = d.config.repository_for(name).map(|(r, _)| r.to_string()).unwrap_or_default();
    let last_run = d.catalog.last_run(
        &job,
        &[
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Partial,
            RunStatus::Failed,
            RunStatus::Cancelled,
            RunStatus::Interrupted,
        ],
    )?;
    let last_success = d.catalog.last_run(&job, &[RunStatus::Succeeded, RunStatus::Partial])?.and_then(|r| r.ended_at);
    let now = d.now();
    let age = last_success.map(|t| (now - t).num_milliseconds() as f64 / 1000.0);
    let rpo = s.rpo.map(|r| r.as_secs_f64());
    let rpo_met = rpo.map(|r| age.is_some_and(|a| a <= r));
    Ok(SourceStatus {
        name: name.into(),
        kind,
        repository,
        schedule: describe(&s.schedule),
        next_run: d.next_due(&job),
        running: last_run.as_ref().is_some_and(|r| r.status == RunStatus::Running),
        last_run,
        last_success,
        age_seconds: age,
        rpo_seconds: rpo,
        rpo_met,
    })
}

// ---- handlers

/// Sources with their backup status.
#[utoipa::path(get, path = "/v1/sources", tag = "sources", security(("bearer" = [])),
    responses((status = 200, body = [SourceStatus]), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn list_sources(State(api): State<AppState>, _: Viewer) -> Result<Json<Vec<SourceStatus>>, ApiError> {
    let d = &api.daemon;
    let out = d.config.sources.keys().map(|n| source_status(d, n)).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(out))
}

/// One source's status.
#[utoipa::path(get, path = "/v1/sources/{name}", tag = "sources", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = SourceStatus), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_source(
    State(api): State<AppState>,
    _: Viewer,
    Path(name): Path<String>,
) -> Result<Json<SourceStatus>, ApiError> {
    Ok(Json(source_status(&api.daemon, &name)?))
}

/// Snapshots as last listed from the repositories, newest first.
#[utoipa::path(get, path = "/v1/snapshots", tag = "snapshots", security(("bearer" = [])),
    params(("repository" = Option<String>, Query), ("source" = Option<String>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = [SnapshotSeen]), (status = 401, body = ErrorBody)))]
async fn list_snapshots(
    State(api): State<AppState>,
    _: Viewer,
    Query(q): Query<SnapshotsQuery>,
) -> Result<Json<Vec<SnapshotSeen>>, ApiError> {
    Ok(Json(api.daemon.catalog.snapshots(q.repository.as_deref(), q.source.as_deref(), q.limit.unwrap_or(1000))?))
}

/// Job runs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", security(("bearer" = [])),
    params(("job" = Option<String>, Query), ("kind" = Option<String>, Query), ("target" = Option<String>, Query),
        ("status" = Option<String>, Query), ("limit" = Option<usize>, Query), ("before" = Option<i64>, Query, description = "runs with a smaller id (paging)")),
    responses((status = 200, body = [Run]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_jobs(
    State(api): State<AppState>,
    _: Viewer,
    Query(q): Query<JobsQuery>,
) -> Result<Json<Vec<Run>>, ApiError> {
    let status = match &q.status {
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| bad_request(format!("unknown status '{s}'")))?),
        None => None,
    };
    let f = RunFilter {
        job: q.job,
        kind: q.kind,
        target: q.target,
        status,
        before_id: q.before,
        limit: q.limit.unwrap_or(100),
    };
    Ok(Json(api.daemon.catalog.list_runs(&f)?))
}

/// One run.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", security(("bearer" = [])), params(("id" = i64, Path)),
    responses((status = 200, body = Run), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_job(State(api): State<AppState>, _: Viewer, Path(id): Path<i64>) -> Result<Json<Run>, ApiError> {
    let run = api.daemon.catalog.run(id)?.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no run {id}")))?;
    Ok(Json(run))
}

/// A run's log (its command line, its standard error, its exit), as text: the last MiB.
#[utoipa::path(get, path = "/v1/jobs/{id}/log", tag = "jobs", security(("bearer" = [])), params(("id" = i64, Path)),
    responses((status = 200, body = String, content_type = "text/plain"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_job_log(State(api): State<AppState>, _: Viewer, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let run = api.daemon.catalog.run(id)?.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no run {id}")))?;
    let Some(path) = run.log_path else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("run {id} has not started: no log yet")));
    };
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| ApiError(StatusCode::NOT_FOUND, format!("log of run {id} ({}): {e}", path.display())))?;
    let tail = &bytes[bytes.len().saturating_sub(1 << 20)..];
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], String::from_utf8_lossy(tail).into_owned())
        .into_response())
}

/// Starts a job now.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", security(("bearer" = [])), request_body = JobRequest,
    responses((status = 202, body = Run), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn trigger_job(
    State(api): State<AppState>,
    Auth(who): Operator,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Run>), ApiError> {
    let req: JobRequest = parse_body(body)?;
    if req.job.starts_with("restore:") {
        return Err(bad_request("restores are requested with POST /v1/restores"));
    }
    let run = api.daemon.request(&req.job, Vec::new(), &who.name)?;
    api.audit(&who, "job.trigger", &req.job, json!({ "run": run.id }));
    Ok((StatusCode::ACCEPTED, Json(run)))
}

/// Cancels a queued or running run.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", security(("bearer" = [])), params(("id" = i64, Path)),
    responses((status = 202, body = Run), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn cancel_job(
    State(api): State<AppState>,
    Auth(who): Operator,
    Path(id): Path<i64>,
) -> Result<(StatusCode, Json<Run>), ApiError> {
    let run = api.daemon.cancel(id, &who.name)?;
    api.audit(&who, "job.cancel", &run.job, json!({ "run": id }));
    Ok((StatusCode::ACCEPTED, Json(run)))
}

/// A value that must not be read as a flag by the command it is passed to.
fn plain(what: &str, v: &str) -> Result<(), ApiError> {
    if v.is_empty() || v.starts_with('-') || v.contains('\0') {
        return Err(bad_request(format!("{what} '{v}' is empty or starts with '-'")));
    }
    Ok(())
}

/// Restores a snapshot (as `arkiv restore`), as a job.
#[utoipa::path(post, path = "/v1/restores", tag = "jobs", security(("bearer" = [])), request_body = RestoreRequest,
    responses((status = 202, body = Run), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn request_restore(
    State(api): State<AppState>,
    Auth(who): Operator,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Run>), ApiError> {
    let r: RestoreRequest = parse_body(body)?;
    if !api.daemon.config.repositories.contains_key(&r.repository) {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no repository named '{}'", r.repository)));
    }
    plain("snapshot", &r.snapshot)?;
    plain("target", &r.target)?;
    // A `command:` target runs a shell command as the daemon's user: that
    // is more than restoring, so the API does not offer it (the CLI does).
    if r.target.trim_start().to_ascii_lowercase().starts_with("command:") {
        return Err(bad_request(
            "a command: restore target is refused through the API; run `arkiv restore` on the host",
        ));
    }
    if crate::config::url_has_password(&r.target) {
        return Err(bad_request(
            "a password in the target URL: it would be kept in the run and the audit log; use the server's environment or password file",
        ));
    }
    let mut args = vec![r.snapshot.clone(), format!("--target={}", r.target)];
    for t in &r.tables {
        args.push(format!("--table={t}"));
    }
    for s in &r.schemas {
        args.push(format!("--schema={s}"));
    }
    for i in &r.include {
        args.push(format!("--include={i}"));
    }
    if r.overwrite {
        args.push("--overwrite".into());
    }
    if r.clean {
        args.push("--clean".into());
    }
    let job = JobDef::name_of(JobKind::Restore, &r.repository);
    let run = api.daemon.request(&job, args.clone(), &who.name)?;
    api.audit(&who, "restore.request", &r.repository, json!({ "run": run.id, "args": args }));
    Ok((StatusCode::ACCEPTED, Json(run)))
}

/// Runs a test restore of a source (as `arkiv verify --source`), as a job.
#[utoipa::path(post, path = "/v1/verifies", tag = "jobs", security(("bearer" = [])), request_body = VerifyRequest,
    responses((status = 202, body = Run), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn request_verify(
    State(api): State<AppState>,
    Auth(who): Operator,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Run>), ApiError> {
    let r: VerifyRequest = parse_body(body)?;
    let mut args = Vec::new();
    if let Some(s) = &r.snapshot {
        plain("snapshot", s)?;
        args.push(s.clone());
    }
    let job = JobDef::name_of(JobKind::Verify, &r.source);
    let run = api.daemon.request(&job, args, &who.name)?;
    api.audit(&who, "verify.request", &r.source, json!({ "run": run.id, "snapshot": r.snapshot }));
    Ok((StatusCode::ACCEPTED, Json(run)))
}

fn repository_status(d: &Daemon, name: &str) -> Result<RepositoryStatus, ApiError> {
    let r = d
        .config
        .repositories
        .get(name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no repository named '{name}'")))?;
    let done = [RunStatus::Succeeded, RunStatus::Partial, RunStatus::Failed];
    let location = r.url.split('?').next().unwrap_or("").to_string();
    Ok(RepositoryStatus {
        name: name.into(),
        location,
        replicas: r.replicas.clone(),
        state: d.catalog.repository_state(name)?,
        last_check: d.catalog.last_run(&JobDef::name_of(JobKind::Check, name), &done)?,
        last_retention: d.catalog.last_run(&JobDef::name_of(JobKind::Retention, name), &done)?,
    })
}

/// Repositories: size, snapshots, last check, replication status.
#[utoipa::path(get, path = "/v1/repositories", tag = "repositories", security(("bearer" = [])),
    responses((status = 200, body = [RepositoryStatus]), (status = 401, body = ErrorBody)))]
async fn list_repositories(State(api): State<AppState>, _: Viewer) -> Result<Json<Vec<RepositoryStatus>>, ApiError> {
    let d = &api.daemon;
    Ok(Json(d.config.repositories.keys().map(|n| repository_status(d, n)).collect::<Result<Vec<_>, _>>()?))
}

/// One repository.
#[utoipa::path(get, path = "/v1/repositories/{name}", tag = "repositories", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 200, body = RepositoryStatus), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_repository(
    State(api): State<AppState>,
    _: Viewer,
    Path(name): Path<String>,
) -> Result<Json<RepositoryStatus>, ApiError> {
    Ok(Json(repository_status(&api.daemon, &name)?))
}

/// Audit log entries, oldest first (admin).
#[utoipa::path(get, path = "/v1/audit", tag = "audit", security(("bearer" = [])),
    params(("after" = Option<i64>, Query, description = "entries after this sequence number"), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = [AuditEntry]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_audit(
    State(api): State<AppState>,
    _: Admin,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    Ok(Json(audit::entries(&api.daemon.catalog, q.after.unwrap_or(0), q.limit.unwrap_or(100).min(1000))?))
}

/// Walks the audit chain and reports the first break (admin).
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = AuditVerification), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn verify_audit(State(api): State<AppState>, _: Admin) -> Result<Json<AuditVerification>, ApiError> {
    let v = audit::verify(&api.daemon.catalog)?;
    Ok(Json(AuditVerification { entries: v.entries, head: v.head, ok: v.problem.is_none(), problem: v.problem }))
}

/// API tokens (admin); the tokens themselves are never shown again.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", security(("bearer" = [])),
    responses((status = 200, body = [TokenRecord]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_tokens(State(api): State<AppState>, _: Admin) -> Result<Json<Vec<TokenRecord>>, ApiError> {
    Ok(Json(api.daemon.catalog.tokens()?))
}

/// Creates a token (admin); the response is the only time it is shown.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", security(("bearer" = [])), request_body = TokenRequest,
    responses((status = 201, body = NewToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create_token(
    State(api): State<AppState>,
    Auth(who): Admin,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    let r: TokenRequest = parse_body(body)?;
    crate::token::check_name(&r.name).map_err(bad_request)?;
    let token = crate::token::generate();
    api.daemon
        .catalog
        .create_token(&r.name, r.role.as_str(), &crate::token::hash(&token), "api", api.daemon.now())
        .map_err(|e| ApiError(StatusCode::CONFLICT, e.to_string()))?;
    api.audit(&who, "token.create", &r.name, json!({ "role": r.role.as_str() }));
    Ok((StatusCode::CREATED, Json(NewToken { name: r.name, role: r.role.as_str().into(), token })))
}

/// Revokes a token (admin).
#[utoipa::path(delete, path = "/v1/tokens/{name}", tag = "tokens", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_token(
    State(api): State<AppState>,
    Auth(who): Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !api.daemon.catalog.revoke_token(&name, api.daemon.now())? {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no live token named '{name}'")));
    }
    api.audit(&who, "token.revoke", &name, json!({}));
    Ok(StatusCode::NO_CONTENT)
}

async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], ApiDoc::openapi().to_pretty_json().unwrap_or_default())
        .into_response()
}

async fn metrics(State(api): State<AppState>) -> Response {
    api.daemon.refresh_wal_metrics();
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        api.daemon.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(api): State<AppState>) -> Response {
    Json(json!({ "status": "ok", "uptime_seconds": api.started.elapsed().as_secs() })).into_response()
}

/// Ready once the scheduler has made a pass with a working catalog, and
/// not while stopping.
async fn readyz(State(api): State<AppState>) -> Response {
    let d = &api.daemon;
    let catalog_ok = d.catalog.schema_version().is_ok();
    if d.is_ready() && catalog_ok {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        let why = if d.is_stopping() {
            "stopping"
        } else if !catalog_ok {
            "catalog unreadable"
        } else {
            "starting"
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": why }))).into_response()
    }
}

/// Errors answered before a handler runs (a path or query parameter that
/// does not parse, a method the route lacks) come from axum as plain text;
/// every error of this API is `{"error": "…"}` on one line, as its OpenAPI
/// document says.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json =
        resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).split_whitespace().collect::<Vec<_>>().join(" ");
    let text = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_lowercase() } else { text };
    let mut out = ApiError(status, text).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such route (see /v1/openapi.json)".into())
}

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Arkiv daemon API", description = "Backups, jobs, repositories and the audit log of one Arkiv daemon."),
    paths(list_sources, get_source, list_snapshots, list_jobs, get_job, get_job_log, trigger_job, cancel_job,
        request_restore, request_verify, list_repositories, get_repository, list_audit, verify_audit,
        list_tokens, create_token, revoke_token),
    components(schemas(ErrorBody, SourceStatus, RepositoryStatus, JobRequest, RestoreRequest, VerifyRequest,
        TokenRequest, NewToken, AuditVerification, Run, RunStatus, SnapshotSeen, RepositoryState, TokenRecord, AuditEntry)),
    modifiers(&SecurityAddon)
)]
pub struct ApiDoc;

/// The whole router.
pub fn router(api: Arc<Api>) -> Router {
    let limit = api.daemon.config.daemon.max_body_bytes;
    Router::new()
        .route("/v1/openapi.json", get(openapi_json))
        .route("/v1/sources", get(list_sources))
        .route("/v1/sources/{name}", get(get_source))
        .route("/v1/snapshots", get(list_snapshots))
        .route("/v1/jobs", get(list_jobs).post(trigger_job))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/log", get(get_job_log))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/restores", post(request_restore))
        .route("/v1/verifies", post(request_verify))
        .route("/v1/repositories", get(list_repositories))
        .route("/v1/repositories/{name}", get(get_repository))
        .route("/v1/audit", get(list_audit))
        .route("/v1/audit/verify", get(verify_audit))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{name}", axum::routing::delete(revoke_token))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(api)
}
