//! `saelab serve`: the pages and the JSON API over HTTP (axum on tokio).
//!
//! Safe by default: it binds 127.0.0.1 unless told another host; every request path
//! is checked before routing, and one whose segments decode to `..`, `.`, or hold a
//! `/`, a `\` or a NUL (an absolute or climbing path smuggled into a parameter) is
//! refused with a 400; request bodies are bounded ([`BODY_LIMIT`], a 413 past it) and
//! prompts by [`crate::explorer`]'s limits, steering requests by [`crate::steer`]'s (a
//! 400), explanation searches by [`crate::explanations`]' (the text's length and the
//! number of hits, a 400 past them); an unknown latent is a 404; a bad query value a
//! 400 naming it. Nothing on the
//! request path panics on input: file reads and model forwards run on the blocking pool
//! and their errors become 500s naming the file. Prompts and steering requests run one
//! at a time (the CPU has two cores), the rest of the API concurrently.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use tower_http::limit::RequestBodyLimitLayer;

use crate::api::{LatentResponse, LatentsResponse};
use crate::error::{Result, WebError};
use crate::explanations::{search, RawSearch};
use crate::explorer::{Explorer, PromptRequest};
use crate::html::{self, Links};
use crate::listing::{list, RawQuery};
use crate::site::Site;
use crate::steer::SteerRequest;
use crate::{assets, paths};

/// Largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 16 * 1024;

/// Where to listen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    /// The address (default 127.0.0.1: only this machine can connect).
    pub host: IpAddr,
    /// The port (default 8080; 0 picks a free one).
    pub port: u16,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8080,
        }
    }
}

/// What the handlers share: the folder, and the explorer when there is one.
#[derive(Debug)]
pub struct AppState {
    site: Site,
    explorer: Option<Explorer>,
    /// The model's turn: one prompt or steering request at a time. The permit moves
    /// into the blocking task, so a request whose client has gone still holds it until
    /// its forward ends.
    forward: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// The state of a server over `site`, with the prompt explorer when `explorer` is
    /// given.
    pub fn new(site: Site, explorer: Option<Explorer>) -> Arc<AppState> {
        Arc::new(AppState {
            site,
            explorer,
            forward: Arc::new(tokio::sync::Semaphore::new(1)),
        })
    }

    /// The folder served.
    pub fn site(&self) -> &Site {
        &self.site
    }

    fn links(&self) -> Links {
        Links::Server {
            explorer: self.explorer.is_some(),
        }
    }
}

/// A failed request, answered as JSON under `/api/` and as a page elsewhere.
struct Failure {
    err: WebError,
    json: bool,
    page: Option<String>,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = self.err.status();
        if status.is_server_error() {
            tracing::error!(error = %self.err, "request failed");
        }
        match (self.json, self.page) {
            (false, Some(page)) => (status, html_headers(), page).into_response(),
            _ => (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::json!({ "error": self.err.message(), "status": status.as_u16() })
                    .to_string(),
            )
                .into_response(),
        }
    }
}

fn html_headers() -> [(header::HeaderName, &'static str); 1] {
    [(header::CONTENT_TYPE, "text/html; charset=utf-8")]
}

fn page_failure(st: &AppState, err: WebError) -> Failure {
    let page = html::error_page(&st.site, st.links(), err.status().as_u16(), err.message());
    Failure {
        err,
        json: false,
        page: Some(page),
    }
}

fn api_failure(err: WebError) -> Failure {
    Failure {
        err,
        json: true,
        page: None,
    }
}

/// Runs `f` on the blocking pool (file reads, rendering, the model).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(WebError::Internal(format!("a request task failed: {e}"))))
}

/// The latent id in a path: a whole number (a 400 otherwise).
fn latent_id(s: &str) -> Result<usize> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WebError::BadRequest(format!(
            "latent id {:?}: expected a whole number",
            s.chars().take(40).collect::<String>()
        )));
    }
    s.parse()
        .map_err(|_| WebError::BadRequest(format!("latent id {s}: too large")))
}

async fn index_page(
    State(st): State<Arc<AppState>>,
    Query(raw): Query<RawQuery>,
) -> std::result::Result<Response, Failure> {
    let s = st.clone();
    blocking(move || {
        let q = raw.check()?;
        let l = list(&s.site, &q);
        Ok(html::index::server_page(&s.site, s.links(), &l))
    })
    .await
    .map(|p| (html_headers(), p).into_response())
    .map_err(|e| page_failure(&st, e))
}

async fn latent_page(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> std::result::Result<Response, Failure> {
    let s = st.clone();
    blocking(move || {
        let r = s.site.record(latent_id(&id)?)?;
        Ok(html::latent::page(&s.site, s.links(), &r))
    })
    .await
    .map(|p| (html_headers(), p).into_response())
    .map_err(|e| page_failure(&st, e))
}

async fn explanations_page(
    State(st): State<Arc<AppState>>,
    Query(raw): Query<RawSearch>,
) -> std::result::Result<Response, Failure> {
    let s = st.clone();
    blocking(move || {
        let q = raw.check()?;
        Ok(html::explanations::server_page(
            &s.site,
            s.links(),
            &search(&s.site, &q),
        ))
    })
    .await
    .map(|p| (html_headers(), p).into_response())
    .map_err(|e| page_failure(&st, e))
}

#[derive(Deserialize)]
struct PromptQuery {
    latent: Option<String>,
    text: Option<String>,
}

async fn prompt_page(
    State(st): State<Arc<AppState>>,
    Query(q): Query<PromptQuery>,
) -> std::result::Result<Response, Failure> {
    if st.explorer.is_none() {
        return Err(page_failure(
            &st,
            WebError::NotFound(
                "the prompt explorer needs a model and an SAE: start saelab serve with \
                 --sae RUN --model M"
                    .into(),
            ),
        ));
    }
    let latent = match q.latent.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(latent_id(s).map_err(|e| page_failure(&st, e))? as u32),
    };
    let text = q.text.unwrap_or_default();
    let text: String = text
        .chars()
        .take(crate::explorer::MAX_PROMPT_BYTES)
        .collect();
    Ok((
        html_headers(),
        html::prompt::page(&st.site, st.links(), &text, latent),
    )
        .into_response())
}

async fn api_latents(
    State(st): State<Arc<AppState>>,
    Query(raw): Query<RawQuery>,
) -> std::result::Result<Response, Failure> {
    blocking(move || {
        let q = raw.check()?;
        Ok(LatentsResponse::new(&st.site, list(&st.site, &q)))
    })
    .await
    .map(|r| axum::Json(r).into_response())
    .map_err(api_failure)
}

async fn api_latent(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> std::result::Result<Response, Failure> {
    blocking(move || {
        let r = st.site.record(latent_id(&id)?)?;
        Ok(LatentResponse::new(&st.site, r))
    })
    .await
    .map(|r| axum::Json(r).into_response())
    .map_err(api_failure)
}

async fn api_explanations(
    State(st): State<Arc<AppState>>,
    Query(raw): Query<RawSearch>,
) -> std::result::Result<Response, Failure> {
    blocking(move || Ok(search(&st.site, &raw.check()?)))
        .await
        .map(|r| axum::Json(r).into_response())
        .map_err(api_failure)
}

/// A POST body, or a 413 past [`BODY_LIMIT`] (a 400 when it cannot be read).
fn post_body(
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Bytes, Failure> {
    body.map_err(|e| {
        api_failure(if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            WebError::TooLarge(format!("the request body is over {BODY_LIMIT} bytes"))
        } else {
            WebError::BadRequest(format!("the request body cannot be read: {e}"))
        })
    })
}

/// The 404 of a live route on a server started without a model and an SAE.
fn no_explorer(what: &str) -> Failure {
    api_failure(WebError::NotFound(format!(
        "{what} needs a model and an SAE: start saelab serve with --sae RUN --model M"
    )))
}

/// Waits for the model's turn; the permit is to be moved into the blocking task.
async fn model_turn(
    st: &AppState,
) -> std::result::Result<tokio::sync::OwnedSemaphorePermit, Failure> {
    st.forward
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| api_failure(WebError::Internal("the server is stopping".into())))
}

async fn api_prompt(
    State(st): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Response, Failure> {
    let body = post_body(body)?;
    if st.explorer.is_none() {
        return Err(no_explorer("the prompt explorer"));
    }
    let req: PromptRequest = serde_json::from_slice(&body).map_err(|e| {
        api_failure(WebError::BadRequest(format!(
            "the body is not a prompt request {{\"text\": …, \"latent\": …, \"top\": …}}: {e}"
        )))
    })?;
    let turn = model_turn(&st).await?;
    let s = st.clone();
    blocking(move || {
        let _turn = turn;
        let latent_max = match req.latent {
            Some(l) if (l as usize) < s.site.n_latents() => s.site.summaries()[l as usize].max,
            _ => 0.0,
        };
        let ex = s
            .explorer
            .as_ref()
            .ok_or_else(|| WebError::Internal("the prompt explorer is gone".into()))?;
        ex.run(&req, latent_max)
    })
    .await
    .map(|r| axum::Json(r).into_response())
    .map_err(api_failure)
}

async fn api_steer(
    State(st): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Response, Failure> {
    let body = post_body(body)?;
    let req: SteerRequest = serde_json::from_slice(&body).map_err(|e| {
        api_failure(WebError::BadRequest(format!(
            "the body is not a steering request {{\"prompt\": …, \"edits\": [{{\"latent\": …, \
             \"mode\": …, \"strength\": …}}]}}: {e}"
        )))
    })?;
    let Some(ex) = &st.explorer else {
        return Err(no_explorer("steering"));
    };
    // What needs no model is refused before waiting for the model's turn.
    req.check(ex.n_latents()).map_err(api_failure)?;
    let turn = model_turn(&st).await?;
    let s = st.clone();
    blocking(move || {
        let _turn = turn;
        let ex = s
            .explorer
            .as_ref()
            .ok_or_else(|| WebError::Internal("the explorer is gone".into()))?;
        crate::steer::run(ex, &req)
    })
    .await
    .map(|r| axum::Json(r).into_response())
    .map_err(api_failure)
}

async fn asset(Path(name): Path<String>) -> Response {
    match assets::get(&name) {
        Some((ctype, body)) => (
            [
                (header::CONTENT_TYPE, ctype),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

async fn fallback(State(st): State<Arc<AppState>>, req: Request) -> Failure {
    let path = req.uri().path().to_string();
    let err = WebError::NotFound(format!("no page at {}", paths::shorten(&path)));
    if path.starts_with("/api/") {
        api_failure(err)
    } else {
        page_failure(&st, err)
    }
}

/// Refuses a path that climbs or holds an absolute path (see the module docs) before
/// it reaches a route.
async fn check_path(req: Request, next: Next) -> Response {
    match paths::check(req.uri().path()) {
        Ok(()) => next.run(req).await,
        Err(e) => api_failure(e).into_response(),
    }
}

/// Answers a body refused by the length limit (which sees the `Content-Length` before
/// any handler) with the API's JSON error, as every other refusal.
async fn json_too_large(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if res.status() == StatusCode::PAYLOAD_TOO_LARGE && !json {
        return api_failure(WebError::TooLarge(format!(
            "the request body is over {BODY_LIMIT} bytes"
        )))
        .into_response();
    }
    res
}

/// The routes, their limits and the path check, over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index_page))
        .route("/latent/{id}", get(latent_page))
        .route("/explanations", get(explanations_page))
        .route("/prompt", get(prompt_page))
        .route("/assets/{name}", get(asset))
        .route("/api/latents", get(api_latents))
        .route("/api/latent/{id}", get(api_latent))
        .route("/api/explanations", get(api_explanations))
        .route("/api/prompt", post(api_prompt))
        .route("/api/steer", post(api_steer))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(middleware::from_fn(json_too_large))
        .layer(middleware::from_fn(check_path))
        .with_state(state)
}

/// Binds `opts`' address. Errors say which address could not be bound.
pub async fn bind(opts: ServeOptions) -> std::io::Result<tokio::net::TcpListener> {
    let addr = SocketAddr::new(opts.host, opts.port);
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Serves `state` on `listener` until `shutdown` completes (then lets open requests
/// finish).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
