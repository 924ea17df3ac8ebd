//! Reading what tasks wrote to their log files since the last look.

use netctl_proto::LogChunk;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The largest chunk sent at once.
const MAX_CHUNK: usize = 64 * 1024;

/// New bytes of every `<sandbox>.log` in `tasks_dir` past `offsets` (which
/// are advanced), as chunks for the manager.
pub fn new_output(tasks_dir: &Path, node_id: &str, offsets: &mut HashMap<String, u64>) -> Vec<LogChunk> {
    let mut chunks = Vec::new();
    let Ok(entries) = std::fs::read_dir(tasks_dir) else { return chunks };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(sandbox) = name.strip_suffix(".log") else { continue };
        let offset = offsets.entry(sandbox.to_string()).or_insert(0);
        let Ok(mut file) = std::fs::File::open(entry.path()) else { continue };
        if file.seek(SeekFrom::Start(*offset)).is_err() {
            continue;
        }
        loop {
            let mut data = vec![0; MAX_CHUNK];
            let read = match file.read(&mut data) {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            data.truncate(read);
            chunks.push(LogChunk {
                node_id: node_id.to_string(),
                sandbox: sandbox.to_string(),
                offset: *offset,
                data,
            });
            *offset += read as u64;
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_new_bytes_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("abc123.log");
        std::fs::write(&log, "one\n").unwrap();
        let mut offsets = HashMap::new();
        let first = new_output(dir.path(), "n1", &mut offsets);
        assert_eq!((first.len(), first[0].data.as_slice(), first[0].offset), (1, &b"one\n"[..], 0));
        assert!(new_output(dir.path(), "n1", &mut offsets).is_empty());
        std::fs::write(&log, "one\ntwo\n").unwrap();
        let second = new_output(dir.path(), "n1", &mut offsets);
        assert_eq!(
            (second[0].data.as_slice(), second[0].offset, second[0].sandbox.as_str()),
            (&b"two\n"[..], 4, "abc123")
        );
    }
}
