//! Reading what tasks wrote since the manager last got it: each task's log
//! segments ([`crate::task_files`]) from a remembered offset on, a bounded
//! amount per task and sweep, so a task that writes faster than the agent
//! ships loses its oldest output (to rotation), never the agent's memory.

use crate::task_files::TaskFiles;
use netctl_proto::LogChunk;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The largest chunk sent at once.
const MAX_CHUNK: usize = 64 * 1024;
/// The most bytes read of one task per sweep.
pub const MAX_PER_SWEEP: u64 = 1024 * 1024;

/// What one sweep found.
#[derive(Debug, Default)]
pub struct Sweep {
    /// New output, as chunks for the manager.
    pub chunks: Vec<LogChunk>,
    /// Folders of stopped tasks whose whole output is in `chunks` or was
    /// shipped before: to remove once `chunks` are delivered.
    pub finished: Vec<TaskFiles>,
}

/// New bytes of every task in `tasks_dir` past `offsets` (by sandbox name;
/// they are advanced).
pub fn new_output(tasks_dir: &Path, node_id: &str, offsets: &mut HashMap<String, u64>) -> Sweep {
    let mut sweep = Sweep::default();
    let Ok(entries) = std::fs::read_dir(tasks_dir) else { return sweep };
    for entry in entries.flatten() {
        let Ok(sandbox) = entry.file_name().into_string() else { continue };
        let files = TaskFiles::at(entry.path());
        // Checked before reading: a task marked stopped writes no more.
        let stopped = files.stopped();
        let offset = offsets.entry(sandbox.clone()).or_insert(0);
        for (at, data) in read_from(&files, offset, MAX_PER_SWEEP) {
            sweep.chunks.push(LogChunk {
                node_id: node_id.to_string(),
                sandbox: sandbox.clone(),
                offset: at,
                data,
            });
        }
        if stopped && *offset >= files.log_end() {
            offsets.remove(&sandbox);
            sweep.finished.push(files);
        }
    }
    sweep
}

/// Up to `budget` bytes of a task's output from `offset` on, as (offset,
/// bytes) pieces; `offset` is advanced, past output already rotated away.
fn read_from(files: &TaskFiles, offset: &mut u64, budget: u64) -> Vec<(u64, Vec<u8>)> {
    let mut pieces = Vec::new();
    let mut left = budget;
    for (start, path) in files.log_segments() {
        let Ok(mut file) = std::fs::File::open(&path) else { continue };
        let len = file.metadata().map_or(0, |m| m.len());
        if start + len <= *offset {
            continue;
        }
        // Output between `offset` and `start` was rotated away unread.
        *offset = (*offset).max(start);
        if file.seek(SeekFrom::Start(*offset - start)).is_err() {
            continue;
        }
        while left > 0 {
            let mut data = vec![0; MAX_CHUNK.min(left as usize)];
            let read = match file.read(&mut data) {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            data.truncate(read);
            pieces.push((*offset, data));
            *offset += read as u64;
            left -= read as u64;
        }
        if left == 0 {
            break;
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task_files::private_file;
    use std::io::Write;

    fn append(files: &TaskFiles, start: u64, text: &str) {
        private_file(&files.log_segment(start), true).unwrap().write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn only_new_bytes_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let files = TaskFiles::new(dir.path(), "abc123");
        files.create().unwrap();
        append(&files, 0, "one\n");
        let mut offsets = HashMap::new();
        let first = new_output(dir.path(), "n1", &mut offsets).chunks;
        assert_eq!((first.len(), first[0].data.as_slice(), first[0].offset), (1, &b"one\n"[..], 0));
        assert!(new_output(dir.path(), "n1", &mut offsets).chunks.is_empty());
        append(&files, 0, "two\n");
        let second = new_output(dir.path(), "n1", &mut offsets).chunks;
        assert_eq!(
            (second[0].data.as_slice(), second[0].offset, second[0].sandbox.as_str()),
            (&b"two\n"[..], 4, "abc123")
        );
    }

    #[test]
    fn a_stopped_task_is_finished_once_all_its_output_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let files = TaskFiles::new(dir.path(), "t");
        files.create().unwrap();
        append(&files, 0, "last words\n");
        files.mark_stopped().unwrap();
        let mut offsets = HashMap::new();
        let sweep = new_output(dir.path(), "n1", &mut offsets);
        assert_eq!(sweep.chunks[0].data, b"last words\n");
        assert_eq!(sweep.finished.len(), 1);
        assert!(offsets.is_empty());
    }

    #[test]
    fn reading_continues_across_segments_and_skips_what_rotated_away() {
        let dir = tempfile::tempdir().unwrap();
        let files = TaskFiles::new(dir.path(), "t");
        files.create().unwrap();
        append(&files, 100, "0123456789");
        append(&files, 110, "abc");
        let mut offset = 5;
        let pieces = read_from(&files, &mut offset, 1024);
        assert_eq!(pieces, vec![(100, b"0123456789".to_vec()), (110, b"abc".to_vec())]);
        assert_eq!(offset, 113);
        let mut offset = 104;
        let bounded = read_from(&files, &mut offset, 4);
        assert_eq!((bounded, offset), (vec![(104, b"4567".to_vec())], 108));
    }
}
