//! A GGUF rewritten in memory with every tensor stored as F32, so that candle's
//! quantized models (the references of the family tests) compute plain f32 products.

use std::collections::HashMap;
use std::io::Cursor;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Tensor;

/// The GGUF of `metadata` and `tensors` (name, f32 values), every tensor F32, parsed
/// back: its content and the reader positioned for `ModelWeights::from_gguf`.
pub fn f32_gguf(
    metadata: &HashMap<String, gguf_file::Value>,
    tensors: Vec<(&str, Tensor)>,
) -> (gguf_file::Content, Cursor<Vec<u8>>) {
    let q: Vec<(&str, QTensor)> = tensors
        .into_iter()
        .map(|(n, t)| (n, QTensor::quantize(&t, GgmlDType::F32).unwrap()))
        .collect();
    let md: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tref: Vec<(&str, &QTensor)> = q.iter().map(|(n, t)| (*n, t)).collect();
    // Reserved up front: a buffer grown by doubling would hold its old and new copies at
    // once, 1.5 to 3 times the 7 GB of the 1.5 B model's weights.
    let data: usize = q.iter().map(|(_, t)| t.storage_size_in_bytes()).sum();
    let mut buf = Cursor::new(Vec::with_capacity(data + (64 << 20)));
    gguf_file::write(&mut buf, &md, &tref).unwrap();
    buf.set_position(0);
    let content = gguf_file::Content::read(&mut buf).unwrap();
    assert!(content
        .tensor_infos
        .values()
        .all(|t| t.ggml_dtype == GgmlDType::F32));
    (content, buf)
}
