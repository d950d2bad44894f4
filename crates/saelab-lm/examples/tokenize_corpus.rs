//! Tokenizes a corpus and reports throughput; optionally writes the token ids.
//!
//! ```text
//! cargo run --release -p saelab-lm --example tokenize_corpus -- MODEL.gguf CORPUS [IDS_OUT]
//! ```
//!
//! `IDS_OUT` gets one line per document: `source<TAB>id id id ...`. It is what
//! `tests/reference/bpe_reference.py` compares against an independent implementation.

use std::io::Write;
use std::time::Instant;

use saelab_lm::text::{Corpus, Document, LoadOptions};
use saelab_lm::tokenizer::Tokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        return Err("usage: tokenize_corpus MODEL.gguf|tokenizer.json CORPUS [IDS_OUT]".into());
    }
    let tok = Tokenizer::from_path(&args[0])?;
    let corpus = Corpus::load(&args[1], &LoadOptions::default())?;
    let docs: Vec<&Document> = corpus.documents().iter().collect();
    let mb = corpus.total_bytes() as f64 / 1e6;

    // Single thread, one document after another (a fresh tokenizer: cold BPE cache).
    let cold = Tokenizer::from_path(&args[0])?;
    let t = Instant::now();
    let mut n1 = 0usize;
    for d in &docs {
        n1 += cold.encode(&d.text)?.len();
    }
    let s1 = t.elapsed().as_secs_f64();
    // Same tokenizer again (warm cache).
    let t = Instant::now();
    for d in &docs {
        cold.encode(&d.text)?;
    }
    let s1w = t.elapsed().as_secs_f64();
    // Parallel over documents on the rayon pool (fresh tokenizer again).
    let t = Instant::now();
    let ids = saelab_lm::text::tokenize_documents(&tok, &docs)?;
    let sp = t.elapsed().as_secs_f64();
    let n: usize = ids.iter().map(Vec::len).sum();
    assert_eq!(n, n1);
    println!(
        "{} documents, {mb:.1} MB, {n} tokens; 1 thread cold: {s1:.2} s ({:.0} tokens/s), \
         1 thread warm: {s1w:.2} s ({:.0} tokens/s), parallel ({} threads) cold: {sp:.2} s \
         ({:.0} tokens/s)",
        docs.len(),
        n as f64 / s1,
        n as f64 / s1w,
        rayon::current_num_threads(),
        n as f64 / sp
    );
    if let Some(out) = args.get(2) {
        let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
        for (d, ids) in docs.iter().zip(&ids) {
            let s: Vec<String> = ids.iter().map(u32::to_string).collect();
            writeln!(w, "{}\t{}", d.source, s.join(" "))?;
        }
    }
    Ok(())
}
