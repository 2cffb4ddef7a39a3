//! The compact little-endian encoding of batches and answers.
//!
//! A batch is a `u32` item count followed by the items; a `Vec<f32>` is a `u32` length followed
//! by that many `f32`s; an `f32` is four bytes; a [`VectorPair`] is its `a` then its `b`. Every
//! integer and float is little-endian. An answer (the value stored under the request id in the
//! results bucket) is one tag byte followed by its body: [`ANSWER_OK`] and the encoded outputs,
//! [`ANSWER_ERROR`] and a UTF-8 message, or [`ANSWER_OBJECT`] and the UTF-8 name of the object
//! holding the encoded outputs.

use gpubridge::kernels::VectorPair;

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

impl Wire for Vec<f32> {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.len() as u32).to_le_bytes());
        out.reserve(self.len() * 4);
        for x in self {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let n = r.u32()? as usize;
        let b = r.take(n.saturating_mul(4))?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
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
