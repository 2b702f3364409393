//! A careful GGUF reader (and a small writer).
//!
//! llama.cpp has had several CVEs in GGUF parsing, so every file is checked
//! here before llama.cpp sees it: the magic and version, every length and
//! count against the bytes that remain, array element types, tensor
//! dimensions, types, alignment, overflow of their sizes, and that every
//! tensor's data lies inside the file. A file that passes is structurally
//! sound; what llama.cpp then does with its values is llama.cpp's business.
//!
//! The format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

pub mod check;

/// The most tensors or key-value pairs a file may declare.
const MAX_COUNT: u64 = 1 << 24;
/// The most elements one metadata array may hold (the largest real ones,
/// vocabularies and merge lists, are a few hundred thousand).
const MAX_ARRAY: u64 = 1 << 22;
/// The most array elements all metadata together may hold: a file's
/// declared counts never make the reader allocate more than ~256 MB.
const MAX_ARRAY_TOTAL: u64 = 1 << 23;
/// GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
const DEFAULT_ALIGNMENT: u64 = 32;

/// What is wrong with a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// The file is empty.
    #[error("the file is empty")]
    Empty,
    /// Not a GGUF file.
    #[error("not a GGUF file (magic {0:?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    /// A version this reader does not know.
    #[error("unsupported GGUF version {0} (2 and 3 are supported)")]
    UnsupportedVersion(u32),
    /// The file ends before its header does (or a length in it is corrupt).
    #[error("truncated or corrupt: the file ends inside {0}")]
    Truncated(String),
    /// A value that cannot be right.
    #[error("corrupt header: {0}")]
    Corrupt(String),
    /// Values llama.cpp would abort on, or trust and load wrong
    /// ([`check::model`]).
    #[error("{0} (llama.cpp would abort or misread the model; the file is damaged or was made wrong)")]
    Unsound(#[from] check::Unsound),
    /// Tensor data that lies outside the file.
    #[error("tensor '{name}' data [{start}, {end}) lies beyond the end of the file ({size} bytes): truncated or corrupt")]
    TensorOutOfBounds {
        /// Tensor name.
        name: String,
        /// Absolute start offset.
        start: u64,
        /// Absolute end offset.
        end: u64,
        /// File size.
        size: u64,
    },
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// f32
    F32(f32),
    /// bool
    Bool(bool),
    /// UTF-8 string
    String(String),
    /// Homogeneous array
    Array(Vec<Value>),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// As an unsigned integer, if it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// As a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// As a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// As an array, if it is one.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, innermost first (ggml order).
    pub dims: Vec<u64>,
    /// ggml type id.
    pub ggml_type: u32,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Size of its data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed and checked GGUF header.
#[derive(Debug, Clone)]
pub struct GgufFile {
    /// Format version.
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensors, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Data alignment.
    pub alignment: u64,
    /// File size in bytes.
    pub file_size: u64,
}

impl GgufFile {
    /// Read and check a file's header and tensor table.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = File::open(path)?;
        let file_size = file.metadata()?.len();
        if file_size == 0 {
            return Err(GgufError::Empty);
        }
        let mut r = Reader { inner: BufReader::with_capacity(1 << 20, file), pos: 0, size: file_size, array_elements: 0 };
        let mut magic = [0u8; 4];
        r.bytes(&mut magic, "the magic")?;
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64("the tensor count")?;
        let n_kv = r.u64("the metadata count")?;
        for (what, n) in [("tensor", n_tensors), ("metadata", n_kv)] {
            if n > MAX_COUNT {
                return Err(GgufError::Corrupt(format!("{what} count {n} is implausible")));
            }
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let ty = r.u32(&format!("the type of '{key}'"))?;
            let value = r.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::Corrupt(format!("duplicate metadata key '{key}'")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => return Err(GgufError::Corrupt(format!("general.alignment {v:?} is not a power of two"))),
            },
        };
        let mut tensors = Vec::with_capacity(n_tensors.min(4096) as usize);
        let mut names = std::collections::HashSet::new();
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor #{i}'s name"))?;
            let n_dims = r.u32(&format!("tensor '{name}'"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Corrupt(format!("tensor '{name}' has {n_dims} dimensions (1..=4 allowed)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = r.u64(&format!("tensor '{name}'"))?;
                if d == 0 || d > i64::MAX as u64 {
                    return Err(GgufError::Corrupt(format!("tensor '{name}' has dimension {d}")));
                }
                dims.push(d);
            }
            let ggml_type = r.u32(&format!("tensor '{name}'"))?;
            let offset = r.u64(&format!("tensor '{name}'"))?;
            let (block, type_size) = type_layout(ggml_type)
                .ok_or_else(|| GgufError::Corrupt(format!("tensor '{name}' has unknown type {ggml_type}")))?;
            if dims[0] % block != 0 {
                return Err(GgufError::Corrupt(format!(
                    "tensor '{name}' row length {} is not a multiple of its type's block size {block}",
                    dims[0]
                )));
            }
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| GgufError::Corrupt(format!("tensor '{name}' has too many elements")))?;
            let n_bytes = (n_elements / block)
                .checked_mul(type_size)
                .ok_or_else(|| GgufError::Corrupt(format!("tensor '{name}' is too large")))?;
            if offset % alignment != 0 {
                return Err(GgufError::Corrupt(format!("tensor '{name}' offset {offset} is not aligned to {alignment}")));
            }
            if !names.insert(name.clone()) {
                return Err(GgufError::Corrupt(format!("duplicate tensor '{name}'")));
            }
            tensors.push(TensorInfo { name, dims, ggml_type, offset, n_bytes });
        }
        let data_offset = r.pos.div_ceil(alignment) * alignment;
        for t in &tensors {
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.n_bytes));
            match (start, end) {
                (Some(_), Some(end)) if end <= file_size => {}
                _ => {
                    return Err(GgufError::TensorOutOfBounds {
                        name: t.name.clone(),
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        size: file_size,
                    })
                }
            }
        }
        Ok(Self { version, metadata, tensors, data_offset, alignment, file_size })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// An integer metadata value.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// The vocabulary's token strings, if present.
    pub fn tokens(&self) -> Vec<&str> {
        self.get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// Total parameters (elements of all tensors).
    pub fn n_params(&self) -> u64 {
        self.tensors.iter().map(TensorInfo::n_elements).sum()
    }
}

struct Reader<R> {
    inner: R,
    pos: u64,
    size: u64,
    /// Metadata array elements read so far.
    array_elements: u64,
}

impl<R: Read> Reader<R> {
    fn bytes(&mut self, buf: &mut [u8], what: &str) -> Result<(), GgufError> {
        if self.size - self.pos < buf.len() as u64 {
            return Err(GgufError::Truncated(what.to_string()));
        }
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => GgufError::Truncated(what.to_string()),
            _ => GgufError::Io(e),
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        let mut b = [0u8; 4];
        self.bytes(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        let mut b = [0u8; 8];
        self.bytes(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        if len > self.size - self.pos {
            return Err(GgufError::Truncated(format!("{what} (a string of {len} bytes; {} remain)", self.size - self.pos)));
        }
        let mut buf = vec![0u8; len as usize];
        self.bytes(&mut buf, what)?;
        String::from_utf8(buf).map_err(|_| GgufError::Corrupt(format!("{what}: string is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, GgufError> {
        let what = format!("the value of '{key}'");
        let mut b1 = [0u8; 1];
        let mut b2 = [0u8; 2];
        let mut b4 = [0u8; 4];
        let mut b8 = [0u8; 8];
        Ok(match ty {
            0 => { self.bytes(&mut b1, &what)?; Value::U8(b1[0]) }
            1 => { self.bytes(&mut b1, &what)?; Value::I8(b1[0] as i8) }
            2 => { self.bytes(&mut b2, &what)?; Value::U16(u16::from_le_bytes(b2)) }
            3 => { self.bytes(&mut b2, &what)?; Value::I16(i16::from_le_bytes(b2)) }
            4 => { self.bytes(&mut b4, &what)?; Value::U32(u32::from_le_bytes(b4)) }
            5 => { self.bytes(&mut b4, &what)?; Value::I32(i32::from_le_bytes(b4)) }
            6 => { self.bytes(&mut b4, &what)?; Value::F32(f32::from_le_bytes(b4)) }
            7 => {
                self.bytes(&mut b1, &what)?;
                match b1[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(GgufError::Corrupt(format!("{what}: bool byte {b}"))),
                }
            }
            8 => Value::String(self.string(&what)?),
            9 => {
                if depth > 0 {
                    return Err(GgufError::Corrupt(format!("{what}: nested arrays are not allowed")));
                }
                let elem = self.u32(&what)?;
                let n = self.u64(&what)?;
                let min_size = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => return Err(GgufError::Corrupt(format!("{what}: nested arrays are not allowed"))),
                    t => return Err(GgufError::Corrupt(format!("{what}: unknown array element type {t}"))),
                };
                if n.checked_mul(min_size).is_none_or(|need| need > self.size - self.pos) {
                    return Err(GgufError::Truncated(format!(
                        "{what} (an array of {n} elements; {} bytes remain)",
                        self.size - self.pos
                    )));
                }
                // Checked before anything of that size is allocated: the count
                // is the file's word, and a value takes more memory than
                // its bytes on disk.
                if n > MAX_ARRAY {
                    return Err(GgufError::Corrupt(format!("{what}: an array of {n} elements (at most {MAX_ARRAY} are read)")));
                }
                self.array_elements += n;
                if self.array_elements > MAX_ARRAY_TOTAL {
                    return Err(GgufError::Corrupt(format!("{what}: the metadata arrays hold over {MAX_ARRAY_TOTAL} elements in all")));
                }
                let mut items = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => { self.bytes(&mut b8, &what)?; Value::U64(u64::from_le_bytes(b8)) }
            11 => { self.bytes(&mut b8, &what)?; Value::I64(i64::from_le_bytes(b8)) }
            12 => { self.bytes(&mut b8, &what)?; Value::F64(f64::from_le_bytes(b8)) }
            t => return Err(GgufError::Corrupt(format!("'{key}' has unknown value type {t}"))),
        })
    }
}

/// (block size in elements, bytes per block) of a ggml type, as in ggml's
/// `type_traits` table. `None` for ids ggml no longer uses or never had.
pub fn type_layout(ggml_type: u32) -> Option<(u64, u64)> {
    Some(match ggml_type {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        16 => (256, 66),  // IQ2_XXS
        17 => (256, 74),  // IQ2_XS
        18 => (256, 98),  // IQ3_XXS
        19 => (256, 50),  // IQ1_S
        20 => (32, 18),   // IQ4_NL
        21 => (256, 110), // IQ3_S
        22 => (256, 82),  // IQ2_S
        23 => (256, 136), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (1, 2),     // I16
        26 => (1, 4),     // I32
        27 => (1, 8),     // I64
        28 => (1, 8),     // F64
        29 => (256, 56),  // IQ1_M
        30 => (1, 2),     // BF16
        34 => (256, 54),  // TQ1_0
        35 => (256, 66),  // TQ2_0
        39 => (32, 17),   // MXFP4
        _ => return None,
    })
}

/// The name of a ggml type (`Q4_K`).
pub fn type_name(ggml_type: u32) -> &'static str {
    match ggml_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    }
}

/// The name of a `general.file_type` (llama.cpp's `llama_ftype`), e.g. 15 is
/// `Q4_K_M`.
pub fn file_type_name(ftype: u64) -> &'static str {
    match ftype {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => "unknown",
    }
}

/// A tensor to write: name, dims (ggml order), ggml type, raw data.
#[derive(Debug, Clone)]
pub struct TensorData {
    /// Name.
    pub name: String,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// ggml type id.
    pub ggml_type: u32,
    /// Raw bytes, exactly the type's size for `dims`.
    pub data: Vec<u8>,
}

/// Write a GGUF v3 file. Metadata is written in the given order.
pub fn write(
    out: &mut (impl Write + Seek),
    metadata: &[(String, Value)],
    tensors: &[TensorData],
) -> std::io::Result<()> {
    let mut w = BufWriter::new(out);
    w.write_all(b"GGUF")?;
    w.write_all(&3u32.to_le_bytes())?;
    w.write_all(&(tensors.len() as u64).to_le_bytes())?;
    w.write_all(&(metadata.len() as u64).to_le_bytes())?;
    for (k, v) in metadata {
        write_str(&mut w, k)?;
        w.write_all(&v.type_id().to_le_bytes())?;
        write_value(&mut w, v)?;
    }
    let align = metadata
        .iter()
        .find(|(k, _)| k == "general.alignment")
        .and_then(|(_, v)| v.as_u64())
        .unwrap_or(DEFAULT_ALIGNMENT);
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        write_str(&mut w, &t.name)?;
        w.write_all(&(t.dims.len() as u32).to_le_bytes())?;
        for d in &t.dims {
            w.write_all(&d.to_le_bytes())?;
        }
        w.write_all(&t.ggml_type.to_le_bytes())?;
        w.write_all(&offset.to_le_bytes())?;
        offsets.push(offset);
        offset = (offset + t.data.len() as u64).div_ceil(align) * align;
    }
    let pos = w.stream_position()?;
    let data_start = pos.div_ceil(align) * align;
    w.write_all(&vec![0u8; (data_start - pos) as usize])?;
    for (t, off) in tensors.iter().zip(offsets) {
        let here = w.stream_position()? - data_start;
        w.write_all(&vec![0u8; (off - here) as usize])?;
        w.write_all(&t.data)?;
    }
    let end = w.stream_position()? - data_start;
    w.write_all(&vec![0u8; (end.div_ceil(align) * align - end) as usize])?;
    w.flush()
}

fn write_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&x.to_le_bytes()),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[u8::from(*x)]),
        Value::String(s) => write_str(w, s),
        Value::Array(items) => {
            let elem = items.first().map_or(4, Value::type_id);
            w.write_all(&elem.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|i| write_value(w, i))
        }
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
    }
}

/// Write to `path` through a temporary file in the same directory, renamed
/// into place only when complete: no half-written file is ever left.
pub fn write_file(path: &Path, metadata: &[(String, Value)], tensors: &[TensorData]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    write(tmp.as_file_mut(), metadata, tensors)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Seek helper for tests that corrupt files in place.
#[doc(hidden)]
pub fn patch(path: &Path, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("tiny.gguf");
        let meta = vec![
            ("general.architecture".to_string(), Value::String("qwen2".into())),
            ("general.file_type".to_string(), Value::U32(0)),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(vec![Value::String("a".into()), Value::String("<think>".into())]),
            ),
        ];
        let tensors = vec![
            TensorData { name: "a".into(), dims: vec![4, 2], ggml_type: 0, data: vec![1; 32] },
            TensorData { name: "b".into(), dims: vec![32], ggml_type: 8, data: vec![2; 34] },
        ];
        write_file(&path, &meta, &tensors).unwrap();
        path
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let f = GgufFile::open(&tiny(dir.path())).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.architecture(), Some("qwen2"));
        assert_eq!(f.tokens(), vec!["a", "<think>"]);
        assert_eq!(f.tensors.len(), 2);
        assert_eq!(f.tensors[0].n_bytes, 32);
        assert_eq!(f.tensors[1].offset, 32);
        assert_eq!(f.tensors[1].n_bytes, 34);
        assert_eq!(f.n_params(), 40);
    }

    #[test]
    fn truncation_is_detected_at_every_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny(dir.path());
        let full = std::fs::read(&path).unwrap();
        // Cutting before the last tensor's last byte must always fail
        // (the trailing alignment padding may go).
        let needed = {
            let f = GgufFile::open(&path).unwrap();
            f.data_offset + f.tensors[1].offset + f.tensors[1].n_bytes
        } as usize;
        for len in 0..needed {
            std::fs::write(&path, &full[..len]).unwrap();
            assert!(GgufFile::open(&path).is_err(), "accepted a file cut at {len} bytes");
        }
    }

    #[test]
    fn bad_magic_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny(dir.path());
        patch(&path, 0, b"GGML").unwrap();
        assert!(matches!(GgufFile::open(&path), Err(GgufError::BadMagic(_))));
        patch(&path, 0, b"GGUF").unwrap();
        patch(&path, 4, &9u32.to_le_bytes()).unwrap();
        assert!(matches!(GgufFile::open(&path), Err(GgufError::UnsupportedVersion(9))));
    }

    #[test]
    fn absurd_counts_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = tiny(dir.path());
        patch(&path, 8, &u64::MAX.to_le_bytes()).unwrap();
        assert!(matches!(GgufFile::open(&path), Err(GgufError::Corrupt(_))));
        let path = tiny(dir.path());
        patch(&path, 16, &(1u64 << 40).to_le_bytes()).unwrap();
        assert!(GgufFile::open(&path).is_err());
    }

    #[test]
    fn tensor_offsets_out_of_bounds_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oob.gguf");
        let tensors = vec![TensorData { name: "a".into(), dims: vec![8], ggml_type: 0, data: vec![0; 32] }];
        write_file(&path, &[], &tensors).unwrap();
        // Header (24 bytes), no metadata, then the tensor entry: name length,
        // "a", n_dims, one dim, type; then the offset field.
        let offset_field = 24 + 8 + 1 + 4 + 8 + 4;
        patch(&path, offset_field as u64, &(1u64 << 20).to_le_bytes()).unwrap();
        assert!(matches!(GgufFile::open(&path), Err(GgufError::TensorOutOfBounds { .. })));
        patch(&path, offset_field as u64, &u64::MAX.to_le_bytes()).unwrap();
        assert!(GgufFile::open(&path).is_err());
    }

    #[test]
    fn unknown_types_and_bad_dims_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let t = |ty, dims: Vec<u64>| TensorData { name: "a".into(), dims, ggml_type: ty, data: vec![0; 64] };
        write_file(&path, &[], &[t(99, vec![16])]).unwrap();
        assert!(GgufFile::open(&path).is_err(), "unknown type");
        write_file(&path, &[], &[t(8, vec![16])]).unwrap();
        assert!(GgufFile::open(&path).is_err(), "Q8_0 row of 16 is not a whole block");
        write_file(&path, &[], &[t(0, vec![1, 1, 1, 1, 1])]).unwrap();
        assert!(GgufFile::open(&path).is_err(), "five dimensions");
        write_file(&path, &[], &[t(0, vec![0])]).unwrap();
        assert!(GgufFile::open(&path).is_err(), "zero dimension");
    }

    #[test]
    fn empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.gguf");
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(GgufFile::open(&path), Err(GgufError::Empty)));
    }
}
