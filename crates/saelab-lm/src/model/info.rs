//! What callers see of a model, whatever its family: dimensions, special tokens and the
//! hook points it offers.

use saelab_core::{Error, Result};

use super::hooks::{HookKind, HookPoint};

/// A model described without its family's internals. Everything outside `model/`
/// (the cache, the stream, the evaluations, the CLI) reads a model through this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// The family, as GGUF `general.architecture` names it (e.g. `llama`).
    pub family: &'static str,
    /// The model's name: GGUF `general.name` or Hugging Face `_name_or_path`, else
    /// the file or directory name.
    pub name: String,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of blocks.
    pub n_layers: usize,
    /// Vocabulary size (rows of the embedding and unembedding).
    pub vocab_size: usize,
    /// Longest sequence the forward accepts.
    pub context_length: usize,
    /// Beginning-of-sequence token, when the checkpoint names one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token, when the checkpoint names one.
    pub eos_token_id: Option<u32>,
    /// The hook kinds every block offers, in the order the forward reaches them.
    pub hook_kinds: &'static [HookKind],
}

impl ModelInfo {
    /// Parse a hook name and check it against this model: a kind the family offers, a
    /// layer in range. Errors name the bad hook and list the valid ones.
    pub fn hook(&self, name: &str) -> Result<HookPoint> {
        let hp = HookPoint::parse(name)
            .map_err(|e| Error::config(format!("{e}; valid hooks: {}", self.valid_hooks())))?;
        if !self.hook_kinds.contains(&hp.kind) {
            return Err(Error::config(format!(
                "hook '{name}': {} models have no {}; valid hooks: {}",
                self.family,
                hp.kind.suffix(),
                self.valid_hooks()
            )));
        }
        if hp.layer >= self.n_layers {
            return Err(Error::config(format!(
                "hook '{name}': layer {} is out of range, the model has {} blocks \
                 (0..={}); valid hooks: {}",
                hp.layer,
                self.n_layers,
                self.n_layers.saturating_sub(1),
                self.valid_hooks()
            )));
        }
        Ok(hp)
    }

    /// Every valid hook name, layer by layer.
    pub fn hook_names(&self) -> Vec<String> {
        (0..self.n_layers)
            .flat_map(|layer| {
                self.hook_kinds
                    .iter()
                    .map(move |&kind| HookPoint { layer, kind }.name())
            })
            .collect()
    }

    /// One line listing the valid hook names, e.g.
    /// `blocks.{L}.hook_resid_pre, …, blocks.{L}.hook_resid_post with L in 0..=29`.
    pub fn valid_hooks(&self) -> String {
        let kinds: Vec<String> = self
            .hook_kinds
            .iter()
            .map(|k| format!("blocks.{{L}}.{}", k.suffix()))
            .collect();
        format!(
            "{} with L in 0..={}",
            kinds.join(", "),
            self.n_layers.saturating_sub(1)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kinds: &'static [HookKind]) -> ModelInfo {
        ModelInfo {
            family: "toy",
            name: "toy".into(),
            d_model: 4,
            n_layers: 3,
            vocab_size: 10,
            context_length: 8,
            bos_token_id: None,
            eos_token_id: None,
            hook_kinds: kinds,
        }
    }

    #[test]
    fn hooks_are_checked_against_the_family_and_the_layers() {
        const KINDS: &[HookKind] = &[HookKind::ResidPre, HookKind::ResidPost];
        let m = info(KINDS);
        assert_eq!(
            m.hook("blocks.02.hook_resid_post").unwrap().name(),
            "blocks.2.hook_resid_post"
        );
        assert_eq!(
            m.hook_names(),
            [
                "blocks.0.hook_resid_pre",
                "blocks.0.hook_resid_post",
                "blocks.1.hook_resid_pre",
                "blocks.1.hook_resid_post",
                "blocks.2.hook_resid_pre",
                "blocks.2.hook_resid_post"
            ]
        );
        let e = m.hook("blocks.1.hook_mlp_out").unwrap_err().to_string();
        assert!(e.contains("toy models have no hook_mlp_out"), "{e}");
        assert!(
            e.ends_with("valid hooks: blocks.{L}.hook_resid_pre, blocks.{L}.hook_resid_post with L in 0..=2"),
            "{e}"
        );
        let e = m.hook("blocks.3.hook_resid_pre").unwrap_err().to_string();
        assert!(
            e.contains("layer 3 is out of range, the model has 3 blocks (0..=2)"),
            "{e}"
        );
        let e = m.hook("blocks.1.resid").unwrap_err().to_string();
        assert!(
            e.contains("unknown hook 'blocks.1.resid'; valid hooks"),
            "{e}"
        );
    }
}
