//! Bad activation input: every case must give one line naming the file and the
//! problem, and no panic. Each test writes its bad file byte by byte with the small
//! independent writers below (not the store's own writers).

use std::path::{Path, PathBuf};

use saelab_core::store::{write_npy_f32, ActivationStore, DType};
use saelab_core::Matrix;

/// A `.npy` file: version 1.0 header with the given dict fields, then `data`.
fn npy_raw(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let f = if fortran { "True" } else { "False" };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': {f}, 'shape': {shape}, }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A `.safetensors` file from `(name, dtype, shape, byte length)` entries laid out
/// back to back, then `data`.
fn st_raw(entries: &[(&str, &str, &[usize], usize)], data: &[u8]) -> Vec<u8> {
    let mut off = 0;
    let fields: Vec<String> = entries
        .iter()
        .map(|(n, dt, shape, len)| {
            let s = format!(
                "\"{n}\":{{\"dtype\":\"{dt}\",\"shape\":{shape:?},\"data_offsets\":[{off},{}]}}",
                off + len
            );
            off += len;
            s
        })
        .collect();
    let header = format!("{{{}}}", fields.join(","));
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Opens `paths` (and reads every row) expecting an error; returns its message after
/// checking it is one line naming `file`, and holds every word of `want`.
fn expect_err(paths: &[PathBuf], tensor: Option<&str>, file: &str, want: &[&str]) -> String {
    let result = ActivationStore::open(paths, tensor).and_then(|s| s.read_range(0, s.rows()));
    let msg = match result {
        Ok(_) => panic!("{paths:?}: expected an error containing {want:?}"),
        Err(e) => e.to_string(),
    };
    assert!(!msg.contains('\n'), "not one line: {msg}");
    eprintln!("{msg}");
    assert!(msg.contains(file), "message does not name {file}: {msg}");
    for w in want {
        assert!(msg.contains(w), "message lacks {w:?}: {msg}");
    }
    msg
}

#[test]
fn truncated_npy() {
    let d = tempfile::tempdir().unwrap();
    let full = npy_raw("<f4", false, "(4, 3)", &f32_bytes(&[1.0; 12]));
    // Data cut short: the header says 48 bytes of data.
    let p = write(d.path(), "cut.npy", &full[..full.len() - 5]);
    expect_err(&[p], None, "cut.npy", &["truncated", "48 bytes", "43"]);
    // Cut inside the header.
    let p = write(d.path(), "cuthead.npy", &full[..30]);
    expect_err(&[p], None, "cuthead.npy", &["truncated"]);
    let p = write(d.path(), "cutmagic.npy", &full[..4]);
    expect_err(&[p], None, "cutmagic.npy", &["truncated"]);
    // Empty file.
    let p = write(d.path(), "zero.npy", b"");
    expect_err(&[p], None, "zero.npy", &["empty file"]);
}

#[test]
fn truncated_safetensors() {
    let d = tempfile::tempdir().unwrap();
    let full = st_raw(
        &[("activations", "F32", &[4, 3], 48)],
        &f32_bytes(&[1.0; 12]),
    );
    let p = write(d.path(), "cut.safetensors", &full[..full.len() - 1]);
    expect_err(&[p], None, "cut.safetensors", &["truncated", "47"]);
    let p = write(d.path(), "cuthead.safetensors", &full[..20]);
    expect_err(&[p], None, "cuthead.safetensors", &["truncated", "header"]);
    let p = write(d.path(), "tiny.safetensors", &full[..5]);
    expect_err(&[p], None, "tiny.safetensors", &["truncated"]);
}

#[test]
fn corrupt_headers() {
    let d = tempfile::tempdir().unwrap();
    let mut bad = npy_raw("<f4", false, "(2, 2)", &f32_bytes(&[0.0; 4]));
    bad[10..20].copy_from_slice(b"garbage!!!");
    let p = write(d.path(), "garbled.npy", &bad);
    expect_err(&[p], None, "garbled.npy", &["corrupt .npy header"]);
    let mut missing = npy_raw("<f4", false, "(2, 2)", &f32_bytes(&[0.0; 4]));
    let at = missing.windows(7).position(|w| w == b"'shape'").unwrap();
    missing[at + 5] = b'f'; // 'shapf'
    let p = write(d.path(), "noshape.npy", &missing);
    expect_err(&[p], None, "noshape.npy", &["corrupt .npy header", "shape"]);
    let p = write(d.path(), "notnpy.npy", b"hello world, this is text");
    expect_err(&[p], None, "notnpy.npy", &["not a .npy file"]);
    let p = write(d.path(), "v9.npy", b"\x93NUMPY\x09\x00\x10\x00{}");
    expect_err(&[p], None, "v9.npy", &["version 9.0"]);

    let mut st = st_raw(
        &[("activations", "F32", &[2, 2], 16)],
        &f32_bytes(&[0.0; 4]),
    );
    st[9] = b'!'; // break the JSON
    let p = write(d.path(), "garbled.safetensors", &st);
    expect_err(
        &[p],
        None,
        "garbled.safetensors",
        &["corrupt .safetensors header"],
    );
    let p = write(d.path(), "huge.safetensors", &[0xff; 64]);
    expect_err(
        &[p],
        None,
        "huge.safetensors",
        &["corrupt .safetensors header"],
    );
    // data_offsets that disagree with the shape.
    let p = write(
        d.path(),
        "span.safetensors",
        &st_raw(&[("activations", "F32", &[2, 2], 12)], &[0; 12]),
    );
    expect_err(
        &[p],
        None,
        "span.safetensors",
        &["corrupt", "16 bytes", "12"],
    );
    // A file of another kind given with an unknown extension.
    let p = write(d.path(), "notes.bin", b"just some text here");
    expect_err(&[p], None, "notes.bin", &["not an activation file"]);
}

#[test]
fn wrong_dtype() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "ints.npy",
        &npy_raw("<i4", false, "(2, 2)", &[0; 16]),
    );
    expect_err(&[p], None, "ints.npy", &["int32", "'<f4'", "'<f2'"]);
    let p = write(
        d.path(),
        "f64.npy",
        &npy_raw("<f8", false, "(2, 2)", &[0; 32]),
    );
    expect_err(&[p], None, "f64.npy", &["float64", "accepted"]);
    let p = write(
        d.path(),
        "big.npy",
        &npy_raw(">f4", false, "(2, 2)", &[0; 16]),
    );
    expect_err(&[p], None, "big.npy", &["big-endian"]);
    let p = write(
        d.path(),
        "ints.safetensors",
        &st_raw(&[("activations", "I32", &[2, 2], 16)], &[0; 16]),
    );
    expect_err(&[p], None, "ints.safetensors", &["I32", "F32, F16, BF16"]);
    let p = write(
        d.path(),
        "f64.safetensors",
        &st_raw(&[("x", "F64", &[2, 2], 32)], &[0; 32]),
    );
    expect_err(&[p], None, "f64.safetensors", &["F64", "accepted"]);
}

#[test]
fn fortran_order_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "f.npy", &npy_raw("<f4", true, "(2, 2)", &[0; 16]));
    expect_err(&[p], None, "f.npy", &["Fortran"]);
}

#[test]
fn one_d_tensor() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "vec.npy",
        &npy_raw("<f4", false, "(4,)", &[0; 16]),
    );
    expect_err(&[p], None, "vec.npy", &["1-D", "2-D"]);
    let p = write(
        d.path(),
        "vec.safetensors",
        &st_raw(&[("activations", "F32", &[4], 16)], &[0; 16]),
    );
    expect_err(&[p], None, "vec.safetensors", &["1-D", "2-D"]);
    // The only tensor, unnamed, is 1-D: same message.
    let p = write(
        d.path(),
        "vec2.safetensors",
        &st_raw(&[("v", "F16", &[4], 8)], &[0; 8]),
    );
    expect_err(&[p], None, "vec2.safetensors", &["'v'", "1-D"]);
    let p = write(
        d.path(),
        "cube.npy",
        &npy_raw("<f4", false, "(2, 2, 1)", &[0; 16]),
    );
    expect_err(&[p], None, "cube.npy", &["3-D"]);
}

#[test]
fn empty_matrix() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "norows.npy",
        &npy_raw("<f4", false, "(0, 8)", &[]),
    );
    expect_err(&[p], None, "norows.npy", &["empty matrix [0, 8]"]);
    let p = write(
        d.path(),
        "nocols.npy",
        &npy_raw("<f2", false, "(8, 0)", &[]),
    );
    expect_err(&[p], None, "nocols.npy", &["empty matrix [8, 0]"]);
    let p = write(
        d.path(),
        "norows.safetensors",
        &st_raw(&[("activations", "BF16", &[0, 8], 0)], &[]),
    );
    expect_err(&[p], None, "norows.safetensors", &["empty matrix [0, 8]"]);
}

#[test]
fn d_mismatch_between_files() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.npy");
    write_npy_f32(&a, &Matrix::zeros(3, 64)).unwrap();
    let b = write(
        d.path(),
        "b.safetensors",
        &st_raw(&[("activations", "F16", &[2, 32], 128)], &[0; 128]),
    );
    let msg = expect_err(
        &[a, b],
        None,
        "b.safetensors",
        &["d = 32", "d = 64", "a.npy"],
    );
    assert!(msg.starts_with(&d.path().join("b.safetensors").display().to_string()));
    // The same through a directory.
    expect_err(
        &[d.path().to_path_buf()],
        None,
        "b.safetensors",
        &["d = 32", "d = 64"],
    );
}

#[test]
fn nan_and_inf_rows() {
    let d = tempfile::tempdir().unwrap();
    let mut v = vec![0.5f32; 12];
    v[7] = f32::NAN; // row 2, column 1 of [4, 3]
    let p = write(
        d.path(),
        "nan.npy",
        &npy_raw("<f4", false, "(4, 3)", &f32_bytes(&v)),
    );
    expect_err(&[p], None, "nan.npy", &["row 2", "NaN", "column 1"]);
    // f16 +Inf (0x7c00) in row 1 of a [2, 2] tensor; second file, so dataset row 5.
    let first = d.path().join("first.npy");
    write_npy_f32(&first, &Matrix::zeros(4, 2)).unwrap();
    let mut data = vec![0u8; 8];
    data[4..6].copy_from_slice(&0x7c00u16.to_le_bytes());
    let p = write(
        d.path(),
        "inf.safetensors",
        &st_raw(&[("activations", "F16", &[2, 2], 8)], &data),
    );
    let msg = expect_err(
        &[first, p],
        None,
        "inf.safetensors",
        &["row 1", "dataset row 5", "inf"],
    );
    assert!(!msg.contains("first.npy"), "{msg}");
    // bf16 -Inf (0xff80).
    let p = write(
        d.path(),
        "ninf.safetensors",
        &st_raw(&[("activations", "BF16", &[1, 2], 4)], &[0, 0, 0x80, 0xff]),
    );
    expect_err(
        &[p],
        None,
        "ninf.safetensors",
        &["row 0", "-inf", "column 1"],
    );
}

#[test]
fn missing_or_ambiguous_tensor_name() {
    let d = tempfile::tempdir().unwrap();
    let bytes = st_raw(
        &[
            ("resid", "F32", &[2, 2], 16),
            ("mlp_out", "F16", &[2, 2], 8),
            ("ids", "I64", &[2], 16),
        ],
        &[0; 40],
    );
    let p = write(d.path(), "two.safetensors", &bytes);
    expect_err(
        std::slice::from_ref(&p),
        Some("attn"),
        "two.safetensors",
        &["'attn'", "resid", "mlp_out", "ids"],
    );
    expect_err(
        std::slice::from_ref(&p),
        None,
        "two.safetensors",
        &["several 2-D tensors", "resid", "mlp_out"],
    );
    // Naming one works, and reads the right bytes.
    let s = ActivationStore::open(&[p], Some("mlp_out")).unwrap();
    assert_eq!((s.rows(), s.d(), s.files()[0].dtype), (2, 2, DType::F16));
    let only_ints = st_raw(
        &[("ids", "I64", &[2], 16), ("pos", "I64", &[2], 16)],
        &[0; 32],
    );
    let p = write(d.path(), "ints.safetensors", &only_ints);
    expect_err(
        &[p],
        None,
        "ints.safetensors",
        &["no 2-D floating-point tensor", "ids", "pos"],
    );
}

#[test]
fn nonexistent_path_and_empty_directory() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("nowhere.npy");
    expect_err(&[p], None, "nowhere.npy", &["No such file"]);
    let empty = d.path().join("emptydir");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("readme.txt"), "no activations").unwrap();
    expect_err(&[empty], None, "emptydir", &["no .npy or .safetensors"]);
    let cache = d.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::write(
        cache.join("manifest.json"),
        r#"{"d": 4, "shards": ["s0.safetensors"]}"#,
    )
    .unwrap();
    expect_err(
        std::slice::from_ref(&cache),
        None,
        "s0.safetensors",
        &["No such file"],
    );
    std::fs::write(cache.join("manifest.json"), "{not json").unwrap();
    expect_err(&[cache], None, "manifest.json", &["corrupt manifest"]);
}
