pub mod gguf_bpe;
pub mod tiny_llama;
