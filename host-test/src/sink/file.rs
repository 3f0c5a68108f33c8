//! The JSON-lines file sink (`--out <file>`) and stdout (`--out -`, the default).
//!
//! A file sink is fsynced after every batch. A crash between that fsync and the host
//! recording the delivered `seq` would repeat lines on restart, so on open the sink reads
//! its own last line back: the host resumes after whichever `seq` is further. A torn last
//! line (a crash mid-write) is cut off and written again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::SinkError;

pub enum FileSink {
    /// `durable`: a regular file, fsynced after each write (a device such as /dev/null
    /// cannot be).
    File {
        path: PathBuf,
        file: File,
        durable: bool,
    },
    Stdout,
}

impl FileSink {
    /// `-` is stdout.
    pub fn open(path: &Path) -> Result<FileSink, SinkError> {
        if path == Path::new("-") {
            return Ok(FileSink::Stdout);
        }
        let open = |cause| SinkError::Open {
            path: path.to_path_buf(),
            cause,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(open)?;
        let durable = file.metadata().map_err(open)?.is_file();
        if durable {
            cut_torn_tail(&mut file).map_err(open)?;
        }
        Ok(FileSink::File {
            path: path.to_path_buf(),
            file,
            durable,
        })
    }

    /// The file's path; `None` for stdout.
    pub fn path(&self) -> Option<&Path> {
        match self {
            FileSink::File { path, .. } => Some(path),
            FileSink::Stdout => None,
        }
    }

    /// The `seq` of the last line of `instance` already in the file, if any.
    pub fn last_seq(&mut self, instance: &str) -> Result<Option<u64>, SinkError> {
        match self {
            FileSink::File {
                path,
                file,
                durable: true,
            } => last_seq_of(file, instance).map_err(|cause| SinkError::Open {
                path: path.clone(),
                cause,
            }),
            _ => Ok(None),
        }
    }

    /// Appends lines and makes them durable before returning.
    pub fn write(&mut self, lines: &[(u64, String)]) -> Result<(), SinkError> {
        let mut buf = Vec::with_capacity(lines.iter().map(|(_, l)| l.len() + 1).sum());
        for (_, line) in lines {
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
        }
        match self {
            FileSink::File {
                path,
                file,
                durable,
            } => file
                .write_all(&buf)
                .and_then(|()| if *durable { file.sync_data() } else { Ok(()) })
                .map_err(|cause| SinkError::Write {
                    path: path.clone(),
                    cause,
                }),
            FileSink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&buf)
                    .and_then(|()| out.flush())
                    .map_err(|cause| SinkError::Write {
                        path: "stdout".into(),
                        cause,
                    })
            }
        }
    }
}

/// Cuts a partial last line (no trailing newline) left by a crash mid-write.
fn cut_torn_tail(file: &mut File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    let keep = match find_last_newline(file, len)? {
        Some(pos) => pos + 1,
        None => 0,
    };
    file.set_len(keep)?;
    file.sync_data()
}

/// Position of the last `\n` before `end`, reading backwards in chunks.
fn find_last_newline(file: &mut File, end: u64) -> std::io::Result<Option<u64>> {
    const CHUNK: u64 = 64 * 1024;
    let mut end = end;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + i as u64));
        }
        end = start;
    }
    Ok(None)
}

/// Scans lines from the end for the last one of `instance`.
fn last_seq_of(file: &mut File, instance: &str) -> std::io::Result<Option<u64>> {
    #[derive(Deserialize)]
    struct Head {
        seq: u64,
        instance: String,
    }
    let mut end = file.metadata()?.len();
    // `end` points just past a line's `\n`; step back one line at a time.
    while end > 0 {
        let line_end = end - 1; // the '\n'
        let start = find_last_newline(file, line_end)?.map_or(0, |p| p + 1);
        let mut line = vec![0u8; (line_end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut line)?;
        if let Ok(head) = serde_json::from_slice::<Head>(&line)
            && head.instance == instance
        {
            return Ok(Some(head.seq));
        }
        end = start;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_cut_and_the_last_seq_is_read_back_per_instance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(
            &path,
            "{\"seq\":1,\"instance\":\"a\"}\n{\"seq\":7,\"instance\":\"b\"}\n{\"seq\":2,\"instance\":\"a\"}\n{\"seq\":3,\"inst",
        )
        .unwrap();
        let mut sink = FileSink::open(&path).unwrap();
        assert_eq!(sink.last_seq("a").unwrap(), Some(2));
        assert_eq!(sink.last_seq("b").unwrap(), Some(7));
        assert_eq!(sink.last_seq("c").unwrap(), None);
        sink.write(&[(3, "{\"seq\":3,\"instance\":\"a\"}".into())])
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("{\"seq\":2,\"instance\":\"a\"}\n{\"seq\":3,\"instance\":\"a\"}\n"));
    }
}
