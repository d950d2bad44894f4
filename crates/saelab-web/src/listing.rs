//! The index of latents as a query: sort key and direction, a token search, and one
//! page of the result. The HTML index and `/api/latents` both answer from
//! [`list`], so they show the same latents in the same order.

use serde::{Deserialize, Serialize};

use crate::error::{Result, WebError};
use crate::site::{token_matches, Site, Summary};

/// Most rows one page may ask for.
pub const MAX_PER_PAGE: usize = 1000;
/// Rows per page unless asked otherwise.
pub const DEFAULT_PER_PAGE: usize = 100;

/// What the index can be sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortKey {
    /// The latent's index.
    Latent,
    /// Fraction of positions where it is active.
    #[default]
    Density,
    /// Largest value.
    Max,
    /// Mean non-zero value.
    Mean,
}

impl SortKey {
    /// The name used in query strings and column headers.
    pub fn name(self) -> &'static str {
        match self {
            SortKey::Latent => "latent",
            SortKey::Density => "density",
            SortKey::Max => "max",
            SortKey::Mean => "mean",
        }
    }

    fn parse(s: &str) -> Result<SortKey> {
        match s {
            "latent" => Ok(SortKey::Latent),
            "density" => Ok(SortKey::Density),
            "max" => Ok(SortKey::Max),
            "mean" => Ok(SortKey::Mean),
            _ => Err(WebError::BadRequest(format!(
                "sort={s}: expected latent, density, max or mean"
            ))),
        }
    }
}

/// The query string of `/` and `/api/latents`, as sent (every field optional).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawQuery {
    /// `latent`, `density` (default), `max` or `mean`.
    pub sort: Option<String>,
    /// `desc` (default) or `asc`.
    pub order: Option<String>,
    /// A token: only latents whose top contexts' max tokens or promoted tokens
    /// include it ([`token_matches`]).
    pub q: Option<String>,
    /// Page number, from 1.
    pub page: Option<String>,
    /// Rows per page (at most [`MAX_PER_PAGE`]).
    pub per: Option<String>,
}

/// A checked index query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Query {
    /// Sort key.
    pub sort: SortKey,
    /// Largest first.
    pub desc: bool,
    /// The token searched for (trimmed), if any.
    pub q: Option<String>,
    /// Page number, from 1.
    pub page: usize,
    /// Rows per page.
    pub per: usize,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            sort: SortKey::Density,
            desc: true,
            q: None,
            page: 1,
            per: DEFAULT_PER_PAGE,
        }
    }
}

fn number(name: &str, v: &str, lo: usize, hi: usize) -> Result<usize> {
    match v.trim().parse::<usize>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(WebError::BadRequest(format!(
            "{name}={v}: expected a whole number from {lo} to {hi}"
        ))),
    }
}

impl RawQuery {
    /// Checks every field: a bad value is a 400 naming it.
    pub fn check(&self) -> Result<Query> {
        let d = Query::default();
        let order = self.order.as_deref().unwrap_or("desc");
        if order != "desc" && order != "asc" {
            return Err(WebError::BadRequest(format!(
                "order={order}: expected asc or desc"
            )));
        }
        let q = self.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
        if q.is_some_and(|q| q.len() > 200) {
            return Err(WebError::BadRequest(
                "q: a search is one token, at most 200 bytes".into(),
            ));
        }
        Ok(Query {
            sort: self.sort.as_deref().map_or(Ok(d.sort), SortKey::parse)?,
            desc: order == "desc",
            q: q.map(String::from),
            page: self
                .page
                .as_deref()
                .map_or(Ok(1), |v| number("page", v, 1, usize::MAX))?,
            per: self
                .per
                .as_deref()
                .map_or(Ok(d.per), |v| number("per", v, 1, MAX_PER_PAGE))?,
        })
    }
}

/// One page of the index.
#[derive(Clone, Debug, Serialize)]
pub struct Listing {
    /// The query answered.
    pub query: Query,
    /// Latents matching the search (all of them without one).
    pub total: usize,
    /// Pages of `per` rows (at least 1).
    pub pages: usize,
    /// This page's rows.
    pub rows: Vec<Summary>,
}

/// The latents of `site` that match `query`, sorted (ties: lower latent first), one
/// page of them. A page past the end is empty, not an error.
pub fn list(site: &Site, query: &Query) -> Listing {
    let mut hits: Vec<&Summary> = match &query.q {
        None => site.summaries().iter().collect(),
        Some(q) => site
            .summaries()
            .iter()
            .filter(|s| {
                s.max_tokens
                    .iter()
                    .chain(&s.promoted)
                    .any(|&t| token_matches(site.token_text(t), q))
            })
            .collect(),
    };
    let key = |s: &Summary| -> f64 {
        match query.sort {
            SortKey::Latent => s.latent as f64,
            SortKey::Density => s.density,
            SortKey::Max => s.max as f64,
            SortKey::Mean => s.mean,
        }
    };
    hits.sort_by(|a, b| {
        let o = key(a).total_cmp(&key(b));
        let o = if query.desc { o.reverse() } else { o };
        o.then(a.latent.cmp(&b.latent))
    });
    let total = hits.len();
    let start = (query.page - 1).saturating_mul(query.per).min(total);
    let end = start.saturating_add(query.per).min(total);
    Listing {
        query: query.clone(),
        total,
        pages: total.div_ceil(query.per).max(1),
        rows: hits[start..end].iter().map(|s| (*s).clone()).collect(),
    }
}
