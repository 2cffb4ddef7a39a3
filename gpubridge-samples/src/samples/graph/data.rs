//! The journal-entry graph on disk: `nodes.parquet` (`id` int64, `kind` utf8) and `edges.parquet`
//! (`src` int64, `dst` int64, `amount` float64), read and written with the `parquet` crate's
//! low-level column API (no Arrow).
//!
//! # What the loader accepts
//! - Columns are found by name; extra columns are ignored; `REQUIRED` or `OPTIONAL` columns both
//!   load, but a null in one is [`GraphDataError::Schema`]. Any codec the build has (none,
//!   Snappy) and any encoding the crate reads (plain, dictionary, delta) load.
//! - Node ids are any distinct int64s; a repeated id is [`GraphDataError::DuplicateNode`].
//! - An edge naming an id that is not a node is [`GraphDataError::UnknownNode`].
//! - Self-loops are kept and counted ([`GraphData::self_loops`]): they do not change connectivity.
//!   Duplicate edges (either direction) are kept: they do not change connectivity, and the
//!   pattern analysis counts each undirected edge once.
//! - A missing file is [`GraphDataError::Missing`]; one that is not parquet, truncated, or that
//!   the reader cannot decode is [`GraphDataError::Corrupt`] (the reader runs under
//!   `catch_unwind`, so even a reader bug on hostile bytes is an error, not a crash).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gpubridge_core::kernels::largest_node;
use parquet::basic::{Compression, Type as PhysicalType};
use parquet::column::page::{Page, PageMetadata, PageReader};
use parquet::column::reader::{get_column_reader, get_typed_column_reader};
use parquet::data_type::{ByteArray, ByteArrayType, DataType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{ChunkReader, FileReader, Length, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use rayon::prelude::*;

/// Rows per row group when writing.
const ROW_GROUP: usize = 1 << 20;
/// Records per read call.
const READ_BATCH: usize = 1 << 16;

/// Why a graph could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum GraphDataError {
    /// The file does not exist.
    #[error("{path}: no such file")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not parquet, is truncated, or cannot be decoded.
    #[error("{path}: not a readable parquet file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The reader's complaint.
        reason: String,
    },
    /// A column is missing, has the wrong type, is nested, or holds a null.
    #[error("{path}: {reason}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Two nodes share an id.
    #[error("nodes.parquet: node id {id} appears more than once")]
    DuplicateNode {
        /// The repeated id.
        id: i64,
    },
    /// An edge names an id that is not a node.
    #[error("edges.parquet: row {row}: {column} = {id} is not a node id")]
    UnknownNode {
        /// The edge's row.
        row: usize,
        /// `src` or `dst`.
        column: &'static str,
        /// The id.
        id: i64,
    },
    /// More nodes than `u32` labels can number.
    #[error("nodes.parquet: {0} nodes exceed the 4294967294 that u32 labels can number")]
    TooManyNodes(usize),
    /// Writing failed.
    #[error("{path}: cannot write: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A loaded graph: nodes numbered `0..n` in file order, edges as pairs of those numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GraphData {
    /// Node ids, in file order; node `i` has id `ids[i]`.
    pub ids: Vec<i64>,
    /// Each node's kind, as an index into [`GraphData::kind_names`].
    pub kinds: Vec<u32>,
    /// The distinct kinds, in order of first appearance.
    pub kind_names: Vec<String>,
    /// Edges as `[src, dst]` node numbers, in file order.
    pub edges: Vec<[u32; 2]>,
    /// Each edge's amount.
    pub amounts: Vec<f64>,
    /// Edges from a node to itself.
    pub self_loops: usize,
}

/// One file's reader, and its path for errors.
struct Table {
    path: PathBuf,
    reader: SerializedFileReader<StrictFile>,
}

/// A parquet file whose readers fail at its end instead of returning no bytes, and that refuses
/// byte ranges past its end before allocating for them.
///
/// The parquet reader's thrift decoder skips an unknown list element by element, and each skip
/// accepts a short read: a damaged page header claiming a list of 2^31 doubles past the end of
/// the file kept the loader reading nothing for minutes (found by the `graph_parquet` fuzz
/// target). Failing the read at the end stops it at once with [`GraphDataError::Corrupt`].
struct StrictFile {
    file: File,
    len: u64,
}

/// A column's pages, with each dictionary page checked against its own size before the reader
/// decodes it.
///
/// The parquet reader sizes a dictionary by the count its page header declares and allocates it
/// before decoding: a damaged 1.5 KiB file declared 402,653,184 int64 values and took 3 GiB
/// before failing (found by the `graph_parquet` fuzz target). Plain values take at least
/// `min_width` bytes each, so a page with fewer bytes than that is `Corrupt` at once.
struct CheckedPages {
    inner: Box<dyn PageReader>,
    min_width: usize,
}

impl PageReader for CheckedPages {
    fn get_next_page(&mut self) -> parquet::errors::Result<Option<Page>> {
        let page = self.inner.get_next_page()?;
        if let Some(Page::DictionaryPage {
            buf, num_values, ..
        }) = &page
        {
            let needs = (*num_values as usize).saturating_mul(self.min_width);
            if needs > buf.len() {
                return Err(parquet::errors::ParquetError::General(format!(
                    "a dictionary page declares {num_values} values in {} bytes",
                    buf.len()
                )));
            }
        }
        Ok(page)
    }

    fn peek_next_page(&mut self) -> parquet::errors::Result<Option<PageMetadata>> {
        self.inner.peek_next_page()
    }

    fn skip_next_page(&mut self) -> parquet::errors::Result<()> {
        self.inner.skip_next_page()
    }

    fn at_record_boundary(&mut self) -> parquet::errors::Result<bool> {
        self.inner.at_record_boundary()
    }
}

impl Iterator for CheckedPages {
    type Item = parquet::errors::Result<Page>;

    fn next(&mut self) -> Option<Self::Item> {
        self.get_next_page().transpose()
    }
}

/// A reader of a [`StrictFile`]: reading at the end is an `UnexpectedEof` error.
struct StrictRead<R>(R);

impl<R: std::io::Read> std::io::Read for StrictRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the file",
            ));
        }
        Ok(n)
    }
}

impl Length for StrictFile {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for StrictFile {
    type T = StrictRead<<File as ChunkReader>::T>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        self.file.get_read(start).map(StrictRead)
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        if start.saturating_add(length as u64) > self.len {
            return Err(parquet::errors::ParquetError::EOF(format!(
                "bytes {start}..+{length} asked for, but the file has {} bytes",
                self.len
            )));
        }
        self.file.get_bytes(start, length)
    }
}

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> GraphDataError {
    GraphDataError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn schema(path: &Path, reason: impl Into<String>) -> GraphDataError {
    GraphDataError::Schema {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Runs `f`, turning a panic of the parquet reader into [`GraphDataError::Corrupt`].
fn guarded<T>(
    path: &Path,
    f: impl FnOnce() -> Result<T, GraphDataError>,
) -> Result<T, GraphDataError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("unknown");
        Err(corrupt(path, format!("the reader failed: {why}")))
    })
}

impl Table {
    fn open(path: &Path) -> Result<Self, GraphDataError> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => GraphDataError::Missing {
                path: path.to_owned(),
            },
            _ => GraphDataError::Io {
                path: path.to_owned(),
                source: e,
            },
        })?;
        let len = file
            .metadata()
            .map_err(|e| GraphDataError::Io {
                path: path.to_owned(),
                source: e,
            })?
            .len();
        let file = StrictFile { file, len };
        let reader = guarded(path, || {
            SerializedFileReader::new(file).map_err(|e| corrupt(path, e))
        })?;
        Ok(Self {
            path: path.to_owned(),
            reader,
        })
    }

    fn rows(&self) -> usize {
        usize::try_from(self.reader.metadata().file_metadata().num_rows()).unwrap_or(0)
    }

    /// The index of column `name`, checked to be a flat column of `physical` type.
    fn column(&self, name: &str, physical: PhysicalType) -> Result<usize, GraphDataError> {
        let descr = self.reader.metadata().file_metadata().schema_descr();
        let (i, c) = descr
            .columns()
            .iter()
            .enumerate()
            .find(|(_, c)| c.path().parts() == [name])
            .ok_or_else(|| schema(&self.path, format!("no column `{name}`")))?;
        if c.physical_type() != physical {
            return Err(schema(
                &self.path,
                format!("column `{name}` is {}, not {physical}", c.physical_type()),
            ));
        }
        if c.max_rep_level() > 0 {
            return Err(schema(&self.path, format!("column `{name}` is repeated")));
        }
        Ok(i)
    }

    /// Every value of column `index` (`name` for errors), in row order.
    fn read<T: DataType>(&self, index: usize, name: &str) -> Result<Vec<T::T>, GraphDataError>
    where
        T::T: Clone,
    {
        guarded(&self.path, || {
            let rows = self.rows();
            // The footer's row count is the file's word: reserved fallibly, so that a count
            // larger than memory is an error rather than an aborted allocation.
            let mut values: Vec<T::T> = Vec::new();
            values.try_reserve_exact(rows).map_err(|e| {
                corrupt(
                    &self.path,
                    format!("{rows} rows declared, more than memory holds: {e}"),
                )
            })?;
            let max_def = self
                .reader
                .metadata()
                .file_metadata()
                .schema_descr()
                .column(index)
                .max_def_level();
            let mut defs: Vec<i16> = Vec::new();
            for g in 0..self.reader.num_row_groups() {
                let group = self
                    .reader
                    .get_row_group(g)
                    .map_err(|e| corrupt(&self.path, e))?;
                let pages = group
                    .get_column_page_reader(index)
                    .map_err(|e| corrupt(&self.path, e))?;
                let pages = CheckedPages {
                    inner: pages,
                    min_width: match T::get_physical_type() {
                        PhysicalType::INT64 | PhysicalType::DOUBLE => 8,
                        // A byte array's length prefix.
                        PhysicalType::BYTE_ARRAY => 4,
                        _ => 1,
                    },
                };
                let descr = self
                    .reader
                    .metadata()
                    .file_metadata()
                    .schema_descr()
                    .column(index);
                let col = get_column_reader(descr, Box::new(pages));
                let mut col = get_typed_column_reader::<T>(col);
                loop {
                    defs.clear();
                    let def = (max_def > 0).then_some(&mut defs);
                    let (records, _, _) = col
                        .read_records(READ_BATCH, def, None, &mut values)
                        .map_err(|e| corrupt(&self.path, e))?;
                    if defs.iter().any(|d| *d < max_def) {
                        return Err(schema(&self.path, format!("column `{name}` holds a null")));
                    }
                    // Pages may decode to far more values than their bytes (run-length
                    // encoding): a damaged page of a few bytes decoded hundreds of millions of
                    // values, gigabytes, before the count was checked (found by the
                    // graph_parquet fuzz target). Memory stays within the declared rows.
                    if values.len() > rows {
                        return Err(corrupt(
                            &self.path,
                            format!(
                                "column `{name}` holds more values than the {rows} rows declared"
                            ),
                        ));
                    }
                    if records == 0 {
                        break;
                    }
                }
            }
            if values.len() != rows {
                return Err(corrupt(
                    &self.path,
                    format!(
                        "column `{name}` holds {} values for {rows} rows",
                        values.len()
                    ),
                ));
            }
            Ok(values)
        })
    }
}

/// Node ids to node numbers: an open-addressing hash table (linear probing, at most two thirds
/// full), so that looking up an edge's endpoints costs about one cache miss each. (Binary search
/// over sorted ids costs one per level, which at 10M nodes made loading forty times slower.)
struct IdIndex {
    /// `(id, node)` per slot; `node == EMPTY` marks a free slot.
    slots: Vec<(i64, u32)>,
    shift: u32,
}

impl IdIndex {
    const EMPTY: u32 = u32::MAX;

    /// Indexes `ids` (fewer than `u32::MAX` of them).
    ///
    /// # Errors
    /// [`GraphDataError::DuplicateNode`] for the first id seen twice.
    fn new(ids: &[i64]) -> Result<Self, GraphDataError> {
        let cap = (ids.len() * 3 / 2).next_power_of_two().max(16);
        let mut index = IdIndex {
            slots: vec![(0, Self::EMPTY); cap],
            shift: 64 - cap.trailing_zeros(),
        };
        let mask = cap - 1;
        for (node, id) in ids.iter().enumerate() {
            let mut at = index.slot(*id);
            loop {
                let s = &mut index.slots[at];
                if s.1 == Self::EMPTY {
                    *s = (*id, node as u32);
                    break;
                }
                if s.0 == *id {
                    return Err(GraphDataError::DuplicateNode { id: *id });
                }
                at = (at + 1) & mask;
            }
        }
        Ok(index)
    }

    /// The home slot of `id` (Fibonacci hashing: the top bits of a multiply).
    fn slot(&self, id: i64) -> usize {
        ((id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    /// The node number of `id`, if it is a node.
    fn get(&self, id: i64) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut at = self.slot(id);
        loop {
            let (k, v) = self.slots[at];
            if v == Self::EMPTY {
                return None;
            }
            if k == id {
                return Some(v);
            }
            at = (at + 1) & mask;
        }
    }
}

/// Loads `dir/nodes.parquet` and `dir/edges.parquet` (see the module docs for what is accepted).
///
/// # Errors
/// A [`GraphDataError`] saying which file and what is wrong.
pub fn load(dir: &Path) -> Result<GraphData, GraphDataError> {
    let nodes = Table::open(&dir.join("nodes.parquet"))?;
    let id_col = nodes.column("id", PhysicalType::INT64)?;
    let kind_col = nodes.column("kind", PhysicalType::BYTE_ARRAY)?;
    let edges = Table::open(&dir.join("edges.parquet"))?;
    let src_col = edges.column("src", PhysicalType::INT64)?;
    let dst_col = edges.column("dst", PhysicalType::INT64)?;
    let amount_col = edges.column("amount", PhysicalType::DOUBLE)?;

    let ids = nodes.read::<Int64Type>(id_col, "id")?;
    if ids.len() >= u32::MAX as usize {
        return Err(GraphDataError::TooManyNodes(ids.len()));
    }
    let raw_kinds = nodes.read::<ByteArrayType>(kind_col, "kind")?;
    let mut kind_names: Vec<String> = Vec::new();
    let mut kinds = Vec::with_capacity(raw_kinds.len());
    for (row, k) in raw_kinds.iter().enumerate() {
        let s = std::str::from_utf8(k.data()).map_err(|_| {
            schema(
                &nodes.path,
                format!("column `kind`: row {row} is not UTF-8"),
            )
        })?;
        let at = match kind_names.iter().position(|n| n == s) {
            Some(i) => i,
            None => {
                kind_names.push(s.to_owned());
                kind_names.len() - 1
            }
        };
        kinds.push(at as u32);
    }
    drop(raw_kinds);

    let index = IdIndex::new(&ids)?;
    let src = edges.read::<Int64Type>(src_col, "src")?;
    let dst = edges.read::<Int64Type>(dst_col, "dst")?;
    let amounts = edges.read::<DoubleType>(amount_col, "amount")?;
    let lookup = |id: i64| index.get(id);
    // `u32::MAX` marks an unknown id: it is never a node number, as there are fewer nodes.
    const UNKNOWN: u32 = u32::MAX;
    let out: Vec<[u32; 2]> = src
        .par_iter()
        .zip(dst.par_iter())
        .map(|(s, d)| [lookup(*s).unwrap_or(UNKNOWN), lookup(*d).unwrap_or(UNKNOWN)])
        .collect();
    // `UNKNOWN` is the largest `u32`, so the largest node named is it exactly when an id is
    // unknown (a check at memory speed); only then is the first such row searched for.
    let unknown = |e: &[u32; 2]| e[0] == UNKNOWN || e[1] == UNKNOWN;
    let first_unknown = if largest_node(&out) == Some(UNKNOWN) {
        out.iter().position(unknown)
    } else {
        None
    };
    if let Some(row) = first_unknown {
        let (column, id) = if out[row][0] == UNKNOWN {
            ("src", src[row])
        } else {
            ("dst", dst[row])
        };
        return Err(GraphDataError::UnknownNode { row, column, id });
    }
    drop((src, dst));
    let self_loops = out.par_iter().filter(|e| e[0] == e[1]).count();
    Ok(GraphData {
        ids,
        kinds,
        kind_names,
        edges: out,
        amounts,
        self_loops,
    })
}

fn write_err(path: &Path, e: impl std::fmt::Display) -> GraphDataError {
    GraphDataError::Write {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

fn writer(path: &Path, message: &str) -> Result<SerializedFileWriter<File>, GraphDataError> {
    let schema = parse_message_type(message).map_err(|e| write_err(path, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let file = File::create(path).map_err(|e| GraphDataError::Io {
        path: path.to_owned(),
        source: e,
    })?;
    SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props))
        .map_err(|e| write_err(path, e))
}

/// One column's values for a row group, in schema order.
enum Column<'a> {
    Int64(&'a [i64]),
    Double(&'a [f64]),
    Bytes(Vec<ByteArray>),
}

fn write_group(
    w: &mut SerializedFileWriter<File>,
    path: &Path,
    columns: Vec<Column<'_>>,
) -> Result<(), GraphDataError> {
    let mut group = w.next_row_group().map_err(|e| write_err(path, e))?;
    let mut cols = columns.into_iter();
    while let Some(mut c) = group.next_column().map_err(|e| write_err(path, e))? {
        let written = match cols.next() {
            Some(Column::Int64(v)) => c.typed::<Int64Type>().write_batch(v, None, None),
            Some(Column::Double(v)) => c.typed::<DoubleType>().write_batch(v, None, None),
            Some(Column::Bytes(v)) => c.typed::<ByteArrayType>().write_batch(&v, None, None),
            None => return Err(write_err(path, "more columns than values")),
        };
        written.map_err(|e| write_err(path, e))?;
        c.close().map_err(|e| write_err(path, e))?;
    }
    group.close().map_err(|e| write_err(path, e))?;
    Ok(())
}

/// Writes `dir/nodes.parquet` and `dir/edges.parquet` (Snappy, row groups of 1 Mi rows):
/// node `i` gets id `ids[i]` and kind `kind_names[kinds[i]]`; edge `j` runs from `ids[src]` to
/// `ids[dst]` with its amount.
///
/// # Errors
/// [`GraphDataError::Io`] or [`GraphDataError::Write`].
pub fn save(dir: &Path, g: &GraphData) -> Result<(), GraphDataError> {
    std::fs::create_dir_all(dir).map_err(|e| GraphDataError::Io {
        path: dir.to_owned(),
        source: e,
    })?;
    let path = dir.join("nodes.parquet");
    let mut w = writer(
        &path,
        "message nodes { REQUIRED INT64 id; REQUIRED BYTE_ARRAY kind (UTF8); }",
    )?;
    let names: Vec<ByteArray> = g
        .kind_names
        .iter()
        .map(|k| ByteArray::from(k.as_str()))
        .collect();
    for (ids, kinds) in g.ids.chunks(ROW_GROUP).zip(g.kinds.chunks(ROW_GROUP)) {
        let kinds = kinds
            .iter()
            .map(|k| names.get(*k as usize).cloned().unwrap_or_default())
            .collect();
        write_group(
            &mut w,
            &path,
            vec![Column::Int64(ids), Column::Bytes(kinds)],
        )?;
    }
    w.close().map_err(|e| write_err(&path, e))?;

    let path = dir.join("edges.parquet");
    let mut w = writer(
        &path,
        "message edges { REQUIRED INT64 src; REQUIRED INT64 dst; REQUIRED DOUBLE amount; }",
    )?;
    let id = |v: u32| g.ids.get(v as usize).copied().unwrap_or(-1);
    for (edges, amounts) in g.edges.chunks(ROW_GROUP).zip(g.amounts.chunks(ROW_GROUP)) {
        let src: Vec<i64> = edges.iter().map(|e| id(e[0])).collect();
        let dst: Vec<i64> = edges.iter().map(|e| id(e[1])).collect();
        write_group(
            &mut w,
            &path,
            vec![
                Column::Int64(&src),
                Column::Int64(&dst),
                Column::Double(amounts),
            ],
        )?;
    }
    w.close().map_err(|e| write_err(&path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::graph::generate::generate;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    /// A fresh directory under the system's temporary directory, removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let d = std::env::temp_dir().join(format!(
                "gpubridge-graph-test-{name}-{}-{:x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn small(seed: u64) -> GraphData {
        generate(300, 500, seed).unwrap().0
    }

    /// Writes one table of the given schema and columns.
    fn table(path: &Path, message: &str, columns: Vec<Column<'_>>) {
        let mut w = writer(path, message).unwrap();
        write_group(&mut w, path, columns).unwrap();
        w.close().unwrap();
    }

    #[test]
    fn random_graphs_round_trip_exactly() {
        let mut rng = SmallRng::seed_from_u64(rand::random());
        for _ in 0..8 {
            let dir = Dir::new("roundtrip");
            let nodes = rng.random_range(0..400);
            let edges = if nodes < 2 {
                0
            } else {
                rng.random_range(0..800)
            };
            let (g, _) = generate(nodes, edges, rng.random()).unwrap();
            save(&dir.0, &g).unwrap();
            let back = load(&dir.0).unwrap();
            let what = format!("{nodes} nodes, {edges} edges");
            assert!(back.ids == g.ids, "ids differ: {what}");
            assert!(back.edges == g.edges, "edges differ: {what}");
            assert!(back.amounts == g.amounts, "amounts differ: {what}");
            assert_eq!(back.self_loops, 0);
            // Kinds come back in order of first appearance: compare them by name.
            let names = |d: &GraphData| -> Vec<String> {
                d.kinds
                    .iter()
                    .map(|k| d.kind_names[*k as usize].clone())
                    .collect()
            };
            assert!(names(&back) == names(&g), "kinds differ: {what}");
        }
    }

    #[test]
    fn the_id_index_finds_every_id_and_nothing_else() {
        let mut rng = SmallRng::seed_from_u64(rand::random());
        for n in [0usize, 1, 17, 5000] {
            let mut ids: Vec<i64> = (0..n).map(|_| rng.random()).collect();
            ids.sort_unstable();
            ids.dedup();
            // Clustered ids too, which a poor hash would pile into a few slots.
            ids.extend((0..n as i64).map(|i| i64::MIN + 1024 * i));
            let index = IdIndex::new(&ids).unwrap();
            for (node, id) in ids.iter().enumerate() {
                assert_eq!(index.get(*id), Some(node as u32));
            }
            for _ in 0..1000 {
                let id: i64 = rng.random();
                assert_eq!(
                    index.get(id),
                    ids.iter().position(|x| *x == id).map(|p| p as u32)
                );
            }
            if let Some(&first) = ids.first() {
                ids.push(first);
                assert!(matches!(
                    IdIndex::new(&ids),
                    Err(GraphDataError::DuplicateNode { id }) if id == first
                ));
            }
        }
    }

    #[test]
    fn missing_files_are_missing() {
        let dir = Dir::new("missing");
        assert!(
            matches!(load(&dir.0), Err(GraphDataError::Missing { path }) if path.ends_with("nodes.parquet"))
        );
        save(&dir.0, &small(1)).unwrap();
        std::fs::remove_file(dir.0.join("edges.parquet")).unwrap();
        assert!(
            matches!(load(&dir.0), Err(GraphDataError::Missing { path }) if path.ends_with("edges.parquet"))
        );
    }

    #[test]
    fn garbage_and_truncated_files_are_corrupt() {
        let dir = Dir::new("corrupt");
        save(&dir.0, &small(2)).unwrap();
        let nodes = dir.0.join("nodes.parquet");
        let good = std::fs::read(&nodes).unwrap();
        for bad in [
            b"not parquet at all".to_vec(),
            Vec::new(),
            good[..good.len() / 2].to_vec(),
            good[good.len() / 2..].to_vec(),
        ] {
            std::fs::write(&nodes, &bad).unwrap();
            let err = load(&dir.0).unwrap_err();
            assert!(matches!(err, GraphDataError::Corrupt { .. }), "{err}");
        }
    }

    /// A page header with an unknown field holding a list of 2^31 doubles, in a file of a few
    /// hundred bytes: the parquet reader skipped the list element by element, reading nothing
    /// past the end for minutes (found by the `graph_parquet` fuzz target). Now the read past
    /// the end fails and the file is `Corrupt` at once.
    #[test]
    fn a_page_header_claiming_a_huge_list_is_corrupt_at_once() {
        let dir = Dir::new("huge-list");
        save(&dir.0, &small(3)).unwrap();
        let path = dir.0.join("nodes.parquet");
        let mut bad = std::fs::read(&path).unwrap();
        // The first page header follows the 4-byte magic: field 15 (unknown), a list of
        // 2^31 - 1 doubles.
        bad[4..11].copy_from_slice(&[0xF9, 0xF7, 0xFF, 0xFF, 0xFF, 0xFF, 0x07]);
        std::fs::write(&path, &bad).unwrap();
        let started = std::time::Instant::now();
        let e = load(&dir.0).unwrap_err();
        assert!(matches!(e, GraphDataError::Corrupt { .. }), "{e}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }

    /// A dictionary page of 112 bytes declaring 402,653,184 values: the parquet reader allocated
    /// 3 GiB for it before failing (the graph_parquet fuzz target's input, kept in its corpus).
    /// Now the page is refused before it is decoded.
    #[test]
    fn a_dictionary_page_declaring_more_values_than_its_bytes_is_corrupt_at_once() {
        let input: &[u8] = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/corpus/graph_parquet/regression-dictionary-bomb.bin"
        ));
        let n = u32::from_le_bytes([input[0], input[1], input[2], input[3]]) as usize;
        let (nodes, edges) = input[4..].split_at(n);
        let dir = Dir::new("dictionary-bomb");
        std::fs::write(dir.0.join("nodes.parquet"), nodes).unwrap();
        std::fs::write(dir.0.join("edges.parquet"), edges).unwrap();
        let e = load(&dir.0).unwrap_err();
        assert!(
            matches!(&e, GraphDataError::Corrupt { reason, .. } if reason.contains("dictionary page declares")),
            "{e}"
        );
    }

    /// Flipping, zeroing or cutting bytes of a valid file at random never panics: the loader
    /// gives a graph (the damage hit values only) or an error.
    #[test]
    fn damaged_files_never_panic() {
        let dir = Dir::new("damaged");
        save(&dir.0, &small(3)).unwrap();
        let mut rng = SmallRng::seed_from_u64(rand::random());
        for name in ["nodes.parquet", "edges.parquet"] {
            let path = dir.0.join(name);
            let good = std::fs::read(&path).unwrap();
            for _ in 0..150 {
                let mut bad = good.clone();
                match rng.random_range(0..3) {
                    0 => {
                        for _ in 0..rng.random_range(1..8) {
                            let i = rng.random_range(0..bad.len());
                            bad[i] ^= 1 << rng.random_range(0..8);
                        }
                    }
                    1 => {
                        let i = rng.random_range(0..bad.len());
                        let n = rng.random_range(1..64).min(bad.len() - i);
                        bad[i..i + n].fill(0);
                    }
                    _ => bad.truncate(rng.random_range(0..bad.len())),
                }
                std::fs::write(&path, &bad).unwrap();
                match load(&dir.0) {
                    Ok(g) => assert!(g
                        .edges
                        .iter()
                        .all(|e| (e[0] as usize) < g.ids.len() && (e[1] as usize) < g.ids.len())),
                    Err(e) => assert!(!e.to_string().is_empty()),
                }
            }
            std::fs::write(&path, &good).unwrap();
        }
    }

    #[test]
    fn wrong_schemas_name_the_column() {
        let dir = Dir::new("schema");
        save(&dir.0, &small(4)).unwrap();
        let nodes = dir.0.join("nodes.parquet");
        let cases: Vec<(&str, Vec<Column<'_>>, &str)> = vec![
            (
                "message m { REQUIRED DOUBLE id; REQUIRED BYTE_ARRAY kind (UTF8); }",
                vec![Column::Double(&[1.0]), Column::Bytes(vec!["asset".into()])],
                "column `id` is DOUBLE, not INT64",
            ),
            (
                "message m { REQUIRED INT64 ident; REQUIRED BYTE_ARRAY kind (UTF8); }",
                vec![Column::Int64(&[1]), Column::Bytes(vec!["asset".into()])],
                "no column `id`",
            ),
            (
                "message m { REQUIRED INT64 id; REQUIRED BYTE_ARRAY kind; }",
                vec![
                    Column::Int64(&[1]),
                    Column::Bytes(vec![vec![0xff, 0xfe].into()]),
                ],
                "row 0 is not UTF-8",
            ),
            (
                "message m { REPEATED INT64 id; REQUIRED BYTE_ARRAY kind (UTF8); }",
                vec![Column::Int64(&[1]), Column::Bytes(vec!["asset".into()])],
                "column `id` is repeated",
            ),
        ];
        for (message, columns, want) in cases {
            // A repeated column needs its levels: write it by hand.
            if message.contains("REPEATED") {
                let mut w = writer(&nodes, message).unwrap();
                let mut group = w.next_row_group().unwrap();
                let mut c = group.next_column().unwrap().unwrap();
                c.typed::<Int64Type>()
                    .write_batch(&[1], Some(&[1]), Some(&[0]))
                    .unwrap();
                c.close().unwrap();
                let mut c = group.next_column().unwrap().unwrap();
                c.typed::<ByteArrayType>()
                    .write_batch(&["asset".into()], None, None)
                    .unwrap();
                c.close().unwrap();
                group.close().unwrap();
                w.close().unwrap();
            } else {
                table(&nodes, message, columns);
            }
            let err = load(&dir.0).unwrap_err();
            assert!(
                matches!(err, GraphDataError::Schema { .. }) && err.to_string().contains(want),
                "{message}: {err}"
            );
        }
        save(&dir.0, &small(4)).unwrap();
        table(
            &dir.0.join("edges.parquet"),
            "message m { REQUIRED INT64 src; REQUIRED INT64 dst; }",
            vec![Column::Int64(&[1]), Column::Int64(&[1])],
        );
        let err = load(&dir.0).unwrap_err();
        assert!(err.to_string().contains("no column `amount`"), "{err}");
    }

    #[test]
    fn optional_columns_load_but_nulls_do_not() {
        let dir = Dir::new("nulls");
        save(&dir.0, &small(5)).unwrap();
        let nodes = dir.0.join("nodes.parquet");
        let write = |defs: &[i16], ids: &[i64]| {
            let mut w = writer(
                &nodes,
                "message m { OPTIONAL INT64 id; REQUIRED BYTE_ARRAY kind (UTF8); }",
            )
            .unwrap();
            let mut group = w.next_row_group().unwrap();
            let mut c = group.next_column().unwrap().unwrap();
            c.typed::<Int64Type>()
                .write_batch(ids, Some(defs), None)
                .unwrap();
            c.close().unwrap();
            let mut c = group.next_column().unwrap().unwrap();
            c.typed::<ByteArrayType>()
                .write_batch(&["asset".into(), "equity".into()], None, None)
                .unwrap();
            c.close().unwrap();
            group.close().unwrap();
            w.close().unwrap();
        };
        std::fs::write(dir.0.join("edges.parquet"), []).unwrap();
        save_edges_only(&dir.0, &[(5, 6, 1.0)]);
        write(&[1, 1], &[5, 6]);
        let g = load(&dir.0).unwrap();
        assert_eq!((g.ids, g.edges), (vec![5, 6], vec![[0, 1]]));
        write(&[1, 0], &[5]);
        let err = load(&dir.0).unwrap_err();
        assert!(
            err.to_string().contains("column `id` holds a null"),
            "{err}"
        );
    }

    fn save_edges_only(dir: &Path, edges: &[(i64, i64, f64)]) {
        let src: Vec<i64> = edges.iter().map(|e| e.0).collect();
        let dst: Vec<i64> = edges.iter().map(|e| e.1).collect();
        let amount: Vec<f64> = edges.iter().map(|e| e.2).collect();
        table(
            &dir.join("edges.parquet"),
            "message m { REQUIRED INT64 src; REQUIRED INT64 dst; REQUIRED DOUBLE amount; }",
            vec![
                Column::Int64(&src),
                Column::Int64(&dst),
                Column::Double(&amount),
            ],
        );
    }

    fn save_nodes_only(dir: &Path, ids: &[i64]) {
        let kinds = ids.iter().map(|_| "asset".into()).collect();
        table(
            &dir.join("nodes.parquet"),
            "message m { REQUIRED INT64 id; REQUIRED BYTE_ARRAY kind (UTF8); }",
            vec![Column::Int64(ids), Column::Bytes(kinds)],
        );
    }

    #[test]
    fn unknown_and_repeated_ids_are_errors_self_loops_and_duplicates_are_kept() {
        let dir = Dir::new("ids");
        save_nodes_only(&dir.0, &[10, -3, 7]);
        save_edges_only(
            &dir.0,
            &[(10, -3, 1.0), (7, 7, 2.0), (-3, 10, 3.0), (10, -3, 4.0)],
        );
        let g = load(&dir.0).unwrap();
        assert_eq!(g.edges, [[0, 1], [2, 2], [1, 0], [0, 1]]);
        assert_eq!(g.self_loops, 1);
        assert_eq!(g.amounts, [1.0, 2.0, 3.0, 4.0]);
        save_edges_only(&dir.0, &[(10, -3, 1.0), (7, 8, 2.0)]);
        assert!(matches!(
            load(&dir.0),
            Err(GraphDataError::UnknownNode {
                row: 1,
                column: "dst",
                id: 8
            })
        ));
        save_edges_only(&dir.0, &[(99, -3, 1.0)]);
        assert!(matches!(
            load(&dir.0),
            Err(GraphDataError::UnknownNode {
                row: 0,
                column: "src",
                id: 99
            })
        ));
        save_nodes_only(&dir.0, &[10, -3, 10]);
        assert!(matches!(
            load(&dir.0),
            Err(GraphDataError::DuplicateNode { id: 10 })
        ));
    }
}
