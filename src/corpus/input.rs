//! The text a corpus is built from: files, folders of them, gzip files; read as chunks of
//! non-empty lines so that memory stays flat however large the input is.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use flate2::read::MultiGzDecoder;

use super::manifest::MANIFEST_FILE;

/// The files behind the given paths: files as given, folders walked recursively in name order.
/// Skipped in folders: names starting with `.` (a build in progress is one), symbolic links to
/// folders, and built corpora (folders with a manifest), so that `--out` may lie among the inputs.
pub fn list_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).with_context(|| format!("input {} does not exist", input.display()))?;
        if meta.is_dir() {
            walk(input, &mut files)?;
        } else {
            files.push(input.clone());
        }
    }
    if files.is_empty() {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        bail!("no input files in {}", names.join(", "));
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list input folder {}", dir.display()))?
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list input folder {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().with_context(|| format!("cannot stat {}", path.display()))?;
        if kind.is_dir() {
            if !path.join(MANIFEST_FILE).is_file() {
                walk(&path, files)?;
            }
        } else if kind.is_file() || (kind.is_symlink() && path.is_file()) {
            files.push(path);
        }
    }
    Ok(())
}

/// Consecutive non-empty lines of one file, stored end to end in `text`.
#[derive(Debug, Default)]
pub struct Chunk {
    pub file: usize,
    /// Line number (from 1) of the first line, for messages.
    pub first_line: u64,
    pub last_line: u64,
    pub text: String,
    pub lines: Vec<Range<usize>>,
    /// Whether each line starts a document: the first line of a file, or one after a blank line.
    pub starts_document: Vec<bool>,
    /// Bytes of text read for this chunk, blank lines and line ends included.
    pub bytes: u64,
    /// Lines skipped because they are not UTF-8.
    pub invalid_utf8: u64,
}

impl Chunk {
    pub fn line_texts(&self) -> Vec<&str> {
        self.lines.iter().map(|r| &self.text[r.clone()]).collect()
    }
}

/// Reads the files in order as chunks of about `chunk_bytes` of text; a chunk never spans
/// two files. Bytes read from disk (compressed, for `.gz`) are added to `disk_bytes` as it goes.
pub struct ChunkReader {
    files: Vec<PathBuf>,
    chunk_bytes: usize,
    disk_bytes: Arc<AtomicU64>,
    current: Option<OpenFile>,
    next_file: usize,
    line: Vec<u8>,
}

struct OpenFile {
    index: usize,
    reader: Box<dyn BufRead + Send>,
    line_number: u64,
    /// The next non-empty line starts a document.
    at_document_start: bool,
}

impl ChunkReader {
    pub fn new(files: Vec<PathBuf>, chunk_bytes: usize, disk_bytes: Arc<AtomicU64>) -> Self {
        ChunkReader { files, chunk_bytes, disk_bytes, current: None, next_file: 0, line: Vec::new() }
    }

    fn open(&self, index: usize) -> Result<OpenFile> {
        let path = &self.files[index];
        let file = File::open(path).with_context(|| format!("cannot open input {}", path.display()))?;
        let counted = CountingReader { inner: file, count: self.disk_bytes.clone() };
        let reader: Box<dyn BufRead + Send> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(BufReader::with_capacity(1 << 16, MultiGzDecoder::new(BufReader::new(counted))))
        } else {
            Box::new(BufReader::with_capacity(1 << 16, counted))
        };
        Ok(OpenFile { index, reader, line_number: 0, at_document_start: true })
    }

    /// The next chunk, or `None` after the last file.
    fn read_chunk(&mut self) -> Result<Option<Chunk>> {
        loop {
            if self.current.is_none() {
                if self.next_file == self.files.len() {
                    return Ok(None);
                }
                self.current = Some(self.open(self.next_file)?);
                self.next_file += 1;
            }
            let file = self.current.as_mut().unwrap();
            let mut chunk = Chunk { file: file.index, first_line: file.line_number + 1, ..Default::default() };
            let mut ended = false;
            while chunk.text.len() < self.chunk_bytes {
                self.line.clear();
                let read = file
                    .reader
                    .read_until(b'\n', &mut self.line)
                    .with_context(|| format!("cannot read input {}", self.files[file.index].display()))?;
                if read == 0 {
                    ended = true;
                    break;
                }
                file.line_number += 1;
                chunk.bytes += read as u64;
                let mut bytes = self.line.as_slice();
                bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
                bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
                let Ok(text) = std::str::from_utf8(bytes) else {
                    chunk.invalid_utf8 += 1;
                    continue;
                };
                if text.trim().is_empty() {
                    file.at_document_start = true;
                    continue;
                }
                let start = chunk.text.len();
                chunk.text.push_str(text);
                chunk.lines.push(start..chunk.text.len());
                chunk.starts_document.push(std::mem::replace(&mut file.at_document_start, false));
            }
            chunk.last_line = file.line_number;
            if ended {
                self.current = None;
            }
            if chunk.bytes > 0 {
                return Ok(Some(chunk));
            }
        }
    }
}

impl Iterator for ChunkReader {
    type Item = Result<Chunk>;

    fn next(&mut self) -> Option<Result<Chunk>> {
        self.read_chunk().transpose()
    }
}

struct CountingReader {
    inner: File,
    count: Arc<AtomicU64>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn lines_documents_gzip_and_chunking() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.txt");
        std::fs::write(&plain, b"one\r\ntwo\n\n  \nthree\n\xff\xfe bad\nfour").unwrap();
        let gz = dir.path().join("b.txt.gz");
        let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::default());
        enc.write_all(b"five\nsix\n").unwrap();
        enc.finish().unwrap();
        std::fs::create_dir(dir.path().join(".hidden")).unwrap();
        std::fs::write(dir.path().join(".hidden/x.txt"), "hidden\n").unwrap();
        std::fs::create_dir(dir.path().join("corpus")).unwrap();
        std::fs::write(dir.path().join("corpus").join(MANIFEST_FILE), "{}").unwrap();

        let files = list_files(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(files, vec![plain, gz]);
        let disk = Arc::new(AtomicU64::new(0));
        let chunks: Vec<Chunk> = ChunkReader::new(files, 8, disk.clone()).collect::<Result<_>>().unwrap();
        let lines: Vec<Vec<&str>> = chunks.iter().map(|c| c.line_texts()).collect();
        // A chunk closes once it holds 8 bytes of text, and at the end of each file.
        assert_eq!(lines, vec![vec!["one", "two", "three"], vec!["four"], vec!["five", "six"]]);
        let starts: Vec<&[bool]> = chunks.iter().map(|c| c.starts_document.as_slice()).collect();
        assert_eq!(starts, vec![&[true, false, true][..], &[false], &[true, false]]);
        assert_eq!(chunks.iter().map(|c| c.invalid_utf8).collect::<Vec<_>>(), [0, 1, 0]);
        assert_eq!(chunks.iter().map(|c| c.bytes).collect::<Vec<_>>(), [19, 11, 9]);
        assert_eq!((chunks[1].first_line, chunks[1].last_line), (6, 7));
        assert!(disk.load(Ordering::Relaxed) > 30);
    }
}
