//! The search over the folder's explanations (`explanations.json`, written by
//! `saelab autointerp`): a case-insensitive substring of the explanation text, bounded
//! in the query's length and in the number of hits returned, answered once for both
//! `/api/explanations` and the HTML page `/explanations`, so they list the same
//! records in the same order (by latent, then explainer).

use saelab_features::explanations::{ExplanationRecord, ExplanationScore};
use serde::{Deserialize, Serialize};

use crate::error::{Result, WebError};
use crate::site::Site;

/// Longest search text accepted, in bytes (after trimming): a 400 past it.
pub const MAX_QUERY_BYTES: usize = 200;
/// Most hits one request may ask for.
pub const MAX_LIMIT: usize = 200;
/// Hits returned unless asked otherwise.
pub const DEFAULT_LIMIT: usize = 50;

/// The query string of `/api/explanations` and `/explanations`, as sent.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawSearch {
    /// The text searched for (trimmed); absent or empty: every explanation.
    pub q: Option<String>,
    /// Most hits returned (1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`]).
    pub limit: Option<String>,
}

/// A checked search.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Search {
    /// The text searched for, trimmed (empty: every explanation).
    pub q: String,
    /// Most hits returned.
    pub limit: usize,
}

impl RawSearch {
    /// Checks both fields: an over-long text or a bad limit is a 400 naming it.
    pub fn check(&self) -> Result<Search> {
        let q = self.q.as_deref().unwrap_or("").trim();
        if q.len() > MAX_QUERY_BYTES {
            return Err(WebError::BadRequest(format!(
                "q: a search text is at most {MAX_QUERY_BYTES} bytes (this one is {})",
                q.len()
            )));
        }
        let limit = match self.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(WebError::BadRequest(format!(
                        "limit={}: expected a whole number from 1 to {MAX_LIMIT}",
                        v.chars().take(40).collect::<String>()
                    )))
                }
            },
        };
        Ok(Search {
            q: q.to_string(),
            limit,
        })
    }
}

/// One matching explanation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    /// The latent.
    pub latent: u32,
    /// Who wrote it (`token-set`, `llm:<model>`).
    pub explainer: String,
    /// The explanation.
    pub explanation: String,
    /// Its first score (the first scorer of its run), if it was scored.
    pub score: Option<ExplanationScore>,
}

/// The answer to a [`Search`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SearchResult {
    /// The search answered.
    pub query: Search,
    /// Explanations matching (all of them, not only those returned).
    pub total: usize,
    /// Explanations in the folder.
    pub records: usize,
    /// The first `query.limit` matches, by latent then explainer.
    pub hits: Vec<Hit>,
}

/// The explanations of `site` whose text holds `s.q`, ignoring case.
pub fn search(site: &Site, s: &Search) -> SearchResult {
    search_in(site.explanations(), s)
}

/// The records of `records` (in their order) whose explanation holds `s.q`, ignoring
/// case (both sides lower-cased; the file is small, so this is done per request rather
/// than kept).
pub fn search_in(records: &[ExplanationRecord], s: &Search) -> SearchResult {
    let needle = s.q.to_lowercase();
    let mut total = 0;
    let mut hits = Vec::new();
    for r in records
        .iter()
        .filter(|r| needle.is_empty() || r.explanation.to_lowercase().contains(&needle))
    {
        total += 1;
        if hits.len() < s.limit {
            hits.push(Hit {
                latent: r.latent,
                explainer: r.explainer.clone(),
                explanation: r.explanation.clone(),
                score: r.scores.first().cloned(),
            });
        }
    }
    SearchResult {
        query: s.clone(),
        total,
        records: records.len(),
        hits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(q: Option<&str>, limit: Option<&str>) -> RawSearch {
        RawSearch {
            q: q.map(String::from),
            limit: limit.map(String::from),
        }
    }

    #[test]
    fn checks_the_text_and_the_limit() {
        assert_eq!(
            raw(None, None).check().unwrap(),
            Search {
                q: String::new(),
                limit: DEFAULT_LIMIT
            }
        );
        let s = raw(Some("  Whale "), Some("3")).check().unwrap();
        assert_eq!((s.q.as_str(), s.limit), ("Whale", 3));
        // Exactly the bound passes; one byte more is refused, naming q.
        let at = "x".repeat(MAX_QUERY_BYTES);
        assert!(raw(Some(&at), None).check().is_ok());
        let e = raw(Some(&format!("{at}y")), None).check().unwrap_err();
        assert_eq!(e.status().as_u16(), 400);
        assert!(e.message().starts_with("q: "), "{e}");
        for bad in ["0", "201", "-1", "ten", ""] {
            let e = raw(None, Some(bad)).check().unwrap_err();
            assert!(e.message().starts_with("limit="), "{bad}: {e}");
        }
    }

    fn record(latent: u32, explainer: &str, text: &str, scored: bool) -> ExplanationRecord {
        ExplanationRecord {
            latent,
            explainer: explainer.into(),
            explanation: text.into(),
            source: "runs/ai".into(),
            scores: if scored {
                vec![
                    ExplanationScore {
                        scorer: "embedding".into(),
                        metric: "auroc".into(),
                        value: Some(0.7),
                        shuffled: Some(0.4),
                        baseline: 0.5,
                        failed: 0,
                    },
                    ExplanationScore {
                        scorer: "surprisal".into(),
                        metric: "auroc".into(),
                        value: None,
                        shuffled: None,
                        baseline: 0.5,
                        failed: 3,
                    },
                ]
            } else {
                Vec::new()
            },
        }
    }

    #[test]
    fn finds_substrings_ignoring_case_within_the_limit() {
        let records = [
            record(2, "token-set", "\" whale\", \" Whales\"", true),
            record(2, "llm:m", "Sea creatures, WHALES in particular", false),
            record(7, "token-set", "\" the\", \" a\"", true),
            record(9, "llm:m", "Ähnlich: ÄPFEL", false),
        ];
        let s = |q: &str, limit: usize| Search { q: q.into(), limit };
        let r = search_in(&records, &s("wHaLe", 10));
        assert_eq!((r.total, r.records), (2, 4));
        let got: Vec<_> = r
            .hits
            .iter()
            .map(|h| (h.latent, h.explainer.as_str()))
            .collect();
        assert_eq!(got, [(2, "token-set"), (2, "llm:m")]);
        // The first score only; none for an unscored record.
        assert_eq!(r.hits[0].score.as_ref().unwrap().scorer, "embedding");
        assert_eq!(r.hits[1].score, None);
        // The limit bounds the hits, not the total.
        let r = search_in(&records, &s("whale", 1));
        assert_eq!((r.total, r.hits.len()), (2, 1));
        // Beyond ASCII, and an empty text matching every record.
        assert_eq!(search_in(&records, &s("äpfel", 10)).hits[0].latent, 9);
        assert_eq!(search_in(&records, &s("", 10)).total, 4);
        assert_eq!(search_in(&records, &s("narwhal", 10)).total, 0);
    }
}
