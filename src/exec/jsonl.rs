//! Line files (`results.jsonl`, `examples/*.jsonl`) that never hold a
//! half-written line.
//!
//! Each line goes to the file in one `write_all` of the complete line
//! (newline included) followed by a flush; when that fails (disk full,
//! file size limit, I/O error) the file is truncated back to its last
//! complete line, so a reader sees every complete line and nothing else.
//! A line cut by `kill -9` in the middle of its write (possible only for
//! lines longer than one `write`) is removed when the file is reopened
//! for appending ([`JsonlFile::append_to`], used by `--resume`).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A JSONL file open for appending whole lines.
#[derive(Debug)]
pub struct JsonlFile {
    file: File,
    path: PathBuf,
    /// Length of the file up to its last complete line.
    len: u64,
}

impl JsonlFile {
    /// Creates (or empties) `path`.
    pub fn create(path: &Path) -> io::Result<JsonlFile> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(JsonlFile {
            file,
            path: path.to_path_buf(),
            len: 0,
        })
    }

    /// Opens `path` for appending (creating it if needed), first cutting a
    /// trailing incomplete line (one without its newline).
    pub fn append_to(path: &Path) -> io::Result<JsonlFile> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let len = complete_len(&mut file)?;
        file.set_len(len)?;
        Ok(JsonlFile {
            file,
            path: path.to_path_buf(),
            len,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `line` (which must not contain a newline) and a newline in
    /// one write; on failure, cuts the file back to its previous length.
    pub fn append(&mut self, line: &str) -> io::Result<()> {
        debug_assert!(!line.contains('\n'));
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        match self.file.write_all(&buf).and_then(|_| self.file.flush()) {
            Ok(()) => {
                self.len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Best effort: the write error is what the user needs to see.
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }
}

/// Appends one line to `path` (see [`JsonlFile::append`]), creating it if
/// needed.
pub fn append_line(path: &Path, line: &str) -> io::Result<()> {
    JsonlFile::append_to(path)?.append(line)
}

/// The length of `file` up to and including its last newline.
fn complete_len(file: &mut File) -> io::Result<u64> {
    let end = file.seek(SeekFrom::End(0))?;
    let mut pos = end;
    let mut buf = [0u8; 4096];
    while pos > 0 {
        let n = buf.len().min(pos as usize);
        pos -= n as u64;
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(pos + i as u64 + 1);
        }
    }
    Ok(0)
}

/// The whole lines of a results file (an unterminated last line, cut by a
/// crash, is left out), each with the top-level plan step its `step_id`
/// belongs to (a hook step's training run), if it names one.
pub fn lines_by_step<'a>(
    plan: &'a crate::plan::Plan,
    text: &'a [u8],
) -> impl Iterator<Item = (Option<u32>, &'a [u8])> + 'a {
    text.split_inclusive(|&b| b == b'\n')
        .filter(|line| line.last() == Some(&b'\n'))
        .map(move |line| {
            let top = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["step_id"].as_u64())
                .and_then(|id| crate::plan::shard::top_level(plan, id));
            (top, line)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopening_cuts_an_incomplete_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n{\"a\"").unwrap();
        let mut f = JsonlFile::append_to(&path).unwrap();
        f.append("{\"a\":3}").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n"
        );
    }

    #[test]
    fn a_file_without_any_newline_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, vec![b'x'; 10_000]).unwrap();
        JsonlFile::append_to(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 0);
    }

    #[test]
    fn append_line_creates_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        append_line(&path, "1").unwrap();
        append_line(&path, "2").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n2\n");
    }
}
