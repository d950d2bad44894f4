pub mod gguf_bpe;
