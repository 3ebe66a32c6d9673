//! Writing one partition aside and swapping it in atomically.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::Error;

/// One partition being written into a hidden folder next to `dt=<ds>`. Dropped without
/// [`swap_in`], it removes what it wrote: a failed extract leaves nothing behind.
pub struct PartitionWriter {
    table_dir: PathBuf,
    ds: String,
    tmp: PathBuf,
    writer: Option<ArrowWriter<File>>,
    done: bool,
}

fn werr(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Write {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn fsync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| werr(dir, e))
}

impl PartitionWriter {
    pub fn new(table_dir: &Path, ds: &str) -> Result<Self, Error> {
        std::fs::create_dir_all(table_dir).map_err(|e| werr(table_dir, e))?;
        // Leftovers of a try that was killed mid-write are never visible (hidden names);
        // clear them so they do not pile up.
        let prefix = format!(".dt={ds}.tmp-");
        if let Ok(rd) = std::fs::read_dir(table_dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let nanos = std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = table_dir.join(format!("{prefix}{}-{nanos}", std::process::id()));
        std::fs::create_dir(&tmp).map_err(|e| werr(&tmp, e))?;
        Ok(PartitionWriter {
            table_dir: table_dir.to_owned(),
            ds: ds.to_owned(),
            tmp,
            writer: None,
            done: false,
        })
    }

    /// The hidden folder being filled; for writers other than Arrow (a dbt export).
    pub fn staging_dir(&self) -> &Path {
        &self.tmp
    }

    pub fn final_path(&self) -> PathBuf {
        self.table_dir.join(format!("dt={}", self.ds))
    }

    fn file_path(&self) -> PathBuf {
        self.tmp.join("part-0.parquet")
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), Error> {
        if self.writer.is_none() {
            let path = self.file_path();
            let file = File::create(&path).map_err(|e| werr(&path, e))?;
            // Row groups of a quarter million rows: the writer holds one in memory, so a
            // table of any size is written in bounded memory.
            let props = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_max_row_group_row_count(Some(4 * crate::BATCH))
                .build();
            let w = ArrowWriter::try_new(file, Arc::clone(&batch.schema()), Some(props))
                .map_err(|e| werr(&path, e))?;
            self.writer = Some(w);
        }
        let path = self.file_path();
        self.writer
            .as_mut()
            .expect("writer just set")
            .write(batch)
            .map_err(|e| werr(&path, e))
    }

    /// Closes and fsyncs the file; returns its size.
    pub fn finish(&mut self) -> Result<u64, Error> {
        let path = self.file_path();
        let Some(w) = self.writer.take() else {
            return Err(werr(&path, "no schema was written"));
        };
        let file = w.into_inner().map_err(|e| werr(&path, e))?;
        file.sync_all().map_err(|e| werr(&path, e))?;
        fsync_dir(&self.tmp)?;
        Ok(file.metadata().map(|m| m.len()).unwrap_or(0))
    }
}

impl Drop for PartitionWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Makes a finished partition visible: exchanges it with the old one in one atomic
/// rename (or renames it into place when there is none), then removes the old data.
pub fn swap_in(mut w: PartitionWriter) -> Result<PathBuf, Error> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    let target = w.final_path();
    if target.exists() {
        renameat2(
            AT_FDCWD,
            &w.tmp,
            AT_FDCWD,
            &target,
            RenameFlags::RENAME_EXCHANGE,
        )
        .map_err(|e| werr(&target, e))?;
        // `tmp` now holds the previous partition; Drop removes it.
        fsync_dir(&w.table_dir)?;
        let _ = std::fs::remove_dir_all(&w.tmp);
    } else {
        std::fs::rename(&w.tmp, &target).map_err(|e| werr(&target, e))?;
        fsync_dir(&w.table_dir)?;
    }
    w.done = true;
    Ok(target)
}
