//! The fingerprint that ties a features folder to its SAE.

use saelab_core::Sae;
use saelab_lm::contexts::Fingerprint;

/// Fingerprint of an SAE as loaded: its config (as JSON) and every tensor (name,
/// shape, f32 values), in name order. The same SAE gives the same fingerprint whatever
/// file format it was read from; any changed weight changes it.
pub fn sae_fingerprint(sae: &Sae) -> String {
    let mut fp = Fingerprint::new();
    let cfg = serde_json::to_vec(&sae.cfg).expect("an SAE config serialises");
    fp.update(&cfg);
    let mut params: Vec<(&str, &saelab_core::Tensor)> = sae.params.iter().collect();
    params.sort_by_key(|(n, _)| *n);
    for (name, t) in params {
        fp.update(name.as_bytes());
        for &s in &t.shape {
            fp.update(&(s as u64).to_le_bytes());
        }
        let mut bytes = Vec::with_capacity(t.data.len() * 4);
        t.data
            .iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        fp.update(&bytes);
    }
    fp.finish()
}
