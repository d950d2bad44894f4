//! The user-facing form of an edit, as the command line and the server take it: a
//! [`Mode`] (`add`, `clamp`, …) and a [`Strength`] (`4x` = four times the latent's
//! largest activation in the features pass, `raw:30` or `30` = the value itself),
//! turned into an [`Op`] once the latent's maximum is known.
//!
//! Multiples of the maximum are the portable unit: residual norms differ by model and
//! layer (SmolLM2's middle layers ≈ 350), and decoder rows of SAEs whose input scale
//! was folded in are not unit-norm, so raw strengths do not carry across latents.

use std::fmt;
use std::str::FromStr;

use saelab_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::intervention::Op;

/// How strong an edit is: a raw latent value, or a multiple of the latent's largest
/// activation in the features pass. In TOML and JSON it is its text (`"4x"`,
/// `"raw:30"`), or a number for a raw value; not finite as an `f32` is an error.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Strength {
    /// The value itself, in the latent's units.
    Raw(f32),
    /// This many times the latent's maximum activation.
    TimesMax(f32),
}

impl Strength {
    /// The value for a latent whose largest activation is `max` (`None` when no
    /// features pass is at hand). Errors for a multiple without a maximum, or of a
    /// latent that never fired (maximum 0).
    pub fn resolve(self, latent: usize, max: Option<f32>) -> Result<f32> {
        match (self, max) {
            (Strength::Raw(v), _) => Ok(v),
            (Strength::TimesMax(_), None) => Err(Error::config(format!(
                "a strength in multiples of the maximum needs the latent's maximum \
                 activation: run `saelab features` on the SAE, or give a raw strength \
                 (raw:{{value}}) for latent {latent}"
            ))),
            (Strength::TimesMax(_), Some(m)) if m <= 0.0 => Err(Error::config(format!(
                "latent {latent} never fired in the features pass (maximum 0): a \
                 strength in multiples of its maximum is 0; give a raw strength"
            ))),
            (Strength::TimesMax(f), Some(m)) => Ok(f * m),
        }
    }
}

impl FromStr for Strength {
    type Err = Error;

    /// `4x` / `0.5x` (multiples of the maximum), `raw:30` or `30` (raw); finite only.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let (num, times) = if let Some(n) = t.strip_suffix('x') {
            (n, true)
        } else {
            (t.strip_prefix("raw:").unwrap_or(t), false)
        };
        match num.trim().parse::<f32>() {
            Ok(v) if v.is_finite() => Ok(if times {
                Strength::TimesMax(v)
            } else {
                Strength::Raw(v)
            }),
            _ => Err(Error::config(format!(
                "strength '{s}' must be a finite number, as a multiple of the latent's \
                 maximum (4x) or raw (raw:30)"
            ))),
        }
    }
}

impl fmt::Display for Strength {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strength::Raw(v) => write!(f, "raw:{v}"),
            Strength::TimesMax(v) => write!(f, "{v}x"),
        }
    }
}

impl Serialize for Strength {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Strength {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Number(f64),
        }
        match Form::deserialize(d)? {
            Form::Text(t) => t.parse().map_err(serde::de::Error::custom),
            Form::Number(n) if (n as f32).is_finite() => Ok(Strength::Raw(n as f32)),
            Form::Number(n) => Err(serde::de::Error::custom(format!(
                "strength {n} is not a finite number (as a 32-bit float)"
            ))),
        }
    }
}

/// The kind of edit, with its strength still to resolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Add `strength·d_i` ([`Op::Add`]).
    Add,
    /// Clamp the latent to `strength`, error kept ([`Op::Clamp`]).
    Clamp,
    /// Raise the latent to at least `strength` ([`Op::ClampMin`]).
    ClampMin,
    /// Multiply the latent by a plain factor ([`Op::Scale`]).
    Scale,
    /// Set the latent to 0 ([`Op::Ablate`]); takes no strength.
    Ablate,
    /// Set the latent to `−strength` where it is active ([`Op::NegClamp`]).
    NegClamp,
}

impl Mode {
    /// Every mode, in the order the help lists them.
    pub const ALL: [Mode; 6] = [
        Mode::Add,
        Mode::Clamp,
        Mode::ClampMin,
        Mode::Scale,
        Mode::Ablate,
        Mode::NegClamp,
    ];

    /// The name the command line and the server use.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Add => "add",
            Mode::Clamp => "clamp",
            Mode::ClampMin => "clamp-min",
            Mode::Scale => "scale",
            Mode::Ablate => "ablate",
            Mode::NegClamp => "neg-clamp",
        }
    }

    /// The operation on `latent` (whose maximum activation is `max`, if known) at
    /// `strength`. `scale` takes a plain factor, `ablate` no strength.
    pub fn op(self, latent: usize, strength: Option<Strength>, max: Option<f32>) -> Result<Op> {
        let need = |s: Option<Strength>| {
            s.ok_or_else(|| {
                Error::config(format!(
                    "mode {} needs a strength (such as 4x or raw:30)",
                    self.name()
                ))
            })
        };
        Ok(match self {
            Mode::Ablate => {
                if strength.is_some() {
                    return Err(Error::config("mode ablate takes no strength"));
                }
                Op::Ablate
            }
            Mode::Scale => match need(strength)? {
                Strength::Raw(f) => Op::Scale(f),
                Strength::TimesMax(_) => {
                    return Err(Error::config(
                        "mode scale takes a plain factor (such as 2 or 0.5), not a \
                         multiple of the maximum",
                    ))
                }
            },
            Mode::Add => Op::Add(need(strength)?.resolve(latent, max)?),
            Mode::Clamp => Op::Clamp(need(strength)?.resolve(latent, max)?),
            Mode::ClampMin => Op::ClampMin(need(strength)?.resolve(latent, max)?),
            Mode::NegClamp => Op::NegClamp(need(strength)?.resolve(latent, max)?),
        })
    }
}

impl FromStr for Mode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
                Error::config(format!("mode '{s}' must be one of {}", names.join(", ")))
            })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strengths_parse_and_resolve() {
        assert_eq!("4x".parse::<Strength>().unwrap(), Strength::TimesMax(4.0));
        assert_eq!("raw:30".parse::<Strength>().unwrap(), Strength::Raw(30.0));
        assert_eq!("-2.5".parse::<Strength>().unwrap(), Strength::Raw(-2.5));
        for bad in ["NaNx", "raw:inf", "four", "x", ""] {
            let e = bad.parse::<Strength>().unwrap_err().to_string();
            assert!(e.contains("finite number"), "{bad}: {e}");
        }
        assert_eq!(Strength::TimesMax(4.0).resolve(3, Some(2.5)).unwrap(), 10.0);
        assert!(Strength::TimesMax(4.0).resolve(3, None).is_err());
        assert!(Strength::TimesMax(4.0).resolve(3, Some(0.0)).is_err());
        assert_eq!(Strength::Raw(7.0).resolve(3, None).unwrap(), 7.0);
        assert_eq!(Strength::TimesMax(0.5).to_string(), "0.5x");
    }

    #[test]
    fn modes_make_ops() {
        let s = |v: &str| Some(v.parse::<Strength>().unwrap());
        assert_eq!(Mode::Add.op(1, s("4x"), Some(2.0)).unwrap(), Op::Add(8.0));
        assert_eq!(
            "neg-clamp"
                .parse::<Mode>()
                .unwrap()
                .op(1, s("raw:50"), None)
                .unwrap(),
            Op::NegClamp(50.0)
        );
        assert_eq!(Mode::Scale.op(1, s("2"), None).unwrap(), Op::Scale(2.0));
        assert!(Mode::Scale.op(1, s("2x"), Some(1.0)).is_err());
        assert_eq!(Mode::Ablate.op(1, None, None).unwrap(), Op::Ablate);
        assert!(Mode::Ablate.op(1, s("1"), None).is_err());
        assert!(Mode::Clamp.op(1, None, None).is_err());
        assert!("steer"
            .parse::<Mode>()
            .unwrap_err()
            .to_string()
            .contains("clamp-min"));
    }

    #[test]
    fn strengths_read_and_write_as_text_or_numbers() {
        #[derive(Deserialize, Serialize)]
        struct S {
            s: Strength,
        }
        let r: S = serde_json::from_str(r#"{"s": "4x"}"#).unwrap();
        assert_eq!(r.s, Strength::TimesMax(4.0));
        let r: S = serde_json::from_str(r#"{"s": 30}"#).unwrap();
        assert_eq!(r.s, Strength::Raw(30.0));
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"s":"raw:30"}"#);
        for bad in [r#"{"s": "NaNx"}"#, r#"{"s": 1e39}"#, r#"{"s": true}"#] {
            assert!(serde_json::from_str::<S>(bad).is_err(), "{bad}");
        }
    }
}
