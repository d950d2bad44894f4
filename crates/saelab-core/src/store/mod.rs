//! The activation store: one dataset of activation vectors `[rows, d]` spread over
//! one or more memory-mapped `.npy` / `.safetensors` files, read in any row order as
//! f32.
//!
//! - [`ActivationStore::open`] takes files and/or directories (see there for how a
//!   directory is expanded) and checks every file up front: header, dtype, shape,
//!   size, and that all files share `d`. Values are checked for NaN/Inf as rows are
//!   read.
//! - [`Split`] holds out the last rows for validation; [`BatchSampler`] yields
//!   shuffled, resumable batches of training row indices.
//! - [`write_npy_f32`], [`write_npy`], [`write_safetensors`] write matrices the store
//!   reads back (atomically), for `saelab synth`, examples and tests.
//!
//! The bytes of both formats (headers, dtypes, conversion to f32) are
//! [`crate::tensorfile`]'s; this module chooses the tensor, checks it is an activation
//! matrix and keeps the file's memory map, reading rows in place.
//!
//! Files are mapped read-only and must not be modified while a store holds them.

pub mod manifest;
mod sampler;
mod source;
mod write;

use std::path::{Path, PathBuf};

use rayon::prelude::*;

pub use crate::tensorfile::DType;
pub use manifest::MANIFEST;
pub use sampler::{BatchSampler, SamplerState, Split};
pub use source::DEFAULT_TENSOR;
pub use write::{write_npy, write_npy_f32, write_safetensors};

use crate::error::{Error, Result};
use crate::tensor::Matrix;
use source::{open_npy, open_safetensors, Bytes, SourceMatrix};

/// Rows gathered per parallel task. Fixed, so that which task reads which row does
/// not depend on the thread count.
const ROW_CHUNK: usize = 256;

/// Below this many values a gather runs on the calling thread.
const PARALLEL_MIN: usize = 1 << 16;

/// Rows per block in [`ActivationStore::mean_sq_norm`].
const NORM_BLOCK: usize = 8192;

/// What the store knows about one of its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// The file.
    pub path: PathBuf,
    /// The tensor read from it (`.safetensors` only).
    pub tensor: Option<String>,
    /// Its number of rows.
    pub rows: usize,
    /// Its element type.
    pub dtype: DType,
}

/// A dataset of activation vectors `[rows, d]` over one or more files, concatenated
/// in the order given. Cheap to share between threads (`Sync`).
pub struct ActivationStore {
    files: Vec<SourceMatrix>,
    /// `starts[i]` = first dataset row of file `i`; `starts[files.len()] = rows`.
    starts: Vec<usize>,
    d: usize,
}

impl std::fmt::Debug for ActivationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivationStore")
            .field("rows", &self.rows())
            .field("d", &self.d)
            .field("files", &self.files())
            .finish()
    }
}

impl ActivationStore {
    /// Opens the dataset formed by `paths`, in order. Each path is a file (`.npy`,
    /// `.safetensors`; other extensions are recognised by content) or a directory.
    ///
    /// A directory expands to its `*.npy` and `*.safetensors` files in sorted name
    /// order (hidden files skipped) — unless it holds `manifest.json`: the activation
    /// cache written by `saelab extract` ([`manifest::CacheManifest`], checked as the
    /// cache reads it), or a hand-written listing. Then `manifest["shards"]` lists the
    /// files in dataset order (in a listing, each a file name or `{"file": ...,
    /// "rows": ...}`; row counts given are checked), every shard must have width
    /// `manifest["d"]`, and the tensor read from `.safetensors` shards is
    /// `activations` (or `tensor` if given).
    ///
    /// `tensor` names the tensor to read from `.safetensors` files; with `None` a file's
    /// `activations` tensor is used if present, else its only 2-D float tensor.
    ///
    /// Errors (each naming the file): missing path, directory without activation files,
    /// truncated file, corrupt header, unsupported dtype, not 2-D, empty matrix, missing
    /// tensor, or a width differing from the first file's.
    pub fn open(paths: &[PathBuf], tensor: Option<&str>) -> Result<Self> {
        if paths.is_empty() {
            return Err(Error::config("no activation files given"));
        }
        let mut files = Vec::new();
        for p in paths {
            let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
            if meta.is_dir() {
                open_dir(p, tensor, &mut files)?;
            } else {
                files.push(open_file(p, tensor)?);
            }
        }
        Self::from_sources(files)
    }

    /// An in-memory store holding `m` (`[rows, d]`), for tests and synthetic data.
    /// Fails on an empty matrix.
    pub fn from_matrix(m: &Matrix) -> Result<Self> {
        let path = PathBuf::from("<memory>");
        if m.rows == 0 || m.cols == 0 || m.data.len() != m.rows * m.cols {
            return Err(Error::bad_file(
                &path,
                format!("empty or malformed matrix [{}, {}]", m.rows, m.cols),
            ));
        }
        let bytes: Vec<u8> = m.data.iter().flat_map(|x| x.to_le_bytes()).collect();
        Self::from_sources(vec![SourceMatrix {
            path,
            tensor: None,
            bytes: Bytes::Owned(bytes),
            offset: 0,
            rows: m.rows,
            cols: m.cols,
            dtype: DType::F32,
        }])
    }

    fn from_sources(files: Vec<SourceMatrix>) -> Result<Self> {
        let d = files[0].cols;
        for f in &files[1..] {
            if f.cols != d {
                return Err(Error::bad_file(
                    &f.path,
                    format!(
                        "has d = {}, but {} has d = {d}; all activation files must share d",
                        f.cols,
                        files[0].path.display()
                    ),
                ));
            }
        }
        let mut starts = Vec::with_capacity(files.len() + 1);
        let mut total = 0usize;
        for f in &files {
            starts.push(total);
            total += f.rows;
        }
        starts.push(total);
        Ok(ActivationStore { files, starts, d })
    }

    /// Width of every activation vector.
    pub fn d(&self) -> usize {
        self.d
    }

    /// Total number of rows over all files.
    pub fn rows(&self) -> usize {
        self.starts[self.files.len()]
    }

    /// The files in dataset order, with their row counts and dtypes.
    pub fn files(&self) -> Vec<FileInfo> {
        self.files
            .iter()
            .map(|f| FileInfo {
                path: f.path.clone(),
                tensor: f.tensor.clone(),
                rows: f.rows,
                dtype: f.dtype,
            })
            .collect()
    }

    /// `(file index, row within that file)` of dataset row `r` (< rows).
    fn locate(&self, r: usize) -> (usize, usize) {
        let i = self.starts.partition_point(|&s| s <= r) - 1;
        (i, r - self.starts[i])
    }

    /// Fills `out` (`n` rows of `d`) with dataset rows `row(0..n)`: parallel in fixed
    /// chunks for large reads. Reports the earliest bad row deterministically.
    fn gather(&self, n: usize, row: impl Fn(usize) -> usize + Sync, out: &mut [f32]) -> Result<()> {
        let d = self.d;
        let total = self.rows();
        for i in 0..n {
            let r = row(i);
            if r >= total {
                return Err(Error::Shape(format!(
                    "row {r} out of range: the dataset has {total} rows"
                )));
            }
        }
        // A chunk reports the first (position, column) holding NaN/Inf.
        let work = |(c, chunk): (usize, &mut [f32])| -> Option<(usize, usize)> {
            let mut bad = None;
            for (j, o) in chunk.chunks_exact_mut(d).enumerate() {
                let i = c * ROW_CHUNK + j;
                let (f, lr) = self.locate(row(i));
                if let Some(col) = self.files[f].read_row(lr, o) {
                    bad.get_or_insert((i, col));
                }
            }
            bad
        };
        let bad = if n * d >= PARALLEL_MIN {
            out.par_chunks_mut(ROW_CHUNK * d)
                .enumerate()
                .filter_map(work)
                .min()
        } else {
            out.chunks_mut(ROW_CHUNK * d)
                .enumerate()
                .filter_map(work)
                .min()
        };
        match bad {
            None => Ok(()),
            Some((i, col)) => {
                let r = row(i);
                let (f, lr) = self.locate(r);
                let v = out[i * d + col];
                Err(Error::bad_file(
                    &self.files[f].path,
                    format!("row {lr} (dataset row {r}) holds {v} at column {col}; activations must be finite"),
                ))
            }
        }
    }

    /// Reads dataset rows `rows` (any order, repeats allowed) into `out`, which is
    /// resized to `[rows.len(), d]`, converting to f32. Fails if an index is out of
    /// range or a row holds NaN/±Inf (naming the file and the row).
    pub fn read_rows(&self, rows: &[usize], out: &mut Matrix) -> Result<()> {
        out.rows = rows.len();
        out.cols = self.d;
        out.data.resize(rows.len() * self.d, 0.0);
        self.gather(rows.len(), |i| rows[i], &mut out.data)
    }

    /// Rows `start..end` as a new `[end - start, d]` matrix. Fails if the range is
    /// invalid or a row holds NaN/±Inf.
    pub fn read_range(&self, start: usize, end: usize) -> Result<Matrix> {
        if start > end || end > self.rows() {
            return Err(Error::Shape(format!(
                "row range {start}..{end} invalid: the dataset has {} rows",
                self.rows()
            )));
        }
        let mut out = Matrix::zeros(end - start, self.d);
        self.gather(end - start, |i| start + i, &mut out.data)?;
        Ok(out)
    }

    /// Mean of ‖x‖² over the given dataset rows, accumulated in f64, streaming in
    /// blocks so memory stays `O(block · d)`. Deterministic for any thread count.
    /// Used for input normalisation (the scale that makes E‖x‖² = d).
    pub fn mean_sq_norm(&self, rows: &[usize]) -> Result<f64> {
        if rows.is_empty() {
            return Err(Error::config("mean_sq_norm needs at least one row"));
        }
        let mut buf = Matrix::default();
        let mut norms = Vec::new();
        let mut sum = 0.0f64;
        for block in rows.chunks(NORM_BLOCK) {
            self.read_rows(block, &mut buf)?;
            buf.data
                .par_chunks(self.d)
                .map(|r| r.iter().map(|&x| x as f64 * x as f64).sum::<f64>())
                .collect_into_vec(&mut norms);
            sum += norms.iter().sum::<f64>();
        }
        Ok(sum / rows.len() as f64)
    }
}

/// Opens one file, choosing the reader by extension (or by content for others).
fn open_file(path: &Path, tensor: Option<&str>) -> Result<SourceMatrix> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => open_npy(path),
        Some("safetensors") => open_safetensors(path, tensor),
        _ => {
            let mut head = [0u8; 9];
            let n = {
                use std::io::Read;
                let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
                let mut n = 0;
                while n < head.len() {
                    match f.read(&mut head[n..]).map_err(|e| Error::io(path, e))? {
                        0 => break,
                        k => n += k,
                    }
                }
                n
            };
            if n >= 6 && head.starts_with(b"\x93NUMPY") {
                open_npy(path)
            } else if n == 9 && head[8] == b'{' {
                open_safetensors(path, tensor)
            } else {
                Err(Error::bad_file(
                    path,
                    "not an activation file: expected .npy or .safetensors",
                ))
            }
        }
    }
}

/// Appends the activation files of directory `dir` (see [`ActivationStore::open`]).
fn open_dir(dir: &Path, tensor: Option<&str>, files: &mut Vec<SourceMatrix>) -> Result<()> {
    let manifest = dir.join(MANIFEST);
    if manifest.is_file() {
        let m = manifest::read_listing(&manifest)?;
        for (name, rows) in &m.shards {
            let f = open_file(&dir.join(name), Some(tensor.unwrap_or(DEFAULT_TENSOR)))?;
            if rows.is_some_and(|r| r != f.rows as u64) {
                return Err(Error::bad_file(
                    &f.path,
                    format!(
                        "has {} rows, but {} says {}",
                        f.rows,
                        manifest.display(),
                        rows.unwrap_or(0)
                    ),
                ));
            }
            if f.cols != m.d {
                return Err(Error::bad_file(
                    &f.path,
                    format!(
                        "has d = {}, but {} says d = {}",
                        f.cols,
                        manifest.display(),
                        m.d
                    ),
                ));
            }
            files.push(f);
        }
        return Ok(());
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'));
            let ext = p.extension().and_then(|e| e.to_str());
            !hidden && matches!(ext, Some("npy" | "safetensors")) && p.is_file()
        })
        .collect();
    if names.is_empty() {
        return Err(Error::bad_file(
            dir,
            "directory holds no .npy or .safetensors activation files",
        ));
    }
    names.sort();
    for p in &names {
        files.push(open_file(p, tensor)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(rows: usize, cols: usize, seed: u64) -> Matrix {
        let mut r = Rng::new(seed);
        Matrix::from_vec(
            rows,
            cols,
            (0..rows * cols).map(|_| r.normal() as f32).collect(),
        )
        .unwrap()
    }

    #[test]
    fn f16_and_bf16_conversion_is_exact_for_every_finite_value() {
        let dir = tempfile::tempdir().unwrap();
        // Every 16-bit pattern, as raw bits, in one [256, 256] tensor per dtype.
        let bits: Vec<u16> = (0..=u16::MAX).collect();
        for (dtype, name) in [(DType::F16, "F16"), (DType::BF16, "BF16")] {
            let finite: Vec<bool> = bits
                .iter()
                .map(|&b| match dtype {
                    DType::F16 => half::f16::from_bits(b).is_finite(),
                    _ => half::bf16::from_bits(b).is_finite(),
                })
                .collect();
            let header = format!(
                "{{\"x\":{{\"dtype\":\"{name}\",\"shape\":[256,256],\"data_offsets\":[0,131072]}}}}"
            );
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend(bits.iter().flat_map(|b| b.to_le_bytes()));
            let path = dir.path().join(format!("{name}.safetensors"));
            std::fs::write(&path, &bytes).unwrap();
            let store = ActivationStore::open(std::slice::from_ref(&path), None).unwrap();
            let mut out = Matrix::default();
            let mut checked = 0;
            for row in 0..256 {
                let row_ok = (0..256).all(|c| finite[row * 256 + c]);
                let res = store.read_rows(&[row], &mut out);
                if !row_ok {
                    assert!(
                        res.is_err(),
                        "{name} row {row} has NaN/Inf yet was accepted"
                    );
                    continue;
                }
                res.unwrap();
                for c in 0..256 {
                    let b = bits[row * 256 + c];
                    let want = match dtype {
                        DType::F16 => half::f16::from_bits(b).to_f32(),
                        _ => half::bf16::from_bits(b).to_f32(),
                    };
                    assert_eq!(
                        out.data[c].to_bits(),
                        want.to_bits(),
                        "{name} bits {b:#06x}"
                    );
                    checked += 1;
                }
            }
            // f16: exponent 0x1f occupies rows 0x7c..0x7f and 0xfc..0xff; bf16 only 0x7f, 0xff.
            let bad_rows = if dtype == DType::F16 { 8 } else { 2 };
            assert_eq!(checked, (256 - bad_rows) * 256, "{name}");
        }
        // The same through .npy f16, with values written by the store's own writer.
        let m = random(9, 5, 3);
        let p = dir.path().join("h.npy");
        write_npy(&p, &m, DType::F16).unwrap();
        let got = ActivationStore::open(&[p], None)
            .unwrap()
            .read_range(0, 9)
            .unwrap();
        for (g, x) in got.data.iter().zip(&m.data) {
            assert_eq!(*g, half::f16::from_f32(*x).to_f32());
        }
    }

    #[test]
    fn integer_tensors_are_refused_as_activations() {
        use crate::tensorfile::safetensors::{write_file, TensorOut};
        use crate::tensorfile::{npy, Values};
        let dir = tempfile::tempdir().unwrap();
        let (ids, offsets) = ([1u32, 2, 3, 4], [1u64, 2, 3, 4]);
        for (name, values) in [("u32", Values::U32(&ids)), ("u64", Values::U64(&offsets))] {
            let st = dir.path().join(format!("{name}.safetensors"));
            let t = TensorOut {
                name: "activations",
                shape: &[2, 2],
                values,
            };
            write_file(&st, &[t], &[]).unwrap();
            let e = ActivationStore::open(&[st], None).unwrap_err().to_string();
            let want = format!(
                "tensor 'activations' has dtype {}; accepted dtypes: F32, F16, BF16",
                values.dtype()
            );
            assert!(
                e.contains(&format!("{name}.safetensors")) && e.contains(&want),
                "{e}"
            );
            let np = dir.path().join(format!("{name}.npy"));
            std::fs::write(&np, npy::encode(&[2, 2], values).unwrap()).unwrap();
            let e = ActivationStore::open(&[np], None).unwrap_err().to_string();
            let want = format!("dtype uint{}", 8 * values.dtype().size());
            assert!(
                e.contains(&format!("{name}.npy")) && e.contains(&want),
                "{e}"
            );
        }
    }

    #[test]
    fn several_files_and_directories_concatenate() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (random(5, 4, 1), random(3, 4, 2), random(7, 4, 3));
        write_npy_f32(&dir.path().join("b_second.npy"), &b).unwrap();
        write_safetensors(
            &dir.path().join("a_first.safetensors"),
            "activations",
            &a,
            DType::F32,
        )
        .unwrap();
        write_safetensors(
            &dir.path().join("c_third.safetensors"),
            "acts",
            &c,
            DType::BF16,
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let all = [&a, &b, &c];
        let want: Vec<f32> = all
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                m.data.iter().map(move |&x| {
                    if i == 2 {
                        half::bf16::from_f32(x).to_f32()
                    } else {
                        x
                    }
                })
            })
            .collect();
        let want = Matrix::from_vec(15, 4, want).unwrap();

        let store = ActivationStore::open(&[dir.path().to_path_buf()], None).unwrap();
        assert_eq!((store.rows(), store.d()), (15, 4));
        let files = store.files();
        assert_eq!(
            files.iter().map(|f| f.rows).collect::<Vec<_>>(),
            vec![5, 3, 7]
        );
        assert_eq!(files[2].tensor.as_deref(), Some("acts"));
        assert_eq!(store.read_range(0, 15).unwrap(), want);
        assert_eq!(store.read_range(4, 9).unwrap(), want.slice_rows(4, 9));
        let idx = [14, 0, 5, 7, 8, 4, 5];
        let mut out = Matrix::default();
        store.read_rows(&idx, &mut out).unwrap();
        for (k, &r) in idx.iter().enumerate() {
            assert_eq!(out.row(k), want.row(r));
        }
        assert!(store.read_rows(&[15], &mut out).is_err());
        assert!(store.read_range(3, 16).is_err());

        // Explicit file list in a different order.
        let store2 = ActivationStore::open(
            &[
                dir.path().join("b_second.npy"),
                dir.path().join("a_first.safetensors"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(store2.read_range(0, 3).unwrap(), b);
        assert_eq!(store2.read_range(3, 8).unwrap(), a);

        // A manifest fixes the order and the tensor name.
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        write_safetensors(&cache.join("s1.safetensors"), "activations", &b, DType::F32).unwrap();
        write_safetensors(&cache.join("s0.safetensors"), "activations", &a, DType::F32).unwrap();
        std::fs::write(
            cache.join(MANIFEST),
            r#"{"d": 4, "shards": ["s1.safetensors", "s0.safetensors"], "extra": 1}"#,
        )
        .unwrap();
        let s = ActivationStore::open(std::slice::from_ref(&cache), None).unwrap();
        assert_eq!(s.read_range(0, 3).unwrap(), b);
        assert_eq!(s.read_range(3, 8).unwrap(), a);
        std::fs::write(
            cache.join(MANIFEST),
            r#"{"d": 5, "shards": ["s0.safetensors"]}"#,
        )
        .unwrap();
        let e = ActivationStore::open(std::slice::from_ref(&cache), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("s0.safetensors") && e.contains("d = 5"), "{e}");
        // Shard objects with row counts (the form `saelab extract` writes).
        std::fs::write(
            cache.join(MANIFEST),
            r#"{"d": 4, "shards": [{"file": "s0.safetensors", "rows": 5, "contexts": 1},
                                   {"file": "s1.safetensors", "rows": 3}]}"#,
        )
        .unwrap();
        let s = ActivationStore::open(std::slice::from_ref(&cache), None).unwrap();
        assert_eq!(s.read_range(0, 5).unwrap(), a);
        assert_eq!(s.read_range(5, 8).unwrap(), b);
        std::fs::write(
            cache.join(MANIFEST),
            r#"{"d": 4, "shards": [{"file": "s0.safetensors", "rows": 6}]}"#,
        )
        .unwrap();
        let e = ActivationStore::open(&[cache], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("s0.safetensors") && e.contains("has 5 rows"),
            "{e}"
        );
    }

    #[test]
    fn large_parallel_gather_matches_serial_and_reports_first_bad_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = random(3000, 64, 9);
        let p = dir.path().join("x.npy");
        write_npy_f32(&p, &m).unwrap();
        let store = ActivationStore::open(std::slice::from_ref(&p), None).unwrap();
        let mut r = Rng::new(4);
        let idx: Vec<usize> = (0..2000).map(|_| r.below(3000) as usize).collect();
        let mut out = Matrix::default();
        store.read_rows(&idx, &mut out).unwrap();
        for (k, &i) in idx.iter().enumerate() {
            assert_eq!(out.row(k), m.row(i));
        }
        // mean ‖x‖² against a direct f64 computation.
        let all: Vec<usize> = (0..3000).collect();
        let want = (0..3000)
            .map(|i| m.row(i).iter().map(|&x| x as f64 * x as f64).sum::<f64>())
            .sum::<f64>()
            / 3000.0;
        let got = store.mean_sq_norm(&all).unwrap();
        assert!((got - want).abs() < 1e-9 * want, "{got} {want}");

        m.row_mut(2500)[3] = f32::NAN;
        m.row_mut(1700)[60] = f32::INFINITY;
        write_npy_f32(&p, &m).unwrap();
        let store = ActivationStore::open(&[p], None).unwrap();
        let all: Vec<usize> = (0..3000).collect();
        let e = store.read_rows(&all, &mut out).unwrap_err().to_string();
        assert!(
            e.contains("x.npy") && e.contains("row 1700") && e.contains("column 60"),
            "{e}"
        );
        let e = store.mean_sq_norm(&[5, 2500]).unwrap_err().to_string();
        assert!(e.contains("row 2500") && e.contains("NaN"), "{e}");
    }

    #[test]
    fn in_memory_store_reads_back() {
        let m = random(10, 3, 2);
        let s = ActivationStore::from_matrix(&m).unwrap();
        assert_eq!(s.read_range(0, 10).unwrap(), m);
        assert!(ActivationStore::from_matrix(&Matrix::zeros(0, 3)).is_err());
    }

    #[test]
    fn reads_files_written_by_numpy_and_python_safetensors() {
        // The interop fixtures: files written by numpy and by the Python safetensors
        // library.
        let fx = saelab_testkit::fixtures_dir();
        // Reference values through the `safetensors` crate.
        let st_bytes =
            std::fs::read(fx.join("saelens/jumprelu_gemmascope_style/sae_weights.safetensors"))
                .unwrap();
        let st = ::safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
        let reference = |name: &str| -> (Vec<usize>, Vec<f32>) {
            let t = st.tensor(name).unwrap();
            let v = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (t.shape().to_vec(), v)
        };
        // numpy-written .npy members of the Gemma Scope params.npz.
        let npz = fx.join("gemmascope/layer_0/width_64/average_l0_29/params.npz");
        let mut zip = zip::ZipArchive::new(std::fs::File::open(npz).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for name in ["W_enc", "W_dec", "b_enc"] {
            let path = dir.path().join(format!("{name}.npy"));
            let mut member = zip.by_name(&format!("{name}.npy")).unwrap();
            let mut f = std::fs::File::create(&path).unwrap();
            std::io::copy(&mut member, &mut f).unwrap();
            drop(f);
            let opened = ActivationStore::open(std::slice::from_ref(&path), None);
            let (shape, want) = reference(name);
            if shape.len() == 1 {
                let e = opened.unwrap_err().to_string();
                assert!(e.contains("1-D"), "{e}");
                continue;
            }
            let s = opened.unwrap();
            assert_eq!(vec![s.rows(), s.d()], shape, "{name}");
            assert_eq!(s.read_range(0, s.rows()).unwrap().data, want, "{name}");
        }
        // A tensor chosen by name in a file written by the Python safetensors library.
        let exp = fx.join("saelens/jumprelu_gemmascope_style/expected.safetensors");
        let exp_bytes = std::fs::read(&exp).unwrap();
        let exp_st = ::safetensors::SafeTensors::deserialize(&exp_bytes).unwrap();
        let x = exp_st.tensor("x").unwrap();
        let want: Vec<f32> = x
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let s = ActivationStore::open(&[exp], Some("x")).unwrap();
        assert_eq!(vec![s.rows(), s.d()], x.shape().to_vec());
        assert_eq!(s.read_range(0, s.rows()).unwrap().data, want);
    }
}
