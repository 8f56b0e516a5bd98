//! Files the cloud writes once and keeps — recording segments, pictures,
//! firmware — written with `O_DIRECT` in aligned blocks: the bytes go from
//! the upload's buffer to the disk without passing through the page cache.
//! Buffered, every stored byte was copied into a fresh page-cache page and
//! then written back by the fsync that follows each file, which on this
//! project's VM costs 2.4 CPU-seconds per GB (`dd conv=fsync`) against 0.11
//! with `oflag=direct` (docs/BENCHMARKS.md, cloud recording).
//!
//! A file system that refuses `O_DIRECT` (at open or at the first write:
//! some need another alignment, tmpfs before Linux 6.6) gets the same
//! bytes written the ordinary way; the file's content and durability are
//! the same either way: `finish_as` fsyncs.

use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Offsets, lengths and buffer addresses of direct writes are multiples of
/// this (the largest logical block size of common disks).
const ALIGN: usize = 4096;
/// Bytes gathered before a write: each write is a trip to a blocking thread
/// (a wake-up and a context switch each way), so a 2 s segment at 4 Mbit/s
/// is stored in one trip: opened, written, fsynced and renamed.
pub(crate) const BLOCK: usize = 1 << 20;

pub(crate) struct DiskFile {
    /// The file's blocking side; `None` only while a blocking thread has it.
    w: Option<Writer>,
    /// `BLOCK + ALIGN` bytes; the aligned window is `buf[off..off + BLOCK]`.
    buf: Vec<u8>,
    off: usize,
    /// Bytes waiting in the window.
    held: usize,
    /// Bytes already in the file.
    written: u64,
}

/// Direct: with `O_DIRECT`. Fresh: created or emptied (otherwise the same
/// file reopened to go on writing it, nothing truncated); its directories
/// are made when missing (on this trip to a blocking thread, not one of
/// their own: most uploads land in a directory that exists).
fn open(path: &Path, direct: bool, fresh: bool) -> io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(fresh);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    match o.open(path) {
        Err(e) if fresh && e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
            }
            o.open(path)
        }
        r => r,
    }
}

fn busy() -> io::Error {
    io::Error::other("an earlier write to this file failed")
}

impl DiskFile {
    /// A file to be written at `path` (created, or emptied, when the first
    /// bytes go out).
    pub(crate) fn new(path: &Path) -> DiskFile {
        let buf = POOL.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_else(|| vec![0u8; BLOCK + ALIGN]);
        let off = buf.as_ptr().align_offset(ALIGN);
        let w = Writer { path: path.to_owned(), file: None, direct: true };
        DiskFile { w: Some(w), buf, off, held: 0, written: 0 }
    }

    /// Whether the file is being written around the page cache.
    #[cfg(test)]
    pub(crate) fn is_direct(&self) -> bool {
        self.w.as_ref().is_some_and(|w| w.direct)
    }

    pub(crate) async fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let k = (BLOCK - self.held).min(data.len());
            let at = self.off + self.held;
            self.buf[at..at + k].copy_from_slice(&data[..k]);
            self.held += k;
            data = &data[k..];
            if self.held == BLOCK {
                self.put(BLOCK).await?;
            }
        }
        Ok(())
    }

    /// The free part of the current block, for bytes read straight into
    /// it (then [`filled`](Self::filled)); an error after a failed write.
    pub(crate) fn spare(&mut self) -> io::Result<&mut [u8]> {
        if self.buf.is_empty() {
            return Err(busy());
        }
        let (at, end) = (self.off + self.held, self.off + BLOCK);
        Ok(&mut self.buf[at..end])
    }

    /// `n` bytes were put at the start of [`spare`](Self::spare); a full
    /// block goes to the disk.
    pub(crate) async fn filled(&mut self, n: usize) -> io::Result<()> {
        self.held = (self.held + n).min(BLOCK);
        if self.held == BLOCK {
            self.put(BLOCK).await?;
        }
        Ok(())
    }

    /// Writes the first `n` bytes of the window (a multiple of `ALIGN`, or
    /// anything once the file is no longer direct) at the file's end.
    async fn put(&mut self, n: usize) -> io::Result<()> {
        let mut w = self.w.take().ok_or_else(busy)?;
        let buf = std::mem::take(&mut self.buf);
        let (off, at) = (self.off, self.written);
        let (w, buf, r) = tokio::task::spawn_blocking(move || {
            let r = w.write_at(&buf[off..off + n], at);
            (w, buf, r)
        })
        .await
        .map_err(io::Error::other)?;
        (self.w, self.buf) = (Some(w), buf);
        r?;
        self.written += n as u64;
        self.held = 0;
        Ok(())
    }

    /// Writes what is held, makes the file durable (data and size) and
    /// renames it to `to`, then makes the rename durable (fsync of the
    /// directory): one trip to a blocking thread. The last block of a
    /// direct file goes out padded to the alignment, and the file is then
    /// cut to its exact length. The file's length.
    pub(crate) async fn finish_as(mut self, to: &Path) -> io::Result<u64> {
        let mut w = self.w.take().ok_or_else(busy)?;
        let len = self.written + self.held as u64;
        let n = if w.direct { self.held.next_multiple_of(ALIGN) } else { self.held };
        let at = self.off + self.held;
        self.buf[at..self.off + n].fill(0);
        let (buf, off, written, to) = (std::mem::take(&mut self.buf), self.off, self.written, to.to_owned());
        let (buf, r) = tokio::task::spawn_blocking(move || {
            let r = (|| {
                if n > 0 || w.file.is_none() {
                    w.write_at(&buf[off..off + n], written)?;
                }
                let file = w.file.take().ok_or_else(busy)?;
                // Padding is the only way the file can be longer (a file is
                // emptied when it is opened).
                if written + n as u64 != len {
                    file.set_len(len)?;
                }
                file.sync_all()?;
                drop(file);
                std::fs::rename(&w.path, &to)?;
                if let Some(dir) = to.parent() {
                    // Best effort: some file systems refuse to fsync a directory.
                    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
                }
                Ok::<_, io::Error>(())
            })();
            (buf, r)
        })
        .await
        .map_err(io::Error::other)?;
        self.buf = buf;
        r?;
        Ok(len)
    }
}

/// Buffers of files already written, for the next ones: a fresh 1 MiB
/// buffer per upload was memory new to the process each time, and the
/// kernel zeroing its pages was a quarter of the cloud's CPU while it
/// recorded 16 cameras.
static POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
/// Buffers the pool keeps: as many uploads at once as this reuse memory
/// (cameras tend to finish their segments together, so a burst is the
/// usual case); beyond it an upload allocates and frees its own. At most
/// 64 MiB kept, and only after that many uploads were in flight at once.
const POOL_MAX: usize = 64;

impl Drop for DiskFile {
    fn drop(&mut self) {
        if self.buf.len() == BLOCK + ALIGN {
            let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < POOL_MAX {
                pool.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

/// The blocking side: opens the file on first use (direct if it can), and
/// falls back to buffered writes when the file system refuses.
struct Writer {
    path: PathBuf,
    file: Option<std::fs::File>,
    direct: bool,
}

impl Writer {
    fn write_at(&mut self, data: &[u8], at: u64) -> io::Result<()> {
        if self.file.is_none() {
            self.file = Some(match open(&self.path, true, true) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.direct = false;
                    open(&self.path, false, true)?
                }
                r => r?,
            });
        }
        let file = self.file.as_ref().ok_or_else(busy)?;
        match file.write_all_at(data, at) {
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                // This file system wants another alignment: carry on through
                // the page cache.
                tracing::debug!(path = %self.path.display(), "cloud: O_DIRECT refused at write; writing buffered");
                let f = open(&self.path, false, false)?;
                self.direct = false;
                let r = f.write_all_at(data, at);
                self.file = Some(f);
                r
            }
            r => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length around the block and alignment edges comes back byte
    /// for byte, written in uneven pieces, with the exact size.
    #[tokio::test]
    async fn writes_exactly_the_bytes_given() {
        let dir = std::env::temp_dir().join(format!("ivr-diskfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut direct_seen = false;
        for len in [1usize, 4095, 4096, 4097, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12_345] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            let (part, path) = (dir.join(format!("f{len}.part")), dir.join(format!("f{len}")));
            let mut f = DiskFile::new(&part);
            for piece in data.chunks(10_007) {
                f.write(piece).await.unwrap();
            }
            // Only a file that has reached the disk knows how it was written.
            if len >= BLOCK {
                direct_seen |= f.is_direct();
            }
            assert_eq!(f.finish_as(&path).await.unwrap(), len as u64);
            assert_eq!(std::fs::read(&path).unwrap(), data, "{len} bytes");
            assert!(!part.exists());
        }
        // Missing directories are made on the way.
        let deep = dir.join("a").join("b");
        let mut f = DiskFile::new(&deep.join("h.part"));
        f.write(b"deep").await.unwrap();
        assert_eq!(f.finish_as(&deep.join("h")).await.unwrap(), 4);
        assert_eq!(std::fs::read(deep.join("h")).unwrap(), b"deep");
        // An existing longer file is replaced, not overwritten in part.
        let (part, path) = (dir.join("g.part"), dir.join("g"));
        std::fs::write(&part, vec![9u8; 3 * BLOCK]).unwrap();
        let mut f = DiskFile::new(&part);
        f.write(b"short").await.unwrap();
        assert_eq!(f.finish_as(&path).await.unwrap(), 5);
        assert_eq!(std::fs::read(&path).unwrap(), b"short");
        // Nothing written at all: an empty file, still renamed.
        assert_eq!(DiskFile::new(&part).finish_as(&path).await.unwrap(), 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        let _ = std::fs::remove_dir_all(&dir);
        // The machine the tests run on writes directly (ext4, or tmpfs on
        // Linux 6.6 and later): the fast path is the one tested.
        assert!(direct_seen, "O_DIRECT was refused on {}", dir.display());
    }
}
