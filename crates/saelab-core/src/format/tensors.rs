//! The tensors of one SAE file, converted to f32, with the lookups the format readers
//! need (take a tensor by one of its names, orient it, refuse leftovers). The bytes are
//! read and written by [`crate::tensorfile`]. Private to [`crate::format`].

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::TensorInfo;
use crate::error::{Error, Result};
use crate::tensor::{ParamSet, Tensor};
use crate::tensorfile::{self, safetensors::TensorOut, FileTensor};

/// One tensor as found in a file, converted to f32.
#[derive(Clone, Debug)]
pub(crate) struct RawTensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// The dtype as stored (`F32`, `BF16`, `<f4`, ...).
    pub dtype: String,
    pub data: Vec<f32>,
}

/// All tensors of one file.
#[derive(Clone, Debug)]
pub(crate) struct RawFile {
    pub path: PathBuf,
    pub tensors: Vec<RawTensor>,
}

impl RawFile {
    /// Removes and returns the first tensor whose name is one of `names`.
    pub fn take(&mut self, names: &[&str]) -> Option<RawTensor> {
        let i = self
            .tensors
            .iter()
            .position(|t| names.contains(&t.name.as_str()))?;
        Some(self.tensors.remove(i))
    }

    /// Like [`RawFile::take`], but a missing tensor is an error naming the file.
    pub fn require(&mut self, names: &[&str]) -> Result<RawTensor> {
        self.take(names)
            .ok_or_else(|| Error::bad_file(&self.path, format!("missing tensor {}", names[0])))
    }

    /// Name, shape and dtype of every tensor (taken or not, call before taking).
    pub fn infos(&self) -> Vec<TensorInfo> {
        self.tensors
            .iter()
            .map(|t| TensorInfo {
                name: t.name.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype.clone(),
            })
            .collect()
    }

    /// Fails if any tensor is left (one SAE file must not hold tensors saelab ignores).
    pub fn expect_empty(&self, arch: &str) -> Result<()> {
        match self.tensors.first() {
            None => Ok(()),
            Some(t) => Err(Error::bad_file(
                &self.path,
                format!("unexpected tensor {} for architecture {arch}", t.name),
            )),
        }
    }
}

impl RawTensor {
    /// The tensor as a saelab [`Tensor`] after checking it has `want` as shape; when the
    /// stored 2-D shape is the transpose of `want` (and `want` is not square) it is
    /// transposed. `saelab_name` is used in messages.
    pub fn oriented(self, want: &[usize], file: &Path, saelab_name: &str) -> Result<Tensor> {
        if self.shape == want {
            return Tensor::new(want, self.data);
        }
        if want.len() == 2 && want[0] != want[1] && self.shape == [want[1], want[0]] {
            let (r, c) = (self.shape[0], self.shape[1]);
            let mut out = vec![0.0f32; r * c];
            for i in 0..r {
                for j in 0..c {
                    out[j * r + i] = self.data[i * c + j];
                }
            }
            return Tensor::new(want, out);
        }
        let stored = if self.name == saelab_name {
            String::new()
        } else {
            format!(" (stored as {})", self.name)
        };
        Err(Error::bad_file(
            file,
            format!(
                "{saelab_name}{stored} has shape {:?}, expected {want:?}",
                self.shape
            ),
        ))
    }

    /// The tensor as a 1-D vector of length `len`.
    pub fn vector(self, len: usize, file: &Path, saelab_name: &str) -> Result<Tensor> {
        self.oriented(&[len], file, saelab_name)
    }
}

impl From<FileTensor> for RawTensor {
    fn from(t: FileTensor) -> Self {
        RawTensor {
            name: t.name,
            shape: t.tensor.shape,
            dtype: t.dtype.name().to_string(),
            data: t.tensor.data,
        }
    }
}

/// Reads every tensor of a `.safetensors` file, converting F32 / F16 / BF16 / F64 to
/// f32 ([`tensorfile::safetensors::read_f32_file`]). Truncated or corrupt files give a
/// one-line error naming the file.
pub(crate) fn read_safetensors(path: &Path) -> Result<RawFile> {
    let mut tensors: Vec<RawTensor> = tensorfile::safetensors::read_f32_file(path)?
        .into_iter()
        .map(RawTensor::from)
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(RawFile {
        path: path.to_path_buf(),
        tensors,
    })
}

/// Serialises `tensors` as an f32 `.safetensors` byte buffer (with the `format: pt`
/// metadata SAELens writes).
pub(crate) fn safetensors_bytes<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Vec<u8>> {
    let tensors: Vec<TensorOut<'_>> = tensors
        .into_iter()
        .map(|(n, t)| TensorOut::f32(n, &t.shape, &t.data))
        .collect();
    tensorfile::safetensors::encode(&tensors, &[("format", "pt")])
}

/// Converts a parameter set to `(name, tensor)` pairs for [`safetensors_bytes`].
pub(crate) fn param_pairs(p: &ParamSet) -> Vec<(&str, &Tensor)> {
    p.iter().collect()
}

// ---------------------------------------------------------------------------------
// .npz / .npy

/// Reads every `.npy` member of a `.npz` archive (stored or deflated) into f32
/// ([`tensorfile::npy::read_f32`]: little-endian f2 / f4 / f8, C or Fortran order).
pub(crate) fn read_npz(path: &Path) -> Result<RawFile> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| Error::bad_file(path, format!("not a valid .npz (zip) archive: {e}")))?;
    let mut tensors = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| Error::bad_file(path, format!("corrupt .npz member #{i}: {e}")))?;
        let member = entry
            .name()
            .map_err(|e| Error::bad_file(path, format!("corrupt .npz member name #{i}: {e}")))?
            .to_string();
        let Some(name) = member.strip_suffix(".npy") else {
            continue;
        };
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| Error::bad_file(path, format!("cannot read member {member}: {e}")))?;
        let a = tensorfile::npy::read_f32(&bytes)
            .map_err(|msg| Error::bad_file(path, format!("member {member}: {msg}")))?;
        tensors.push(RawTensor {
            name: name.to_string(),
            shape: a.header.shape,
            dtype: a.header.descr,
            data: a.data,
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(RawFile {
        path: path.to_path_buf(),
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::store::ActivationStore;
    use crate::tensorfile::{npy, Values};

    /// A `.npz` holding `members` (name, `.npy` bytes), stored uncompressed.
    fn npz(path: &Path, members: &[(&str, &[u8])]) {
        let mut z = zip::ZipWriter::new(File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in members {
            z.start_file(*name, opts).unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
    }

    /// A `.npy` buffer with format version 3.0 and the header text `dict`.
    fn npy_v3(dict: &str, body: &[u8]) -> Vec<u8> {
        let mut v = b"\x93NUMPY\x03\x00".to_vec();
        v.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        v.extend_from_slice(dict.as_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn npz_members_and_activation_files_share_one_npy_parser() {
        let dir = tempfile::tempdir().unwrap();
        let vals = [1.5f32, -2.0, 0.25, 8.0, -0.5, 3.0];
        // The store's writer, read back by the store (mapped) and as an .npz member.
        let f16 = npy::encode(&[2, 3], Values::F16(&vals)).unwrap();
        let file = dir.path().join("acts.npy");
        std::fs::write(&file, &f16).unwrap();
        // A header only the store's parser read before: format 3.0, double quotes,
        // Python 2 longs, keys in another order.
        let bytes: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
        let v3 = npy_v3(
            "{\"shape\": (2L, 3L), \"fortran_order\": False, \"descr\": \"<f4\"}\n",
            &bytes,
        );
        let v3_file = dir.path().join("v3.npy");
        std::fs::write(&v3_file, &v3).unwrap();
        // Fortran order: read transposed from an .npz, refused by the store.
        let fortran = npy_v3(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (3, 2), }",
            &bytes,
        );
        let fortran_file = dir.path().join("fortran.npy");
        std::fs::write(&fortran_file, &fortran).unwrap();
        let archive = dir.path().join("params.npz");
        npz(
            &archive,
            &[
                ("half.npy", &f16),
                ("v3.npy", &v3),
                ("fortran.npy", &fortran),
                ("notes.txt", b"skipped"),
            ],
        );
        let mut raw = read_npz(&archive).unwrap();
        assert_eq!(
            raw.infos()
                .iter()
                .map(|t| (t.name.as_str(), t.dtype.as_str()))
                .collect::<Vec<_>>(),
            [("fortran", "<f4"), ("half", "<f2"), ("v3", "<f4")]
        );
        let stored = |p: &Path| {
            let s = ActivationStore::open(&[p.to_path_buf()], None).unwrap();
            s.read_range(0, s.rows()).unwrap()
        };
        let half = raw.require(&["half"]).unwrap();
        assert_eq!(
            (half.shape.clone(), half.data.clone()),
            (vec![2, 3], stored(&file).data)
        );
        let v3 = raw.require(&["v3"]).unwrap();
        assert_eq!(
            (v3.shape.clone(), v3.data.clone()),
            (vec![2, 3], stored(&v3_file).data)
        );
        assert_eq!(v3.data, vals);
        let f = raw.require(&["fortran"]).unwrap();
        assert_eq!(f.data, [1.5, 8.0, -2.0, -0.5, 0.25, 3.0]);
        let e = ActivationStore::open(&[fortran_file], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fortran.npy") && e.contains("Fortran"), "{e}");
        // A bad member is named, with the parser's message.
        npz(&archive, &[("W_enc.npy", &f16[..f16.len() - 2])]);
        let e = read_npz(&archive).unwrap_err().to_string();
        assert!(
            e.contains("params.npz") && e.contains("member W_enc.npy") && e.contains("truncated"),
            "{e}"
        );
    }

    #[test]
    fn sae_weight_files_and_activation_files_share_one_safetensors_reader() {
        let dir = tempfile::tempdir().unwrap();
        let w = Tensor::new(&[3, 2], vec![0.5, -1.0, 2.0, 4.0, -8.0, 16.0]).unwrap();
        let b = Tensor::new(&[2], vec![0.0, 1.0]).unwrap();
        let path = dir.path().join("sae_weights.safetensors");
        std::fs::write(
            &path,
            safetensors_bytes([("W_dec", &w), ("b_dec", &b)]).unwrap(),
        )
        .unwrap();
        let mut raw = read_safetensors(&path).unwrap();
        let store = ActivationStore::open(std::slice::from_ref(&path), Some("W_dec")).unwrap();
        assert_eq!(store.read_range(0, 3).unwrap().data, w.data);
        let t = raw.require(&["W_dec"]).unwrap();
        assert_eq!(
            (t.shape, t.dtype.as_str(), t.data),
            (w.shape, "F32", w.data)
        );
        // A 1-D tensor is refused by the store with its own wording.
        let e = ActivationStore::open(&[path], Some("b_dec"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'b_dec' is 1-D"), "{e}");
    }
}
