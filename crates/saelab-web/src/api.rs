//! The JSON shapes of `/api/latents` and `/api/latent/{i}` (`/api/prompt` answers an
//! [`crate::explorer::PromptResult`], `/api/explanations` a
//! [`crate::explanations::SearchResult`]). They carry the same records the pages are
//! rendered from, plus the text of every token id they name.

use std::collections::BTreeMap;

use saelab_features::explanations::ExplanationRecord;
use saelab_features::LatentRecord;
use serde::Serialize;

use crate::listing::Listing;
use crate::site::Site;

/// `/api/latents`: one page of the index.
#[derive(Clone, Debug, Serialize)]
pub struct LatentsResponse {
    /// The page, as the HTML index shows it.
    #[serde(flatten)]
    pub listing: Listing,
    /// The text of every token id in the rows.
    pub token_text: BTreeMap<u32, String>,
}

/// `/api/latent/{i}`: one latent's record.
#[derive(Clone, Debug, Serialize)]
pub struct LatentResponse {
    /// The record, as stored in the features folder.
    pub record: LatentRecord,
    /// The token at each top context's position (`record.top[k]`), as the page marks it.
    pub top_tokens: Vec<u32>,
    /// The text of every token id in `top_tokens` and in the logit tables.
    pub token_text: BTreeMap<u32, String>,
    /// The latent's explanations with their scores, as in `explanations.json` (empty
    /// when it has none).
    pub explanations: Vec<ExplanationRecord>,
}

fn texts(site: &Site, ids: impl IntoIterator<Item = u32>) -> BTreeMap<u32, String> {
    ids.into_iter()
        .map(|t| (t, site.token_text(t).to_string()))
        .collect()
}

impl LatentsResponse {
    /// The response for `listing`.
    pub fn new(site: &Site, listing: Listing) -> Self {
        let ids: Vec<u32> = listing
            .rows
            .iter()
            .flat_map(|r| r.max_tokens.iter().chain(&r.promoted).copied())
            .collect();
        LatentsResponse {
            token_text: texts(site, ids),
            listing,
        }
    }
}

impl LatentResponse {
    /// The response for `record`.
    pub fn new(site: &Site, record: LatentRecord) -> Self {
        let top_tokens: Vec<u32> = record
            .top
            .iter()
            .map(|s| site.context(s.seq)[s.pos as usize])
            .collect();
        let logit_ids = record.logits.top.iter().chain(&record.logits.bottom);
        let ids: Vec<u32> = top_tokens
            .iter()
            .copied()
            .chain(logit_ids.map(|t| t.token))
            .collect();
        LatentResponse {
            token_text: texts(site, ids),
            top_tokens,
            explanations: site.explanations_of(record.latent).to_vec(),
            record,
        }
    }
}
