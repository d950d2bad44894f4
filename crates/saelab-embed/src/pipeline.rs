//! The sentence-transformers files around the transformer: which modules run after it
//! (`modules.json`), how token states become one vector (`1_Pooling/config.json`), and
//! how texts are cut (`sentence_bert_config.json`).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{one_line, Error, Result};

const TRANSFORMER: &str = "sentence_transformers.models.Transformer";
const POOLING: &str = "sentence_transformers.models.Pooling";
const NORMALIZE: &str = "sentence_transformers.models.Normalize";

/// What runs after the BERT encoder, as the folder's files say.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Pipeline {
    /// Tokens kept per text, `[CLS]` and `[SEP]` included.
    pub max_seq_length: usize,
    /// Lower-case texts before tokenising (sentence-transformers' `do_lower_case`).
    pub do_lower_case: bool,
    /// The pooled width (`word_embedding_dimension`).
    pub dim: usize,
    /// Whether a Normalize module follows the pooling (unit L2 norm).
    pub normalize: bool,
}

#[derive(Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
    #[serde(default)]
    do_lower_case: bool,
}

/// Reads `modules.json`, the pooling module's `config.json` and
/// `sentence_bert_config.json` of the folder `dir`. Only Transformer → mean Pooling →
/// optional Normalize is implemented; any other module or pooling mode is refused.
pub(crate) fn read(dir: &Path) -> Result<Pipeline> {
    let modules_path = dir.join("modules.json");
    let modules: Vec<Module> = read_json(&modules_path)?;
    let unsupported = |message: String| Error::Unsupported {
        path: modules_path.clone(),
        message,
    };
    let kinds: Vec<&str> = modules.iter().map(|m| m.kind.as_str()).collect();
    let normalize = match kinds.as_slice() {
        [TRANSFORMER, POOLING] => false,
        [TRANSFORMER, POOLING, NORMALIZE] => true,
        _ => {
            return Err(unsupported(format!(
                "modules {kinds:?} are not supported (saelab-embed runs Transformer, Pooling and an optional Normalize, in that order)"
            )))
        }
    };
    if !modules[0].path.is_empty() {
        return Err(unsupported(format!(
            "the Transformer module in subfolder {:?} is not supported (expected the folder itself)",
            modules[0].path
        )));
    }

    let pooling_path = dir.join(&modules[1].path).join("config.json");
    let pooling: serde_json::Map<String, serde_json::Value> = read_json(&pooling_path)?;
    let modes: Vec<&str> = pooling
        .iter()
        .filter(|(k, v)| k.starts_with("pooling_mode_") && v.as_bool() == Some(true))
        .map(|(k, _)| k.as_str())
        .collect();
    if modes != ["pooling_mode_mean_tokens"] {
        return Err(Error::Unsupported {
            path: pooling_path,
            message: format!(
                "pooling {modes:?} is not implemented (only pooling_mode_mean_tokens alone)"
            ),
        });
    }
    if pooling.get("include_prompt").and_then(|v| v.as_bool()) == Some(false) {
        return Err(Error::Unsupported {
            path: pooling_path,
            message: "include_prompt: false is not implemented".to_string(),
        });
    }
    let dim = pooling
        .get("word_embedding_dimension")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| Error::Json {
            path: pooling_path.clone(),
            message: "no word_embedding_dimension".to_string(),
        })? as usize;

    let sbert: SentenceBertConfig = read_json(&dir.join("sentence_bert_config.json"))?;
    Ok(Pipeline {
        max_seq_length: sbert.max_seq_length,
        do_lower_case: sbert.do_lower_case,
        dim,
        normalize,
    })
}

/// The path, or [`Error::Missing`] when it is not a file.
pub(crate) fn existing(path: PathBuf) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Missing(path))
    }
}

/// Reads and parses one JSON file.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let path = existing(path.to_path_buf())?;
    let text = std::fs::read_to_string(&path).map_err(|e| Error::Read {
        path: path.clone(),
        message: one_line(e),
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path,
        message: one_line(e),
    })
}
