//! Helpers shared by the test binaries of this crate; each binary uses a part of them.
#![allow(dead_code)]

pub mod ce;
pub mod compare;
pub mod f32_gguf;
pub mod gguf_bpe;
pub mod oracle;
pub mod parity;
pub mod qwen2;
pub mod tiny_llama;
