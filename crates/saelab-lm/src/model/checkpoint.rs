//! The files a model is read from and written to, whatever its family: a GGUF file
//! (metadata, tensors dequantised to f32 by candle) or a Hugging Face directory
//! (`config.json` and safetensors shards in f32, f16 or bf16). A family reads its
//! hyperparameters and named tensors through these; every error names the file.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::Device;
use saelab_core::tensorfile::safetensors::{self, SafetensorsFile, TensorOut};
use saelab_core::{Error, Result};

/// First line of a candle error message (candle appends a backtrace when
/// `RUST_BACKTRACE` is set).
pub(crate) fn candle_msg(e: &candle_core::Error) -> String {
    let s = e.to_string();
    s.lines().next().unwrap_or("").to_string()
}

/// A source of named f32 tensors with their shapes.
pub(crate) trait TensorSource {
    /// The tensor `name` as f32 values, checked to have `shape` and finite values.
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// Whether the source holds `name`.
    fn has(&self, name: &str) -> bool;
}

fn shape_error(path: &Path, name: &str, got: &[usize], want: &[usize]) -> Error {
    Error::bad_file(
        path,
        format!("tensor {name} has shape {got:?}, the config implies {want:?}"),
    )
}

fn check_finite(path: &Path, name: &str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(Error::bad_file(
            path,
            format!("tensor {name} holds a non-finite value at index {i}"),
        )),
        None => Ok(()),
    }
}

/// An open GGUF file: its metadata, and its tensors read on demand.
pub(crate) struct GgufFile {
    path: PathBuf,
    content: gguf_file::Content,
    reader: BufReader<File>,
}

impl GgufFile {
    /// Opens `path` and reads its header (metadata and tensor directory).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader).map_err(|e| {
            Error::bad_file(
                path,
                format!("not a readable GGUF file: {}", candle_msg(&e)),
            )
        })?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `general.architecture`, the family of the model.
    pub fn architecture(&self) -> Result<&str> {
        self.string("general.architecture")
            .ok_or_else(|| Error::bad_file(&self.path, "no general.architecture in GGUF metadata"))
    }

    /// A string metadata value.
    pub fn string(&self, key: &str) -> Option<&str> {
        match self.content.metadata.get(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// An integer metadata value (any GGUF integer type; negative values are an error).
    pub fn int(&self, key: &str) -> Result<Option<u64>> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(v) => gguf_int(v).map(Some).ok_or_else(|| {
                Error::bad_file(
                    &self.path,
                    format!("metadata {key} is not an integer: {v:?}"),
                )
            }),
        }
    }

    /// A required integer metadata value.
    pub fn need(&self, key: &str) -> Result<usize> {
        self.int(key)?
            .map(|v| v as usize)
            .ok_or_else(|| Error::bad_file(&self.path, format!("metadata {key} is missing")))
    }

    /// A floating-point metadata value (f32 or f64).
    pub fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v as f64)),
            Some(Value::F64(v)) => Ok(Some(*v)),
            Some(v) => Err(Error::bad_file(
                &self.path,
                format!("metadata {key} is not a number: {v:?}"),
            )),
        }
    }

    /// The dimensions of tensor `name`, if the file holds it.
    pub fn dims(&self, name: &str) -> Option<&[usize]> {
        self.content.tensor_infos.get(name).map(|t| t.shape.dims())
    }
}

impl TensorSource for GgufFile {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let path = &self.path;
        if !self.content.tensor_infos.contains_key(name) {
            return Err(Error::bad_file(path, format!("tensor {name} is missing")));
        }
        let q = self
            .content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| {
                Error::bad_file(path, format!("reading tensor {name}: {}", candle_msg(&e)))
            })?;
        if q.shape().dims() != shape {
            return Err(shape_error(path, name, q.shape().dims(), shape));
        }
        let t = q
            .dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| {
                Error::bad_file(
                    path,
                    format!("dequantising tensor {name}: {}", candle_msg(&e)),
                )
            })?;
        check_finite(path, name, &t)?;
        Ok(t)
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }
}

/// Any GGUF integer value as `u64` (negative values are rejected).
fn gguf_int(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

/// A Hugging Face `config.json`, with typed accessors whose errors name the file.
pub(crate) struct HfConfig {
    path: PathBuf,
    json: serde_json::Value,
}

impl HfConfig {
    /// Reads `dir/config.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Self::parse(&text, &path)
    }

    /// Parses the text of a `config.json` read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let json = serde_json::from_str(text)
            .map_err(|e| Error::bad_file(path, format!("not valid JSON: {e}")))?;
        Ok(HfConfig {
            path: path.to_path_buf(),
            json,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.json.get(key)
    }

    /// A string value (`None` when absent or not a string).
    pub fn string(&self, key: &str) -> Option<&str> {
        self.json.get(key).and_then(|x| x.as_str())
    }

    /// A boolean value (`None` when absent or not a boolean).
    pub fn flag(&self, key: &str) -> Option<bool> {
        self.json.get(key).and_then(|x| x.as_bool())
    }

    /// A non-negative integer value (`None` when absent or null).
    pub fn uint(&self, key: &str) -> Result<Option<usize>> {
        match self.json.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(x) => x.as_u64().map(|u| Some(u as usize)).ok_or_else(|| {
                Error::bad_file(
                    &self.path,
                    format!("{key} is not a non-negative integer: {x}"),
                )
            }),
        }
    }

    /// A required non-negative integer value.
    pub fn need(&self, key: &str) -> Result<usize> {
        self.uint(key)?
            .ok_or_else(|| Error::bad_file(&self.path, format!("{key} is missing")))
    }

    /// A number (`None` when absent or null).
    pub fn num(&self, key: &str) -> Result<Option<f64>> {
        match self.json.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .map(Some)
                .ok_or_else(|| Error::bad_file(&self.path, format!("{key} is not a number: {x}"))),
        }
    }

    /// A token id: a number, or the first of a list (as `eos_token_id` may be).
    pub fn token(&self, key: &str) -> Option<u32> {
        match self.json.get(key) {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|u| u as u32),
            Some(serde_json::Value::Array(a)) => {
                a.first().and_then(|x| x.as_u64()).map(|u| u as u32)
            }
            _ => None,
        }
    }
}

/// The safetensors files of a Hugging Face checkpoint directory: those named by
/// `model.safetensors.index.json` when present, else every `*.safetensors` file.
fn hf_shards(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&index, format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::bad_file(&index, "no weight_map object"))?;
        let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        if p.extension().and_then(|e| e.to_str()) == Some("safetensors") {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::bad_file(
            dir,
            "no *.safetensors files in the directory",
        ));
    }
    Ok(files)
}

/// The tensors of a Hugging Face checkpoint directory, memory-mapped.
pub(crate) struct HfTensors {
    files: Vec<SafetensorsFile>,
    /// tensor name → index into `files`
    index: HashMap<String, usize>,
}

impl HfTensors {
    /// Maps every safetensors shard of `dir` and indexes its tensor names.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, p) in hf_shards(dir)?.into_iter().enumerate() {
            let f = SafetensorsFile::open(&p)?;
            for e in f.entries() {
                index.insert(e.name.clone(), i);
            }
            files.push(f);
        }
        Ok(HfTensors { files, index })
    }
}

impl TensorSource for HfTensors {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let Some(&i) = self.index.get(name) else {
            let path = self.files[0].path();
            let dir = path.parent().unwrap_or(path);
            return Err(Error::bad_file(dir, format!("tensor {name} is missing")));
        };
        let file = &self.files[i];
        let t = file.read_f32(name)?.tensor;
        if t.shape != shape {
            return Err(shape_error(file.path(), name, &t.shape, shape));
        }
        check_finite(file.path(), name, &t.data)?;
        Ok(t.data)
    }

    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

/// A named f32 tensor to write: name, shape, values.
pub(crate) type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Writes a Hugging Face checkpoint into `dir`: `config.json` (`config`, pretty-printed)
/// and one f32 `model.safetensors` holding `tensors`.
pub(crate) fn write_hf_dir(
    dir: &Path,
    config: &serde_json::Value,
    tensors: Vec<NamedTensor>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let out: Vec<TensorOut<'_>> = tensors
        .iter()
        .map(|(name, shape, data)| TensorOut::f32(name, shape, data))
        .collect();
    safetensors::write_file(&dir.join("model.safetensors"), &out, &[])?;
    let cfg_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(config).expect("JSON of plain values");
    std::fs::write(&cfg_path, text).map_err(|e| Error::io(&cfg_path, e))?;
    Ok(())
}
