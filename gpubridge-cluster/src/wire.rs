//! The compact little-endian encoding of batches and answers.
//!
//! A batch is a `u32` item count followed by the items; a `Vec<f32>` (or `Vec<u32>`) is a `u32`
//! length followed by that many `f32`s (`u32`s); an `f32` or a `u32` is four bytes; a size
//! (`usize`) is eight; a [`VectorPair`] is its `a` then its `b`; a [`SaxpyInput`] its `alpha`,
//! `x` and `y`; a [`MatMulInput`] its `m`, `k`, `n`, `a` and `b`; a [`Matrix`] its `rows`,
//! `cols` and `data`; a [`Graph`] its `nodes`, then a `u32` edge count and each edge's `src` and
//! `dst` as `u32`s. Every integer and float is little-endian. An answer (the value stored under the request id in the
//! results bucket) is one tag byte followed by its body: [`ANSWER_OK`] and the encoded outputs,
//! [`ANSWER_ERROR`] and a UTF-8 message, or [`ANSWER_OBJECT`] and the UTF-8 name of the object
//! holding the encoded outputs.

use gpubridge::kernels::{Graph, MatMulInput, Matrix, SaxpyInput, VectorPair};

/// Tag of an answer carrying the encoded outputs inline.
pub const ANSWER_OK: u8 = 0;
/// Tag of an answer carrying the worker's error message.
pub const ANSWER_ERROR: u8 = 1;
/// Tag of an answer whose outputs are in the object store, under the name that follows.
pub const ANSWER_OBJECT: u8 = 2;

/// Malformed bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The bytes end before the value does.
    #[error("truncated: needed {needed} more bytes at offset {offset}")]
    Truncated {
        /// Where the read started.
        offset: usize,
        /// How many bytes it needed.
        needed: usize,
    },
    /// Bytes left over after the last item.
    #[error("{0} trailing bytes after the last item")]
    Trailing(usize),
    /// An answer with an unknown tag, or none.
    #[error("unknown answer tag {0:?}")]
    UnknownTag(Option<u8>),
    /// A size that does not fit this machine's `usize`.
    #[error("size {0} does not fit this machine")]
    TooLarge(u64),
}

/// A cursor over encoded bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, offset: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let rest = &self.bytes[self.offset..];
        if rest.len() < n {
            return Err(WireError::Truncated {
                offset: self.offset,
                needed: n - rest.len(),
            });
        }
        self.offset += n;
        Ok(&rest[..n])
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn size(&mut self) -> Result<usize, WireError> {
        let b = self.take(8)?;
        let v = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        usize::try_from(v).map_err(|_| WireError::TooLarge(v))
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }
}

/// A type that travels in batches and answers.
pub trait Wire: Sized {
    /// Appends `self` to `out`.
    fn put(&self, out: &mut Vec<u8>);
    /// Reads one value.
    ///
    /// # Errors
    /// [`WireError`] for malformed bytes.
    fn get(r: &mut Reader<'_>) -> Result<Self, WireError>;
}

impl Wire for f32 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let b = r.take(4)?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// A four-byte little-endian value, whose vectors travel as a `u32` length and the values.
trait Word: Copy {
    fn to_le(self) -> [u8; 4];
    fn from_le(b: [u8; 4]) -> Self;
}

impl Word for f32 {
    fn to_le(self) -> [u8; 4] {
        self.to_le_bytes()
    }
    fn from_le(b: [u8; 4]) -> Self {
        f32::from_le_bytes(b)
    }
}

impl Word for u32 {
    fn to_le(self) -> [u8; 4] {
        self.to_le_bytes()
    }
    fn from_le(b: [u8; 4]) -> Self {
        u32::from_le_bytes(b)
    }
}

impl<T: Word> Wire for Vec<T> {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.len() as u32).to_le_bytes());
        out.reserve(self.len() * 4);
        for x in self {
            out.extend_from_slice(&x.to_le());
        }
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let n = r.u32()? as usize;
        let b = r.take(n.saturating_mul(4))?;
        Ok(b.chunks_exact(4)
            .map(|c| T::from_le([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

impl Wire for VectorPair {
    fn put(&self, out: &mut Vec<u8>) {
        self.a.put(out);
        self.b.put(out);
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let a = Vec::<f32>::get(r)?;
        let b = Vec::<f32>::get(r)?;
        Ok(VectorPair { a, b })
    }
}

fn put_size(n: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&(n as u64).to_le_bytes());
}

impl Wire for u32 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, WireError> {
        r.u32()
    }
}

impl Wire for SaxpyInput {
    fn put(&self, out: &mut Vec<u8>) {
        self.alpha.put(out);
        self.x.put(out);
        self.y.put(out);
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(SaxpyInput {
            alpha: f32::get(r)?,
            x: Vec::<f32>::get(r)?,
            y: Vec::<f32>::get(r)?,
        })
    }
}

impl Wire for MatMulInput {
    fn put(&self, out: &mut Vec<u8>) {
        put_size(self.m, out);
        put_size(self.k, out);
        put_size(self.n, out);
        self.a.put(out);
        self.b.put(out);
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(MatMulInput {
            m: r.size()?,
            k: r.size()?,
            n: r.size()?,
            a: Vec::<f32>::get(r)?,
            b: Vec::<f32>::get(r)?,
        })
    }
}

impl Wire for Matrix {
    fn put(&self, out: &mut Vec<u8>) {
        put_size(self.rows, out);
        put_size(self.cols, out);
        self.data.put(out);
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Matrix {
            rows: r.size()?,
            cols: r.size()?,
            data: Vec::<f32>::get(r)?,
        })
    }
}

impl Wire for Graph {
    fn put(&self, out: &mut Vec<u8>) {
        put_size(self.nodes, out);
        out.extend_from_slice(&(self.edges.len() as u32).to_le_bytes());
        out.reserve(self.edges.len() * 8);
        for [src, dst] in &self.edges {
            out.extend_from_slice(&src.to_le_bytes());
            out.extend_from_slice(&dst.to_le_bytes());
        }
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let nodes = r.size()?;
        let n = r.u32()? as usize;
        let b = r.take(n.saturating_mul(8))?;
        let word = |c: &[u8]| u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let edges = b
            .chunks_exact(8)
            .map(|c| [word(&c[..4]), word(&c[4..])])
            .collect();
        Ok(Graph { nodes, edges })
    }
}

/// Encodes a batch: the item count, then the items.
pub fn encode<T: Wire>(items: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + items.len() * 8);
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for item in items {
        item.put(&mut out);
    }
    out
}

/// Decodes a batch written by [`encode`], all of `bytes`.
///
/// # Errors
/// [`WireError`] for malformed bytes.
pub fn decode<T: Wire>(bytes: &[u8]) -> Result<Vec<T>, WireError> {
    let mut r = Reader::new(bytes);
    let n = r.u32()? as usize;
    // Never trust the count for the allocation: each item is at least four bytes.
    let mut items = Vec::with_capacity(n.min(r.remaining() / 4));
    for _ in 0..n {
        items.push(T::get(&mut r)?);
    }
    match r.remaining() {
        0 => Ok(items),
        left => Err(WireError::Trailing(left)),
    }
}

/// A decoded answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<'a> {
    /// The encoded outputs.
    Inline(&'a [u8]),
    /// The worker's error message.
    Error(String),
    /// The name of the object holding the encoded outputs.
    Object(String),
}

/// Builds an answer: `tag` then `body`.
pub fn answer(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(tag);
    out.extend_from_slice(body);
    out
}

/// Reads an answer written by [`answer`].
///
/// # Errors
/// [`WireError::UnknownTag`].
pub fn read_answer(bytes: &[u8]) -> Result<Answer<'_>, WireError> {
    match bytes.split_first() {
        Some((&ANSWER_OK, body)) => Ok(Answer::Inline(body)),
        Some((&ANSWER_ERROR, body)) => {
            Ok(Answer::Error(String::from_utf8_lossy(body).into_owned()))
        }
        Some((&ANSWER_OBJECT, body)) => {
            Ok(Answer::Object(String::from_utf8_lossy(body).into_owned()))
        }
        Some((&tag, _)) => Err(WireError::UnknownTag(Some(tag))),
        None => Err(WireError::UnknownTag(None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let sums = vec![vec![1.0f32, -2.5, 3.25], vec![], vec![f32::MAX]];
        assert_eq!(decode::<Vec<f32>>(&encode(&sums)), Ok(sums));
        let pairs = vec![VectorPair {
            a: vec![1.0, 2.0],
            b: vec![3.0, 4.0],
        }];
        assert_eq!(decode::<VectorPair>(&encode(&pairs)), Ok(pairs));
        let outs = vec![1.5f32, 2.5];
        assert_eq!(decode::<f32>(&encode(&outs)), Ok(outs));
        let saxpy = vec![SaxpyInput {
            alpha: -0.5,
            x: vec![1.0, 2.0],
            y: vec![3.0, f32::MIN_POSITIVE],
        }];
        assert_eq!(decode::<SaxpyInput>(&encode(&saxpy)), Ok(saxpy));
        let matmul = vec![
            MatMulInput {
                m: 1,
                k: 2,
                n: 1,
                a: vec![1.0, 2.0],
                b: vec![3.0, 4.0],
            },
            MatMulInput::default(),
        ];
        assert_eq!(decode::<MatMulInput>(&encode(&matmul)), Ok(matmul));
        let matrices = vec![Matrix {
            rows: 1,
            cols: 2,
            data: vec![11.0, -1.0],
        }];
        assert_eq!(decode::<Matrix>(&encode(&matrices)), Ok(matrices));
        let graphs = vec![
            Graph {
                nodes: 5,
                edges: vec![[0, 1], [3, 4], [u32::MAX, 7]],
            },
            Graph {
                nodes: 0,
                edges: vec![],
            },
        ];
        assert_eq!(decode::<Graph>(&encode(&graphs)), Ok(graphs));
        let labels = vec![vec![0u32, 0, 2], vec![]];
        assert_eq!(decode::<Vec<u32>>(&encode(&labels)), Ok(labels));
    }

    /// Decodes `bytes` as every type: an answer or an error, never a panic or a huge allocation.
    fn decode_all(bytes: &[u8]) {
        let _ = decode::<f32>(bytes);
        let _ = decode::<u32>(bytes);
        let _ = decode::<Vec<f32>>(bytes);
        let _ = decode::<Vec<u32>>(bytes);
        let _ = decode::<VectorPair>(bytes);
        let _ = decode::<SaxpyInput>(bytes);
        let _ = decode::<MatMulInput>(bytes);
        let _ = decode::<Matrix>(bytes);
        let _ = decode::<Graph>(bytes);
        let _ = read_answer(bytes);
    }

    #[test]
    fn arbitrary_and_mutated_bytes_decode_to_a_value_or_an_error() {
        use rand::{Rng, SeedableRng};
        let seed = rand::random::<u64>();
        // Printed with the test's output when it fails, to replay the case.
        eprintln!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let valid = [
            encode(&[Graph {
                nodes: 4,
                edges: vec![[0, 1], [2, 3]],
            }]),
            encode(&[MatMulInput {
                m: 1,
                k: 2,
                n: 1,
                a: vec![1.0, 2.0],
                b: vec![3.0, 4.0],
            }]),
            encode(&[SaxpyInput {
                alpha: 1.0,
                x: vec![1.0],
                y: vec![2.0],
            }]),
        ];
        for i in 0..20_000 {
            let bytes: Vec<u8> = if i % 2 == 0 {
                let n = rng.random_range(0..64);
                (0..n).map(|_| rng.random()).collect()
            } else {
                // A valid encoding with a few bytes changed (counts and sizes among them).
                let mut b = valid[i % valid.len()].clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random();
                }
                b
            };
            decode_all(&bytes);
        }
    }

    #[test]
    fn every_type_rejects_every_truncation() {
        let graph = encode(&[Graph {
            nodes: 3,
            edges: vec![[0, 1], [1, 2]],
        }]);
        let matmul = encode(&[MatMulInput {
            m: 1,
            k: 1,
            n: 1,
            a: vec![2.0],
            b: vec![3.0],
        }]);
        let saxpy = encode(&[SaxpyInput {
            alpha: 2.0,
            x: vec![1.0],
            y: vec![1.0],
        }]);
        for n in 0..graph.len() {
            assert!(decode::<Graph>(&graph[..n]).is_err(), "graph cut at {n}");
        }
        for n in 0..matmul.len() {
            assert!(
                decode::<MatMulInput>(&matmul[..n]).is_err(),
                "matmul cut at {n}"
            );
        }
        for n in 0..saxpy.len() {
            assert!(
                decode::<SaxpyInput>(&saxpy[..n]).is_err(),
                "saxpy cut at {n}"
            );
        }
        // A huge edge count with no edges fails without allocating.
        let mut bomb = 1u32.to_le_bytes().to_vec();
        bomb.extend_from_slice(&3u64.to_le_bytes());
        bomb.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode::<Graph>(&bomb),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn rejects_malformed_bytes() {
        let bytes = encode(&[vec![1.0f32, 2.0]]);
        assert!(matches!(
            decode::<Vec<f32>>(&bytes[..bytes.len() - 1]),
            Err(WireError::Truncated { .. })
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode::<Vec<f32>>(&long), Err(WireError::Trailing(1)));
        // A huge count with no items must fail, not allocate.
        assert!(decode::<Vec<f32>>(&u32::MAX.to_le_bytes()).is_err());
        assert_eq!(read_answer(&[]), Err(WireError::UnknownTag(None)));
        assert_eq!(read_answer(&[9]), Err(WireError::UnknownTag(Some(9))));
        assert_eq!(
            read_answer(&answer(ANSWER_OK, b"x")),
            Ok(Answer::Inline(b"x"))
        );
    }
}
